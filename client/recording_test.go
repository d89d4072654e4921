package client_test

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/client/record"
	"github.com/relaytunnel/relay/internal/provider"
	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/server"
)

// recordingAgent runs an agent that records into st and returns the ids
// of its recordings as they are written.
func recordingAgent(t *testing.T, cfg client.Config, st *record.Store) (*client.Agent, <-chan int64) {
	t.Helper()
	cfg.Store = st
	console := &relaytest.Buffer{}
	cfg.Console = console
	a, err := client.New(cfg)
	if err != nil {
		t.Fatalf("new agent: %v", err)
	}
	ids := make(chan int64, 100)
	a.OnRecorded = func(id int64) { ids <- id }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("agent console:\n%s", console.String())
		}
	})
	select {
	case <-a.Ready():
	case err := <-done:
		t.Fatalf("agent stopped before connecting: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not connect in 15s")
	}
	return a, ids
}

func openRecords(t *testing.T, opt record.Options) *record.Store {
	t.Helper()
	st, err := record.Open(context.Background(), t.TempDir(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// nextRecording waits for the agent's next recording and reads it back.
func nextRecording(t *testing.T, ids <-chan int64, st *record.Store) *record.Delivery {
	t.Helper()
	select {
	case id := <-ids:
		d, err := st.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		return d
	case <-time.After(15 * time.Second):
		t.Fatal("no recording within 15s")
		return nil
	}
}

// countingApp answers with the status its script gives for each call
// (the last one repeating) and counts the calls.
type countingApp struct {
	calls  atomic.Int64
	script []int
}

func (c *countingApp) start(t *testing.T) string {
	return relaytest.App(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		n := int(c.calls.Add(1))
		status := http.StatusOK
		if len(c.script) > 0 {
			status = c.script[min(n, len(c.script))-1]
		}
		w.Header().Set("X-Call", strings.Repeat("I", n))
		w.WriteHeader(status)
		io.WriteString(w, `{"ok":true}`)
	})
}

func signedStripe(t *testing.T, secret string) (http.Header, []byte) {
	t.Helper()
	s, err := provider.NewSample(provider.Stripe, "payment_intent.succeeded", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Sign(secret, time.Now()); err != nil {
		t.Fatal(err)
	}
	return s.Header, s.Body
}

func send(t *testing.T, hc *http.Client, url string, h http.Header, body []byte) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestEveryDeliveryIsRecordedWithProviderAndVerdict(t *testing.T) {
	const secret = "whsec_recorded"
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t)
			st := openRecords(t, record.Options{})
			cfg := relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, "rec"), "rec", relaytest.EchoApp(t).URL)
			cfg.Secrets = map[string]string{provider.Stripe: secret, provider.GitLab: "gitlab-token-secret"}
			_, ids := recordingAgent(t, cfg, st)
			hc := relaytest.ProviderClient(t, srv)

			h, body := signedStripe(t, secret)
			if resp := send(t, hc, relaytest.TunnelURL(srv, "rec", "/stripe?live=1"), h, body); resp.StatusCode != http.StatusCreated {
				t.Fatalf("status %d, want the app's 201", resp.StatusCode)
			}
			d := nextRecording(t, ids, st)
			checks := []struct {
				what      string
				got, want any
			}{
				{"method", d.Method, "POST"},
				{"path", d.Path, "/stripe"},
				{"query", d.Query, "live=1"},
				{"request body", string(d.RequestBody.Data), string(body)},
				{"status", d.Status, http.StatusCreated},
				{"app's header", d.ResponseHeader.Get("X-App"), "yes"},
				{"transport", d.Transport, tr},
				{"kind", d.Kind, record.KindLive},
				{"outcome", d.Outcome, record.OutcomeForwarded},
				{"provider", d.Provider, provider.Stripe},
				{"event", d.Event, "payment_intent.succeeded"},
				{"signature", d.Signature, "valid"},
				{"tunnel", d.Tunnel, "rec"},
				{"response body recorded", d.ResponseBody.Size > 0 && len(d.ResponseBody.Data) > 0, true},
				{"relay id", strings.HasPrefix(d.RelayID, "dlv_"), true},
				{"timings in order", !d.ReceivedAt.After(d.StartedAt) && d.StartedAt.Before(d.AnsweredAt) && !d.AnsweredAt.After(d.FinishedAt), true},
			}
			for _, c := range checks {
				if c.got != c.want {
					t.Errorf("%s: recorded %v, want %v", c.what, c.got, c.want)
				}
			}
			if d.EventID == "" {
				t.Error("no event id recorded")
			}

			// A tampered body is recorded as invalid, with the reason.
			send(t, hc, relaytest.TunnelURL(srv, "rec", "/stripe"), h, append(body, ' '))
			if d := nextRecording(t, ids, st); d.Signature != "invalid" || d.SignatureReason == "" {
				t.Errorf("tampered delivery recorded as %q (%q), want invalid with a reason", d.Signature, d.SignatureReason)
			}

			// GitLab sends its secret as a header: it is not written down.
			send(t, hc, relaytest.TunnelURL(srv, "rec", "/gitlab"), http.Header{
				"X-Gitlab-Event": {"Push Hook"}, "X-Gitlab-Token": {"gitlab-token-secret"}, "Content-Type": {"application/json"},
			}, []byte(`{"object_kind":"push"}`))
			d = nextRecording(t, ids, st)
			if got := d.RequestHeader.Get("X-Gitlab-Token"); got != client.Redacted {
				t.Errorf("X-Gitlab-Token recorded as %q, want %q", got, client.Redacted)
			}
			if d.Signature != "valid" {
				t.Errorf("GitLab delivery recorded as %q, want valid", d.Signature)
			}
		})
	}
}

