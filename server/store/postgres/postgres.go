// Package postgres keeps the relay server's state in PostgreSQL, so that
// several relay nodes can share it: tokens and names, the offline queue
// (bodies in chunks), the delivery log, revocations (announced with
// LISTEN/NOTIFY) and the ACME certificate cache. It uses pgx's pool and
// plain SQL.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/crypto/acme/autocert"

	"github.com/relaytunnel/relay/server/store"
)

// DefaultRevocationPoll is how often a watcher looks for revocations when
// no notification arrived: the fallback for a notification lost with its
// connection.
const DefaultRevocationPoll = 5 * time.Second

// defaultMaxConns applies when the URL does not say (pool_max_conns):
// pgxpool's own default is four on small machines, which a burst of
// handshakes and a few large queued uploads would queue behind.
const defaultMaxConns = 16

// Options say how to open the database.
type Options struct {
	// Create installs relay's schema in a database that has none (the
	// server's start, relay token --init). Without it such a database is
	// ErrNoDatabase: a mistyped URL must not quietly start a new one.
	Create bool
	// RevocationPoll is WatchRevocations' fallback poll; default
	// DefaultRevocationPoll.
	RevocationPoll time.Duration
}

// Store is the server's PostgreSQL database.
type Store struct {
	pool  *pgxpool.Pool
	poll  time.Duration
	where string // host:port/database, for errors (never the password)
}

// Open connects to the database at url (postgres://...) and migrates it.
func Open(ctx context.Context, url string, opt Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's message may quote the URL, password included.
		return nil, errors.New("--database: not a PostgreSQL URL (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)")
	}
	if !strings.Contains(url, "pool_max_conns") {
		cfg.MaxConns = defaultMaxConns
	}
	if opt.RevocationPoll <= 0 {
		opt.RevocationPoll = DefaultRevocationPoll
	}
	cc := cfg.ConnConfig
	where := fmt.Sprintf("postgres://%s:%d/%s", cc.Host, cc.Port, cc.Database)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", where, err)
	}
	s := &Store{pool: pool, poll: opt.RevocationPoll, where: where}
	err = s.pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error { return migrate(ctx, c.Conn(), opt.Create, where) })
	if err != nil {
		pool.Close()
		if errors.Is(err, store.ErrNoDatabase) || errors.Is(err, store.ErrSchemaTooNew) {
			return nil, err
		}
		return nil, fmt.Errorf("open %s: %w", where, err)
	}
	return s, nil
}

// Close closes the pool.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// String names the database for logs, without credentials.
func (s *Store) String() string { return s.where }

// CreateToken makes a token that may serve names and returns it with its
// secret, which is not stored and cannot be shown again.
func (s *Store) CreateToken(ctx context.Context, names ...string) (store.Token, string, error) {
	if err := store.ValidNames(names); err != nil {
		return store.Token{}, "", err
	}
	tok, secret := store.NewToken(names)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO tokens (id, hash, created_at) VALUES ($1, $2, $3)`,
			tok.ID, store.HashSecret(secret), tok.CreatedAt.UnixMilli()); err != nil {
			return fmt.Errorf("insert token: %w", err)
		}
		for _, n := range names {
			if err := addName(ctx, tx, tok.ID, n); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return store.Token{}, "", err
	}
	return tok, secret, nil
}

func addName(ctx context.Context, tx pgx.Tx, tokenID, name string) error {
	// Two nodes creating tokens for one name at once: the row lock makes
	// the second wait and see the first's reservation.
	var owner string
	var revoked bool
	err := tx.QueryRow(ctx, `SELECT n.token_id, t.revoked FROM names n JOIN tokens t ON t.id = n.token_id
		WHERE n.name = $1 FOR UPDATE OF n`, name).Scan(&owner, &revoked)
	switch {
	case err == nil && !revoked && owner == tokenID:
		return nil
	case err == nil && !revoked:
		return fmt.Errorf("%w: %q (token %s)", store.ErrNameTaken, name, owner)
	case err != nil && !errors.Is(err, pgx.ErrNoRows):
		return err
	}
	// A revoked token's claim on the name is dropped; only a revoked one:
	// a reservation committed since the select above stays, and the
	// insert below then fails on it.
	if _, err := tx.Exec(ctx, `DELETE FROM names n USING tokens t WHERE n.name = $1 AND t.id = n.token_id AND t.revoked`, name); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO names (name, token_id) VALUES ($1, $2)`, name, tokenID); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "23505" { // unique_violation: a concurrent reservation won
			return fmt.Errorf("%w: %q", store.ErrNameTaken, name)
		}
		return fmt.Errorf("reserve name %q: %w", name, err)
	}
	return nil
}

