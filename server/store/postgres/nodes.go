package postgres

import (
	"context"
	"fmt"
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
// node, until ctx ends; then it closes the channel. "" means the watch
// (re)connected and may have missed some: look at every name. A slow
// reader misses names rather than holding the listener up; the server's
// drainers poll as well.
func (s *Store) WatchQueued(ctx context.Context) (<-chan string, error) {
	ch := make(chan string, 64)
	go func() {
		defer close(ch)
		for failures := 0; ctx.Err() == nil; failures++ {
			ok := s.listenOnce(ctx, queuedChannel, func(name string) {
				select {
				case ch <- name:
				default:
				}
			})
			if ok {
				failures = 0
			}
			t := time.NewTimer(min(time.Duration(failures+1)*500*time.Millisecond, 10*time.Second))
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}()
	return ch, nil
}
