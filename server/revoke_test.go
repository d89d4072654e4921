package server_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/protocol"
)

// TestRevokingATokenEndsItsSessionsAndItsNamesGoToTheNewOwner revokes a
// token from another handle on the database, as `relay token revoke` in
// another process does, while two agents use it.
func TestRevokingATokenEndsItsSessionsAndItsNamesGoToTheNewOwner(t *testing.T) {
	for _, backend := range relaytest.Backends {
		for _, tr := range relaytest.Transports {
			t.Run(backend+"/"+tr, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				b := relaytest.NewBackend(t, backend)
				srv := relaytest.StartServer(t, b.Use)
				hc := relaytest.ProviderClient(t, srv)
				leaked := relaytest.CreateToken(t, srv, "leaky", "leaky-too")
				oldApp, oldURL := newRecorder(t)
				var stopped []<-chan error
				for _, name := range []string{"leaky", "leaky-too"} {
					a, errc := relaytest.StartAgent(t, relaytest.AgentConfig(srv, tr, leaked, name, oldURL.URL))
					select {
					case <-a.Ready():
					case err := <-errc:
						t.Fatalf("agent for %s: %v", name, err)
					}
					stopped = append(stopped, errc)
				}
				deliver := func(body string) {
					t.Helper()
					// 202 when it beats the session's registration, which
					// follows the Welcome: the drainer hands it over then.
					if resp, _ := relaytest.Post(t, hc, relaytest.TunnelURL(srv, "leaky", "/"), body); resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
						t.Fatalf("delivery %s: %d", body, resp.StatusCode)
					}
				}
				deliver(`"before"`)
				oldApp.wait(t, 1)

				other := b.Open(t)
				tok, err := other.Authenticate(ctx, leaked)
				if err != nil {
					t.Fatal(err)
				}
				if err := other.RevokeToken(ctx, tok.ID); err != nil {
					t.Fatal(err)
				}
				for i, errc := range stopped {
					select {
					case err := <-errc:
						var ga *protocol.GoAwayError
						if !errors.As(err, &ga) || ga.GoAway.Reason != "revoked" {
							t.Fatalf("agent %d stopped with %v, want a GoAway for revoked", i, err)
						}
					case <-ctx.Done():
						t.Fatalf("agent %d of the revoked token is still connected", i)
					}
				}

				_, fresh, err := other.CreateToken(ctx, "leaky")
				if err != nil {
					t.Fatal(err)
				}
				newApp, newURL := newRecorder(t)
				relaytest.RunAgent(t, relaytest.AgentConfig(srv, tr, fresh, "leaky", newURL.URL))
				deliver(`"for the new owner"`)
				if got := newApp.wait(t, 1); !slices.Equal(got, []string{`"for the new owner"`}) {
					t.Fatalf("the new owner's app got %q", got)
				}
				if got := oldApp.snapshot(); !slices.Equal(got, []string{`"before"`}) {
					t.Fatalf("the revoked agent's app got %q", got)
				}
			})
		}
	}
}
