package record

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/relaytunnel/relay/internal/sqlitedb"
)

// Defaults for Options' zero fields.
const (
	DefaultMaxCount = 10000
	DefaultMaxAge   = 7 * 24 * time.Hour
	DefaultBodyCap  = 1 << 20
	// DBFile is the database's name inside the data directory.
	DBFile = "requests.db"
)

// Options bound what the store keeps.
type Options struct {
	MaxCount int           // deliveries kept; older ones are pruned
	MaxAge   time.Duration // deliveries older than this are pruned
	BodyCap  int64         // bytes of each body kept (the rest is counted, not kept)
}

func (o Options) withDefaults() Options {
	if o.MaxCount <= 0 {
		o.MaxCount = DefaultMaxCount
	}
	if o.MaxAge <= 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.BodyCap <= 0 {
		o.BodyCap = DefaultBodyCap
	}
	return o
}

// Store is the recordings database. Several processes may open it at once
// (the agent writing, `relay requests` reading): SQLite's WAL lets readers
// proceed while one writes.
type Store struct {
	db   *sql.DB
	opt  Options
	path string
	// writer is the one connection recordings are written on. SQLite
	// drops a connection's page cache whenever another connection has
	// committed, so writing on whichever pooled connection is idle would
	// read the table's pages from disk again for every batch.
	writer *sql.Conn
	wmu    sync.Mutex // one batch at a time on writer
	adds   int64      // under wmu
}

// writerCacheKiB is the page cache of the connection recordings are
// written on.
const writerCacheKiB = 512

// pruneEvery is how many additions pass between retention checks.
const pruneEvery = 256

// Open opens (creating if needed) DIR/requests.db.
func Open(ctx context.Context, dir string, opt Options) (*Store, error) {
	path := filepath.Join(dir, DBFile)
	// A recording is not a promise made to anyone: NORMAL survives the
	// agent being killed, and only a power cut may lose the last writes.
	db, err := sqlitedb.Open(ctx, path, sqlitedb.Options{Sync: sqlitedb.SyncNormal, Migrations: migrations})
	if err != nil {
		return nil, fmt.Errorf("open recordings: %w", err)
	}
	s, err := newStore(ctx, db, opt, path)
	if err != nil {
		return nil, err
	}
	if _, err := s.Prune(ctx, time.Now()); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// ErrNoRecordings is returned by OpenExisting for a directory without a
// recordings database.
var ErrNoRecordings = errors.New("no recordings")

// OpenExisting opens DIR/requests.db for reading and the odd replay, as
// `relay requests` does while the agent may be writing: it creates
// nothing and prunes nothing, since retention is the agent's (its --keep
// may be larger than the defaults here).
func OpenExisting(ctx context.Context, dir string) (*Store, error) {
	path := filepath.Join(dir, DBFile)
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%w in %s: %w", ErrNoRecordings, dir, err)
	}
	db, err := sqlitedb.Open(ctx, path, sqlitedb.Options{Sync: sqlitedb.SyncNormal, Migrations: migrations})
	if err != nil {
		return nil, fmt.Errorf("open recordings: %w", err)
	}
	return newStore(ctx, db, Options{}, path)
}