func TestBodiesOverTheCapAreForwardedWholeAndRecordedInPart(t *testing.T) {
	srv := relaytest.StartServer(t)
	st := openRecords(t, record.Options{BodyCap: 1024})
	app := relaytest.EchoApp(t)
	_, ids := recordingAgent(t, relaytest.AgentConfig(srv, "quic", relaytest.CreateToken(t, srv, "big"), "big", app.URL), st)
	body := strings.Repeat("x", 10000)
	resp := send(t, relaytest.ProviderClient(t, srv), relaytest.TunnelURL(srv, "big", "/"), nil, []byte(body))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("status %d", resp.StatusCode)
	}
	d := nextRecording(t, ids, st)
	if len(d.RequestBody.Data) != 1024 || !d.RequestBody.Truncated || d.RequestBody.Size != 10000 {
		t.Errorf("recorded %d of %d bytes (truncated %v), want 1024 of 10000, truncated", len(d.RequestBody.Data), d.RequestBody.Size, d.RequestBody.Truncated)
	}
	if !d.ResponseBody.Truncated || len(d.ResponseBody.Data) != 1024 {
		t.Errorf("response body recorded %d bytes (truncated %v), want 1024, truncated", len(d.ResponseBody.Data), d.ResponseBody.Truncated)
	}
	if _, err := client.Replay(context.Background(), st, d.ID, client.ReplayOptions{}); !errors.Is(err, client.ErrNotReplayable) {
		t.Errorf("replay of a partly recorded body: %v, want ErrNotReplayable", err)
	}
}

