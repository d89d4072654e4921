package relaytest

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/relaytunnel/relay/internal/pgtest"
	"github.com/relaytunnel/relay/server"
)

// Cluster is relay servers on loopback sharing one PostgreSQL database,
// each a node (n1, n2, ...) in a data directory of its own that holds a
// copy of one dev CA.
type Cluster struct {
	Database string
	// Logs are each node's server log (debug level).
	Logs []*Buffer

	t     testing.TB
	mods  []func(*server.Config)
	mu    sync.Mutex
	nodes []*server.Server
	dirs  []string
	addrs []string
}

// ClusterLease is the node lease of test clusters: short, so a node that
// dies is dropped within a test's patience.
const ClusterLease = 2 * time.Second

// StartCluster starts n dev-mode nodes on a new database; they stop when
// the test ends. mods change every node's configuration.
func StartCluster(t testing.TB, n int, mods ...func(*server.Config)) *Cluster {
	t.Helper()
	c := &Cluster{Database: pgtest.URL(t), t: t, mods: mods}
	for i := range n {
		dir := t.TempDir()
		if i > 0 {
			CopyDevCA(t, c.dirs[0], dir)
		}
		c.dirs = append(c.dirs, dir)
		c.addrs = append(c.addrs, fmt.Sprintf("127.0.0.1:%d", FreePort(t)))
		c.Logs = append(c.Logs, &Buffer{})
		c.nodes = append(c.nodes, nil)
		c.Start(i)
	}
	for i := range n {
		WaitFor(t, "every node to see the others", func() bool { return len(c.Node(i).Nodes()) == n })
	}
	return c
}

// CopyDevCA copies the dev CA pair from one data directory to another, so
// both servers issue certificates from the same CA.
func CopyDevCA(t testing.TB, from, to string) {
	t.Helper()
	for _, f := range []string{"dev-ca.pem", "dev-ca-key.pem"} {
		b, err := os.ReadFile(filepath.Join(from, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// NodeName is node i's name.
func NodeName(i int) string { return fmt.Sprintf("n%d", i+1) }

// Node is node i's server, or nil while it is stopped.
func (c *Cluster) Node(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Len is the number of nodes, running or not.
func (c *Cluster) Len() int { return len(c.dirs) }

// Addr is node i's address (TCP and UDP), running or not.
func (c *Cluster) Addr(i int) string { return c.addrs[i] }

// Start starts node i, again at its address and in its directory.
func (c *Cluster) Start(i int) *server.Server {
	c.t.Helper()
	cfg := devConfig(c.addrs[i], c.dirs[i])
	cfg.Database, cfg.NodeName, cfg.Advertise, cfg.NodeLease = c.Database, NodeName(i), c.addrs[i], ClusterLease
	cfg.Logger = slog.New(slog.NewTextHandler(c.Logs[i], &slog.HandlerOptions{Level: slog.LevelDebug}))
	for _, m := range c.mods {
		m(&cfg)
	}
	srv := startServer(c.t, "node "+NodeName(i), cfg)
	c.mu.Lock()
	c.nodes[i] = srv
	c.mu.Unlock()
	c.t.Cleanup(func() { c.Stop(i) })
	return srv
}

// Stop shuts node i down (it leaves the cluster at once); a stopped node
// stays stopped.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	srv := c.nodes[i]
	c.nodes[i] = nil
	c.mu.Unlock()
	if srv == nil {
		return
	}
	shutdown(srv)
}
