package server_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "modernc.org/sqlite" // reads the agent's dedup marks

	"github.com/relaytunnel/relay/internal/relaytest"
)

// TestNothingLostUnderFaults sends deliveries from several senders while
// the agent process, the relay server process (SIGKILL) and the local app
// are stopped and started at random, and checks that every delivery the
// relay answered 2xx reached the local app at least once, and with --dedup
// at most once, except where the agent was killed between the app's answer
// and its dedup mark: after each SIGKILL of the agent the ids the app has
// answered but the agent's dedup table (requests.db, readable once the
// process is dead) lacks are the only ones allowed a second delivery.
//
// RELAY_FAULT_DELIVERIES (default 2000) and RELAY_FAULT_PACE (default
// 8ms between one sender's deliveries) lengthen it into a soak.
func TestNothingLostUnderFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("builds relay and runs processes")
	}
	bin := relaytest.BuildRelay(t)
	for _, tt := range []struct {
		name  string
		dedup bool
	}{
		{"every accepted delivery arrives at least once", false},
		{"with --dedup every accepted delivery arrives exactly once", true},
	} {
		t.Run(tt.name, func(t *testing.T) { faultRun(t, bin, tt.dedup) })
	}
}

func faultRun(t *testing.T, bin string, dedup bool) {
	total := envInt("RELAY_FAULT_DELIVERIES", 2000)
	pace := 8 * time.Millisecond
	if v := os.Getenv("RELAY_FAULT_PACE"); v != "" {
		pace, _ = time.ParseDuration(v)
	}
	const senders = 4
	dir := t.TempDir()
	data := filepath.Join(dir, "server")
	port := relaytest.FreePort(t)
	listen := fmt.Sprintf("127.0.0.1:%d", port)

	token := relaytest.CLIToken(t, bin, "--init", "--name", "fault", "--data", data)

	relaytest.Stress(t)

	// The local app: counts every id it receives.
	var (
		seenMu sync.Mutex
		seen   = map[string]int{}
		active atomic.Int64 // requests the app is handling
	)
	app := &restartableApp{handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		active.Add(1)
		defer active.Add(-1)
		b, _ := io.ReadAll(r.Body)
		seenMu.Lock()
		seen[string(b)]++
		seenMu.Unlock()
	})}
	app.start(t, "127.0.0.1:0")
	defer app.stop()

	srvProc := &proc{t: t, name: "server", args: []string{bin, "server", "--dev", "--listen", listen, "--data", data}}
	agentData := filepath.Join(dir, "agent")
	agentProc := &proc{t: t, name: "agent", args: []string{bin, "connect", app.addr, "--server", "localhost:" + fmt.Sprint(port),
		"--token", token, "--name", "fault", "--ca", filepath.Join(data, "dev-ca.pem"),
		"--data", agentData, "--inspect", ""}}
	// With --dedup: ids the app answered that the killed agent had not yet
	// marked, the only ones that may reach the app twice.
	inWindow := map[string]bool{}
	noteWindow := func() {
		relaytest.WaitFor(t, "the app to finish what the killed agent sent it", func() bool { return active.Load() == 0 })
		marked := dedupMarks(t, filepath.Join(agentData, "requests.db"))
		seenMu.Lock()
		defer seenMu.Unlock()
		for id := range seen {
			if !marked["github:"+id] {
				inWindow[id] = true
			}
		}
	}
	if dedup {
		agentProc.args = append(agentProc.args, "--dedup")
	}
	defer srvProc.kill()
	defer agentProc.kill()
	srvProc.start()
	relaytest.WaitListening(t, listen)
	agentProc.start()

	pem, _ := os.ReadFile(filepath.Join(data, "dev-ca.pem"))
	hc := faultClient(t, listen, pem)
	url := fmt.Sprintf("https://fault.localhost:%d/hook", port)

	var answers outcomes
	var wg sync.WaitGroup
	per := total / senders
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				id := fmt.Sprintf("s%d-%d", s, i)
				req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(id))
				// A GitHub delivery: its id is what --dedup keys on.
				req.Header.Set("X-GitHub-Event", "push")
				req.Header.Set("X-GitHub-Delivery", id)
				resp, err := hc.Do(req)
				answers.note(id, resp, err)
				time.Sleep(pace) // pacing the senders, not synchronisation
			}
		}()
	}

	// Faults at random moments until the senders are done.
	sendersDone := make(chan struct{})
	go func() { wg.Wait(); close(sendersDone) }()
	faults := map[string]int{}
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
loop:
	for {
		select {
		case <-sendersDone:
			break loop
		case <-time.After(time.Duration(150+rng.IntN(400)) * time.Millisecond):
		}
		switch rng.IntN(3) {
		case 0:
			faults["agent killed"]++
			agentProc.kill()
			if dedup {
				noteWindow()
			}
			agentProc.start()
		case 1:
			faults["server killed"]++
			srvProc.kill()
			srvProc.start()
			relaytest.WaitListening(t, listen)
		case 2:
			faults["app stopped"]++
			app.stop()
			time.Sleep(time.Duration(50+rng.IntN(200)) * time.Millisecond) // the app stays down a while
			app.start(t, app.addr)
		}
		if agentProc.exited() {
			agentProc.start()
		}
	}
	if agentProc.exited() {
		agentProc.start()
	}

	// Everything accepted must arrive.
	missing := func() []string {
		seenMu.Lock()
		defer seenMu.Unlock()
		return answers.missing(seen)
	}
	deadline := time.Now().Add(60 * time.Second)
	for len(missing()) > 0 && time.Now().Before(deadline) {
		if agentProc.exited() {
			agentProc.start()
		}
		time.Sleep(100 * time.Millisecond)
	}
	seenMu.Lock()
	delivered, dups, dupsInWindow := 0, 0, 0
	var twice []string
	for id, n := range seen {
		delivered++
		dups += n - 1
		if n > 1 {
			if inWindow[id] {
				dupsInWindow++
			} else {
				twice = append(twice, fmt.Sprintf("%s x%d", id, n))
			}
		}
	}
	seenMu.Unlock()
	t.Logf("sent %d, accepted %d (queued 202: %d), delivered %d distinct, duplicates %d (%d of them in a kill window; %d ids were in one), refused %d (non-2xx), failed %d (no answer); faults %v",
		senders*per, answers.nAccepted.Load(), answers.nQueued.Load(), delivered, dups, dupsInWindow, len(inWindow), answers.nRefused.Load(), answers.nFailed.Load(), faults)
	if m := missing(); len(m) > 0 {
		t.Fatalf("%d deliveries answered 2xx never reached the app, e.g. %v", len(m), m[:min(5, len(m))])
	}
	if dedup && len(twice) > 0 {
		t.Fatalf("with --dedup %d deliveries reached the app more than once outside any kill window, e.g. %v", len(twice), twice[:min(5, len(twice))])
	}
}