func TestVerifyRejectAnswers401WithoutForwarding(t *testing.T) {
	const secret = "whsec_reject"
	srv := relaytest.StartServer(t)
	st := openRecords(t, record.Options{})
	app := &countingApp{}
	cfg := relaytest.AgentConfig(srv, "tcp", relaytest.CreateToken(t, srv, "strict"), "strict", app.start(t))
	cfg.Secrets = map[string]string{provider.Stripe: secret}
	cfg.VerifyReject = true
	_, ids := recordingAgent(t, cfg, st)
	hc := relaytest.ProviderClient(t, srv)
	h, body := signedStripe(t, secret)
	stale, staleBody := signedStripe(t, "whsec_someone_else")

	tests := []struct {
		name       string
		header     http.Header
		body       []byte
		wantStatus int
		wantCalls  int64
		outcome    string
	}{
		{"a valid signature is forwarded", h, body, http.StatusOK, 1, record.OutcomeForwarded},
		{"a tampered body is refused", h, append(append([]byte{}, body...), '\n'), http.StatusUnauthorized, 1, record.OutcomeRejected},
		{"another secret's signature is refused", stale, staleBody, http.StatusUnauthorized, 1, record.OutcomeRejected},
		{"an unknown sender is forwarded", http.Header{"Content-Type": {"application/json"}}, []byte(`{}`), http.StatusOK, 2, record.OutcomeForwarded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := send(t, hc, relaytest.TunnelURL(srv, "strict", "/hook"), tt.header, tt.body)
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			d := nextRecording(t, ids, st)
			if d.Outcome != tt.outcome {
				t.Errorf("recorded outcome %q, want %q", d.Outcome, tt.outcome)
			}
			if n := app.calls.Load(); n != tt.wantCalls {
				t.Errorf("the app was called %d times, want %d", n, tt.wantCalls)
			}
		})
	}
}

func TestDedupForwardsEachEventOnceEvenAcrossRestarts(t *testing.T) {
	srv := relaytest.StartServer(t)
	st := openRecords(t, record.Options{})
	app := &countingApp{}
	target := app.start(t)
	token := relaytest.CreateToken(t, srv, "once")
	cfg := relaytest.AgentConfig(srv, "quic", token, "once", target)
	cfg.Dedup = true
	hc := relaytest.ProviderClient(t, srv)
	github := func(id string) http.Header {
		return http.Header{"X-Github-Event": {"push"}, "X-Github-Delivery": {id}, "Content-Type": {"application/json"}}
	}

	ctx, cancel := context.WithCancel(context.Background())
	a, err := client.New(func() client.Config { c := cfg; c.Store = st; return c }())
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan int64, 100)
	a.OnRecorded = func(id int64) { first <- id }
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	<-a.Ready()
	var ids <-chan int64 = first

	// Concurrent copies of one event: one reaches the app.
	var wg sync.WaitGroup
	statuses := make(chan int, 5)
	for range 5 {
		wg.Go(func() {
			statuses <- send(t, hc, relaytest.TunnelURL(srv, "once", "/gh"), github("d-1"), []byte(`{}`)).StatusCode
		})
	}
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != http.StatusOK {
			t.Errorf("a copy got %d, want 200", s)
		}
	}
	if n := app.calls.Load(); n != 1 {
		t.Fatalf("the app got %d copies of one event, want 1", n)
	}
	dups := 0
	for range 5 {
		if d := nextRecording(t, ids, st); d.Outcome == record.OutcomeDuplicate {
			dups++
		}
	}
	if dups != 4 {
		t.Errorf("%d copies recorded as duplicates, want 4", dups)
	}
	cancel()
	<-done

	// A new agent process on the same recordings still knows the event.
	_, ids = recordingAgent(t, cfg, st)
	resp := send(t, hc, relaytest.TunnelURL(srv, "once", "/gh"), github("d-1"), []byte(`{}`))
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Relay-Duplicate") != "true" {
		t.Errorf("after restart: status %d, X-Relay-Duplicate %q; want 200, true", resp.StatusCode, resp.Header.Get("X-Relay-Duplicate"))
	}
	if d := nextRecording(t, ids, st); d.Outcome != record.OutcomeDuplicate || d.DuplicateOf == 0 {
		t.Errorf("after restart recorded outcome %q duplicate of %d, want duplicate of the first", d.Outcome, d.DuplicateOf)
	}
	send(t, hc, relaytest.TunnelURL(srv, "once", "/gh"), github("d-2"), []byte(`{}`))
	if n := app.calls.Load(); n != 2 {
		t.Errorf("the app got %d deliveries, want 2 (a new event passes)", n)
	}
}

