package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/relaytunnel/relay/server/store"
)

// Enqueue stores q durably with its body, read chunk by chunk, unless the
// limits say no (checked against the declared size before a byte is read,
// then as the body arrives). It is on disk when Enqueue returns.
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

// querier is a transaction or the read pool.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// usage is name's share of the queue; spooling adds bodies still arriving.
func usage(ctx context.Context, db querier, name string, spooling bool) (store.Usage, error) {
	var u store.Usage
	q := `SELECT (SELECT count(*) FROM queue WHERE name = ?1),
		(SELECT COALESCE(sum(body_size), 0) FROM queue WHERE name = ?1),
		(SELECT COALESCE(sum(body_size), 0) FROM queue) + (SELECT COALESCE(sum(bytes), 0) FROM queue_spools)`
	if spooling {
		q = `SELECT (SELECT count(*) FROM queue WHERE name = ?1) + (SELECT count(*) FROM queue_spools WHERE name = ?1),
		(SELECT COALESCE(sum(body_size), 0) FROM queue WHERE name = ?1) + (SELECT COALESCE(sum(bytes), 0) FROM queue_spools WHERE name = ?1),
		(SELECT COALESCE(sum(body_size), 0) FROM queue) + (SELECT COALESCE(sum(bytes), 0) FROM queue_spools)`
	}
	if err := db.QueryRowContext(ctx, q, name).Scan(&u.Count, &u.Bytes, &u.TotalBytes); err != nil {
		return u, fmt.Errorf("queue size: %w", err)
	}
	return u, nil
}

func (sp spooler) Room(ctx context.Context, name string, size int64, lim store.QueueLimits) error {
	u, err := usage(ctx, sp.s.r, name, true)
	if err != nil {
		return err
	}
	return lim.Fits(name, u, 1, size)
}

func (sp spooler) Whole(ctx context.Context, q *store.Queued, body []byte, lim store.QueueLimits) error {
	return sp.s.tx(ctx, func(tx *sql.Tx) error {
		u, err := usage(ctx, tx, q.Name, false)
		if err != nil {
			return err
		}
		if err := lim.Fits(q.Name, u, 1, q.BodySize); err != nil {
			return err
		}
		if len(body) > 0 {
			if _, err := tx.ExecContext(ctx, `INSERT INTO queue_chunks (delivery_id, idx, data) VALUES (?, 0, ?)`, q.DeliveryID, body); err != nil {
				return fmt.Errorf("store body: %w", err)
			}
		}
		return insertQueued(ctx, tx, q)
	})
}

func (sp spooler) Begin(ctx context.Context, q *store.Queued) error {
	return sp.s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO queue_spools (delivery_id, name, started_at) VALUES (?, ?, ?)`,
			q.DeliveryID, q.Name, time.Now().UnixNano())
		if err != nil {
			return fmt.Errorf("begin body: %w", err)
		}
		return nil
	})
}

func (sp spooler) Chunk(ctx context.Context, q *store.Queued, idx int, data []byte, stored int64, lim store.QueueLimits) error {
	return sp.s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE queue_spools SET bytes = ? WHERE delivery_id = ?`, stored, q.DeliveryID); err != nil {
			return fmt.Errorf("store body: %w", err)
		}
		u, err := usage(ctx, tx, q.Name, false)
		if err != nil {
			return err
		}
		// The total already counts this spool's bytes; the name's bytes
		// are the stored deliveries only.
		u.Bytes += stored
		if err := lim.Fits(q.Name, u, 0, 0); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO queue_chunks (delivery_id, idx, data) VALUES (?, ?, ?)`, q.DeliveryID, idx, data); err != nil {
			return fmt.Errorf("store body: %w", err)
		}
		return nil
	})
}

func (sp spooler) Commit(ctx context.Context, q *store.Queued, lim store.QueueLimits) error {
	return sp.s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM queue_spools WHERE delivery_id = ?`, q.DeliveryID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
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
	return sp.s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM queue_chunks WHERE delivery_id = ?`, q.DeliveryID); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM queue_spools WHERE delivery_id = ?`, q.DeliveryID)
		return err
	})
}

// insertQueued puts q at the tail of its queue and starts its log line.
func insertQueued(ctx context.Context, tx *sql.Tx, q *store.Queued) error {
	hdr, err := json.Marshal(q.Header)
	if err != nil {
		return fmt.Errorf("encode headers: %w", err)
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO queue (name, delivery_id, received_at, remote_addr, method, uri, host, header, body_size)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		q.Name, q.DeliveryID, q.ReceivedAt.UnixNano(), q.RemoteAddr, q.Method, q.URI, q.Host, hdr, q.BodySize)
	if err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	q.Seq, _ = res.LastInsertId()
	if _, err := tx.ExecContext(ctx, `INSERT INTO delivery_log (name, delivery_id, received_at, method, uri, queued, outcome, at)
		VALUES (?, ?, ?, ?, ?, 1, ?, ?)`, q.Name, q.DeliveryID, q.ReceivedAt.UnixNano(), q.Method, q.URI, store.OutcomeQueued, time.Now().UnixNano()); err != nil {
		return fmt.Errorf("log delivery: %w", err)
	}
	_, err = tx.ExecContext(ctx, `DELETE FROM delivery_log WHERE name = ?1 AND seq <= (SELECT seq FROM delivery_log WHERE name = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)`,
		q.Name, store.MaxLogPerName)
	return err
}

