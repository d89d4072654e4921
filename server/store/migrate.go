package store

import "github.com/relaytunnel/relay/internal/sqlitedb"

// ErrSchemaTooNew means the database was written by a newer relay.
var ErrSchemaTooNew = sqlitedb.ErrSchemaTooNew

// migrations are applied in order; the schema version is the number
// applied (PRAGMA user_version). Append only: never edit a shipped one.
var migrations = []string{
	// 1: tokens and the names they reserve.
	`CREATE TABLE tokens (
		id           TEXT PRIMARY KEY,
		hash         TEXT NOT NULL UNIQUE,
		created_at   INTEGER NOT NULL,
		last_used_at INTEGER NOT NULL DEFAULT 0,
		revoked      INTEGER NOT NULL DEFAULT 0
	);
	CREATE TABLE names (
		name     TEXT PRIMARY KEY,
		token_id TEXT NOT NULL REFERENCES tokens(id)
	);
	CREATE INDEX names_token ON names(token_id);`,
	// 2: the durable queue of deliveries for offline tunnels, and the
	// per-name delivery log of what became of them.
	`CREATE TABLE queue (
		seq         INTEGER PRIMARY KEY AUTOINCREMENT,
		name        TEXT NOT NULL,
		delivery_id TEXT NOT NULL UNIQUE,
		received_at INTEGER NOT NULL,
		remote_addr TEXT NOT NULL,
		method      TEXT NOT NULL,
		uri         TEXT NOT NULL,
		host        TEXT NOT NULL,
		header      BLOB NOT NULL,
		body        BLOB NOT NULL,
		attempts    INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX queue_name ON queue(name, seq);
	CREATE TABLE delivery_log (
		seq         INTEGER PRIMARY KEY AUTOINCREMENT,
		name        TEXT NOT NULL,
		delivery_id TEXT NOT NULL,
		received_at INTEGER NOT NULL,
		method      TEXT NOT NULL,
		uri         TEXT NOT NULL,
		queued      INTEGER NOT NULL,
		outcome     TEXT NOT NULL,
		status      INTEGER NOT NULL DEFAULT 0,
		at          INTEGER NOT NULL
	);
	CREATE INDEX delivery_log_name ON delivery_log(name, seq);
	ALTER TABLE names ADD COLUMN queue INTEGER NOT NULL DEFAULT 1;`,
}