func TestDedupLetsARetryThroughWhenTheAppFailedTheFirstCopy(t *testing.T) {
	srv := relaytest.StartServer(t)
	st := openRecords(t, record.Options{})
	app := &countingApp{script: []int{500, 200}}
	cfg := relaytest.AgentConfig(srv, "tcp", relaytest.CreateToken(t, srv, "flaky"), "flaky", app.start(t))
	cfg.Dedup = true
	recordingAgent(t, cfg, st)
	hc := relaytest.ProviderClient(t, srv)
	h := http.Header{"Webhook-Id": {"msg_1"}, "Webhook-Timestamp": {"1"}, "Webhook-Signature": {"v1,x"}}
	for i, want := range []int{500, 200, 200} {
		if got := send(t, hc, relaytest.TunnelURL(srv, "flaky", "/"), h, []byte(`{}`)).StatusCode; got != want {
			t.Errorf("copy %d: status %d, want %d", i+1, got, want)
		}
	}
	if n := app.calls.Load(); n != 2 {
		t.Errorf("the app was called %d times, want 2 (the failed copy and its retry)", n)
	}
}

func TestRetryKeepsTryingAFailingAppAndRecordsEachAttempt(t *testing.T) {
	for _, tt := range []struct {
		name       string
		script     []int
		retry      time.Duration
		wantStatus int
		attempts   int
	}{
		{"5xx twice then success", []int{503, 502, 200}, time.Minute, http.StatusOK, 3},
		{"without --retry the first 5xx is final", []int{503, 200}, 0, http.StatusServiceUnavailable, 0},
		{"a 4xx is not retried", []int{404, 200}, time.Minute, http.StatusNotFound, 1},
		{"the budget bounds the retries", []int{500}, 600 * time.Millisecond, http.StatusInternalServerError, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := relaytest.StartServer(t)
			st := openRecords(t, record.Options{})
			app := &countingApp{script: tt.script}
			cfg := relaytest.AgentConfig(srv, "quic", relaytest.CreateToken(t, srv, "retry"), "retry", app.start(t))
			cfg.Retry = tt.retry
			_, ids := recordingAgent(t, cfg, st)
			resp := send(t, relaytest.ProviderClient(t, srv), relaytest.TunnelURL(srv, "retry", "/"), nil, []byte(`{"n":1}`))
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			d := nextRecording(t, ids, st)
			switch {
			case tt.attempts > 0 && len(d.Attempts) != tt.attempts:
				t.Errorf("%d attempts recorded, want %d", len(d.Attempts), tt.attempts)
			case tt.retry == 0 && len(d.Attempts) != 0:
				t.Errorf("%d attempts recorded without --retry", len(d.Attempts))
			case tt.attempts == 0 && tt.retry > 0 && len(d.Attempts) < 2:
				t.Errorf("only %d attempts within the budget", len(d.Attempts))
			}
			if n := app.calls.Load(); tt.attempts > 0 && n != int64(tt.attempts) {
				t.Errorf("the app was called %d times, want %d", n, tt.attempts)
			}
		})
	}
}

