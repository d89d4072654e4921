package sqlite

import (
	"context"
	"fmt"
	"time"
)

// WatchRevocations sends the id of every token revoked from now on, by
// this process or another one on the same file (relay token revoke),
// until ctx ends; then it closes the channel. It polls the revocations
// table, which costs one indexed read per poll.
func (s *Store) WatchRevocations(ctx context.Context) (<-chan string, error) {
	var last int64
	if err := s.r.QueryRowContext(ctx, `SELECT COALESCE(max(seq), 0) FROM revocations`).Scan(&last); err != nil {
		return nil, fmt.Errorf("watch revocations: %w", err)
	}
	ch := make(chan string)
	go func() {
		defer close(ch)
		t := time.NewTicker(s.poll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			ids, next, err := s.revokedSince(ctx, last)
			if err != nil {
				continue // the next poll tries again
			}
			last = next
			for _, id := range ids {
				select {
				case ch <- id:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return ch, nil
}

func (s *Store) revokedSince(ctx context.Context, after int64) ([]string, int64, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT seq, token_id FROM revocations WHERE seq > ? ORDER BY seq`, after)
	if err != nil {
		return nil, after, err
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&after, &id); err != nil {
			return nil, after, err
		}
		ids = append(ids, id)
	}
	return ids, after, rows.Err()
}
