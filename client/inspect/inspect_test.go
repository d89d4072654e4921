package inspect_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/client/inspect"
	"github.com/relaytunnel/relay/client/record"
)

// inspector serves an inspector over a fresh store on 127.0.0.1:0 and
// returns its base URL; it shuts down when the test ends.
func inspector(t *testing.T, st *record.Store, opt inspect.Options) (*inspect.Server, string) {
	t.Helper()
	ins := inspect.New(st, opt)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ins.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("inspector shutdown: %v", err)
		}
	})
	return ins, "http://" + ln.Addr().String()
}

func newStore(t *testing.T) *record.Store {
	t.Helper()
	st, err := record.Open(context.Background(), t.TempDir(), record.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func addDelivery(t *testing.T, st *record.Store, path string, status int, prov string) int64 {
	t.Helper()
	now := time.Now()
	id, err := st.Add(context.Background(), &record.Delivery{
		Kind: record.KindLive, Outcome: record.OutcomeForwarded, Transport: "quic", Target: "http://localhost:3000",
		Method: "POST", Host: "t.example", Path: path,
		RequestHeader: http.Header{"Content-Type": {"application/json"}},
		RequestBody:   record.Body{Data: []byte(`{"id":"evt_1","type":"charge.succeeded"}`), Size: 40},
		Status:        status, Provider: prov,
		ReceivedAt: now, StartedAt: now, AnsweredAt: now.Add(time.Millisecond), FinishedAt: now.Add(2 * time.Millisecond),
	})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func do(t *testing.T, method, url, host string, h http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAPI(t *testing.T) {
	st := newStore(t)
	first := addDelivery(t, st, "/stripe", 200, "stripe")
	second := addDelivery(t, st, "/github", 500, "github")
	replayed := map[int64]bool{}
	_, base := inspector(t, st, inspect.Options{Replay: func(ctx context.Context, id int64, _ *client.ReplayEdit) (*record.Delivery, error) {
		if id > second {
			return nil, fmt.Errorf("delivery %d: %w", id, record.ErrNotFound)
		}
		replayed[id] = true
		return st.Get(ctx, addDelivery(t, st, "/replayed", 200, ""))
	}})
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(base, "http://"))
	page := http.Header{"X-Relay-Inspector": {"1"}, "Origin": {base}, "Sec-Fetch-Site": {"same-origin"}}

	tests := []struct {
		name     string
		method   string
		path     string
		host     string
		header   http.Header
		want     int
		contains string
	}{
		{"the page is served", "GET", "/", "", nil, 200, "relay inspector"},
		{"the script is served", "GET", "/inspector.js", "", nil, 200, "textContent"},
		{"the list is newest first", "GET", "/api/requests", "", nil, 200, fmt.Sprintf(`[{"id":%d`, second)},
		{"the list filters by status class", "GET", "/api/requests?status=5xx", "", nil, 200, `"path":"/github"`},
		{"the list filters by provider", "GET", "/api/requests?provider=stripe", "", nil, 200, `"path":"/stripe"`},
		{"the list pages back", "GET", fmt.Sprintf("/api/requests?before=%d", second), "", nil, 200, fmt.Sprintf(`[{"id":%d`, first)},
		{"a bad filter is a 400", "GET", "/api/requests?status=7xx", "", nil, 400, "status"},
		{"one delivery comes with its body", "GET", fmt.Sprintf("/api/requests/%d", first), "", nil, 200, `"request_body":{"size":40`},
		{"an unknown delivery is a 404", "GET", "/api/requests/999", "", nil, 404, "not found"},
		{"an unknown endpoint is a 404", "GET", "/api/nothing", "", nil, 404, "no such"},
		{"localhost is a loopback name", "GET", "/api/requests", "localhost:" + port, nil, 200, "["},
		{"a rebound DNS name is refused", "GET", "/api/requests", "evil.example:" + port, nil, 403, "not a loopback name"},
		{"another site's page cannot read the API", "GET", "/api/requests?q=secret", "", http.Header{"Sec-Fetch-Site": {"cross-site"}}, 403, "cross-site"},
		{"another site may link to the page", "GET", "/", "", http.Header{"Sec-Fetch-Site": {"cross-site"}}, 200, "relay inspector"},
		{"the agent's info is served", "GET", "/api/info", "", nil, 200, "{"},
		{"a rebound DNS name cannot load the page", "GET", "/", "evil.example", nil, 403, "not a loopback name"},
		{"a rebound name cannot replay", "POST", fmt.Sprintf("/api/requests/%d/replay", first), "evil.example:" + port, page, 403, "loopback"},
		{"replay without the page's header is refused", "POST", fmt.Sprintf("/api/requests/%d/replay", first), "", nil, 403, "X-Relay-Inspector"},
		{"replay from another origin is refused", "POST", fmt.Sprintf("/api/requests/%d/replay", first), "",
			http.Header{"X-Relay-Inspector": {"1"}, "Origin": {"http://evil.example"}}, 403, "origin"},
		{"replay from another site is refused", "POST", fmt.Sprintf("/api/requests/%d/replay", first), "",
			http.Header{"X-Relay-Inspector": {"1"}, "Sec-Fetch-Site": {"cross-site"}}, 403, "cross-site"},
		{"replay of an unknown delivery is a 404", "POST", "/api/requests/999/replay", "", page, 404, "not found"},
		{"replay from the page works", "POST", fmt.Sprintf("/api/requests/%d/replay", first), "", page, 200, `{"id":`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := do(t, tt.method, base+tt.path, tt.host, tt.header)
			if code != tt.want || !strings.Contains(body, tt.contains) {
				t.Errorf("%s %s: %d %q; want %d containing %q", tt.method, tt.path, code, trunc(body), tt.want, tt.contains)
			}
		})
	}
	if len(replayed) != 1 || !replayed[first] {
		t.Errorf("replays that reached the agent: %v, want only %d", replayed, first)
	}
	code, _ := do(t, "GET", base+"/", "", nil)
	if code != 200 {
		t.Fatal(code)
	}
	resp, _ := http.Get(base + "/")
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("security headers: CSP %q, X-Frame-Options %q", csp, resp.Header.Get("X-Frame-Options"))
	}
}

func trunc(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

func TestServeRefusesANonLoopbackListener(t *testing.T) {
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	err = inspect.New(newStore(t), inspect.Options{}).Serve(context.Background(), ln)
	if !errors.Is(err, inspect.ErrNotLoopback) {
		t.Errorf("Serve on %s: %v, want ErrNotLoopback", ln.Addr(), err)
	}
}

// TestEventStreamCarriesNewDeliveriesAndEndsAtShutdown reads the SSE stream
// as the page does.
func TestEventStreamCarriesNewDeliveriesAndEndsAtShutdown(t *testing.T) {
	st := newStore(t)
	ins := inspect.New(st, inspect.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ins.Serve(ctx, ln) }()
	defer func() {
		cancel()
		<-served
	}()

	resp, err := http.Get("http://" + ln.Addr().String() + "/api/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	// The headers are out, so the stream is subscribed: Notify reaches it.
	ins.Notify(42)
	want := []string{"event: delivery", `data: {"id":42}`}
	got := 0
	timeout := time.After(10 * time.Second)
	for got < len(want) {
		select {
		case l := <-lines:
			if l == want[got] {
				got++
			}
		case <-timeout:
			t.Fatalf("the stream did not carry %q", want[got])
		}
	}
	cancel() // Serve shuts down: the open stream must end
	for {
		select {
		case _, ok := <-lines:
			if !ok {
				if err := <-served; err != nil {
					t.Errorf("shutdown with an open stream: %v", err)
				}
				served <- nil
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the event stream outlived the shutdown")
		}
	}
}

func TestListStaysOnePageWithTenThousandDeliveries(t *testing.T) {
	st := newStore(t)
	batch := make([]*record.Delivery, 0, 10000)
	now := time.Now()
	for i := range 10000 {
		batch = append(batch, &record.Delivery{Kind: record.KindLive, Outcome: record.OutcomeForwarded, Method: "POST",
			Path: fmt.Sprintf("/hook/%d", i), Status: 200, ReceivedAt: now, StartedAt: now, FinishedAt: now,
			RequestBody: record.Body{Data: []byte(strings.Repeat("x", 2000))}})
	}
	if err := st.AddBatch(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	_, base := inspector(t, st, inspect.Options{})
	start := time.Now()
	resp, err := http.Get(base + "/api/requests")
	if err != nil {
		t.Fatal(err)
	}
	var list []record.Summary
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	t.Logf("first page of 10,000 deliveries in %s", time.Since(start))
	if len(list) != 100 || list[0].Path != "/hook/9999" {
		t.Errorf("first page: %d rows starting %+v; want 100 starting with the newest", len(list), list[0])
	}
}

// TestShutdownDoesNotWaitForConnectionsThatSentNothing: a browser opens
// spare connections ahead of need; shutting down must not wait (five
// seconds, then an error) for one that never sent a request.
func TestShutdownDoesNotWaitForConnectionsThatSentNothing(t *testing.T) {
	ins := inspect.New(newStore(t), inspect.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ins.Serve(ctx, ln) }()
	spare, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer spare.Close()
	// A request answered on another connection: the server is serving,
	// and has accepted the spare one before it.
	resp, err := http.Get("http://" + ln.Addr().String() + "/api/info")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("shutdown with a connection that sent nothing: %v", err)
	}
	spare.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := spare.Read(make([]byte, 1)); err == nil {
		t.Fatal("the spare connection is still open after shutdown")
	}
}