func TestRetryWaitsForAnAppThatIsDown(t *testing.T) {
	srv := relaytest.StartServer(t)
	st := openRecords(t, record.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // down until the first refusal has been seen
	cfg := relaytest.AgentConfig(srv, "tcp", relaytest.CreateToken(t, srv, "down"), "down", addr)
	cfg.Retry = time.Minute
	console := &relaytest.Buffer{}
	cfg.Console = console
	a, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-a.Ready()
	_ = st

	got := make(chan int, 1)
	hc := relaytest.ProviderClient(t, srv)
	go func() {
		resp, err := hc.Post(relaytest.TunnelURL(srv, "down", "/"), "application/json", strings.NewReader(`{}`))
		if err != nil {
			got <- 0
			return
		}
		resp.Body.Close()
		got <- resp.StatusCode
	}()
	relaytest.WaitFor(t, "the agent to announce a retry", func() bool { return strings.Contains(console.String(), "retrying") })
	var calls atomic.Int64
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("bring the app up on %s: %v", addr, err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { calls.Add(1) })}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	select {
	case s := <-got:
		if s != http.StatusOK {
			t.Errorf("status %d, want 200 once the app is up", s)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no answer within 30s")
	}
	if calls.Load() != 1 {
		t.Errorf("the app got %d calls, want 1", calls.Load())
	}
}

func TestNoQueueMakesAnOfflineTunnelAnswer503(t *testing.T) {
	for _, tt := range []struct {
		name    string
		noQueue bool
		want    int
	}{
		{"with --no-queue an offline tunnel answers 503", true, http.StatusServiceUnavailable},
		{"without it an offline tunnel queues (202)", false, http.StatusAccepted},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := relaytest.StartServer(t)
			cfg := relaytest.AgentConfig(srv, "quic", relaytest.CreateToken(t, srv, "live"), "live", relaytest.EchoApp(t).URL)
			cfg.NoQueue = tt.noQueue
			a, err := client.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			<-a.Ready()
			cancel()
			<-done

			hc := relaytest.ProviderClient(t, srv)
			var resp *http.Response
			relaytest.WaitFor(t, "the relay to see the agent gone", func() bool {
				resp, _ = relaytest.Post(t, hc, relaytest.TunnelURL(srv, "live", "/"), `{}`)
				return resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusAccepted
			})
			if resp.StatusCode != tt.want {
				t.Errorf("offline: status %d, want %d", resp.StatusCode, tt.want)
			}
			if tt.want == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
				t.Error("503 without Retry-After")
			}
		})
	}
}

// TestRefusalsByTheRelayAreRecordedAsTheProviderGotThem: the agent records
// what the edge answered itself with the status the provider got (a
// WebSocket upgrade 501, a body over the limit 413), and prints them; a
// malformed body is printed but not recorded.
func TestRefusalsByTheRelayAreRecordedAsTheProviderGotThem(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t, func(c *server.Config) { c.MaxBody = 1 << 20 })
			st := openRecords(t, record.Options{})
			cfg := relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, "ws"), "ws", relaytest.EchoApp(t).URL)
			_, ids := recordingAgent(t, cfg, st)
			hc := relaytest.ProviderClient(t, srv)

			req, _ := http.NewRequest(http.MethodGet, relaytest.TunnelURL(srv, "ws", "/socket"), nil)
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
			req.Header.Set("Sec-WebSocket-Version", "13")
			req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
			resp, err := hc.Transport.(*http.Transport).RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotImplemented {
				t.Fatalf("a WebSocket upgrade got %d, want 501", resp.StatusCode)
			}
			d := nextRecording(t, ids, st)
			if d.Status != resp.StatusCode || d.Outcome != record.OutcomeRefused || d.Path != "/socket" || d.Error == "" {
				t.Errorf("recorded %d %s %s %q, want %d refused /socket with a reason", d.Status, d.Outcome, d.Path, d.Error, resp.StatusCode)
			}

			resp = send(t, hc, relaytest.TunnelURL(srv, "ws", "/big"), nil, make([]byte, 2<<20))
			if d := nextRecording(t, ids, st); d.Status != http.StatusRequestEntityTooLarge || resp.StatusCode != d.Status {
				t.Errorf("a body over the limit: provider got %d, recorded %d", resp.StatusCode, d.Status)
			}
		})
	}
}

