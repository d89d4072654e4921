package server_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/protocol"
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

// goroutinesIn counts this process's goroutines with fn on their stack.
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), fn+"(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

func (r *recorder) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.bodies...)
}

func TestOfflineDeliveriesAreQueuedAndHandedOverInOrder(t *testing.T) {
	for _, backend := range relaytest.Backends {
		for _, tr := range relaytest.Transports {
			t.Run(backend+"/"+tr, func(t *testing.T) { testQueuedInOrder(t, relaytest.NewBackend(t, backend), tr) })
		}
	}
}

func testQueuedInOrder(t *testing.T, b relaytest.Backend, tr string) {
	srv := relaytest.StartServer(t, b.Use)
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
	srv = relaytest.StartServer(t, b.Use, func(c *server.Config) { c.Listen = addr })

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
	// The drainer ends with the queue: an idle tunnel holds no goroutine
	// for it (with a shared database a timer looks again now and then).
	relaytest.WaitFor(t, "the queue's drainer to end", func() bool {
		return goroutinesIn("server.(*Server).drainQueue") == 0
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
}

func TestQueuedDeliveryStaysUntilTheLocalAppAnswers(t *testing.T) {
	// One failure would dead-letter it; an app that is not running is no
	// failure of the delivery.
	srv := relaytest.StartServer(t, func(c *server.Config) { c.QueueMaxAttempts = 1 })
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
	relaytest.WaitFor(t, "two failed hand-over attempts", func() bool {
		log, _ := srv.Store().DeliveryLog(context.Background(), "later", 10)
		q, _ := srv.Store().NextQueued(context.Background(), "later")
		return len(log) == 1 && q != nil && q.Attempts > 1 && q.Failures == 0
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

func TestAQueuedDeliveryTheAppFailsOnIsDeadLetteredAndTheQueueMovesOn(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			logs := &relaytest.Buffer{}
			srv := relaytest.StartServer(t, func(c *server.Config) {
				c.QueueMaxAttempts = 2
				c.Logger = slog.New(slog.NewTextHandler(logs, nil))
				c.MetricsListen = "127.0.0.1:0"
			})
			tok := relaytest.CreateToken(t, srv, "poison")
			hc := relaytest.ProviderClient(t, srv)
			var ids []string
			for _, path := range []string{"/poison", "/after-1", "/after-2"} {
				resp, m := relaytest.Post(t, hc, relaytest.TunnelURL(srv, "poison", path), `{}`)
				if resp.StatusCode != http.StatusAccepted {
					t.Fatalf("%s while offline: %d", path, resp.StatusCode)
				}
				ids = append(ids, m["id"].(string))
			}
			// The app hangs on the poison until the agent gives up on it.
			var poisoned atomic.Int32
			got := make(chan string, 10)
			release := make(chan struct{})
			app := relaytest.App(t, func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				if r.URL.Path == "/poison" {
					poisoned.Add(1)
					select {
					case <-r.Context().Done():
					case <-release:
					}
					return
				}
				got <- r.URL.Path
			})
			t.Cleanup(func() { close(release) }) // before the app closes
			cfg := relaytest.AgentConfig(srv, tr, tok, "poison", app)
			cfg.Timeout = 200 * time.Millisecond
			relaytest.RunAgent(t, cfg)
			for _, want := range []string{"/after-1", "/after-2"} {
				select {
				case path := <-got:
					if path != want {
						t.Fatalf("the app got %s, want %s", path, want)
					}
				case <-time.After(60 * time.Second):
					t.Fatalf("%s never arrived: the poison still blocks the queue (tried %d times)", want, poisoned.Load())
				}
			}
			if n := poisoned.Load(); n != 2 {
				t.Fatalf("the poison was tried %d times, want QueueMaxAttempts = 2", n)
			}
			lg, err := srv.Store().DeliveryLog(context.Background(), "poison", 10)
			if err != nil || len(lg) != 3 {
				t.Fatalf("log: %+v %v", lg, err)
			}
			dead := lg[2]
			if dead.DeliveryID != ids[0] || dead.Outcome != "dead_lettered" || dead.Status != http.StatusGatewayTimeout ||
				dead.Attempts != 2 || !strings.Contains(dead.Error, "local_app_timeout") {
				t.Fatalf("the poison's log line: %+v", dead)
			}
			relaytest.WaitFor(t, "the queue to empty", func() bool {
				n, _ := srv.Store().QueueLen(context.Background(), "poison")
				return n == 0
			})
			if !strings.Contains(logs.String(), "dead-lettered") || !strings.Contains(logs.String(), ids[0]) {
				t.Fatalf("the server log does not say it dead-lettered %s:\n%s", ids[0], logs)
			}
			waitMetric(t, srv, "relay_queue_dead_letters_total", map[string]string{"tunnel": "poison"}, 1)
		})
	}
}

// blockedBody sends head, then blocks until the test ends.
type blockedBody struct {
	head  []byte
	block chan struct{}
}

func (b *blockedBody) Read(p []byte) (int, error) {
	if len(b.head) == 0 {
		<-b.block
		return 0, io.ErrUnexpectedEOF
	}
	n := copy(p, b.head)
	b.head = b.head[n:]
	return n, nil
}

func TestAFullQueueRefusesBeforeReadingTheBody(t *testing.T) {
	srv := relaytest.StartServer(t, func(c *server.Config) { c.QueueMaxCount = 1 })
	relaytest.CreateToken(t, srv, "full")
	hc := relaytest.ProviderClient(t, srv)
	if resp, _ := relaytest.Post(t, hc, relaytest.TunnelURL(srv, "full", "/"), `{}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("first delivery: %d", resp.StatusCode)
	}
	body := &blockedBody{head: make([]byte, 1<<10), block: make(chan struct{})}
	var unblock sync.Once
	t.Cleanup(func() { unblock.Do(func() { close(body.block) }) })
	req, _ := http.NewRequest("POST", relaytest.TunnelURL(srv, "full", "/big"), body)
	req.ContentLength = 32 << 20
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	// The answer came while the sender still blocks after 1 KiB of 32 MiB.
	unblock.Do(func() { close(body.block) })
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(protocol.HeaderError) != "queue_full" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("got %d %s, want 503 queue_full with Retry-After while the body is still unsent", resp.StatusCode, resp.Header.Get(protocol.HeaderError))
	}
}

func TestASlowOfflineUploadIsCut(t *testing.T) {
	srv := relaytest.StartServer(t, func(c *server.Config) { c.BodyTimeout = 200 * time.Millisecond })
	relaytest.CreateToken(t, srv, "slowpoke")
	pem, err := os.ReadFile(srv.DevCAPath())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	host := strings.TrimPrefix(relaytest.TunnelURL(srv, "slowpoke", ""), "https://")
	conn, err := tls.Dial("tcp", srv.Addr(), &tls.Config{ServerName: "slowpoke." + srv.Domain(), RootCAs: roots, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Headers and one byte of a thousand, then silence.
	fmt.Fprintf(conn, "POST /stalled HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{", host)
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled upload: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout || resp.Header.Get(protocol.HeaderError) != "body_timeout" {
		t.Fatalf("got %d %s, want 408 body_timeout", resp.StatusCode, resp.Header.Get(protocol.HeaderError))
	}
	if n, _ := srv.Store().QueueLen(context.Background(), "slowpoke"); n != 0 {
		t.Fatalf("the cut upload was queued (%d)", n)
	}
	// Whoever sends at a normal pace is still served.
	hc := relaytest.ProviderClient(t, srv)
	if resp, _ := relaytest.Post(t, hc, relaytest.TunnelURL(srv, "slowpoke", "/"), `{}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("a normal delivery after the cut: %d", resp.StatusCode)
	}
}

// TestConcurrentLargeOfflineUploadsStayInBoundedMemory sends what took a
// relay from 31 to 610 MiB: eight 32 MiB bodies at once to an offline
// name. They are streamed to the store a chunk at a time.
func TestConcurrentLargeOfflineUploadsStayInBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 256 MiB")
	}
	const n, size = 8, 32 << 20
	srv := relaytest.StartServer(t)
	relaytest.CreateToken(t, srv, "bulk")
	// HTTP/1.1, a connection per upload, as curl --http1.1 sent them.
	tr := relaytest.ProviderClient(t, srv).Transport.(*http.Transport).Clone()
	tr.ForceAttemptHTTP2 = false
	tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Minute}

	runtime.GC()
	heap0, rss0 := heapInUse(), relaytest.RSS()
	peakHeap, peakRSS := relaytest.WatchHeap(t), relaytest.WatchRSS(t)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", relaytest.TunnelURL(srv, "bulk", fmt.Sprintf("/upload/%d", i)), &relaytest.PatternReader{N: size})
			req.ContentLength = size
			resp, err := hc.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				t.Errorf("upload %d: %d", i, resp.StatusCode)
			}
		})
	}
	wg.Wait()
	heap, rss := peakHeap(), peakRSS()
	t.Logf("heap in use %d -> peak %d MiB; RSS %d -> peak %d MiB (this process: server and senders)",
		heap0>>20, heap>>20, rss0>>20, rss>>20)
	if grew := int64(heap) - int64(heap0); grew > 100<<20 {
		t.Errorf("heap grew by %d MiB, want under 100", grew>>20)
	}
	if grew := int64(rss) - int64(rss0); !raceEnabled && grew > 100<<20 {
		t.Errorf("RSS grew by %d MiB, want under 100", grew>>20)
	}
	if t.Failed() {
		return
	}
	if got, _ := srv.Store().QueueLen(context.Background(), "bulk"); got != n {
		t.Fatalf("%d queued, want %d", got, n)
	}
	q, err := srv.Store().NextQueued(context.Background(), "bulk")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, srv.Store().QueuedBody(context.Background(), q)); err != nil || [32]byte(h.Sum(nil)) != relaytest.PatternSum(size) {
		t.Fatalf("a stored body differs from what was sent: %v", err)
	}
}

func heapInUse() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
