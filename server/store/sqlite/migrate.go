package sqlite

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
	// 3: bodies move out of the queue row into chunks of 256 KiB (a body
	// is never held whole in memory); bodies still arriving are counted in
	// queue_spools; failures towards dead-lettering; one drainer per name
	// (queue_claims); revocations for running servers to notice; one log
	// line per delivery, updated as it goes.
	`CREATE TABLE queue_chunks (
		delivery_id TEXT NOT NULL,
		idx         INTEGER NOT NULL,
		data        BLOB NOT NULL,
		PRIMARY KEY (delivery_id, idx)
	);
	WITH RECURSIVE n(i) AS (
		SELECT 0 UNION ALL
		SELECT i + 1 FROM n WHERE i < (SELECT COALESCE(max(length(body)), 0) / 262144 FROM queue)
	)
	INSERT INTO queue_chunks (delivery_id, idx, data)
		SELECT q.delivery_id, n.i, substr(q.body, n.i * 262144 + 1, 262144)
		FROM queue q JOIN n ON n.i * 262144 < length(q.body);
	CREATE TABLE queue_v3 (
		seq         INTEGER PRIMARY KEY AUTOINCREMENT,
		name        TEXT NOT NULL,
		delivery_id TEXT NOT NULL UNIQUE,
		received_at INTEGER NOT NULL,
		remote_addr TEXT NOT NULL,
		method      TEXT NOT NULL,
		uri         TEXT NOT NULL,
		host        TEXT NOT NULL,
		header      BLOB NOT NULL,
		body_size   INTEGER NOT NULL,
		attempts    INTEGER NOT NULL DEFAULT 0,
		failures    INTEGER NOT NULL DEFAULT 0
	);
	INSERT INTO queue_v3 (seq, name, delivery_id, received_at, remote_addr, method, uri, host, header, body_size, attempts)
		SELECT seq, name, delivery_id, received_at, remote_addr, method, uri, host, header, length(body), attempts FROM queue;
	DROP TABLE queue;
	ALTER TABLE queue_v3 RENAME TO queue;
	CREATE INDEX queue_name ON queue(name, seq);
	CREATE TABLE queue_spools (
		delivery_id TEXT PRIMARY KEY,
		name        TEXT NOT NULL,
		started_at  INTEGER NOT NULL,
		bytes       INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX queue_spools_name ON queue_spools(name);
	CREATE TABLE queue_claims (
		name       TEXT PRIMARY KEY,
		holder     TEXT NOT NULL,
		expires_at INTEGER NOT NULL
	);
	CREATE TABLE revocations (
		seq      INTEGER PRIMARY KEY AUTOINCREMENT,
		token_id TEXT NOT NULL,
		at       INTEGER NOT NULL
	);
	ALTER TABLE delivery_log ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE delivery_log ADD COLUMN error TEXT NOT NULL DEFAULT '';
	CREATE INDEX delivery_log_delivery ON delivery_log(delivery_id);`,
	// 4: the node registry. One SQLite file serves one node, so it only
	// ever holds that node; kept for the Store's one behaviour.
	`CREATE TABLE nodes (
		name       TEXT PRIMARY KEY,
		addr       TEXT NOT NULL,
		expires_ms INTEGER NOT NULL
	);`,
}

// Migrations are the schema's steps, for tests that build an older database.
func Migrations() []string { return migrations }
