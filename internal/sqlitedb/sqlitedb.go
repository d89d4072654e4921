// Package sqlitedb is the one way relay opens an embedded SQLite database:
// the pure-Go driver, WAL, a busy timeout, immediate write transactions,
// and versioned migrations kept in PRAGMA user_version. The server's state
// and the agent's recordings both open their files through it.
package sqlitedb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// ErrSchemaTooNew means the database was written by a newer relay.
var ErrSchemaTooNew = errors.New("database schema is newer than this relay")

// Sync is SQLite's synchronous setting for a WAL database.
type Sync string

const (
	// SyncFull puts every commit on disk before it returns: for promises
	// made to someone else (a 202 to a provider).
	SyncFull Sync = "FULL"
	// SyncNormal survives the process being killed (the WAL is in the
	// OS's cache); only a power cut may lose the last commits.
	SyncNormal Sync = "NORMAL"
)

// Options say how to open a database file.
type Options struct {
	Sync Sync // default SyncFull
	// Migrations are applied in order; the schema version is how many
	// were applied. Append only: never edit a shipped one.
	Migrations []string
}

// Open opens (creating if needed, with its directory) the database at
// path and migrates it.
func Open(ctx context.Context, path string, opt Options) (*sql.DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create directory for %s: %w", path, err)
	}
	if opt.Sync == "" {
		opt.Sync = SyncFull
	}
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)" +
		"&_pragma=synchronous(" + string(opt.Sync) + ")&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := Migrate(ctx, db, opt.Migrations); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate %s: %w", path, err)
	}
	return db, nil
}

// Migrate applies the migrations db has not seen yet, each in its own
// transaction together with the new version number.
func Migrate(ctx context.Context, db *sql.DB, migrations []string) error {
	var v int
	if err := db.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("%w (schema %d, this build knows %d): upgrade relay", ErrSchemaTooNew, v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		if err := apply(ctx, db, i+1, migrations[i]); err != nil {
			return err
		}
	}
	return nil
}

func apply(ctx context.Context, db *sql.DB, version int, migration string) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migration %d: %w", version, err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, migration); err != nil {
		return fmt.Errorf("migration %d: %w", version, err)
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, version)); err != nil {
		return fmt.Errorf("migration %d: %w", version, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migration %d: %w", version, err)
	}
	return nil
}
