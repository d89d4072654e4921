package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relaytunnel/relay/server/store"
)

// Enqueue stores q durably with its body, read chunk by chunk, unless the
// limits say no (checked against the declared size before a byte is read,
// then as the body arrives). It is committed when Enqueue returns.
func (s *Store) Enqueue(ctx context.Context, q *store.Queued, body io.Reader, lim store.QueueLimits) error {
	return store.Spool(ctx, spooler{s}, q, body, lim)
}

// QueueRoom fails with ErrQueueFull when name's queue cannot take a
// delivery of size bytes (size < 0: unknown).
func (s *Store) QueueRoom(ctx context.Context, name string, size int64, lim store.QueueLimits) error {
	return spooler{s}.Room(ctx, name, size, lim)
}

type spooler struct{ s *Store }

// errAbandoned means PurgeSpools took an upload for dead while its body
// was still arriving: its chunks are gone, so it cannot be committed.
var errAbandoned = errors.New("upload was purged as abandoned before its body was whole")

// usage is name's share of the queue; spooling adds bodies still arriving.
func usage(ctx context.Context, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, name string, spooling bool) (store.Usage, error) {
	var u store.Usage
	q := `SELECT (SELECT count(*) FROM queue WHERE name = $1),
		(SELECT COALESCE(sum(body_size), 0) FROM queue WHERE name = $1),
		(SELECT COALESCE(sum(body_size), 0) FROM queue) + (SELECT COALESCE(sum(bytes), 0) FROM queue_spools)`
	if spooling {
		q = `SELECT (SELECT count(*) FROM queue WHERE name = $1) + (SELECT count(*) FROM queue_spools WHERE name = $1),
		(SELECT COALESCE(sum(body_size), 0) FROM queue WHERE name = $1) + (SELECT COALESCE(sum(bytes), 0) FROM queue_spools WHERE name = $1),
		(SELECT COALESCE(sum(body_size), 0) FROM queue) + (SELECT COALESCE(sum(bytes), 0) FROM queue_spools)`
	}
	if err := db.QueryRow(ctx, q, name).Scan(&u.Count, &u.Bytes, &u.TotalBytes); err != nil {
		return u, fmt.Errorf("queue size: %w", err)
	}
	return u, nil
}

// lockName serialises the transactions that add to name's queue, across
// nodes: the count limit holds, and the order of seq is the order of
// commits (the order providers were answered 202).
func lockName(ctx context.Context, tx pgx.Tx, name string) error {
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('relay.queue:' || $1, 0))`, name)
	return err
}

func (sp spooler) Room(ctx context.Context, name string, size int64, lim store.QueueLimits) error {
	u, err := usage(ctx, sp.s.pool, name, true)
	if err != nil {
		return err
	}
	return lim.Fits(name, u, 1, size)
}

func (sp spooler) Whole(ctx context.Context, q *store.Queued, body []byte, lim store.QueueLimits) error {
	return pgx.BeginFunc(ctx, sp.s.pool, func(tx pgx.Tx) error {
		if err := lockName(ctx, tx, q.Name); err != nil {
			return err
		}
		u, err := usage(ctx, tx, q.Name, false)
		if err != nil {
			return err
		}
		if err := lim.Fits(q.Name, u, 1, q.BodySize); err != nil {
			return err
		}
		if len(body) > 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO queue_chunks (delivery_id, idx, data) VALUES ($1, 0, $2)`, q.DeliveryID, body); err != nil {
				return fmt.Errorf("store body: %w", err)
			}
		}
		return insertQueued(ctx, tx, q)
	})
}

func (sp spooler) Begin(ctx context.Context, q *store.Queued) error {
	_, err := sp.s.pool.Exec(ctx, `INSERT INTO queue_spools (delivery_id, name, started_at) VALUES ($1, $2, $3)`,
		q.DeliveryID, q.Name, time.Now().UnixNano())
	if err != nil {
		return fmt.Errorf("begin body: %w", err)
	}
	return nil
}

func (sp spooler) Chunk(ctx context.Context, q *store.Queued, idx int, data []byte, stored int64, lim store.QueueLimits) error {
	return pgx.BeginFunc(ctx, sp.s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE queue_spools SET bytes = $1 WHERE delivery_id = $2`, stored, q.DeliveryID); err != nil {
			return fmt.Errorf("store body: %w", err)
		}
		u, err := usage(ctx, tx, q.Name, false)
		if err != nil {
			return err
		}
		u.Bytes += stored // the total already counts this spool
		if err := lim.Fits(q.Name, u, 0, 0); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO queue_chunks (delivery_id, idx, data) VALUES ($1, $2, $3)`, q.DeliveryID, idx, data); err != nil {
			return fmt.Errorf("store body: %w", err)
		}
		return nil
	})
}