// NextQueued is the oldest delivery queued for name, or ErrNotFound.
func (s *Store) NextQueued(ctx context.Context, name string) (*store.Queued, error) {
	q := &store.Queued{}
	var recv int64
	var hdr []byte
	err := s.r.QueryRowContext(ctx, `SELECT seq, name, delivery_id, received_at, remote_addr, method, uri, host, header, body_size, attempts, failures
		FROM queue WHERE name = ? ORDER BY seq LIMIT 1`, name).
		Scan(&q.Seq, &q.Name, &q.DeliveryID, &recv, &q.RemoteAddr, &q.Method, &q.URI, &q.Host, &hdr, &q.BodySize, &q.Attempts, &q.Failures)
	if errors.Is(err, sql.ErrNoRows) {
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
		err := s.r.QueryRowContext(ctx, `SELECT data FROM queue_chunks WHERE delivery_id = ? AND idx = ?`, q.DeliveryID, idx).Scan(&b)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, store.ErrNotFound
		}
		return b, err
	})
}

// Attempted counts a hand-over of q that did not end with the local app's
// answer; failure says whether it counts towards dead-lettering. q's
// counts are updated, and reason goes to the delivery log.
func (s *Store) Attempted(ctx context.Context, q *store.Queued, failure bool, reason string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `UPDATE queue SET attempts = attempts + 1, failures = failures + ? WHERE seq = ? RETURNING attempts, failures`,
			failure, q.Seq).Scan(&q.Attempts, &q.Failures)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("queued delivery %s: %w", q.DeliveryID, store.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("count attempt: %w", err)
		}
		_, err = tx.ExecContext(ctx, `UPDATE delivery_log SET attempts = ?, error = ?, at = ? WHERE delivery_id = ?`,
			q.Attempts, reason, time.Now().UnixNano(), q.DeliveryID)
		return err
	})
}

// Ack removes a queued delivery with its body (delivered, or moved aside
// as dead_lettered) and records the outcome in its log line, in one
// transaction.
func (s *Store) Ack(ctx context.Context, q *store.Queued, outcome string, status int) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM queue WHERE seq = ?`, q.Seq)
		if err != nil {
			return fmt.Errorf("ack: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("queued delivery %s: %w", q.DeliveryID, store.ErrNotFound)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM queue_chunks WHERE delivery_id = ?`, q.DeliveryID); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
		_, err = tx.ExecContext(ctx, `UPDATE delivery_log SET outcome = ?, status = ?, at = ? WHERE delivery_id = ?`,
			outcome, status, time.Now().UnixNano(), q.DeliveryID)
		return err
	})
}

// QueueLen is how many deliveries wait for name.
func (s *Store) QueueLen(ctx context.Context, name string) (int, error) {
	var n int
	err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM queue WHERE name = ?`, name).Scan(&n)
	return n, err
}

// QueueStats is, for each name with deliveries queued, how many and the
// earliest ReceivedAt among them: one GROUP BY over the queue, so a
// metrics scrape costs one query however many names are reserved.
func (s *Store) QueueStats(ctx context.Context) (map[string]store.QueueStat, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT name, count(*), min(received_at) FROM queue GROUP BY name`)
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

// ClaimQueue makes holder the only drainer of name's queue until ttl has
// passed or it releases the claim; claiming again renews it. It reports
// false while another holder's claim is live.
func (s *Store) ClaimQueue(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	var ok bool
	err := s.tx(ctx, func(tx *sql.Tx) error {
		now := time.Now()
		res, err := tx.ExecContext(ctx, `INSERT INTO queue_claims (name, holder, expires_at) VALUES (?1, ?2, ?3)
			ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
			WHERE queue_claims.holder = excluded.holder OR queue_claims.expires_at < ?4`,
			name, holder, now.Add(ttl).UnixNano(), now.UnixNano())
		if err != nil {
			return fmt.Errorf("claim queue %q: %w", name, err)
		}
		n, _ := res.RowsAffected()
		ok = n > 0
		return nil
	})
	return ok, err
}

// ReleaseQueue ends holder's claim on name's queue.
func (s *Store) ReleaseQueue(ctx context.Context, name, holder string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM queue_claims WHERE name = ? AND holder = ?`, name, holder)
		return err
	})
}

// PurgeSpools removes bodies that began arriving before before and never
// finished: a process that died while receiving them.
func (s *Store) PurgeSpools(ctx context.Context, before time.Time) (int, error) {
	var n int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM queue_chunks WHERE delivery_id IN
			(SELECT delivery_id FROM queue_spools WHERE started_at < ?)`, before.UnixNano()); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM queue_spools WHERE started_at < ?`, before.UnixNano())
		if err != nil {
			return err
		}
		n, _ = res.RowsAffected()
		return nil
	})
	return int(n), err
}

// DeliveryLog is name's latest log lines, newest first.
func (s *Store) DeliveryLog(ctx context.Context, name string, limit int) ([]store.LogEntry, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT delivery_id, received_at, method, uri, queued, outcome, status, attempts, error, at
		FROM delivery_log WHERE name = ? ORDER BY seq DESC LIMIT ?`, name, limit)
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
