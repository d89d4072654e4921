package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/relaytunnel/relay/server/store"
)

// migrations are applied in order; the schema version is the number
// applied (relay_schema.version). Append only: never edit a shipped one.
// Times are unix nanoseconds (milliseconds for tokens) in bigint columns,
// as in the SQLite backend, so both read the same way.
var migrations = []string{
	// 1: everything the SQLite backend has at its version 3, plus the
	// ACME cache that SQLite keeps in files.
	`CREATE TABLE tokens (
		id           text PRIMARY KEY,
		hash         text NOT NULL UNIQUE,
		created_at   bigint NOT NULL,
		last_used_at bigint NOT NULL DEFAULT 0,
		revoked      boolean NOT NULL DEFAULT false
	);
	CREATE TABLE names (
		name     text PRIMARY KEY,
		token_id text NOT NULL REFERENCES tokens(id),
		queue    boolean NOT NULL DEFAULT true,
		pos      bigserial -- the order a token's names were given in
	);
	CREATE INDEX names_token ON names(token_id, pos);
	CREATE TABLE queue (
		seq         bigserial PRIMARY KEY,
		name        text NOT NULL,
		delivery_id text NOT NULL UNIQUE,
		received_at bigint NOT NULL,
		remote_addr text NOT NULL,
		method      text NOT NULL,
		uri         text NOT NULL,
		host        text NOT NULL,
		header      bytea NOT NULL,
		body_size   bigint NOT NULL,
		attempts    integer NOT NULL DEFAULT 0,
		failures    integer NOT NULL DEFAULT 0
	);
	CREATE INDEX queue_name ON queue(name, seq);
	CREATE TABLE queue_chunks (
		delivery_id text NOT NULL,
		idx         integer NOT NULL,
		data        bytea NOT NULL,
		PRIMARY KEY (delivery_id, idx)
	);
	-- Webhook bodies are mostly small JSON, and big ones are usually
	-- compressed already: out of line, no compression.
	ALTER TABLE queue_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
	CREATE TABLE queue_spools (
		delivery_id text PRIMARY KEY,
		name        text NOT NULL,
		started_at  bigint NOT NULL,
		bytes       bigint NOT NULL DEFAULT 0
	);
	CREATE INDEX queue_spools_name ON queue_spools(name);
	CREATE TABLE queue_claims (
		name       text PRIMARY KEY,
		holder     text NOT NULL,
		expires_at bigint NOT NULL
	);
	CREATE TABLE delivery_log (
		seq         bigserial PRIMARY KEY,
		name        text NOT NULL,
		delivery_id text NOT NULL,
		received_at bigint NOT NULL,
		method      text NOT NULL,
		uri         text NOT NULL,
		queued      boolean NOT NULL,
		outcome     text NOT NULL,
		status      integer NOT NULL DEFAULT 0,
		attempts    integer NOT NULL DEFAULT 0,
		error       text NOT NULL DEFAULT '',
		at          bigint NOT NULL
	);
	CREATE INDEX delivery_log_name ON delivery_log(name, seq);
	CREATE INDEX delivery_log_delivery ON delivery_log(delivery_id);
	CREATE TABLE revocations (
		seq      bigserial PRIMARY KEY,
		token_id text NOT NULL,
		at       bigint NOT NULL
	);
	CREATE TABLE acme_cache (
		key  text PRIMARY KEY,
		data bytea NOT NULL
	);`,
	// 2: the node registry: each node's lease, in the database's own
	// clock (milliseconds) so nodes' clocks need not agree.
	`CREATE TABLE nodes (
		name       text PRIMARY KEY,
		addr       text NOT NULL,
		expires_ms bigint NOT NULL
	);`,
}

// migrationLock serialises nodes that start at once on a new version.
const migrationLock = 0x72656c6179 // "relay"

// migrate brings the schema up to date. A database without relay's
// schema is refused unless create is set.
func migrate(ctx context.Context, conn *pgx.Conn, create bool, where string) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
			return fmt.Errorf("lock schema: %w", err)
		}
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT to_regclass('relay_schema') IS NOT NULL`).Scan(&exists); err != nil {
			return fmt.Errorf("read schema version: %w", err)
		}
		v := 0
		switch {
		case exists:
			if err := tx.QueryRow(ctx, `SELECT version FROM relay_schema`).Scan(&v); err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("read schema version: %w", err)
			}
		case !create:
			return fmt.Errorf("%w in %s (the database has no relay tables)", store.ErrNoDatabase, where)
		default:
			if _, err := tx.Exec(ctx, `CREATE TABLE relay_schema (version integer NOT NULL); INSERT INTO relay_schema VALUES (0)`); err != nil {
				return fmt.Errorf("create schema table: %w", err)
			}
		}
		if v > len(migrations) {
			return fmt.Errorf("%w (schema %d, this build knows %d): upgrade relay", store.ErrSchemaTooNew, v, len(migrations))
		}
		for i := v; i < len(migrations); i++ {
			if _, err := tx.Exec(ctx, migrations[i]); err != nil {
				return fmt.Errorf("migration %d: %w", i+1, err)
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE relay_schema SET version = $1`, len(migrations)); err != nil {
			return fmt.Errorf("record schema version: %w", err)
		}
		return nil
	})
}