func (sp spooler) Commit(ctx context.Context, q *store.Queued, lim store.QueueLimits) error {
	return pgx.BeginFunc(ctx, sp.s.pool, func(tx pgx.Tx) error {
		if err := lockName(ctx, tx, q.Name); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM queue_spools WHERE delivery_id = $1`, q.DeliveryID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return errAbandoned
		}
		u, err := usage(ctx, tx, q.Name, false)
		if err != nil {
			return err
		}
		if err := lim.Fits(q.Name, u, 1, q.BodySize); err != nil {
			return err
		}
		return insertQueued(ctx, tx, q)
	})
}

func (sp spooler) Abort(ctx context.Context, q *store.Queued) error {
	return pgx.BeginFunc(ctx, sp.s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM queue_chunks WHERE delivery_id = $1`, q.DeliveryID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM queue_spools WHERE delivery_id = $1`, q.DeliveryID)
		return err
	})
}

// insertQueued puts q at the tail of its queue and starts its log line.
func insertQueued(ctx context.Context, tx pgx.Tx, q *store.Queued) error {
	hdr, err := json.Marshal(q.Header)
	if err != nil {
		return fmt.Errorf("encode headers: %w", err)
	}
	err = tx.QueryRow(ctx, `INSERT INTO queue (name, delivery_id, received_at, remote_addr, method, uri, host, header, body_size)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq`,
		q.Name, q.DeliveryID, q.ReceivedAt.UnixNano(), q.RemoteAddr, q.Method, q.URI, q.Host, hdr, q.BodySize).Scan(&q.Seq)
	if err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	// Sent on commit: a woken node finds the delivery there.
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, queuedChannel, q.Name); err != nil {
		return fmt.Errorf("announce queued delivery: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO delivery_log (name, delivery_id, received_at, method, uri, queued, outcome, at)
		VALUES ($1, $2, $3, $4, $5, true, $6, $7)`, q.Name, q.DeliveryID, q.ReceivedAt.UnixNano(), q.Method, q.URI, store.OutcomeQueued, time.Now().UnixNano()); err != nil {
		return fmt.Errorf("log delivery: %w", err)
	}
	_, err = tx.Exec(ctx, `DELETE FROM delivery_log WHERE name = $1 AND seq <= (SELECT seq FROM delivery_log WHERE name = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)`,
		q.Name, store.MaxLogPerName)
	return err
}

// NextQueued is the oldest delivery queued for name, or ErrNotFound.
func (s *Store) NextQueued(ctx context.Context, name string) (*store.Queued, error) {
	q := &store.Queued{}
	var recv int64
	var hdr []byte
	err := s.pool.QueryRow(ctx, `SELECT seq, name, delivery_id, received_at, remote_addr, method, uri, host, header, body_size, attempts, failures
		FROM queue WHERE name = $1 ORDER BY seq LIMIT 1`, name).
		Scan(&q.Seq, &q.Name, &q.DeliveryID, &recv, &q.RemoteAddr, &q.Method, &q.URI, &q.Host, &hdr, &q.BodySize, &q.Attempts, &q.Failures)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("next queued for %q: %w", name, err)
	}
	q.ReceivedAt = time.Unix(0, recv)
	if err := json.Unmarshal(hdr, &q.Header); err != nil {
		return nil, fmt.Errorf("decode queued headers: %w", err)
	}
	return q, nil
}

// QueuedBody reads q's body back, a chunk at a time.
func (s *Store) QueuedBody(ctx context.Context, q *store.Queued) io.ReadCloser {
	return store.NewBodyReader(ctx, q.BodySize, func(ctx context.Context, idx int) ([]byte, error) {
		var b []byte
		err := s.pool.QueryRow(ctx, `SELECT data FROM queue_chunks WHERE delivery_id = $1 AND idx = $2`, q.DeliveryID, idx).Scan(&b)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, store.ErrNotFound
		}
		return b, err
	})
}

// Attempted counts a hand-over of q that did not end with the local app's
// answer; failure says whether it counts towards dead-lettering. q's
// counts are updated, and reason goes to the delivery log.
func (s *Store) Attempted(ctx context.Context, q *store.Queued, failure bool, reason string) error {
	inc := 0
	if failure {
		inc = 1
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `UPDATE queue SET attempts = attempts + 1, failures = failures + $1 WHERE seq = $2 RETURNING attempts, failures`,
			inc, q.Seq).Scan(&q.Attempts, &q.Failures)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("queued delivery %s: %w", q.DeliveryID, store.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("count attempt: %w", err)
		}
		_, err = tx.Exec(ctx, `UPDATE delivery_log SET attempts = $1, error = $2, at = $3 WHERE delivery_id = $4`,
			q.Attempts, reason, time.Now().UnixNano(), q.DeliveryID)
		return err
	})
}

