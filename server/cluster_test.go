package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/protocol"
	"github.com/relaytunnel/relay/server"
)

// clusterAgent connects an agent for name to the cluster through its
// first node, with its console in the returned buffer.
func clusterAgent(t *testing.T, c *relaytest.Cluster, transport, token, name, target string) (*relaytest.Buffer, func()) {
	t.Helper()
	cfg := relaytest.AgentConfig(c.Node(0), transport, token, name, target)
	// The first connection must succeed, and a QUIC handshake under -race
	// on a loaded machine can take more than the harness's second.
	cfg.QUICTimeout = 15 * time.Second
	console := &relaytest.Buffer{}
	cfg.Console = console
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent console:\n%s", console.String())
		}
	})
	_, stop := relaytest.ConnectAgent(t, cfg)
	return console, stop
}

func TestAnAgentServesItsTunnelThroughEveryNodeOfACluster(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			c := relaytest.StartCluster(t, 3)
			app := relaytest.EchoApp(t)
			console, _ := clusterAgent(t, c, tr, relaytest.CreateToken(t, c.Node(0), "everywhere"), "everywhere", app.URL)
			if want := "to 3 relay nodes (n1, n2, n3): https://everywhere.localhost"; !strings.Contains(console.String(), want) {
				t.Fatalf("console lacks %q:\n%s", want, console.String())
			}
			for i := range c.Len() {
				srv := c.Node(i)
				resp, body := relaytest.Post(t, relaytest.ProviderClient(t, srv), relaytest.TunnelURL(srv, "everywhere", "/via/"+relaytest.NodeName(i)), `{}`)
				if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-App") != "yes" || body["uri"] != "/via/"+relaytest.NodeName(i) {
					t.Fatalf("delivery through %s: %d %v, want the app's 201 at once (a local session on every node)", relaytest.NodeName(i), resp.StatusCode, body)
				}
			}

			// A node that leaves is dropped, and the others keep serving.
			c.Stop(2)
			relaytest.WaitFor(t, "the agent to say n3 left", func() bool {
				return strings.Contains(console.String(), "relay node n3 left the cluster; connected to 2 of 2 (n1, n2)")
			})
			for i := range 2 {
				srv := c.Node(i)
				resp, _ := relaytest.Post(t, relaytest.ProviderClient(t, srv), relaytest.TunnelURL(srv, "everywhere", "/"), `{}`)
				if resp.StatusCode != http.StatusCreated {
					t.Fatalf("delivery through %s after n3 left: %d", relaytest.NodeName(i), resp.StatusCode)
				}
			}

			// A node that joins (n3 restarted) is dialled.
			c.Start(2)
			relaytest.WaitFor(t, "the agent to connect to n3 again", func() bool {
				return strings.Contains(console.String(), "relay node n3: connected via")
			})
			srv := c.Node(2)
			resp, _ := relaytest.Post(t, relaytest.ProviderClient(t, srv), relaytest.TunnelURL(srv, "everywhere", "/"), `{}`)
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("delivery through n3 after it came back: %d", resp.StatusCode)
			}
		})
	}
}

func TestDeliveriesQueuedOnAnyNodeReachTheAppInOrderWhenTheAgentReturns(t *testing.T) {
	c := relaytest.StartCluster(t, 3)
	var mu sync.Mutex
	var got []string
	app := relaytest.App(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.URL.Path)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	token := relaytest.CreateToken(t, c.Node(0), "later")
	_, stop := clusterAgent(t, c, "quic", token, "later", app)
	stop()

	const n = 30
	var want []string
	for i := range n {
		srv := c.Node(i % c.Len())
		path := fmt.Sprintf("/%02d", i)
		want = append(want, path)
		resp, body := relaytest.Post(t, relaytest.ProviderClient(t, srv), relaytest.TunnelURL(srv, "later", path), `{}`)
		if resp.StatusCode != http.StatusAccepted || body["queued"] != true {
			t.Fatalf("delivery %d through %s with the agent away: %d %v, want 202 queued", i, relaytest.NodeName(i%c.Len()), resp.StatusCode, body)
		}
	}
	clusterAgent(t, c, "quic", token, "later", app)
	relaytest.WaitFor(t, "every queued delivery to reach the app", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= n
	})
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, want) {
		t.Fatalf("the app got %v, want %v (arrival order, once each)", got, want)
	}
}

