package server_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/protocol"
	"github.com/relaytunnel/relay/server"
)

func TestAgentIsRefused(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t)
			app := relaytest.EchoApp(t)
			owner := relaytest.CreateToken(t, srv, "taken")
			other := relaytest.CreateToken(t, srv, "mine")
			tests := []struct {
				name    string
				token   string
				agent   string
				wantErr error
				wantMsg string
			}{
				{"a bad token is refused with its message", "relay_not_a_real_token", "taken", protocol.ErrBadToken, "unknown or revoked"},
				{"a second token cannot take a name it does not own", other, "taken", protocol.ErrNameTaken, "reserved by another token"},
				{"a token cannot serve a free name it was not given", other, "free", protocol.ErrNameNotAllowed, "relay token create --name free"},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					a, err := client.New(relaytest.AgentConfig(srv, tr, tt.token, tt.agent, app.URL))
					if err != nil {
						t.Fatal(err)
					}
					ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
					defer cancel()
					err = a.Run(ctx)
					if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg) {
						t.Fatalf("Run() = %v, want %v mentioning %q", err, tt.wantErr, tt.wantMsg)
					}
				})
			}
			// The owner still gets its name after the refusals.
			relaytest.RunAgent(t, relaytest.AgentConfig(srv, tr, owner, "taken", app.URL))
		})
	}
}

func TestSameTokenReplacesAStaleSession(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t)
			app := relaytest.EchoApp(t)
			tok := relaytest.CreateToken(t, srv, "laptop")
			old, oldErr := relaytest.StartAgent(t, relaytest.AgentConfig(srv, tr, tok, "laptop", app.URL))
			<-old.Ready()
			fresh := relaytest.RunAgent(t, relaytest.AgentConfig(srv, tr, tok, "laptop", app.URL))
			if fresh.Welcome().SessionID == old.Welcome().SessionID {
				t.Fatal("the new agent did not get a session of its own")
			}
			select {
			case err := <-oldErr:
				if !errors.Is(err, client.ErrReplaced) {
					t.Fatalf("old agent stopped with %v, want ErrReplaced", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the replaced agent did not stop")
			}
			resp, err := relaytest.ProviderClient(t, srv).Get(relaytest.TunnelURL(srv, "laptop", "/"))
			if err != nil || resp.StatusCode != http.StatusCreated {
				t.Fatalf("delivery to the new session: %v %v", resp, err)
			}
			resp.Body.Close()
		})
	}
}

func TestSlowClientDoesNotBlockOthers(t *testing.T) {
	srv := relaytest.StartServer(t, func(c *server.Config) { c.ReadHeaderTimeout = 500 * time.Millisecond })
	app := relaytest.EchoApp(t)
	relaytest.RunAgent(t, relaytest.AgentConfig(srv, "tcp", relaytest.CreateToken(t, srv, "hooks"), "hooks", app.URL))
	hc := relaytest.ProviderClient(t, srv)

	// A slowloris: TLS done, then half a request line and nothing more.
	conf := hc.Transport.(*http.Transport).TLSClientConfig.Clone()
	conf.ServerName = "hooks.localhost"
	conf.NextProtos = []string{"http/1.1"}
	slow, err := tls.Dial("tcp", srv.Addr(), conf)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	io.WriteString(slow, "POST /webhooks HTTP/1.1\r\nHost: hooks.localhost\r\n")

	for i := range 20 {
		resp, err := hc.Post(relaytest.TunnelURL(srv, "hooks", "/"), "text/plain", strings.NewReader("fast"))
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("request %d while a slow client hangs: %v %v", i, resp, err)
		}
		resp.Body.Close()
	}
	// The server hangs up on the slow client once its header time is up.
	slow.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = bufio.NewReader(slow).ReadString('\n')
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server never closed the slow connection")
	}
}

func TestShutdownLetsInFlightDeliveriesFinish(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t)
			arrived := make(chan struct{})
			release := make(chan struct{})
			app := relaytest.App(t, func(w http.ResponseWriter, r *http.Request) {
				close(arrived)
				<-release
				io.WriteString(w, "finished")
			})
			relaytest.RunAgent(t, relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, "drain"), "drain", app))
			hc := relaytest.ProviderClient(t, srv)
			got := make(chan string, 1)
			go func() {
				resp, err := hc.Get(relaytest.TunnelURL(srv, "drain", "/"))
				if err != nil {
					got <- err.Error()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				got <- string(b)
			}()
			<-arrived
			shut := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				shut <- srv.Shutdown(ctx)
			}()
			select {
			case err := <-shut:
				t.Fatalf("Shutdown returned (%v) while a delivery was in flight", err)
			case <-time.After(200 * time.Millisecond):
			}
			close(release)
			if b := <-got; b != "finished" {
				t.Fatalf("in-flight delivery got %q", b)
			}
			if err := <-shut; err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
		})
	}
}
