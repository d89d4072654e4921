package client

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/relaytunnel/relay/protocol"
)

// firstRound is how long the agent waits for its first sessions to a
// cluster's nodes before it says how many it reached (and is Ready).
const firstRound = 10 * time.Second

// fleet keeps one session to every live node of a cluster: a node that
// joins gets one, a node that leaves loses its own, and each reconnects
// on its own with the usual backoff. Any node a provider reaches then has
// the tunnel locally; nothing crosses between nodes.
type fleet struct {
	a     *Agent
	ctx   context.Context
	fatal chan error // a session's error no retry can fix ends them all
	wg    sync.WaitGroup
	mu    sync.Mutex
	loops map[string]*nodeLoop
	said  bool // the first round's summary is out
}

type nodeLoop struct {
	t      *target
	cancel context.CancelFunc
	up     bool
	first  chan struct{} // closed once its first attempt is over
	once   sync.Once
	via    string
}

// runCluster serves a tunnel on every node of the cluster l's server
// belongs to, until ctx ends or a session meets an error a retry cannot
// fix (a revoked token, another agent taking the name).
func (a *Agent) runCluster(ctx context.Context, first *target, l *link) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f := &fleet{a: a, ctx: ctx, fatal: make(chan error, 1), loops: map[string]*nodeLoop{}}
	a.fleet.Store(f)
	first.node = l.welcome.Node
	for _, n := range l.welcome.Nodes {
		if n.Name == first.node && n.Addr != "" {
			// Reconnect to this node itself: the name --server gave may
			// lead to any node next time.
			first.tcpAddr, first.udpAddr = n.Addr, n.Addr
		}
	}
	f.mu.Lock()
	f.start(first, l)
	f.mu.Unlock()
	f.update(l.welcome.Nodes, false)

	// The first round: every node dialled once, or firstRound passed.
	f.mu.Lock()
	var firsts []chan struct{}
	for _, nl := range f.loops {
		firsts = append(firsts, nl.first)
	}
	f.mu.Unlock()
	timer := time.NewTimer(firstRound)
	defer timer.Stop()
	for _, ch := range firsts {
		select {
		case <-ch:
		case <-timer.C:
		case <-ctx.Done():
		}
	}
	f.mu.Lock()
	up, all := f.upNames()
	f.said = true
	f.mu.Unlock()
	count := fmt.Sprintf("%d relay nodes", len(up))
	switch {
	case len(up) < all:
		count = fmt.Sprintf("%d of %d relay nodes", len(up), all)
	case all == 1:
		count = "1 relay node"
	}
	a.say("connected via %s to %s (%s): %s -> %s", transportName(l.sess), count, strings.Join(up, ", "), l.welcome.URL, a.cfg.target)
	if a.current.Load() == nil {
		a.current.Store(&sessionState{sess: l.sess})
	}
	a.metrics.setConnected(true)
	a.readyOK.Do(func() { close(a.ready) })

	var err error
	select {
	case <-ctx.Done():
	case err = <-f.fatal:
	}
	cancel()
	f.wg.Wait()
	return err
}

// start runs a session loop for t (f.mu held), beginning with l if given.
func (f *fleet) start(t *target, l *link) {
	ctx, cancel := context.WithCancel(f.ctx)
	nl := &nodeLoop{t: t, cancel: cancel, first: make(chan struct{})}
	f.loops[t.node] = nl
	if l != nil {
		nl.up, nl.via = true, transportName(l.sess)
		nl.once.Do(func() { close(nl.first) })
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		if err := f.a.runTarget(ctx, t, l); err != nil {
			select {
			case f.fatal <- err:
			default:
			}
		}
	}()
}

// update makes the sessions follow the cluster's live nodes: it dials
// the nodes it has no session to and, when prune is set, drops those not
// listed. Only a Nodes frame prunes: the server sends one as soon as it
// read a change, whereas a Welcome's list may be a renewal period old and
// would drop a node that just joined.
func (f *fleet) update(nodes []protocol.NodeAddr, prune bool) {
	if len(nodes) == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx.Err() != nil {
		return
	}
	for _, n := range nodes {
		if _, ok := f.loops[n.Name]; ok || n.Addr == "" {
			continue
		}
		if f.said {
			f.a.say("relay node %s joined the cluster; connecting to it at %s", n.Name, n.Addr)
		}
		f.start(&target{node: n.Name, tcpAddr: n.Addr, udpAddr: n.Addr}, nil)
	}
	for name, nl := range f.loops {
		if !prune || slices.ContainsFunc(nodes, func(n protocol.NodeAddr) bool { return n.Name == name }) {
			continue
		}
		nl.cancel()
		delete(f.loops, name)
		up, all := f.upNames()
		f.a.say("relay node %s left the cluster; connected to %d of %d (%s)", name, len(up), all, strings.Join(up, ", "))
	}
}

// up notes that t's session is (back) up.
func (f *fleet) up(t *target, l *link) {
	f.mu.Lock()
	defer f.mu.Unlock()
	nl := f.loops[t.node]
	if nl == nil || nl.t != t {
		return // it left meanwhile
	}
	nl.up, nl.via = true, transportName(l.sess)
	nl.once.Do(func() { close(nl.first) })
	if f.said {
		up, all := f.upNames()
		f.a.say("relay node %s: connected via %s (%d of %d relay nodes: %s)", t.node, nl.via, len(up), all, strings.Join(up, ", "))
	}
}

// down notes that t's session ended or could not be made.
func (f *fleet) down(t *target) {
	f.mu.Lock()
	defer f.mu.Unlock()
	nl := f.loops[t.node]
	if nl == nil || nl.t != t {
		return
	}
	nl.up = false
	nl.once.Do(func() { close(nl.first) })
	up, _ := f.upNames()
	f.a.metrics.setConnected(len(up) > 0) // the tunnel is up while any node has it
}

// upNames are the nodes with a session now, by name, and how many nodes
// there are (f.mu held).
func (f *fleet) upNames() ([]string, int) {
	var up []string
	for name, nl := range f.loops {
		if nl.up {
			up = append(up, name)
		}
	}
	slices.Sort(up)
	return up, len(f.loops)
}

// Nodes are the cluster nodes the agent has a session to now, by name;
// nil when its server is not a cluster.
func (a *Agent) Nodes() []string {
	f := a.fleet.Load()
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	up, _ := f.upNames()
	return up
}
