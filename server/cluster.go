package server

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/relaytunnel/relay/protocol"
)

// cluster is this node's view of the node registry: the live nodes agents
// are told to dial, and a generation that moves on each change.
type cluster struct {
	mu    sync.Mutex
	nodes []protocol.NodeAddr
	gen   uint64
}

// set installs nodes and says whether they differ from the last list.
func (c *cluster) set(nodes []protocol.NodeAddr) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if slices.Equal(c.nodes, nodes) {
		return false
	}
	c.nodes = nodes
	c.gen++
	return true
}

func (c *cluster) get() ([]protocol.NodeAddr, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes, c.gen
}

// clustered says whether this server is a node of a cluster.
func (s *Server) clustered() bool { return s.cfg.NodeName != "" }

// joinCluster takes this node's lease and reads the live nodes; a node
// that cannot register does not start.
func (s *Server) joinCluster(ctx context.Context) error {
	if err := s.store.RegisterNode(ctx, s.cfg.NodeName, s.cfg.Advertise, s.cfg.NodeLease); err != nil {
		return fmt.Errorf("join the cluster as %s: %w", s.cfg.NodeName, err)
	}
	return s.refreshNodes(ctx)
}

// refreshNodes reads the live nodes and, when they changed, tells every
// connected agent.
func (s *Server) refreshNodes(ctx context.Context) error {
	live, err := s.store.LiveNodes(ctx)
	if err != nil {
		return err
	}
	nodes := make([]protocol.NodeAddr, 0, len(live)+1)
	for _, n := range live {
		nodes = append(nodes, protocol.NodeAddr{Name: n.Name, Addr: n.Addr})
	}
	if !slices.ContainsFunc(nodes, func(n protocol.NodeAddr) bool { return n.Name == s.cfg.NodeName }) {
		// Our lease is being renewed, whatever a lagging read says.
		nodes = append(nodes, protocol.NodeAddr{Name: s.cfg.NodeName, Addr: s.cfg.Advertise})
		slices.SortFunc(nodes, func(a, b protocol.NodeAddr) int { return strings.Compare(a.Name, b.Name) })
	}
	if !s.cluster.set(nodes) {
		return nil
	}
	s.log.Info("cluster nodes", "nodes", nodes)
	for _, t := range s.reg.all() {
		s.sendNodes(t)
	}
	return nil
}

// sendNodes tells t's agent the live nodes if it has not heard this list
// yet. Only once its Welcome has left: a Nodes frame must not overtake it.
func (s *Server) sendNodes(t *tunnel) {
	t.nodesMu.Lock()
	defer t.nodesMu.Unlock()
	nodes, gen := s.cluster.get()
	if !t.welcomed || t.nodesGen == gen {
		return
	}
	t.nodesGen = gen
	if err := t.ctrl.SendNodes(protocol.Nodes{Nodes: nodes}); err != nil {
		s.log.Debug("send nodes", "name", t.name, "session", t.id, "err", err)
	}
}

// keepLease renews this node's lease every third of its length and
// follows the other nodes' comings and goings, until ctx ends; then it
// gives the lease up, so agents drop this node at once.
func (s *Server) keepLease(ctx context.Context) {
	t := time.NewTicker(s.cfg.NodeLease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			lctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := s.store.LeaveNode(lctx, s.cfg.NodeName); err != nil {
				s.log.Warn("leave the cluster", "node", s.cfg.NodeName, "err", err)
			}
			return
		case <-t.C:
		}
		if err := s.store.RegisterNode(ctx, s.cfg.NodeName, s.cfg.Advertise, s.cfg.NodeLease); err != nil && ctx.Err() == nil {
			s.log.Warn("renew node lease", "node", s.cfg.NodeName, "err", err)
		}
		if err := s.refreshNodes(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("read cluster nodes", "err", err)
		}
	}
}

// wakeDrainers wakes the drainer of every name another node queued a
// delivery for, until the channel closes ("": any name may have one).
func (s *Server) wakeDrainers(queued <-chan string) {
	for name := range queued {
		if name == "" {
			for _, t := range s.reg.all() {
				t.kickQueue()
			}
			continue
		}
		if t := s.reg.get(name); t != nil {
			t.kickQueue()
		}
	}
}

// Nodes are the cluster's live nodes as this node last read them, by
// name; nil when it is not a node of a cluster.
func (s *Server) Nodes() []string {
	nodes, _ := s.cluster.get()
	var names []string
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	return names
}

// Tunnels is how many agent sessions serve a name on this node now.
func (s *Server) Tunnels() int {
	s.reg.mu.RLock()
	defer s.reg.mu.RUnlock()
	return len(s.reg.m)
}
