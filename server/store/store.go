// Package store is the relay server's durable state in an embedded SQLite
// database: tokens (hashed) and the tunnel names each may serve. Later
// files add the offline queue and the delivery log on the same database.
package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/relaytunnel/relay/internal/sqlitedb"
	"github.com/relaytunnel/relay/protocol"
)

// Sentinel errors callers branch on.
var (
	ErrNotFound    = errors.New("not found")
	ErrBadToken    = errors.New("unknown or revoked token")
	ErrNameTaken   = errors.New("name already reserved by another token")
	ErrInvalidName = errors.New("invalid tunnel name")
)

// Token is an agent credential as stored: never its secret.
type Token struct {
	ID         string // public, printable: tok_xxxxxxxx
	Names      []string
	CreatedAt  time.Time
	LastUsedAt time.Time
	Revoked    bool
}

// Store is the server's database.
type Store struct {
	db *sql.DB
}

// Open opens (creating if needed) DIR/relay.db and migrates it.
func Open(ctx context.Context, dir string) (*Store, error) {
	// synchronous=FULL: an answer to a provider may depend on a row being
	// on disk (the offline queue).
	db, err := sqlitedb.Open(ctx, filepath.Join(dir, "relay.db"), sqlitedb.Options{Sync: sqlitedb.SyncFull, Migrations: migrations})
	if err != nil {
		return nil, err
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// DB is the underlying database, for files of this package that add tables.
func (s *Store) DB() *sql.DB { return s.db }

// ValidName checks that name can be a tunnel name: one lowercase DNS label.
func ValidName(name string) error {
	if !protocol.ValidName(name) {
		return fmt.Errorf("%w %q: use 1-63 of a-z, 0-9 and '-', not starting or ending with '-'", ErrInvalidName, name)
	}
	return nil
}

func hashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return strings.ToLower(b32.EncodeToString(b))
}

// CreateToken makes a token that may serve names and returns it with its
// secret, which is not stored and cannot be shown again.
func (s *Store) CreateToken(ctx context.Context, names ...string) (Token, string, error) {
	if len(names) == 0 {
		return Token{}, "", fmt.Errorf("%w: a token needs at least one name", ErrInvalidName)
	}
	for _, n := range names {
		if err := ValidName(n); err != nil {
			return Token{}, "", err
		}
	}
	secret := "relay_" + randomString(25) // 200 bits
	tok := Token{ID: "tok_" + randomString(5), Names: names, CreatedAt: time.Now().UTC().Truncate(time.Millisecond)}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Token{}, "", err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO tokens (id, hash, created_at) VALUES (?, ?, ?)`,
		tok.ID, hashSecret(secret), tok.CreatedAt.UnixMilli()); err != nil {
		return Token{}, "", fmt.Errorf("insert token: %w", err)
	}
	for _, n := range names {
		if err := addName(ctx, tx, tok.ID, n); err != nil {
			return Token{}, "", err
		}
	}
	if err := tx.Commit(); err != nil {
		return Token{}, "", fmt.Errorf("commit token: %w", err)
	}
	return tok, secret, nil
}

// AddName lets an existing token serve one more name.
func (s *Store) AddName(ctx context.Context, tokenID, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var revoked int
	if err := tx.QueryRowContext(ctx, `SELECT revoked FROM tokens WHERE id = ?`, tokenID).Scan(&revoked); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("token %s: %w", tokenID, ErrNotFound)
		}
		return err
	}
	if revoked != 0 {
		return fmt.Errorf("token %s is revoked: %w", tokenID, ErrNotFound)
	}
	if err := addName(ctx, tx, tokenID, name); err != nil {
		return err
	}
	return tx.Commit()
}

func addName(ctx context.Context, tx *sql.Tx, tokenID, name string) error {
	var owner string
	err := tx.QueryRowContext(ctx, `SELECT n.token_id FROM names n JOIN tokens t ON t.id = n.token_id
		WHERE n.name = ? AND t.revoked = 0`, name).Scan(&owner)
	switch {
	case err == nil && owner == tokenID:
		return nil
	case err == nil:
		return fmt.Errorf("%w: %q (token %s)", ErrNameTaken, name, owner)
	case !errors.Is(err, sql.ErrNoRows):
		return err
	}
	// A revoked token's claim on the name is dropped.
	if _, err := tx.ExecContext(ctx, `DELETE FROM names WHERE name = ?`, name); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO names (name, token_id) VALUES (?, ?)`, name, tokenID); err != nil {
		return fmt.Errorf("reserve name %q: %w", name, err)
	}
	return nil
}

// ListTokens lists every token, newest first.
func (s *Store) ListTokens(ctx context.Context) ([]Token, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT t.id, t.created_at, t.last_used_at, t.revoked, COALESCE(group_concat(n.name, ','), '')
		FROM tokens t LEFT JOIN names n ON n.token_id = t.id GROUP BY t.id ORDER BY t.created_at DESC, t.id`)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	defer rows.Close()
	var out []Token
	for rows.Next() {
		var (
			t                Token
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

// RevokeToken revokes a token; its names become free.
func (s *Store) RevokeToken(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE tokens SET revoked = 1 WHERE id = ? AND revoked = 0`, id)
	if err != nil {
		return fmt.Errorf("revoke token: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("token %s: %w", id, ErrNotFound)
	}
	return nil
}

// Authenticate finds the live token whose secret this is.
func (s *Store) Authenticate(ctx context.Context, secret string) (Token, error) {
	var (
		t       Token
		created int64
		names   string
	)
	err := s.db.QueryRowContext(ctx, `SELECT t.id, t.created_at, COALESCE((SELECT group_concat(name, ',') FROM names WHERE token_id = t.id), '')
		FROM tokens t WHERE t.hash = ? AND t.revoked = 0`, hashSecret(secret)).Scan(&t.ID, &created, &names)
	if errors.Is(err, sql.ErrNoRows) {
		return Token{}, ErrBadToken
	}
	if err != nil {
		return Token{}, fmt.Errorf("authenticate: %w", err)
	}
	t.CreatedAt = time.UnixMilli(created).UTC()
	if names != "" {
		t.Names = strings.Split(names, ",")
	}
	now := time.Now().UTC()
	t.LastUsedAt = now
	if _, err := s.db.ExecContext(ctx, `UPDATE tokens SET last_used_at = ? WHERE id = ?`, now.UnixMilli(), t.ID); err != nil {
		return Token{}, fmt.Errorf("authenticate: %w", err)
	}
	return t, nil
}

// NameOwner is the id of the live token that reserved name.
func (s *Store) NameOwner(ctx context.Context, name string) (string, error) {
	var id string
	err := s.db.QueryRowContext(ctx, `SELECT n.token_id FROM names n JOIN tokens t ON t.id = n.token_id
		WHERE n.name = ? AND t.revoked = 0`, name).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("look up name %q: %w", name, err)
	}
	return id, nil
}
