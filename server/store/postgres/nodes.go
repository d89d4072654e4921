package postgres

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/relaytunnel/relay/server/store"
)

// nowMillis is the database's clock: every node's lease is measured by it,
// so nodes whose clocks disagree still agree on who is live.
const nowMillis = `(extract(epoch from clock_timestamp()) * 1000)::bigint`

// RegisterNode takes or renews name's lease for ttl. A node restarted
// under its old name takes the name back at once, whatever the lease
// left by its previous life.
func (s *Store) RegisterNode(ctx context.Context, name, addr string, ttl time.Duration) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO nodes (name, addr, expires_ms) VALUES ($1, $2, `+nowMillis+` + $3)
		ON CONFLICT (name) DO UPDATE SET addr = excluded.addr, expires_ms = excluded.expires_ms`,
		name, addr, ttl.Milliseconds())
	if err != nil {
		return fmt.Errorf("register node %s: %w", name, err)
	}
	return nil
}

// LiveNodes are the nodes whose lease has not expired, by name.
func (s *Store) LiveNodes(ctx context.Context) ([]store.Node, error) {
	rows, err := s.pool.Query(ctx, `SELECT name, addr FROM nodes
		WHERE expires_ms > `+nowMillis+` ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	defer rows.Close()
	var nodes []store.Node
	for rows.Next() {
		var n store.Node
		if err := rows.Scan(&n.Name, &n.Addr); err != nil {
			return nil, fmt.Errorf("list nodes: %w", err)
		}
		nodes = append(nodes, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return nodes, nil
}

// LeaveNode ends name's lease: a node shutting down cleanly is gone at
// once rather than when its lease runs out.
func (s *Store) LeaveNode(ctx context.Context, name string) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM nodes WHERE name = $1`, name); err != nil {
		return fmt.Errorf("remove node %s: %w", name, err)
	}
	return nil
}

// queuedChannel carries the name of each newly queued delivery to every
// node, so the one holding the name's session hands it over at once.
const queuedChannel = "relay_queued"

// WatchQueued sends the name of every delivery queued from now on, by any
// node, until ctx ends; then it closes the channel. It loses none: names
// the reader has not taken yet wait, each once, and past maxPendingNames
// (or when the listener (re)connects and may have missed some) they give
// way to "", which means look at every name. So an idle drainer needs no
// poll.
func (s *Store) WatchQueued(ctx context.Context) (<-chan string, error) {
	ch := make(chan string)
	p := &pendingNames{wake: make(chan struct{}, 1), set: map[string]bool{}}
	var wg sync.WaitGroup
	wg.Go(func() { s.listen(ctx, queuedChannel, p.add) })
	go func() {
		defer close(ch)
		defer wg.Wait()
		for {
			name, ok := p.take()
			if !ok {
				select {
				case <-ctx.Done():
					return
				case <-p.wake:
				}
				continue
			}
			select {
			case ch <- name:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// maxPendingNames bounds what a busy reader leaves waiting: past it, one
// "" stands for them all.
const maxPendingNames = 4096

// pendingNames are the queued names a WatchQueued reader has yet to take,
// in the order they came, each once.
type pendingNames struct {
	mu    sync.Mutex
	all   bool // "" is owed: look at every name
	names []string
	set   map[string]bool
	wake  chan struct{}
}

func (p *pendingNames) add(name string) {
	p.mu.Lock()
	switch {
	case p.all:
	case name == "" || len(p.names) >= maxPendingNames:
		p.all, p.names = true, nil
		clear(p.set)
	case !p.set[name]:
		p.set[name] = true
		p.names = append(p.names, name)
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *pendingNames) take() (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.all:
		p.all = false
		return "", true
	case len(p.names) > 0:
		name := p.names[0]
		p.names = p.names[1:]
		delete(p.set, name)
		return name, true
	}
	return "", false
}