// newStore holds the write path's connection of db.
func newStore(ctx context.Context, db *sql.DB, opt Options, path string) (*Store, error) {
	s := &Store{db: db, opt: opt.withDefaults(), path: path}
	var err error
	if s.writer, err = db.Conn(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open recordings: %w", err)
	}
	// Appends touch the last pages of the table and its indexes; SQLite's
	// default 2 MB page cache mostly kept the overflow pages of large
	// bodies already written, in the agent's resident memory.
	if _, err := s.writer.ExecContext(ctx, fmt.Sprintf("PRAGMA cache_size = -%d", writerCacheKiB)); err != nil {
		s.Close()
		return nil, fmt.Errorf("open recordings: %w", err)
	}
	return s, nil
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

// BodyCap is how many bytes of each body are kept.
func (s *Store) BodyCap() int64 { return s.opt.BodyCap }

// Close closes the database.
func (s *Store) Close() error {
	s.writer.Close()
	return s.db.Close()
}

var migrations = []string{
	// 1: deliveries, and the event keys --dedup has forwarded.
	`CREATE TABLE deliveries (
		id               INTEGER PRIMARY KEY AUTOINCREMENT,
		relay_id         TEXT NOT NULL DEFAULT '',
		replay_of        INTEGER NOT NULL DEFAULT 0,
		kind             TEXT NOT NULL,
		outcome          TEXT NOT NULL,
		tunnel           TEXT NOT NULL DEFAULT '',
		transport        TEXT NOT NULL DEFAULT '',
		target           TEXT NOT NULL DEFAULT '',
		method           TEXT NOT NULL,
		host             TEXT NOT NULL DEFAULT '',
		path             TEXT NOT NULL,
		query            TEXT NOT NULL DEFAULT '',
		remote_addr      TEXT NOT NULL DEFAULT '',
		req_header       BLOB,
		req_body         BLOB,
		req_size         INTEGER NOT NULL DEFAULT 0,
		req_truncated    INTEGER NOT NULL DEFAULT 0,
		status           INTEGER NOT NULL DEFAULT 0,
		resp_header      BLOB,
		resp_body        BLOB,
		resp_size        INTEGER NOT NULL DEFAULT 0,
		resp_truncated   INTEGER NOT NULL DEFAULT 0,
		error            TEXT NOT NULL DEFAULT '',
		attempts         BLOB,
		attempt_count    INTEGER NOT NULL DEFAULT 0,
		received_at      INTEGER NOT NULL,
		started_at       INTEGER NOT NULL,
		answered_at      INTEGER NOT NULL DEFAULT 0,
		finished_at      INTEGER NOT NULL DEFAULT 0,
		provider         TEXT NOT NULL DEFAULT '',
		event            TEXT NOT NULL DEFAULT '',
		event_id         TEXT NOT NULL DEFAULT '',
		signature        TEXT NOT NULL DEFAULT '',
		signature_reason TEXT NOT NULL DEFAULT '',
		duplicate_of     INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX deliveries_received ON deliveries(received_at);
	CREATE INDEX deliveries_event ON deliveries(provider, event_id) WHERE event_id != '';
	CREATE TABLE seen (
		key     TEXT PRIMARY KEY,
		at      INTEGER NOT NULL
	);`,
}

const insertSQL = `INSERT INTO deliveries (relay_id, replay_of, kind, outcome, tunnel, transport, target,
	method, host, path, query, remote_addr, req_header, req_body, req_size, req_truncated,
	status, resp_header, resp_body, resp_size, resp_truncated, error, attempts, attempt_count,
	received_at, started_at, answered_at, finished_at, provider, event, event_id, signature,
	signature_reason, duplicate_of)
	VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`

// Add records d and sets d.ID.
func (s *Store) Add(ctx context.Context, d *Delivery) (int64, error) {
	if err := s.AddBatch(ctx, []*Delivery{d}); err != nil {
		return 0, err
	}
	return d.ID, nil
}

// AddBatch records ds in one transaction and sets their ids: the agent's
// recorder batches what arrives together, so a burst costs one commit.
// Every pruneEvery additions the retention limits are applied.
func (s *Store) AddBatch(ctx context.Context, ds []*Delivery) error {
	// Everything but the inserts is done before the write lock is taken:
	// --dedup's marks wait for it, between the local app's answer and
	// the answer to the relay.
	rows := make([][]any, len(ds))
	for i, d := range ds {
		s.capRecording(d)
		rows[i] = []any{d.RelayID, d.ReplayOf, d.Kind, d.Outcome, d.Tunnel, d.Transport, d.Target,
			d.Method, d.Host, d.Path, d.Query, d.RemoteAddr, headerJSON(d.RequestHeader), d.RequestBody.Data,
			d.RequestBody.Size, d.RequestBody.Truncated, d.Status, headerJSON(d.ResponseHeader), d.ResponseBody.Data,
			d.ResponseBody.Size, d.ResponseBody.Truncated, d.Error, attemptsJSON(d.Attempts), len(d.Attempts),
			nanos(d.ReceivedAt), nanos(d.StartedAt), nanos(d.AnsweredAt), nanos(d.FinishedAt),
			d.Provider, d.Event, d.EventID, d.Signature, d.SignatureReason, d.DuplicateOf}
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.insert(ctx, ds, rows); err != nil {
		return err
	}
	k := int64(len(ds))
	s.adds += k
	if s.adds/pruneEvery != (s.adds-k)/pruneEvery {
		if _, err := s.prune(ctx, s.writer, time.Now()); err != nil {
			return err
		}
	}
	return nil
}

// insert writes rows in one transaction and sets the ids of ds.
func (s *Store) insert(ctx context.Context, ds []*Delivery, rows [][]any) error {
	tx, err := s.writer.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("record deliveries: %w", err)
	}
	defer tx.Rollback()
	stmt, err := tx.PrepareContext(ctx, insertSQL)
	if err != nil {
		return fmt.Errorf("record deliveries: %w", err)
	}
	defer stmt.Close()
	for i, d := range ds {
		res, err := stmt.ExecContext(ctx, rows[i]...)
		if err != nil {
			return fmt.Errorf("record delivery: %w", err)
		}
		if d.ID, err = res.LastInsertId(); err != nil {
			return fmt.Errorf("record delivery: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("record deliveries: %w", err)
	}
	return nil
}

// Recording caps beyond the body cap: strangers choose header sizes and
// event ids, and each recording is kept for days.
const (
	// MaxRecordedHeaderBytes bounds the request or response header bytes
	// one recording keeps; headers beyond it are left out and
	// HeadersTruncated says how many bytes were.
	MaxRecordedHeaderBytes = 64 << 10
	// HeadersTruncated is added to a recorded header set that was cut.
	HeadersTruncated = "X-Relay-Recording-Truncated"
	// maxRecordedField bounds short text fields (event id, event, error).
	maxRecordedField = 1 << 10
)

// capRecording keeps what is stored within the caps even when a caller
// handed more, marking what it cut.
func (s *Store) capRecording(d *Delivery) {
	for _, b := range []*Body{&d.RequestBody, &d.ResponseBody} {
		if int64(len(b.Data)) > s.opt.BodyCap {
			b.Data, b.Truncated = b.Data[:s.opt.BodyCap], true
		}
		if b.Size < int64(len(b.Data)) {
			b.Size = int64(len(b.Data))
		}
	}
	d.RequestHeader = capHeader(d.RequestHeader)
	d.ResponseHeader = capHeader(d.ResponseHeader)
	for _, f := range []*string{&d.EventID, &d.Event, &d.Error, &d.SignatureReason} {
		if len(*f) > maxRecordedField {
			*f = (*f)[:maxRecordedField]
		}
	}
}

// capHeader is h, or a copy of it with the headers beyond
// MaxRecordedHeaderBytes (in name order) left out.
func capHeader(h http.Header) http.Header {
	size := 0
	for k, vs := range h {
		for _, v := range vs {
			size += len(k) + len(v) + 4
		}
	}
	if size <= MaxRecordedHeaderBytes {
		return h
	}
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make(http.Header, len(h))
	kept := 0
	for _, k := range keys {
		for _, v := range h[k] {
			if n := len(k) + len(v) + 4; kept+n <= MaxRecordedHeaderBytes {
				out[k] = append(out[k], v)
				kept += n
			}
		}
	}
	out.Set(HeadersTruncated, strconv.Itoa(size-kept)+" header bytes not recorded")
	return out
}

// Prune applies the retention limits (count and age) and forgets dedup
// keys older than the age limit. It returns how many deliveries went.
func (s *Store) Prune(ctx context.Context, now time.Time) (int64, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.prune(ctx, s.writer, now)
}

func (s *Store) prune(ctx context.Context, db interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, now time.Time) (int64, error) {
	// Each statement walks an index (received_at, the rowid), never the
	// table. Ids only grow and only the oldest rows are deleted, so the
	// newest MaxCount recordings are those above max(id) - MaxCount.
	cutoff := now.Add(-s.opt.MaxAge).UnixNano()
	res, err := db.ExecContext(ctx, `DELETE FROM deliveries WHERE received_at < ?`, cutoff)
	if err != nil {
		return 0, fmt.Errorf("prune recordings: %w", err)
	}
	n, _ := res.RowsAffected()
	res, err = db.ExecContext(ctx, `DELETE FROM deliveries WHERE id <= (SELECT max(id) FROM deliveries) - ?`, s.opt.MaxCount)
	if err != nil {
		return n, fmt.Errorf("prune recordings: %w", err)
	}
	m, _ := res.RowsAffected()
	n += m
	if _, err := db.ExecContext(ctx, `DELETE FROM seen WHERE at < ?`, cutoff); err != nil {
		return n, fmt.Errorf("prune recordings: %w", err)
	}
	return n, nil
}

const summaryCols = `id, replay_of, kind, outcome, tunnel, transport, method, path, query, status, error,
	received_at, started_at, finished_at, req_size, provider, event, event_id, signature, attempt_count`

func scanSummary(sc interface{ Scan(...any) error }) (Summary, error) {
	var m Summary
	var received, started, finished int64
	err := sc.Scan(&m.ID, &m.ReplayOf, &m.Kind, &m.Outcome, &m.Tunnel, &m.Transport, &m.Method, &m.Path, &m.Query,
		&m.Status, &m.Error, &received, &started, &finished, &m.RequestSize, &m.Provider, &m.Event,
		&m.EventID, &m.Signature, &m.Attempts)
	m.ReceivedAt = fromNanos(received)
	if finished != 0 && started != 0 {
		m.DurationMS = ms(time.Duration(finished - started))
	}
	return m, err
}

// List returns summaries matching f, newest first.
func (s *Store) List(ctx context.Context, f Filter) ([]Summary, error) {
	var where []string
	var args []any
	add := func(cond string, a ...any) { where = append(where, cond); args = append(args, a...) }
	if f.BeforeID > 0 {
		add("id < ?", f.BeforeID)
	}
	if f.AfterID > 0 {
		add("id > ?", f.AfterID)
	}
	if f.StatusClass > 0 {
		add("status >= ? AND status < ?", f.StatusClass*100, f.StatusClass*100+100)
	}
	if f.Status > 0 {
		add("status = ?", f.Status)
	}
	if f.Provider != "" {
		add("provider = ?", strings.ToLower(f.Provider))
	}
	if f.Tunnel != "" {
		add("tunnel = ?", f.Tunnel)
	}
	if f.PathPrefix != "" {
		add("substr(path, 1, ?) = ?", len(f.PathPrefix), f.PathPrefix)
	}
	if !f.Since.IsZero() {
		add("received_at >= ?", f.Since.UnixNano())
	}
	if q := strings.TrimSpace(f.Search); q != "" {
		like := "%" + strings.NewReplacer(`\`, `\\`, "%", `\%`, "_", `\_`).Replace(q) + "%"
		add(`(path LIKE ? ESCAPE '\' OR query LIKE ? ESCAPE '\' OR provider LIKE ? ESCAPE '\'
			OR event LIKE ? ESCAPE '\' OR event_id LIKE ? ESCAPE '\' OR error LIKE ? ESCAPE '\'
			OR method LIKE ? ESCAPE '\' OR CAST(status AS TEXT) = ?
			OR CAST(req_body AS TEXT) LIKE ? ESCAPE '\' OR CAST(resp_body AS TEXT) LIKE ? ESCAPE '\')`,
			like, like, like, like, like, like, like, q, like, like)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	q := "SELECT " + summaryCols + " FROM deliveries"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY id DESC LIMIT ?"
	rows, err := s.db.QueryContext(ctx, q, append(args, limit)...)
	if err != nil {
		return nil, fmt.Errorf("list recordings: %w", err)
	}
	defer rows.Close()
	var out []Summary
	for rows.Next() {
		m, err := scanSummary(rows)
		if err != nil {
			return nil, fmt.Errorf("list recordings: %w", err)
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// Get returns one delivery in full.
func (s *Store) Get(ctx context.Context, id int64) (*Delivery, error) {
	var d Delivery
	var reqH, respH, attempts []byte
	var received, started, answered, finished int64
	err := s.db.QueryRowContext(ctx, `SELECT id, relay_id, replay_of, kind, outcome, tunnel, transport, target,
		method, host, path, query, remote_addr, req_header, req_body, req_size, req_truncated,
		status, resp_header, resp_body, resp_size, resp_truncated, error, attempts,
		received_at, started_at, answered_at, finished_at, provider, event, event_id, signature,
		signature_reason, duplicate_of FROM deliveries WHERE id = ?`, id).Scan(
		&d.ID, &d.RelayID, &d.ReplayOf, &d.Kind, &d.Outcome, &d.Tunnel, &d.Transport, &d.Target,
		&d.Method, &d.Host, &d.Path, &d.Query, &d.RemoteAddr, &reqH, &d.RequestBody.Data, &d.RequestBody.Size,
		&d.RequestBody.Truncated, &d.Status, &respH, &d.ResponseBody.Data, &d.ResponseBody.Size,
		&d.ResponseBody.Truncated, &d.Error, &attempts, &received, &started, &answered, &finished,
		&d.Provider, &d.Event, &d.EventID, &d.Signature, &d.SignatureReason, &d.DuplicateOf)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("delivery %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get delivery %d: %w", id, err)
	}
	d.ReceivedAt, d.StartedAt = fromNanos(received), fromNanos(started)
	d.AnsweredAt, d.FinishedAt = fromNanos(answered), fromNanos(finished)
	if len(reqH) > 0 {
		json.Unmarshal(reqH, &d.RequestHeader)
	}
	if len(respH) > 0 {
		json.Unmarshal(respH, &d.ResponseHeader)
	}
	if len(attempts) > 0 {
		json.Unmarshal(attempts, &d.Attempts)
	}
	if d.RequestHeader == nil {
		d.RequestHeader = http.Header{}
	}
	return &d, nil
}

// MarkSeen notes that the event key was forwarded and answered, for
// --dedup; it is written before the answer goes back to the relay, so a
// redelivery after a crash finds it.
func (s *Store) MarkSeen(ctx context.Context, key string, at time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO seen (key, at) VALUES (?, ?)
		ON CONFLICT (key) DO UPDATE SET at = excluded.at`, key, at.UnixNano())
	if err != nil {
		return fmt.Errorf("mark event %s seen: %w", key, err)
	}
	return nil
}

// Seen reports whether key was marked at or after since.
func (s *Store) Seen(ctx context.Context, key string, since time.Time) (bool, error) {
	var at int64
	err := s.db.QueryRowContext(ctx, `SELECT at FROM seen WHERE key = ?`, key).Scan(&at)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up event %s: %w", key, err)
	}
	return at >= since.UnixNano(), nil
}

// FirstForwarded is the id of the earliest forwarded recording of a
// provider's event, or 0.
func (s *Store) FirstForwarded(ctx context.Context, provider, eventID string) int64 {
	var id int64
	s.db.QueryRowContext(ctx, `SELECT id FROM deliveries WHERE provider = ? AND event_id = ?
		AND outcome = ? ORDER BY id LIMIT 1`, provider, eventID, OutcomeForwarded).Scan(&id)
	return id
}

func headerJSON(h http.Header) []byte {
	if h == nil {
		return nil
	}
	b, _ := json.Marshal(h)
	return b
}

func attemptsJSON(a []Attempt) []byte {
	if len(a) == 0 {
		return nil
	}
	b, _ := json.Marshal(a)
	return b
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}
