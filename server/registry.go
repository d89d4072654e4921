package server

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/relaytunnel/relay/protocol"
)

// tunnel is one connected agent serving one name.
type tunnel struct {
	name        string
	tokenID     string
	id          string // session id, for logs
	sess        protocol.Session
	ctrl        *protocol.Control
	connectedAt time.Time
	flight      inflight      // deliveries on this session
	kick        chan struct{} // wakes a running queue drainer
	load        tunnelLoad    // the edge's slots and notices (edge.go)
	queueCtx    context.Context
	stopQueue   context.CancelFunc // ends the drainer: session over, replaced or revoked
	revoked     atomic.Bool

	// The queue drainer runs only while the name may have something
	// queued: started by kickQueue, it ends once it finds the queue empty
	// (an idle tunnel holds no goroutine and polls nothing; a delivery
	// queued by another node kicks it through the store's WatchQueued).
	drainMu    sync.Mutex
	draining   bool   // a drainer runs
	startDrain func() // starts one, owned by the server's WaitGroup

	nodesMu  sync.Mutex // orders the Welcome and Nodes frames
	welcomed bool       // the Welcome has left
	nodesGen uint64     // the node list the agent has
}

// registry maps names to the tunnel serving them now.
type registry struct {
	mu sync.RWMutex
	m  map[string]*tunnel
}

func newRegistry() *registry { return &registry{m: make(map[string]*tunnel)} }

func (r *registry) get(name string) *tunnel {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.m[name]
}

// put installs t and returns the tunnel it replaced, if any.
func (r *registry) put(t *tunnel) *tunnel {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.m[t.name]
	r.m[t.name] = t
	return old
}

// remove drops t only if it is still the current tunnel for its name: a
// replaced session ending late must not unregister its successor.
func (r *registry) remove(t *tunnel) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m[t.name] == t {
		delete(r.m, t.name)
	}
}

func (r *registry) all() []*tunnel {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*tunnel, 0, len(r.m))
	for _, t := range r.m {
		out = append(out, t)
	}
	return out
}