// Ack removes a queued delivery with its body (delivered, or moved aside
// as dead_lettered) and records the outcome in its log line, in one
// transaction.
func (s *Store) Ack(ctx context.Context, q *store.Queued, outcome string, status int) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM queue WHERE seq = $1`, q.Seq)
		if err != nil {
			return fmt.Errorf("ack: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("queued delivery %s: %w", q.DeliveryID, store.ErrNotFound)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM queue_chunks WHERE delivery_id = $1`, q.DeliveryID); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
		_, err = tx.Exec(ctx, `UPDATE delivery_log SET outcome = $1, status = $2, at = $3 WHERE delivery_id = $4`,
			outcome, status, time.Now().UnixNano(), q.DeliveryID)
		return err
	})
}

// QueueLen is how many deliveries wait for name.
func (s *Store) QueueLen(ctx context.Context, name string) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM queue WHERE name = $1`, name).Scan(&n)
	return n, err
}

// QueueStats is, for each name with deliveries queued, how many and the
// earliest ReceivedAt among them: one GROUP BY over the queue, so a
// metrics scrape costs one query however many names are reserved.
func (s *Store) QueueStats(ctx context.Context) (map[string]store.QueueStat, error) {
	rows, err := s.pool.Query(ctx, `SELECT name, count(*), min(received_at) FROM queue GROUP BY name`)
	if err != nil {
		return nil, fmt.Errorf("queue stats: %w", err)
	}
	defer rows.Close()
	out := map[string]store.QueueStat{}
	for rows.Next() {
		var name string
		var st store.QueueStat
		var oldest int64
		if err := rows.Scan(&name, &st.Count, &oldest); err != nil {
			return nil, fmt.Errorf("queue stats: %w", err)
		}
		st.Oldest = time.Unix(0, oldest)
		out[name] = st
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("queue stats: %w", err)
	}
	return out, nil
}

// ClaimQueue makes holder the only drainer of name's queue, on any node,
// until ttl has passed or it releases the claim; claiming again renews it.
// It reports false while another holder's claim is live. A lease row
// rather than an advisory lock: a lock would pin a pooled connection for
// the length of every hand-over, and a dead node's lease simply expires.
func (s *Store) ClaimQueue(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	now := time.Now()
	tag, err := s.pool.Exec(ctx, `INSERT INTO queue_claims (name, holder, expires_at) VALUES ($1, $2, $3)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
		WHERE queue_claims.holder = excluded.holder OR queue_claims.expires_at < $4`,
		name, holder, now.Add(ttl).UnixNano(), now.UnixNano())
	if err != nil {
		return false, fmt.Errorf("claim queue %q: %w", name, err)
	}
	return tag.RowsAffected() > 0, nil
}

// ReleaseQueue ends holder's claim on name's queue.
func (s *Store) ReleaseQueue(ctx context.Context, name, holder string) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM queue_claims WHERE name = $1 AND holder = $2`, name, holder)
	return err
}

// PurgeSpools removes bodies that began arriving before before and never
// finished: a node that died while receiving them.
func (s *Store) PurgeSpools(ctx context.Context, before time.Time) (int, error) {
	var n int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM queue_chunks WHERE delivery_id IN
			(SELECT delivery_id FROM queue_spools WHERE started_at < $1)`, before.UnixNano()); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM queue_spools WHERE started_at < $1`, before.UnixNano())
		n = tag.RowsAffected()
		return err
	})
	return int(n), err
}

// DeliveryLog is name's latest log lines, newest first.
func (s *Store) DeliveryLog(ctx context.Context, name string, limit int) ([]store.LogEntry, error) {
	rows, err := s.pool.Query(ctx, `SELECT delivery_id, received_at, method, uri, queued, outcome, status, attempts, error, at
		FROM delivery_log WHERE name = $1 ORDER BY seq DESC LIMIT $2`, name, limit)
	if err != nil {
		return nil, fmt.Errorf("delivery log: %w", err)
	}
	defer rows.Close()
	var out []store.LogEntry
	for rows.Next() {
		var e store.LogEntry
		var recv, at int64
		if err := rows.Scan(&e.DeliveryID, &recv, &e.Method, &e.URI, &e.Queued, &e.Outcome, &e.Status, &e.Attempts, &e.Error, &at); err != nil {
			return nil, err
		}
		e.ReceivedAt, e.At = time.Unix(0, recv), time.Unix(0, at)
		out = append(out, e)
	}
	return out, rows.Err()
}
