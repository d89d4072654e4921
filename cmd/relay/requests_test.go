package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/relaytunnel/relay/client/record"
	"github.com/relaytunnel/relay/internal/relaytest"
)

// waitUntil polls cond, which watches another process's output or files.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRequestsAndReplayWorkWithTheAgentRunningAndStopped drives `relay
// connect`, `relay requests` and `relay replay` as a user would: first
// while the agent runs (through its inspector's API), then after it stopped
// (from the database), and `relay requests --remote` for the relay's log.
func TestRequestsAndReplayWorkWithTheAgentRunningAndStopped(t *testing.T) {
	srvData := t.TempDir()
	srv := devServer(t, srvData)
	code, out, errs := runCLI(t, "token", "create", "--name", "cli", "--data", srvData)
	if code != 0 {
		t.Fatalf("token create: %s", errs)
	}
	token := relaytest.FindToken(out)
	var calls atomic.Int64
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"received":true}`)
	}))
	t.Cleanup(app.Close)
	hc := relaytest.ProviderClient(t, srv)
	hook := strings.TrimSuffix(srv.PublicURL("cli"), "/") + "/hooks/github?x=1"
	deliver := func(id string) int {
		req, _ := http.NewRequest(http.MethodPost, hook, strings.NewReader(`{"zen":"`+id+`"}`))
		req.Header.Set("X-GitHub-Event", "ping")
		req.Header.Set("X-GitHub-Delivery", id)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	// While no agent runs the relay queues the first delivery.
	if s := deliver("gh-1"); s != http.StatusAccepted {
		t.Fatalf("offline delivery: %d, want 202", s)
	}

	data := t.TempDir()
	console := &relaytest.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	agentDone := make(chan int, 1)
	go func() {
		agentDone <- run(ctx, []string{"connect", app.URL, "--server", srv.Addr(), "--token", token, "--name", "cli",
			"--ca", srv.DevCAPath(), "--data", data, "--inspect", "127.0.0.1:0"}, console, console)
	}()
	t.Cleanup(func() {
		cancel()
		<-agentDone
		if t.Failed() {
			t.Logf("agent console:\n%s", console.String())
		}
	})
	waitUntil(t, "the queued delivery to be recorded", func() bool { return strings.Contains(console.String(), "queued") })
	if s := deliver("gh-2"); s != http.StatusOK {
		t.Fatalf("live delivery: %d, want the app's 200", s)
	}
	if _, err := os.Stat(filepath.Join(data, inspectorFile)); err != nil {
		t.Fatalf("the running agent left no inspector address: %v", err)
	}

	list := func(args ...string) []record.Summary {
		t.Helper()
		var got []record.Summary
		waitUntil(t, "two recordings", func() bool {
			code, out, errs := runCLI(t, append([]string{"requests", "--data", data, "--json"}, args...)...)
			if code != 0 {
				t.Fatalf("relay requests: %s", errs)
			}
			got = nil
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("relay requests --json printed %q: %v", out, err)
			}
			return len(got) >= 2
		})
		return got
	}
	running := list()
	if running[0].EventID != "gh-2" || running[1].EventID != "gh-1" || running[1].Kind != record.KindQueued {
		t.Fatalf("while running, relay requests listed %+v", running)
	}
	code, out, errs = runCLI(t, "requests", "--data", data)
	if code != 0 || !strings.Contains(out, "/hooks/github?x=1") || !strings.Contains(out, "github") || !strings.Contains(out, "queued") {
		t.Errorf("table while running: %d %q %q", code, out, errs)
	}
	code, out, errs = runCLI(t, "replay", "--data", data, itoa(running[0].ID))
	if code != 0 || !strings.Contains(out, "200 OK") {
		t.Fatalf("replay while running: %d %q %q", code, out, errs)
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("the app got %d requests, want 3 (queued, live, replay)", n)
	}

	// Stop the agent: the same commands read the database.
	cancel()
	if code := <-agentDone; code != 0 {
		t.Fatalf("agent exited %d", code)
	}
	agentDone <- 0 // for the cleanup
	if _, err := os.Stat(filepath.Join(data, inspectorFile)); !os.IsNotExist(err) {
		t.Errorf("the stopped agent left its inspector address behind (%v)", err)
	}
	stopped := list()
	if len(stopped) != 3 || stopped[0].Kind != record.KindReplay || stopped[0].ReplayOf != running[0].ID {
		t.Fatalf("after stopping, relay requests listed %+v", stopped)
	}
	code, out, errs = runCLI(t, "requests", "show", itoa(running[1].ID), "--data", data, "--body")
	if code != 0 || !strings.Contains(out, `"zen": "gh-1"`) || !strings.Contains(out, "X-Github-Delivery: gh-1") || !strings.Contains(out, "kind") {
		t.Errorf("show: %d %q %q", code, out, errs)
	}
	code, out, errs = runCLI(t, "requests", "show", itoa(running[1].ID), "--data", data, "--json")
	var full record.Delivery
	if code != 0 || json.Unmarshal([]byte(out), &full) != nil || string(full.RequestBody.Data) != `{"zen":"gh-1"}` {
		t.Errorf("show --json: %d %q %q", code, out, errs)
	}
	code, out, errs = runCLI(t, "replay", itoa(running[1].ID), "--data", data, "--to", app.URL+"/elsewhere")
	if code != 0 || !strings.Contains(out, "/elsewhere") {
		t.Errorf("replay while stopped: %d %q %q", code, out, errs)
	}
	if n := calls.Load(); n != 4 {
		t.Errorf("the app got %d requests, want 4", n)
	}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"an unknown id says so", []string{"requests", "show", "999", "--data", data}, "delivery 999 is not recorded"},
		{"a bad id says what an id is", []string{"replay", "abc", "--data", data}, "want a number"},
		{"an empty directory says how to fill it", []string{"requests", "--data", t.TempDir()}, "no recordings"},
		{"a bad status filter is named", []string{"requests", "--data", data, "--status", "2x"}, "--status"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errs := runCLI(t, tt.args...)
			if code == 0 || !strings.Contains(errs, tt.want) || strings.Count(errs, "\n") != 1 {
				t.Errorf("exit %d, stderr %q; want one line containing %q", code, errs, tt.want)
			}
		})
	}

	// The relay's own log: what arrived while offline and what became of it.
	_, port, _ := net.SplitHostPort(srv.Addr())
	apex := "localhost:" + port // the relay answers its API on its own name
	code, out, errs = runCLI(t, "requests", "--remote", "--server", apex, "--token", token, "--ca", srv.DevCAPath(), "--json")
	var lg remoteLog
	if code != 0 || json.Unmarshal([]byte(out), &lg) != nil {
		t.Fatalf("requests --remote: %d %q %q", code, out, errs)
	}
	// One line per delivery, with what became of it.
	if lg.Name != "cli" || len(lg.Entries) != 1 || !lg.Entries[0].Queued || lg.Entries[0].Outcome != "delivered" {
		t.Errorf("remote log %+v: want the queued delivery, handed over", lg)
	}
	code, _, errs = runCLI(t, "requests", "--remote", "--server", apex, "--token", "relay_wrong", "--ca", srv.DevCAPath())
	if code == 0 || !strings.Contains(errs, "refused") {
		t.Errorf("remote with a bad token: %d %q", code, errs)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// recordingsDir writes deliveries straight into a recordings database, as
// an agent (or several) would have.
func recordingsDir(t *testing.T, ds ...*record.Delivery) string {
	t.Helper()
	dir := t.TempDir()
	st, err := record.Open(context.Background(), dir, record.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, d := range ds {
		if _, err := st.Add(context.Background(), d); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func delivery(tunnel, path string, status int, body string) *record.Delivery {
	now := time.Now()
	return &record.Delivery{
		Kind: record.KindLive, Outcome: record.OutcomeForwarded, Tunnel: tunnel, Transport: "quic",
		Method: "POST", Host: tunnel + ".localhost", Path: path,
		RequestHeader: http.Header{"Content-Type": {"application/json"}},
		RequestBody:   record.Body{Data: []byte(body), Size: int64(len(body))},
		Status:        status,
		ReceivedAt:    now, StartedAt: now.Add(1890 * time.Microsecond),
		AnsweredAt: now.Add(2844 * time.Microsecond), FinishedAt: now.Add(3013 * time.Microsecond),
	}
}

func TestRequestsTableFitsOneHundredColumnsAndNamesTunnels(t *testing.T) {
	long := delivery("stripe-dev", "/webhooks/stripe/with/a/rather/long/path/that/goes/on?and=a&long=query", 431, `{}`)
	long.Provider, long.Event, long.Signature = "stripe", "customer.subscription.trial_will_end", "unchecked"
	replay := delivery("github-sandbox", "/gh", 502, `{}`)
	replay.Kind, replay.ReplayOf, replay.Outcome = record.KindReplay, 1, record.OutcomeFailed
	dir := recordingsDir(t, long, replay, delivery("stripe-dev", "/plain", 200, `{}`))

	code, out, errs := runCLI(t, "requests", "--data", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 4 || !strings.Contains(lines[0], "TUNNEL") {
		t.Fatalf("want a header with TUNNEL and 3 rows, got:\n%s", out)
	}
	for _, l := range lines {
		if n := utf8.RuneCountInString(l); n > 100 {
			t.Errorf("%d columns: %q", n, l)
		}
	}
	for _, want := range []string{"stripe-dev", "github-san", "431", "replay of 1 failed", "stripe cus", "/webhooks/s"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "Request Header Fields Too Large") {
		t.Errorf("the table spells out status texts:\n%s", out)
	}

	// One tunnel: no tunnel column.
	code, out, _ = runCLI(t, "requests", "--data", dir, "--tunnel", "stripe-dev")
	if code != 0 || strings.Contains(out, "TUNNEL") || strings.Count(out, "\n") != 3 {
		t.Errorf("--tunnel stripe-dev:\n%s", out)
	}
}

func TestRequestsStatusCodesAndBodySearch(t *testing.T) {
	form := delivery("dev", "/form", 200, "name=Alice&amount=12.50")
	form.RequestHeader.Set("Content-Type", "application/x-www-form-urlencoded")
	dir := recordingsDir(t, delivery("dev", "/a", 502, `{"customer":"cus_123"}`), delivery("dev", "/b", 503, `{}`), form)
	for _, tt := range []struct {
		args []string
		want string
		rows int
	}{
		{[]string{"--status", "502"}, "/a", 1},
		{[]string{"--status", "5xx"}, "/b", 2},
		{[]string{"-q", "Alice"}, "/form", 1},
		{[]string{"-q", "cus_123", "--status", "502"}, "/a", 1},
	} {
		code, out, errs := runCLI(t, append([]string{"requests", "--data", dir}, tt.args...)...)
		if code != 0 || !strings.Contains(out, tt.want) || strings.Count(out, "\n") != tt.rows+1 {
			t.Errorf("requests %v: exit %d %q %q; want %d rows with %s", tt.args, code, out, errs, tt.rows, tt.want)
		}
	}
	code, out, _ := runCLI(t, "requests", "show", "3", "--data", dir, "--body")
	if code != 0 || !regexp.MustCompile(`(?s)name = Alice\s+amount = 12.50`).MatchString(out) {
		t.Errorf("show --body: form fields not in the order sent:\n%s", out)
	}
	// The timings are consecutive spans that add up.
	for _, want := range []string{"relay -> agent  1.89ms", "app answered    after 954µs", "response sent   after 169µs", "total           3.013ms"} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
}

// TestShowEscapesTerminalControls: a body, header or path may carry escape
// sequences meant for the reader's terminal (retitle it, rewrite lines,
// hide text); relay prints them as visible escapes, in every output.
func TestShowEscapesTerminalControls(t *testing.T) {
	evil := "\x1b]0;pwned\x07\x1b[2J\u009b31m\r\u202etxt.exe"
	d := delivery("dev", "/x\x1b[31m", 200, `{"note":"`+strings.ReplaceAll(evil, "\x1b", `\u001b`)+`","raw":"\u009b"}`)
	d.RequestHeader.Set("X-Evil", "a\x1b[1mb\u009bc")
	d.ResponseBody = record.Body{Data: []byte("plain " + evil + "\nsecond line\tok"), Size: 64}
	d.Error = "boom \x1b[5m"
	dir := recordingsDir(t, d)

	for _, args := range [][]string{
		{"requests", "show", "1", "--body"},
		{"requests"},
		{"requests", "show", "1", "--json"},
		{"requests", "--json"},
		{"replay", "1", "--to", "http://127.0.0.1:1/"},
	} {
		_, out, errs := runCLI(t, append(args, "--data", dir)...)
		for _, s := range []string{out, errs} {
			if i := strings.IndexFunc(s, func(r rune) bool {
				return (r < 0x20 && r != '\n' && r != '\t') || (r >= 0x7f && r <= 0x9f) || (r >= 0x202a && r <= 0x202e)
			}); i >= 0 {
				t.Errorf("relay %v wrote a raw control at %d in %q", args, i, s)
			}
		}
		if len(args) == 4 && args[3] == "--body" {
			for _, want := range []string{`\x1b]0;pwned\x07`, `\u009b31m`, `\u202etxt.exe`, "\nsecond line\tok", `X-Evil: a\x1b[1mb\u009bc`, `/x\x1b[31m`} {
				if !strings.Contains(out, want) {
					t.Errorf("show --body lacks the escaped %q:\n%s", want, out)
				}
			}
		}
	}
	// The JSON escapes still decode to what was recorded.
	_, out, _ := runCLI(t, "requests", "show", "1", "--json", "--data", dir)
	var got record.Delivery
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.RequestHeader.Get("X-Evil") != "a\x1b[1mb\u009bc" {
		t.Errorf("show --json does not round-trip: %v %q", err, got.RequestHeader.Get("X-Evil"))
	}
}

// TestRelayDevKeepsItsRecordingsInItsData: --data means one directory for
// relay dev, and relay requests --data reads it.
func TestRelayDevKeepsItsRecordingsInItsData(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	app := relaytest.EchoApp(t)
	data := t.TempDir()
	url, console := startDev(t, app.URL, "--data", data)
	if !strings.Contains(console.String(), filepath.Join(data, devServerSubdir, devCAFile)) {
		t.Errorf("relay dev --data %s printed another CA:\n%s", data, console.String())
	}
	code, out, errs := runCLI(t, "trigger", "github", "push", "--to", url+"/gh", "--ca", filepath.Join(data, devServerSubdir, devCAFile))
	if code != 0 {
		t.Fatalf("trigger: %d %q %q", code, out, errs)
	}
	waitUntil(t, "the delivery in relay dev's --data", func() bool {
		code, out, _ := runCLI(t, "requests", "--data", data)
		return code == 0 && strings.Contains(out, "/gh")
	})
	if code, _, _ := runCLI(t, "requests"); code == 0 {
		t.Error("relay dev --data X also recorded in the default directory")
	}

	// relay replay --to reaches a *.localhost name without the resolver.
	_, port, _ := net.SplitHostPort(app.Listener.Addr().String())
	code, out, errs = runCLI(t, "replay", "1", "--data", data, "--to", "http://again.localhost:"+port+"/again")
	if code != 0 || !strings.Contains(out, "201 Created") {
		t.Errorf("replay --to again.localhost: %d %q %q", code, out, errs)
	}
}
