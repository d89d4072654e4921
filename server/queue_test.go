package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/server"
)

// recorder is a local app that notes the bodies it received, in order.
type recorder struct {
	mu     sync.Mutex
	bodies []string
	got    chan struct{}
}

func newRecorder(t testing.TB) (*recorder, *httptest.Server) {
	rec := &recorder{got: make(chan struct{}, 1000)}
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.bodies = append(rec.bodies, string(b))
		rec.mu.Unlock()
		rec.got <- struct{}{}
	}))
	t.Cleanup(app.Close)
	return rec, app
}

func (r *recorder) wait(t testing.TB, n int) []string {
	t.Helper()
	for range n {
		select {
		case <-r.got:
		case <-time.After(15 * time.Second):
			t.Fatalf("the app received %d of %d deliveries", len(r.snapshot()), n)
		}
	}
	return r.snapshot()
}

func (r *recorder) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.bodies...)
}

func TestOfflineDeliveriesAreQueuedAndHandedOverInOrder(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			dir := t.TempDir()
			srv := relaytest.StartServerAt(t, dir, "127.0.0.1:0")
			addr := srv.Addr()
			tok := relaytest.CreateToken(t, srv, "sleepy")
			hc := relaytest.ProviderClient(t, srv)
			const n = 20
			for i := range n {
				resp, m := relaytest.Post(t, hc, relaytest.TunnelURL(srv, "sleepy", "/hook"), fmt.Sprintf(`{"n":%d}`, i))
				if resp.StatusCode != http.StatusAccepted || m["queued"] != true || m["id"] == "" {
					t.Fatalf("delivery %d while offline: %d %v", i, resp.StatusCode, m)
				}
			}
			// The queue survives a restart of the relay server.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			srv.Shutdown(ctx)
			cancel()
			srv = relaytest.StartServerAt(t, dir, addr)

			rec, app := newRecorder(t)
			relaytest.RunAgent(t, relaytest.AgentConfig(srv, tr, tok, "sleepy", app.URL))
			got := rec.wait(t, n)
			for i, b := range got {
				if want := fmt.Sprintf(`{"n":%d}`, i); b != want {
					t.Fatalf("delivery %d reached the app as %q, want %q (arrival order)", i, b, want)
				}
			}
			relaytest.WaitFor(t, "the queue to empty", func() bool {
				n, _ := srv.Store().QueueLen(context.Background(), "sleepy")
				return n == 0
			})
			// The agent's token reads the log of what happened while offline.
			req, _ := http.NewRequest("GET", "https://"+srv.Domain()+"/api/log?name=sleepy", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var lg struct {
				Queued  int
				Entries []struct {
					Outcome string
					Status  int
					Queued  bool
				}
			}
			json.NewDecoder(resp.Body).Decode(&lg)
			resp.Body.Close()
			if len(lg.Entries) != n || lg.Entries[0].Outcome != "delivered" || lg.Entries[0].Status != 200 || lg.Queued != 0 {
				t.Fatalf("delivery log: %d %+v", resp.StatusCode, lg)
			}
			req.Header.Set("Authorization", "Bearer relay_wrong")
			if resp, err := hc.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("log with a bad token: %v %v", resp, err)
			}
		})
	}
}

func TestQueuedDeliveryStaysUntilTheLocalAppAnswers(t *testing.T) {
	srv := relaytest.StartServer(t)
	tok := relaytest.CreateToken(t, srv, "later")
	hc := relaytest.ProviderClient(t, srv)
	if resp, _ := relaytest.Post(t, hc, relaytest.TunnelURL(srv, "later", "/"), `{"id":"evt_1"}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d", resp.StatusCode)
	}
	// The agent connects while the local app is down: the agent answers
	// 502 itself, which is not the app's answer, so nothing is acked.
	down := closedPort(t)
	a, _ := relaytest.StartAgent(t, relaytest.AgentConfig(srv, "tcp", tok, "later", down))
	<-a.Ready()
	relaytest.WaitFor(t, "a failed hand-over attempt", func() bool {
		log, _ := srv.Store().DeliveryLog(context.Background(), "later", 10)
		q, _ := srv.Store().NextQueued(context.Background(), "later")
		return len(log) == 1 && q != nil && q.Attempts > 0
	})
	// Now the app is up (a second agent for the same token replaces the
	// first, pointing at a live app): the delivery arrives.
	rec, app := newRecorder(t)
	relaytest.RunAgent(t, relaytest.AgentConfig(srv, "tcp", tok, "later", app.URL))
	if got := rec.wait(t, 1); got[0] != `{"id":"evt_1"}` {
		t.Fatalf("app got %q", got)
	}
}

func TestQueueRefusals(t *testing.T) {
	srv := relaytest.StartServer(t, func(c *server.Config) { c.QueueMaxCount = 2 })
	relaytest.CreateToken(t, srv, "full")
	relaytest.CreateToken(t, srv, "slack")
	hc := relaytest.ProviderClient(t, srv)
	tests := []struct {
		name, host, body string
		want             int
		wantErr          string
	}{
		{"the first delivery is queued", "full", `{"a":1}`, 202, ""},
		{"the second delivery is queued", "full", `{"a":2}`, 202, ""},
		{"a delivery beyond the count limit is 503 queue_full", "full", `{"a":3}`, 503, "queue_full"},
		{"a Slack url_verification handshake is never queued", "slack", `{"type":"url_verification","challenge":"x"}`, 503, "tunnel_offline"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, m := relaytest.Post(t, hc, relaytest.TunnelURL(srv, tt.host, "/"), tt.body)
			if resp.StatusCode != tt.want || (tt.wantErr != "" && m["error"] != tt.wantErr) {
				t.Fatalf("got %d %v", resp.StatusCode, m)
			}
			if tt.want == 503 && resp.Header.Get("Retry-After") == "" {
				t.Fatal("503 without Retry-After")
			}
		})
	}
}
