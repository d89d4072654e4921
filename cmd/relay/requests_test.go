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
	token := regexp.MustCompile(`relay_[a-z2-7]+`).FindString(out)
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
