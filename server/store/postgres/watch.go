package postgres

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// WatchRevocations sends the id of every token revoked from now on, by
// any node or relay token command on the same database, until ctx ends;
// then it closes the channel. A LISTEN connection wakes it as soon as a
// revocation commits; the revocations table is the truth, read on each
// wake-up and every poll interval, so a notification lost with its
// connection costs at most one interval.
func (s *Store) WatchRevocations(ctx context.Context) (<-chan string, error) {
	var last int64
	if err := s.pool.QueryRow(ctx, `SELECT COALESCE(max(seq), 0) FROM revocations`).Scan(&last); err != nil {
		return nil, fmt.Errorf("watch revocations: %w", err)
	}
	ch := make(chan string)
	wake := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.listen(ctx, revokedChannel, func(string) {
			select {
			case wake <- struct{}{}:
			default:
			}
		})
	}()
	go func() {
		defer close(ch)
		defer wg.Wait()
		t := time.NewTicker(s.poll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-wake:
			}
			ids, next, err := s.revokedSince(ctx, last)
			if err != nil {
				continue // the next wake-up or poll tries again
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
	rows, err := s.pool.Query(ctx, `SELECT seq, token_id FROM revocations WHERE seq > $1 ORDER BY seq`, after)
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

// listen keeps a connection of its own (not the pool's) listening on
// channel until ctx ends, calling got with each notification's payload,
// and with "" on every (re)connection, since notifications sent while it
// was away are lost.
func (s *Store) listen(ctx context.Context, channel string, got func(payload string)) {
	for failures := 0; ctx.Err() == nil; failures++ {
		if s.listenOnce(ctx, channel, got) {
			failures = 0 // it was up: retry at once
		}
		t := time.NewTimer(min(time.Duration(failures+1)*500*time.Millisecond, 10*time.Second))
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// listenOnce listens until the connection fails or ctx ends, calling got
// with each notification's payload, and with "" once listening (what was
// sent before is lost); it says whether it got as far as listening.
func (s *Store) listenOnce(ctx context.Context, channel string, got func(payload string)) bool {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return false
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return false
	}
	got("")
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return true
		}
		got(n.Payload)
	}
}
