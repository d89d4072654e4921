package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// ErrQueueFull means a name's queue is at its count or byte limit; the
// provider is told to retry later.
var ErrQueueFull = errors.New("queue full")

// Queued is one delivery kept for a tunnel whose agent is offline.
type Queued struct {
	Seq        int64
	Name       string
	DeliveryID string
	ReceivedAt time.Time
	RemoteAddr string
	Method     string
	URI        string // path and query as the provider sent them
	Host       string
	Header     http.Header
	Body       []byte
	Attempts   int
}

// QueueLimits bound one name's queue.
type QueueLimits struct {
	MaxCount int
	MaxBytes int64
}

// Enqueue stores q durably (synchronous=FULL: on disk when it returns)
// unless the name's queue is over its limits.
func (s *Store) Enqueue(ctx context.Context, q *Queued, lim QueueLimits) error {
	hdr, err := json.Marshal(q.Header)
	if err != nil {
		return fmt.Errorf("encode headers: %w", err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n int
	var bytes int64
	if err := tx.QueryRowContext(ctx, `SELECT count(*), COALESCE(sum(length(body)), 0) FROM queue WHERE name = ?`, q.Name).Scan(&n, &bytes); err != nil {
		return fmt.Errorf("queue size: %w", err)
	}
	if n+1 > lim.MaxCount || bytes+int64(len(q.Body)) > lim.MaxBytes {
		return fmt.Errorf("%w: %q holds %d deliveries, %d bytes (limits %d, %d)", ErrQueueFull, q.Name, n, bytes, lim.MaxCount, lim.MaxBytes)
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO queue (name, delivery_id, received_at, remote_addr, method, uri, host, header, body)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		q.Name, q.DeliveryID, q.ReceivedAt.UnixNano(), q.RemoteAddr, q.Method, q.URI, q.Host, hdr, q.Body)
	if err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	q.Seq, _ = res.LastInsertId()
	if err := logTx(ctx, tx, q.Name, q.DeliveryID, q.ReceivedAt, q.Method, q.URI, true, "queued", 0); err != nil {
		return err
	}
	return tx.Commit()
}

// NextQueued is the oldest delivery queued for name, or ErrNotFound.
func (s *Store) NextQueued(ctx context.Context, name string) (*Queued, error) {
	q := &Queued{}
	var recv int64
	var hdr []byte
	err := s.db.QueryRowContext(ctx, `SELECT seq, name, delivery_id, received_at, remote_addr, method, uri, host, header, body, attempts
		FROM queue WHERE name = ? ORDER BY seq LIMIT 1`, name).
		Scan(&q.Seq, &q.Name, &q.DeliveryID, &recv, &q.RemoteAddr, &q.Method, &q.URI, &q.Host, &hdr, &q.Body, &q.Attempts)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
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

// Attempted counts a failed hand-over of a queued delivery.
func (s *Store) Attempted(ctx context.Context, seq int64) error {
	_, err := s.db.ExecContext(ctx, `UPDATE queue SET attempts = attempts + 1 WHERE seq = ?`, seq)
	return err
}

// Ack removes a queued delivery once the agent reported the local app's
// answer, and logs the outcome, in one transaction.
func (s *Store) Ack(ctx context.Context, q *Queued, status int, outcome string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM queue WHERE seq = ?`, q.Seq); err != nil {
		return fmt.Errorf("ack: %w", err)
	}
	if err := logTx(ctx, tx, q.Name, q.DeliveryID, q.ReceivedAt, q.Method, q.URI, true, outcome, status); err != nil {
		return err
	}
	return tx.Commit()
}

// QueueLen is how many deliveries wait for name.
func (s *Store) QueueLen(ctx context.Context, name string) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM queue WHERE name = ?`, name).Scan(&n)
	return n, err
}

// SetQueueing records whether name's offline deliveries are queued (the
// agent's --no-queue turns it off).
func (s *Store) SetQueueing(ctx context.Context, name string, on bool) error {
	v := 0
	if on {
		v = 1
	}
	_, err := s.db.ExecContext(ctx, `UPDATE names SET queue = ? WHERE name = ?`, v, name)
	return err
}

// Queueing reports whether name's offline deliveries are queued.
func (s *Store) Queueing(ctx context.Context, name string) (bool, error) {
	var v int
	err := s.db.QueryRowContext(ctx, `SELECT queue FROM names WHERE name = ?`, name).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return false, ErrNotFound
	}
	return v != 0, err
}

// LogEntry is one line of a name's delivery log.
type LogEntry struct {
	DeliveryID string    `json:"id"`
	ReceivedAt time.Time `json:"received_at"`
	Method     string    `json:"method"`
	URI        string    `json:"uri"`
	Queued     bool      `json:"queued"`
	Outcome    string    `json:"outcome"` // queued, delivered, refused
	Status     int       `json:"status,omitempty"`
	At         time.Time `json:"at"`
}

// maxLogPerName bounds the delivery log.
const maxLogPerName = 1000

// LogDelivery adds a line to name's delivery log.
func (s *Store) LogDelivery(ctx context.Context, name, id string, received time.Time, method, uri string, queued bool, outcome string, status int) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := logTx(ctx, tx, name, id, received, method, uri, queued, outcome, status); err != nil {
		return err
	}
	return tx.Commit()
}

func logTx(ctx context.Context, tx *sql.Tx, name, id string, received time.Time, method, uri string, queued bool, outcome string, status int) error {
	q := 0
	if queued {
		q = 1
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO delivery_log (name, delivery_id, received_at, method, uri, queued, outcome, status, at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, name, id, received.UnixNano(), method, uri, q, outcome, status, time.Now().UnixNano()); err != nil {
		return fmt.Errorf("log delivery: %w", err)
	}
	_, err := tx.ExecContext(ctx, `DELETE FROM delivery_log WHERE name = ? AND seq <= (SELECT seq FROM delivery_log WHERE name = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)`,
		name, name, maxLogPerName)
	return err
}

// DeliveryLog is name's latest log lines, newest first.
func (s *Store) DeliveryLog(ctx context.Context, name string, limit int) ([]LogEntry, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT delivery_id, received_at, method, uri, queued, outcome, status, at
		FROM delivery_log WHERE name = ? ORDER BY seq DESC LIMIT ?`, name, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []LogEntry
	for rows.Next() {
		var e LogEntry
		var recv, at int64
		var q int
		if err := rows.Scan(&e.DeliveryID, &recv, &e.Method, &e.URI, &q, &e.Outcome, &e.Status, &at); err != nil {
			return nil, err
		}
		e.ReceivedAt, e.At, e.Queued = time.Unix(0, recv), time.Unix(0, at), q != 0
		out = append(out, e)
	}
	return out, rows.Err()
}