// dedupMarks reads the --dedup marks of a stopped agent.
// outcomes counts what the relay answered the fault tests' senders.
type outcomes struct {
	accepted                              sync.Map // ids answered 2xx
	nAccepted, nQueued, nRefused, nFailed atomic.Int64
}

// note counts one answer (or its failure), drains it and reports whether
// the relay accepted the delivery.
func (o *outcomes) note(id string, resp *http.Response, err error) bool {
	if err != nil {
		o.nFailed.Add(1)
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		o.nRefused.Add(1)
		return false
	}
	o.accepted.Store(id, true)
	o.nAccepted.Add(1)
	if resp.StatusCode == http.StatusAccepted {
		o.nQueued.Add(1)
	}
	return true
}

// missing lists the accepted ids the app has not seen (seen maps an id to
// how often it arrived; the caller holds its lock).
func (o *outcomes) missing(seen map[string]int) []string {
	var m []string
	o.accepted.Range(func(k, _ any) bool {
		if seen[k.(string)] == 0 {
			m = append(m, k.(string))
		}
		return true
	})
	return m
}

func dedupMarks(t *testing.T, path string) map[string]bool {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	marks := map[string]bool{}
	rows, err := db.Query(`SELECT key FROM seen`)
	if err != nil {
		if strings.Contains(err.Error(), "no such table") || strings.Contains(err.Error(), "unable to open") {
			return marks // the agent was killed before it made its database
		}
		t.Fatalf("read dedup marks: %v", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		rows.Scan(&k)
		marks[k] = true
	}
	return marks
}

// faultClient is the provider of a fault test: HTTP/1.1 to addr with a
// 10 s limit, so a request to a server killed under it fails fast and is
// counted as failed, not left waiting on a shared HTTP/2 connection.
func faultClient(t *testing.T, addr string, caPEM []byte) *http.Client {
	hc := relaytest.HTTPSClient(t, addr, caPEM)
	hc.Timeout = 10 * time.Second
	hc.Transport.(*http.Transport).ForceAttemptHTTP2 = false
	return hc
}

type restartableApp struct {
	handler http.Handler
	addr    string
	srv     *http.Server
	done    chan struct{}
}

func (a *restartableApp) start(t *testing.T, addr string) {
	var ln net.Listener
	var err error
	for range 50 { // the old socket may take a moment to go
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("app listen %s: %v", addr, err)
	}
	a.addr = ln.Addr().String()
	a.srv = &http.Server{Handler: a.handler}
	a.done = make(chan struct{})
	go func() { a.srv.Serve(ln); close(a.done) }()
}

func (a *restartableApp) stop() {
	if a.srv == nil {
		return
	}
	// A dev server restarting (Ctrl-C) finishes the request in hand: an
	// app killed between doing the work and answering would make any
	// tunnel deliver that request again, --dedup or not.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	if a.srv.Shutdown(ctx) != nil {
		a.srv.Close()
	}
	cancel()
	<-a.done
	a.srv = nil
}

func envInt(name string, def int) int {
	var n int
	if _, err := fmt.Sscan(os.Getenv(name), &n); err != nil || n <= 0 {
		return def
	}
	return n
}
