package sqlite

import (
	"context"
	"fmt"
	"time"

	"github.com/relaytunnel/relay/server/store"
)

// RegisterNode takes or renews name's lease for ttl. SQLite serves one
// node, so this only matters to keep the Store's one behaviour.
func (s *Store) RegisterNode(ctx context.Context, name, addr string, ttl time.Duration) error {
	_, err := s.w.ExecContext(ctx, `INSERT INTO nodes (name, addr, expires_ms) VALUES (?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET addr = excluded.addr, expires_ms = excluded.expires_ms`,
		name, addr, time.Now().Add(ttl).UnixMilli())
	if err != nil {
		return fmt.Errorf("register node %s: %w", name, err)
	}
	return nil
}

// LiveNodes are the nodes whose lease has not expired, by name.
func (s *Store) LiveNodes(ctx context.Context) ([]store.Node, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT name, addr FROM nodes WHERE expires_ms > ? ORDER BY name`, time.Now().UnixMilli())
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

// LeaveNode ends name's lease.
func (s *Store) LeaveNode(ctx context.Context, name string) error {
	if _, err := s.w.ExecContext(ctx, `DELETE FROM nodes WHERE name = ?`, name); err != nil {
		return fmt.Errorf("remove node %s: %w", name, err)
	}
	return nil
}

// WatchQueued reports nothing: one node enqueues and drains, and wakes
// its own drainer directly. The channel closes when ctx ends.
func (s *Store) WatchQueued(ctx context.Context) (<-chan string, error) {
	ch := make(chan string)
	go func() {
		<-ctx.Done()
		close(ch)
	}()
	return ch, nil
}