// rawSession is a session to srv that has sent its Hello and been
// welcomed, and answers nothing: a revocation must end it from the server.
func rawSession(t *testing.T, srv *server.Server, token, name string) protocol.Stream {
	t.Helper()
	pem, err := os.ReadFile(srv.DevCAPath())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sess, err := protocol.DialTCP(ctx, srv.Addr(), &tls.Config{ServerName: "localhost", RootCAs: pool}, protocol.LivenessFor(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	ctrl, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := protocol.WriteMessage(ctrl, protocol.FrameHello, protocol.Hello{Version: protocol.Version, Token: token, Name: name}); err != nil {
		t.Fatal(err)
	}
	if _, err := protocol.ReadHelloReply(ctrl); err != nil {
		t.Fatal(err)
	}
	return ctrl
}

// goAway reads ctrl until the server's GoAway, and returns its reason.
func goAway(ctrl protocol.Stream) string {
	ctrl.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		typ, p, err := protocol.ReadFrame(ctrl)
		if err != nil {
			return "no GoAway: " + err.Error()
		}
		if typ == protocol.FrameGoAway {
			var g protocol.GoAway
			protocol.DecodeMessage(typ, p, &g)
			return g.Reason
		}
	}
}

func TestARevocationOnOneNodeEndsTheTokensSessionsOnEveryNode(t *testing.T) {
	c := relaytest.StartCluster(t, 3)
	token := relaytest.CreateToken(t, c.Node(0), "doomed")
	var ctrls []protocol.Stream
	for i := range c.Len() {
		ctrls = append(ctrls, rawSession(t, c.Node(i), token, "doomed"))
	}
	toks, err := c.Node(1).Store().ListTokens(context.Background())
	if err != nil || len(toks) != 1 {
		t.Fatalf("tokens: %v %v", toks, err)
	}
	if err := c.Node(1).Store().RevokeToken(context.Background(), toks[0].ID); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i, ctrl := range ctrls {
		wg.Go(func() {
			if got := goAway(ctrl); got != server.GoAwayRevoked {
				t.Errorf("the session on %s ended with %q, want a GoAway %q", relaytest.NodeName(i), got, server.GoAwayRevoked)
			}
		})
	}
	wg.Wait()
}

// TestADeliveryQueuedOnANodeWithoutTheTunnelWakesTheNodeThatHasIt: no
// drainer polls, so only the queue's notification (WatchQueued) can move
// a delivery stored by one node to the agent's session on another.
func TestADeliveryQueuedOnANodeWithoutTheTunnelWakesTheNodeThatHasIt(t *testing.T) {
	// The agent cannot reach n2: nothing answers where n2 says it is.
	unreachable := fmt.Sprintf("127.0.0.1:%d", relaytest.FreePort(t))
	c := relaytest.StartCluster(t, 2, func(cfg *server.Config) {
		if cfg.NodeName == relaytest.NodeName(1) {
			cfg.Advertise = unreachable
		}
	})
	got := make(chan string, 10)
	app := relaytest.App(t, func(w http.ResponseWriter, r *http.Request) {
		got <- r.URL.Path
		w.WriteHeader(http.StatusNoContent)
	})
	clusterAgent(t, c, "tcp", relaytest.CreateToken(t, c.Node(0), "across"), "across", app)
	relaytest.WaitFor(t, "n1 to hold the tunnel and its drainer to find the queue empty", func() bool {
		return c.Node(0).Tunnels() == 1 && c.Node(1).Tunnels() == 0 && !c.Node(0).Draining("across")
	})
	for i := range 3 {
		srv := c.Node(1)
		path := fmt.Sprintf("/%d", i)
		resp, body := relaytest.Post(t, relaytest.ProviderClient(t, srv), relaytest.TunnelURL(srv, "across", path), `{}`)
		if resp.StatusCode != http.StatusAccepted || body["queued"] != true {
			t.Fatalf("delivery through n2, which has no session: %d %v, want 202 queued", resp.StatusCode, body)
		}
		select {
		case p := <-got:
			if p != path {
				t.Fatalf("the app got %s, want %s", p, path)
			}
		case <-time.After(time.Minute):
			t.Fatalf("delivery %s, queued on n2, never reached the agent's session on n1", path)
		}
	}
}

// TestAnAgentCountsItsReconnectionsToANodeOfACluster: a session to one
// node lost and established again is a reconnection in the agent's
// metrics, as it is with a single server.
func TestAnAgentCountsItsReconnectionsToANodeOfACluster(t *testing.T) {
	var gate *relaytest.TCPGate // between the agent and n2
	c := relaytest.StartCluster(t, 2, func(cfg *server.Config) {
		cfg.Heartbeat = time.Second // a silent n2 is noticed in seconds
		if cfg.NodeName == relaytest.NodeName(1) {
			gate = relaytest.NewTCPGate(t, cfg.Listen)
			cfg.Advertise = gate.Addr()
		}
	})
	cfg := relaytest.AgentConfig(c.Node(0), "tcp", relaytest.CreateToken(t, c.Node(0), "counted"), "counted", relaytest.EchoApp(t).URL)
	console := &relaytest.Buffer{}
	cfg.Console = console
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent console:\n%s", console.String())
		}
	})
	a, _ := relaytest.ConnectAgent(t, cfg)
	relaytest.WaitFor(t, "the agent to have a session on both nodes", func() bool { return len(a.Nodes()) == 2 })
	metrics := httptest.NewServer(a.MetricsHandler())
	defer metrics.Close()
	if got := relaytest.Scrape(t, metrics.URL).Value("relay_agent_reconnects_total", nil); got != 0 {
		t.Fatalf("relay_agent_reconnects_total = %v before any session was lost", got)
	}

	gate.Open.Store(false)
	relaytest.WaitFor(t, "the agent to lose n2", func() bool { return strings.Contains(console.String(), "relay node n2: connection lost") })
	connected := strings.Count(console.String(), "relay node n2: connected via")
	gate.Open.Store(true)
	relaytest.WaitFor(t, "the agent to connect to n2 again", func() bool {
		return strings.Count(console.String(), "relay node n2: connected via") > connected
	})
	if got := relaytest.Scrape(t, metrics.URL).Value("relay_agent_reconnects_total", nil); got < 1 {
		t.Fatalf("relay_agent_reconnects_total = %v after n2's session came back, want at least 1", got)
	}
}
