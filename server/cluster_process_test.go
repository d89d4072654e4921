package server_test

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/internal/pgtest"
	"github.com/relaytunnel/relay/internal/relaytest"
)

// clusterNode is a node of TestAKilledNodeCostsTheAgentOneSessionAndNothingElse,
// run as a process so it can be killed the way a machine dies.
type clusterNode struct {
	*proc
	addr, dir string
}

func TestAKilledNodeCostsTheAgentOneSessionAndNothingElse(t *testing.T) {
	if testing.Short() {
		t.Skip("builds relay and runs three server processes")
	}
	bin := relaytest.BuildRelay(t)
	database := pgtest.URL(t)
	var nodes []clusterNode
	for i := range 3 {
		addr, dir := fmt.Sprintf("127.0.0.1:%d", relaytest.FreePort(t)), t.TempDir()
		n := clusterNode{nodeProc(t, bin, database, relaytest.NodeName(i), addr, dir), addr, dir}
		if i > 0 {
			relaytest.CopyDevCA(t, nodes[0].dir, n.dir) // one CA for the cluster
		}
		n.out = &relaytest.Buffer{}
		n.start()
		t.Cleanup(n.kill)
		relaytest.WaitListening(t, n.addr)
		nodes = append(nodes, n)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("%s output:\n%s", n.name, n.out.String())
			}
		})
	}
	// No --data: the database is all a token command needs.
	token := relaytest.CLIToken(t, bin, "--name", "survivor", "--database", database)
	caFile := filepath.Join(nodes[0].dir, "dev-ca.pem")
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	app := relaytest.EchoApp(t)
	console := &relaytest.Buffer{}
	a, _ := relaytest.ConnectAgent(t, client.Config{Server: nodes[0].addr, ServerName: "localhost", Token: token, Name: "survivor",
		Transport: "quic", CAFile: caFile, Target: app.URL, MaxBackoff: 200 * time.Millisecond, QUICTimeout: time.Second, Console: console})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent console:\n%s", console.String())
		}
	})
	relaytest.WaitFor(t, "the agent to have a session on every node", func() bool { return len(a.Nodes()) == 3 })

	deliver := func(n clusterNode) int {
		t.Helper()
		_, port, _ := strings.Cut(n.addr, ":")
		resp, _ := relaytest.Post(t, relaytest.HTTPSClient(t, n.addr, caPEM), "https://survivor.localhost:"+port+"/", `{}`)
		return resp.StatusCode
	}
	for _, n := range nodes {
		if code := deliver(n); code != http.StatusCreated {
			t.Fatalf("delivery through %s: %d, want the app's 201", n.name, code)
		}
	}

	// Lines from before the kill (a node may be seen joining twice while
	// the nodes' views of each other settle) are not the ones to read.
	before := len(console.String())
	since := func() string { return console.String()[before:] }
	nodes[2].kill()
	// The agent hears of it from its session going silent or from the
	// lease running out, whichever comes first.
	relaytest.WaitFor(t, "the agent to say it lost n3", func() bool {
		c := since()
		return strings.Contains(c, "relay node n3: connection lost") || strings.Contains(c, "relay node n3 left the cluster")
	})
	for _, n := range nodes[:2] {
		if code := deliver(n); code != http.StatusCreated {
			t.Fatalf("delivery through %s after n3 died: %d, want the app's 201", n.name, code)
		}
	}
	relaytest.WaitFor(t, "n3's lease to run out and the agent to drop it", func() bool {
		return strings.Contains(since(), "relay node n3 left the cluster; connected to 2 of 2 (n1, n2)")
	})
	dialled := strings.Count(console.String(), "relay node n3:")
	for _, n := range nodes[:2] {
		if code := deliver(n); code != http.StatusCreated {
			t.Fatalf("delivery through %s after n3 left: %d", n.name, code)
		}
	}
	if got := a.Nodes(); len(got) != 2 {
		t.Fatalf("agent has sessions to %v, want n1 and n2", got)
	}
	if strings.Count(console.String(), "relay node n3:") != dialled {
		t.Fatalf("the agent kept dialling n3 after its lease ran out:\n%s", console.String())
	}
}

// TestAnAgentStoppedWithSIGTERMLeavesEveryNodeAtOnce stops a `relay connect`
// process that holds a session on each of three nodes, as systemctl stop or
// Ctrl-C does: it exits cleanly, and every node hears it leave (a clean
// disconnection, not a session that goes silent and times out 15 s later).
func TestAnAgentStoppedWithSIGTERMLeavesEveryNodeAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds relay and runs the agent as a process")
	}
	bin := relaytest.BuildRelay(t)
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) { testAgentStoppedWithSIGTERM(t, bin, tr) })
	}
}

func testAgentStoppedWithSIGTERM(t *testing.T, bin, transport string) {
	c := relaytest.StartCluster(t, 3)
	token := relaytest.CreateToken(t, c.Node(0), "leaver")
	app := relaytest.EchoApp(t)
	out := &relaytest.Buffer{}
	cmd := exec.Command(bin, "connect", app.URL, "--server", c.Addr(0), "--token", token, "--name", "leaver",
		"--transport", transport, "--ca", c.Node(0).DevCAPath(), "--data", t.TempDir(), "--inspect", "")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("agent output:\n%s", out.String())
		}
	})
	relaytest.WaitFor(t, "the agent to connect to every node", func() bool {
		return strings.Contains(out.String(), "to 3 relay nodes (n1, n2, n3)")
	})
	for i := range c.Len() {
		relaytest.WaitFor(t, "every node to hold the tunnel", func() bool { return c.Node(i).Tunnels() == 1 })
	}

	// Only what the nodes log from here on is about the stop.
	before := make([]int, c.Len())
	for i := range before {
		before[i] = len(c.Logs[i].String())
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("relay connect on SIGTERM: %v (want exit status 0)", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("relay connect did not exit within 30 s of SIGTERM")
	}
	// A clean close reads as no error, or as the agent's QUIC close
	// (application error 0) when the control stream noticed it first; a
	// session left to time out would end with the peer's silence.
	for i := range c.Len() {
		var left string
		relaytest.WaitFor(t, "every node to log the agent leaving", func() bool {
			for line := range strings.Lines(c.Logs[i].String()[before[i]:]) {
				if strings.Contains(line, `msg="agent disconnected"`) && strings.Contains(line, "name=leaver") {
					left = line
				}
			}
			return left != ""
		})
		if c.Node(i).Tunnels() != 0 || strings.Contains(left, "err=") && !strings.Contains(left, "Application error 0x0 (remote)") {
			t.Fatalf("%s: the agent's session did not end cleanly: %q", relaytest.NodeName(i), left)
		}
	}
}
