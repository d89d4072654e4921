// Package sqlite keeps the relay server's state in an embedded SQLite
// database, DIR/relay.db, for a single node: tokens and names, the offline
// queue, the delivery log and revocations. The ACME cache stays in files
// beside it (DIR/acme), where earlier versions kept it.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/acme/autocert"

	"github.com/relaytunnel/relay/internal/sqlitedb"
	"github.com/relaytunnel/relay/server/store"
)

// FileName is the database's name inside the data directory.
const FileName = "relay.db"

// DefaultRevocationPoll is how often a running server looks for tokens
// revoked by another process (relay token revoke).
const DefaultRevocationPoll = time.Second

// Options say how to open the database.
type Options struct {
	// Create makes DIR/relay.db when it does not exist (the server's
	// first start, relay token --init). Without it a missing database is
	// ErrNoDatabase: a mistyped --data must not quietly start a new one.
	Create bool
	// RevocationPoll is how often WatchRevocations looks; default
	// DefaultRevocationPoll.
	RevocationPoll time.Duration
}

// Store is the server's SQLite database.
type Store struct {
	dir  string
	poll time.Duration
	// SQLite takes one writer at a time. Writes go through one connection
	// so they queue in Go, in order, instead of spinning in SQLite's busy
	// handler (or failing SQLITE_BUSY when a read turns into a write);
	// reads use a pool of their own and never wait for writes (WAL).
	w, r *sql.DB
}

// Open opens DIR/relay.db and migrates it.
func Open(ctx context.Context, dir string, opt Options) (*Store, error) {
	path := filepath.Join(dir, FileName)
	if !opt.Create {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w in %s (no %s there)", store.ErrNoDatabase, dir, FileName)
		}
	}
	if opt.RevocationPoll <= 0 {
		opt.RevocationPoll = DefaultRevocationPoll
	}
	// synchronous=FULL: an answer to a provider (202) depends on a row
	// being on disk.
	w, err := sqlitedb.Open(ctx, path, sqlitedb.Options{Sync: sqlitedb.SyncFull, Migrations: migrations})
	if err != nil {
		if errors.Is(err, sqlitedb.ErrSchemaTooNew) {
			err = schemaTooNew{err}
		}
		return nil, err
	}
	w.SetMaxOpenConns(1)
	r, err := sqlitedb.Open(ctx, path, sqlitedb.Options{Sync: sqlitedb.SyncFull, Migrations: migrations})
	if err != nil {
		w.Close()
		return nil, err
	}
	r.SetMaxOpenConns(8)
	return &Store{dir: dir, poll: opt.RevocationPoll, w: w, r: r}, nil
}

// schemaTooNew is sqlitedb's error, which callers find as store's.
type schemaTooNew struct{ error }

func (schemaTooNew) Is(target error) bool { return target == store.ErrSchemaTooNew }
func (e schemaTooNew) Unwrap() error      { return e.error }

// Close closes the database.
func (s *Store) Close() error { return errors.Join(s.r.Close(), s.w.Close()) }

// CertCache keeps ACME certificates and the account key in DIR/acme.
func (s *Store) CertCache() autocert.Cache { return autocert.DirCache(filepath.Join(s.dir, "acme")) }

// tx runs fn in one write transaction (BEGIN IMMEDIATE).
func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// CreateToken makes a token that may serve names and returns it with its
// secret, which is not stored and cannot be shown again.
func (s *Store) CreateToken(ctx context.Context, names ...string) (store.Token, string, error) {
	if err := store.ValidNames(names); err != nil {
		return store.Token{}, "", err
	}
	tok, secret := store.NewToken(names)
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO tokens (id, hash, created_at) VALUES (?, ?, ?)`,
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

func addName(ctx context.Context, tx *sql.Tx, tokenID, name string) error {
	var owner string
	err := tx.QueryRowContext(ctx, `SELECT n.token_id FROM names n JOIN tokens t ON t.id = n.token_id
		WHERE n.name = ? AND t.revoked = 0`, name).Scan(&owner)
	switch {
	case err == nil && owner == tokenID:
		return nil
	case err == nil:
		return fmt.Errorf("%w: %q (token %s)", store.ErrNameTaken, name, owner)
	case !errors.Is(err, sql.ErrNoRows):
		return err
	}
	// A revoked token's claim on the name is dropped.
	if _, err := tx.ExecContext(ctx, `DELETE FROM names WHERE name = ? AND token_id IN (SELECT id FROM tokens WHERE revoked = 1)`, name); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO names (name, token_id) VALUES (?, ?)`, name, tokenID); err != nil {
		return fmt.Errorf("reserve name %q: %w", name, err)
	}
	return nil
}

