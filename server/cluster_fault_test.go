package server_test

import (
	"context"
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

	"github.com/jackc/pgx/v5"

	"github.com/relaytunnel/relay/internal/pgtest"
	"github.com/relaytunnel/relay/internal/relaytest"
)

// TestNothingLostInAClusterUnderFaults sends deliveries from several
// senders, spread over three relay nodes sharing one PostgreSQL database,
// while nodes (SIGKILL, restarted under their name), the agent process and
// the local app are stopped and started at random, and checks that every
// delivery a node answered 2xx reached the local app at least once.
//
// RELAY_FAULT_DELIVERIES (default 2000) and RELAY_FAULT_PACE (default 8ms
// between one sender's deliveries) lengthen it into a soak.
func TestNothingLostInAClusterUnderFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("builds relay and runs processes")
	}
	total := envInt("RELAY_FAULT_DELIVERIES", 2000)
	pace := 8 * time.Millisecond
	if v := os.Getenv("RELAY_FAULT_PACE"); v != "" {
		pace, _ = time.ParseDuration(v)
	}
	const senders, nodes = 4, 3
	bin := relaytest.BuildRelay(t)
	database := pgtest.URL(t)
	dir := t.TempDir()

	var (
		seenMu sync.Mutex
		seen   = map[string]int{}
	)
	app := &restartableApp{handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		seenMu.Lock()
		seen[string(b)]++
		seenMu.Unlock()
	})}
	app.start(t, "127.0.0.1:0")
	defer app.stop()

	var procs []*proc
	var addrs []string
	for i := range nodes {
		data := filepath.Join(dir, relaytest.NodeName(i))
		addr := fmt.Sprintf("127.0.0.1:%d", relaytest.FreePort(t))
		if i > 0 {
			os.MkdirAll(data, 0o700)
			relaytest.CopyDevCA(t, filepath.Join(dir, relaytest.NodeName(0)), data)
		}
		p := nodeProc(t, bin, database, relaytest.NodeName(i), addr, data)
		defer p.kill()
		p.start()
		relaytest.WaitListening(t, addr)
		procs = append(procs, p)
		addrs = append(addrs, addr)
	}
	token := relaytest.CLIToken(t, bin, "--name", "cfault", "--database", database)
	caFile := filepath.Join(dir, relaytest.NodeName(0), "dev-ca.pem")
	rng := rand.New(rand.NewPCG(2, uint64(time.Now().UnixNano())))
	agentProc := &proc{t: t, name: "agent"}
	startAgent := func() {
		// Any node will do as --server; the agent dials the others itself.
		_, port, _ := net.SplitHostPort(addrs[rng.IntN(nodes)])
		agentProc.args = []string{bin, "connect", app.addr, "--server", "localhost:" + port, "--token", token, "--name", "cfault",
			"--ca", caFile, "--data", filepath.Join(dir, "agent"), "--inspect", ""}
		agentProc.start()
	}
	defer agentProc.kill()
	startAgent()

	relaytest.Stress(t)

	pem, _ := os.ReadFile(caFile)
	clients := make([]*http.Client, nodes)
	for i, addr := range addrs {
		clients[i] = faultClient(t, addr, pem)
	}

	var (
		answers outcomes
		perNode [nodes]atomic.Int64
	)
	var wg sync.WaitGroup
	per := total / senders
	for s := range senders {
		wg.Go(func() {
			for i := range per {
				id := fmt.Sprintf("s%d-%d", s, i)
				n := (s + i) % nodes
				_, port, _ := net.SplitHostPort(addrs[n])
				resp, err := clients[n].Post("https://cfault.localhost:"+port+"/hook", "text/plain", strings.NewReader(id))
				if answers.note(id, resp, err) {
					perNode[n].Add(1)
				}
				time.Sleep(pace) // pacing the senders, not synchronisation
			}
		})
	}

	sendersDone := make(chan struct{})
	go func() { wg.Wait(); close(sendersDone) }()
	faults := map[string]int{}
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
			startAgent()
		case 1:
			n := rng.IntN(nodes)
			faults[relaytest.NodeName(n)+" killed"]++
			procs[n].kill()
			procs[n].start() // under its old name, its lease still live
			relaytest.WaitListening(t, addrs[n])
		case 2:
			faults["app stopped"]++
			app.stop()
			time.Sleep(time.Duration(50+rng.IntN(200)) * time.Millisecond) // the app stays down a while
			app.start(t, app.addr)
		}
		if agentProc.exited() {
			startAgent() // its --server node was down as it started
		}
	}

	missing := func() []string {
		seenMu.Lock()
		defer seenMu.Unlock()
		return answers.missing(seen)
	}
	deadline := time.Now().Add(90 * time.Second)
	for len(missing()) > 0 && time.Now().Before(deadline) {
		if agentProc.exited() {
			startAgent()
		}
		time.Sleep(100 * time.Millisecond) // polling the app's record, not synchronisation
	}
	seenMu.Lock()
	delivered, dups := 0, 0
	for _, n := range seen {
		delivered++
		dups += n - 1
	}
	seenMu.Unlock()
	t.Logf("sent %d over %d nodes, accepted %d (per node %d/%d/%d; queued 202: %d), delivered %d distinct, duplicates %d, refused %d (non-2xx), failed %d (no answer); faults %v",
		senders*per, nodes, answers.nAccepted.Load(), perNode[0].Load(), perNode[1].Load(), perNode[2].Load(), answers.nQueued.Load(),
		delivered, dups, answers.nRefused.Load(), answers.nFailed.Load(), faults)
	if m := missing(); len(m) > 0 {
		logQueueState(t, database)
		t.Fatalf("%d deliveries answered 2xx never reached the app, e.g. %v", len(m), m[:min(5, len(m))])
	}
}

// logQueueState says what the database holds of the name's queue: what
// became of its deliveries, what is left, and who claims it.
func logQueueState(t *testing.T, database string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, database)
	if err != nil {
		t.Logf("read queue state: %v", err)
		return
	}
	defer conn.Close(ctx)
	for _, q := range []string{
		`SELECT outcome || ' ' || count(*) || ' (max attempts ' || max(attempts) || ')' FROM delivery_log GROUP BY outcome`,
		`SELECT 'queued ' || delivery_id || ' attempts ' || attempts || ' failures ' || failures FROM queue ORDER BY seq LIMIT 5`,
		`SELECT 'claim ' || holder || ' expires in ' || (expires_at - (extract(epoch from clock_timestamp()) * 1e9)::bigint) / 1000000 || ' ms' FROM queue_claims`,
		`SELECT 'error ' || error || ' ' || count(*) FROM delivery_log WHERE error <> '' GROUP BY error`,
	} {
		rows, err := conn.Query(ctx, q)
		if err != nil {
			t.Logf("%s: %v", q, err)
			continue
		}
		for rows.Next() {
			var line string
			rows.Scan(&line)
			t.Log(line)
		}
		rows.Close()
	}
}