// TestRecordingsAreCappedWhereStrangersChooseTheSize: headers and event
// ids beyond their caps are cut in the recording (and said to be), while
// the local app gets the request whole and --dedup still knows the event.
func TestRecordingsAreCappedWhereStrangersChooseTheSize(t *testing.T) {
	srv := relaytest.StartServer(t)
	st := openRecords(t, record.Options{})
	got := make(chan http.Header, 10)
	app := relaytest.App(t, func(w http.ResponseWriter, r *http.Request) { got <- r.Header.Clone() })
	cfg := relaytest.AgentConfig(srv, "quic", relaytest.CreateToken(t, srv, "huge"), "huge", app)
	cfg.Dedup = true
	_, ids := recordingAgent(t, cfg, st)
	hc := relaytest.ProviderClient(t, srv)
	longID := strings.Repeat("d", 100<<10)
	h := http.Header{
		"X-Github-Event": {"push"}, "X-Github-Delivery": {longID},
		"X-Padding": {strings.Repeat("p", 300<<10)},
	}
	if resp := send(t, hc, relaytest.TunnelURL(srv, "huge", "/"), h, []byte(`{}`)); resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if seen := <-got; len(seen.Get("X-Padding")) != 300<<10 || seen.Get("X-Github-Delivery") != longID {
		t.Error("the app did not get the headers whole")
	}
	d := nextRecording(t, ids, st)
	size := 0
	for k, vs := range d.RequestHeader {
		for _, v := range vs {
			size += len(k) + len(v)
		}
	}
	if size > record.MaxRecordedHeaderBytes || d.RequestHeader.Get(record.HeadersTruncated) == "" {
		t.Errorf("recorded %d header bytes (marker %q), want at most %d and the cut noted", size, d.RequestHeader.Get(record.HeadersTruncated), record.MaxRecordedHeaderBytes)
	}
	if len(d.EventID) > 1<<10 {
		t.Errorf("recorded a %d-byte event id", len(d.EventID))
	}
	// The same event again is a duplicate: the long id's key still works.
	resp := send(t, hc, relaytest.TunnelURL(srv, "huge", "/"), h, []byte(`{}`))
	if resp.Header.Get("X-Relay-Duplicate") != "true" {
		t.Errorf("the second copy of a long-id event was not a duplicate")
	}
	if len(got) != 0 {
		t.Error("the app got the duplicate")
	}
	db, err := sql.Open("sqlite", st.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var longest int
	if err := db.QueryRow(`SELECT max(length(key)) FROM seen`).Scan(&longest); err != nil || longest > 256 {
		t.Errorf("the longest --dedup key kept is %d bytes (%v), want a short one", longest, err)
	}
}

// TestABodyHeldWholeReachesTheAppWithAContentLength: a provider's chunked
// body, once the agent holds it whole, is forwarded with a Content-Length:
// some local apps (Python's http.server) cannot read chunked bodies.
func TestABodyHeldWholeReachesTheAppWithAContentLength(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t)
			type seen struct {
				length int64
				te     []string
				body   string
			}
			got := make(chan seen, 1)
			app := relaytest.App(t, func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				got <- seen{r.ContentLength, r.TransferEncoding, string(b)}
			})
			relaytest.RunAgent(t, relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, "py"), "py", app))
			hc := relaytest.ProviderClient(t, srv)
			hc.Transport.(*http.Transport).ForceAttemptHTTP2 = false
			body := `{"chunked":true}`
			// A reader of unknown length: net/http sends it chunked.
			resp, err := hc.Post(relaytest.TunnelURL(srv, "py", "/"), "application/json", io.MultiReader(strings.NewReader(body)))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			s := <-got
			if s.length != int64(len(body)) || len(s.te) != 0 || s.body != body {
				t.Errorf("the app saw Content-Length %d, Transfer-Encoding %v, body %q; want %d, none, %q", s.length, s.te, s.body, len(body), body)
			}
		})
	}
}