// ListTokens lists every token, newest first.
func (s *Store) ListTokens(ctx context.Context) ([]store.Token, error) {
	rows, err := s.pool.Query(ctx, `SELECT t.id, t.created_at, t.last_used_at, t.revoked, COALESCE(string_agg(n.name, ',' ORDER BY n.pos), '')
		FROM tokens t LEFT JOIN names n ON n.token_id = t.id GROUP BY t.id ORDER BY t.created_at DESC, t.id`)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	defer rows.Close()
	var out []store.Token
	for rows.Next() {
		var (
			t                store.Token
			created, lastUse int64
			names            string
		)
		if err := rows.Scan(&t.ID, &created, &lastUse, &t.Revoked, &names); err != nil {
			return nil, err
		}
		t.CreatedAt = time.UnixMilli(created).UTC()
		if lastUse > 0 {
			t.LastUsedAt = time.UnixMilli(lastUse).UTC()
		}
		if names != "" {
			t.Names = strings.Split(names, ",")
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// revokedChannel carries the id of each revoked token to every node's
// WatchRevocations (NOTIFY is delivered when the revoking transaction
// commits).
const revokedChannel = "relay_revoked"

// RevokeToken revokes a token; its names become free, and every node ends
// its sessions when it hears of it.
func (s *Store) RevokeToken(ctx context.Context, id string) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE tokens SET revoked = true WHERE id = $1 AND NOT revoked`, id)
		if err != nil {
			return fmt.Errorf("revoke token: %w", err)
		}
		if tag.RowsAffected() == 0 {
			var revoked bool
			err := tx.QueryRow(ctx, `SELECT revoked FROM tokens WHERE id = $1`, id).Scan(&revoked)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				return fmt.Errorf("token %s: %w", id, store.ErrNotFound)
			case err != nil:
				return fmt.Errorf("revoke token: %w", err)
			}
			return fmt.Errorf("token %s: %w", id, store.ErrRevoked)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO revocations (token_id, at) VALUES ($1, $2)`, id, time.Now().UnixMilli()); err != nil {
			return fmt.Errorf("revoke token: %w", err)
		}
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, revokedChannel, id); err != nil {
			return fmt.Errorf("announce revocation: %w", err)
		}
		return nil
	})
}

// Authenticate finds the live token whose secret this is. It only reads.
func (s *Store) Authenticate(ctx context.Context, secret string) (store.Token, error) {
	var (
		t                store.Token
		created, lastUse int64
		names            string
	)
	err := s.pool.QueryRow(ctx, `SELECT t.id, t.created_at, t.last_used_at,
		COALESCE((SELECT string_agg(name, ',' ORDER BY pos) FROM names WHERE token_id = t.id), '')
		FROM tokens t WHERE t.hash = $1 AND NOT t.revoked`, store.HashSecret(secret)).Scan(&t.ID, &created, &lastUse, &names)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Token{}, store.ErrBadToken
	}
	if err != nil {
		return store.Token{}, fmt.Errorf("authenticate: %w", err)
	}
	t.CreatedAt = time.UnixMilli(created).UTC()
	if lastUse > 0 {
		t.LastUsedAt = time.UnixMilli(lastUse).UTC()
	}
	if names != "" {
		t.Names = strings.Split(names, ",")
	}
	return t, nil
}

// TouchTokens records when tokens were last used, in one statement.
func (s *Store) TouchTokens(ctx context.Context, used map[string]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	ids := make([]string, 0, len(used))
	ats := make([]int64, 0, len(used))
	for id, at := range used {
		ids = append(ids, id)
		ats = append(ats, at.UnixMilli())
	}
	_, err := s.pool.Exec(ctx, `UPDATE tokens SET last_used_at = GREATEST(last_used_at, v.at)
		FROM (SELECT unnest($1::text[]) AS id, unnest($2::bigint[]) AS at) v WHERE tokens.id = v.id`, ids, ats)
	if err != nil {
		return fmt.Errorf("touch tokens: %w", err)
	}
	return nil
}

// NameOwner is the id of the live token that reserved name.
func (s *Store) NameOwner(ctx context.Context, name string) (string, error) {
	var id string
	err := s.pool.QueryRow(ctx, `SELECT n.token_id FROM names n JOIN tokens t ON t.id = n.token_id
		WHERE n.name = $1 AND NOT t.revoked`, name).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", store.ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("look up name %q: %w", name, err)
	}
	return id, nil
}

// SetQueueing records whether name's offline deliveries are queued (the
// agent's --no-queue turns it off); it writes only when that changes.
func (s *Store) SetQueueing(ctx context.Context, name string, on bool) error {
	_, err := s.pool.Exec(ctx, `UPDATE names SET queue = $2 WHERE name = $1 AND queue <> $2`, name, on)
	return err
}

// Queueing reports whether name's offline deliveries are queued.
func (s *Store) Queueing(ctx context.Context, name string) (bool, error) {
	var on bool
	err := s.pool.QueryRow(ctx, `SELECT queue FROM names WHERE name = $1`, name).Scan(&on)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, store.ErrNotFound
	}
	return on, err
}

// CertCache is autocert's cache in the shared database: one certificate
// per name for the whole cluster, and HTTP-01 challenge tokens any node
// can answer.
func (s *Store) CertCache() autocert.Cache { return certCache{s.pool} }

type certCache struct{ pool *pgxpool.Pool }

func (c certCache) Get(ctx context.Context, key string) ([]byte, error) {
	var b []byte
	err := c.pool.QueryRow(ctx, `SELECT data FROM acme_cache WHERE key = $1`, key).Scan(&b)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, autocert.ErrCacheMiss
	}
	return b, err
}

func (c certCache) Put(ctx context.Context, key string, data []byte) error {
	_, err := c.pool.Exec(ctx, `INSERT INTO acme_cache (key, data) VALUES ($1, $2)
		ON CONFLICT (key) DO UPDATE SET data = excluded.data`, key, data)
	return err
}

// LockIssue makes nodes take turns at ordering a certificate for name
// (certs.IssueLocker), with a session advisory lock held until unlock. The
// lock has a connection of its own, not the pool's: an order may take
// minutes, and closing the connection is what releases the lock, also
// when this node dies.
func (c certCache) LockIssue(ctx context.Context, name string) (unlock func(), err error) {
	conn, err := pgx.ConnectConfig(ctx, c.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, fmt.Errorf("acme issue lock for %s: %w", name, err)
	}
	unlock = func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn.Close(cctx)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtextextended('relay.acme:' || $1, 0))`, name); err != nil {
		unlock()
		return nil, fmt.Errorf("acme issue lock for %s: %w", name, err)
	}
	return unlock, nil
}

func (c certCache) Delete(ctx context.Context, key string) error {
	_, err := c.pool.Exec(ctx, `DELETE FROM acme_cache WHERE key = $1`, key)
	return err
}