// ListTokens lists every token, newest first.
func (s *Store) ListTokens(ctx context.Context) ([]store.Token, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT t.id, t.created_at, t.last_used_at, t.revoked, COALESCE(group_concat(n.name, ',' ORDER BY n.rowid), '')
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
			revoked          int
			names            string
		)
		if err := rows.Scan(&t.ID, &created, &lastUse, &revoked, &names); err != nil {
			return nil, err
		}
		t.CreatedAt = time.UnixMilli(created).UTC()
		if lastUse > 0 {
			t.LastUsedAt = time.UnixMilli(lastUse).UTC()
		}
		t.Revoked = revoked != 0
		if names != "" {
			t.Names = strings.Split(names, ",")
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// RevokeToken revokes a token; its names become free, and running servers
// end its sessions when they see the revocation.
func (s *Store) RevokeToken(ctx context.Context, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE tokens SET revoked = 1 WHERE id = ? AND revoked = 0`, id)
		if err != nil {
			return fmt.Errorf("revoke token: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return revokeMiss(ctx, s.r, id)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO revocations (token_id, at) VALUES (?, ?)`, id, time.Now().UnixMilli()); err != nil {
			return fmt.Errorf("revoke token: %w", err)
		}
		return nil
	})
}

// revokeMiss says why nothing was revoked.
func revokeMiss(ctx context.Context, db *sql.DB, id string) error {
	var revoked bool
	err := db.QueryRowContext(ctx, `SELECT revoked FROM tokens WHERE id = ?`, id).Scan(&revoked)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("token %s: %w", id, store.ErrNotFound)
	case err != nil:
		return fmt.Errorf("revoke token: %w", err)
	}
	return fmt.Errorf("token %s: %w", id, store.ErrRevoked)
}

// Authenticate finds the live token whose secret this is. It only reads:
// a burst of handshakes never waits for a write (see TouchTokens).
func (s *Store) Authenticate(ctx context.Context, secret string) (store.Token, error) {
	var (
		t                store.Token
		created, lastUse int64
		names            string
	)
	err := s.r.QueryRowContext(ctx, `SELECT t.id, t.created_at, t.last_used_at, COALESCE((SELECT group_concat(name, ',' ORDER BY rowid) FROM names WHERE token_id = t.id), '')
		FROM tokens t WHERE t.hash = ? AND t.revoked = 0`, store.HashSecret(secret)).Scan(&t.ID, &created, &lastUse, &names)
	if errors.Is(err, sql.ErrNoRows) {
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

// TouchTokens records when tokens were last used, in one transaction.
func (s *Store) TouchTokens(ctx context.Context, used map[string]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		for id, at := range used {
			if _, err := tx.ExecContext(ctx, `UPDATE tokens SET last_used_at = max(last_used_at, ?) WHERE id = ?`, at.UnixMilli(), id); err != nil {
				return fmt.Errorf("touch token: %w", err)
			}
		}
		return nil
	})
}

// NameOwner is the id of the live token that reserved name.
func (s *Store) NameOwner(ctx context.Context, name string) (string, error) {
	var id string
	err := s.r.QueryRowContext(ctx, `SELECT n.token_id FROM names n JOIN tokens t ON t.id = n.token_id
		WHERE n.name = ? AND t.revoked = 0`, name).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", store.ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("look up name %q: %w", name, err)
	}
	return id, nil
}

// SetQueueing records whether name's offline deliveries are queued (the
// agent's --no-queue turns it off). Every handshake says it, and it rarely
// changes, so it is written only when it does.
func (s *Store) SetQueueing(ctx context.Context, name string, on bool) error {
	if cur, err := s.Queueing(ctx, name); err != nil || cur == on {
		return err
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE names SET queue = ? WHERE name = ?`, on, name)
		return err
	})
}

// Queueing reports whether name's offline deliveries are queued.
func (s *Store) Queueing(ctx context.Context, name string) (bool, error) {
	var on bool
	err := s.r.QueryRowContext(ctx, `SELECT queue FROM names WHERE name = ?`, name).Scan(&on)
	if errors.Is(err, sql.ErrNoRows) {
		return false, store.ErrNotFound
	}
	return on, err
}
