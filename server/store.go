package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"golang.org/x/crypto/acme/autocert"

	"github.com/relaytunnel/relay/server/store"
	"github.com/relaytunnel/relay/server/store/postgres"
	"github.com/relaytunnel/relay/server/store/sqlite"
)

// Store is everything the server keeps: the one seam between it and its
// database. store/sqlite (one node, the default) and store/postgres
// (several nodes) implement it, and store/storetest holds both to the same
// behaviour.
type Store interface {
	Tokens
	Queue
	Nodes
	DeliveryLog(ctx context.Context, name string, limit int) ([]store.LogEntry, error)
	// CertCache holds ACME certificates and account keys.
	CertCache() autocert.Cache
	Close() error
}

// Tokens are agents' credentials and the names they reserve.
type Tokens interface {
	CreateToken(ctx context.Context, names ...string) (store.Token, string, error)
	ListTokens(ctx context.Context) ([]store.Token, error)
	RevokeToken(ctx context.Context, id string) error
	// Authenticate only reads: a burst of handshakes never waits for a
	// write. The server records use with TouchTokens, batched.
	Authenticate(ctx context.Context, secret string) (store.Token, error)
	TouchTokens(ctx context.Context, used map[string]time.Time) error
	NameOwner(ctx context.Context, name string) (string, error)
	Queueing(ctx context.Context, name string) (bool, error)
	SetQueueing(ctx context.Context, name string, on bool) error
	// WatchRevocations reports tokens revoked from the call on, by any
	// process sharing the database, until ctx ends (then it closes the
	// channel).
	WatchRevocations(ctx context.Context) (<-chan string, error)
}

// Queue is the durable offline queue: arrival order per name, bodies
// streamed in and out in chunks, a delivery removed only once answered.
type Queue interface {
	// QueueRoom fails with store.ErrQueueFull when name cannot take a
	// delivery of size bytes (size < 0: unknown); nothing is read.
	QueueRoom(ctx context.Context, name string, size int64, lim store.QueueLimits) error
	Enqueue(ctx context.Context, q *store.Queued, body io.Reader, lim store.QueueLimits) error
	NextQueued(ctx context.Context, name string) (*store.Queued, error)
	QueuedBody(ctx context.Context, q *store.Queued) io.ReadCloser
	Attempted(ctx context.Context, q *store.Queued, failure bool, reason string) error
	Ack(ctx context.Context, q *store.Queued, outcome string, status int) error
	QueueLen(ctx context.Context, name string) (int, error)
	// QueueStats is every name's queue in one query, for a metrics scrape
	// over thousands of names; a name with nothing queued is absent.
	QueueStats(ctx context.Context) (map[string]store.QueueStat, error)
	// ClaimQueue makes holder name's only drainer, on any node, for ttl
	// or until ReleaseQueue; claiming again renews it.
	ClaimQueue(ctx context.Context, name, holder string, ttl time.Duration) (bool, error)
	ReleaseQueue(ctx context.Context, name, holder string) error
	// WatchQueued reports the names of deliveries queued from the call
	// on by any node sharing the database ("" when some may have been
	// missed: look at every name), until ctx ends (then it closes the
	// channel). A backend for one node may report nothing.
	WatchQueued(ctx context.Context) (<-chan string, error)
	// PurgeSpools removes bodies that started arriving before before and
	// never finished (a process died receiving them).
	PurgeSpools(ctx context.Context, before time.Time) (int, error)
}

// Nodes is the cluster's node registry: each node holds a lease that it
// renews, and a node whose lease ran out is gone.
type Nodes interface {
	// RegisterNode takes or renews name's lease for ttl at addr; a node
	// restarted under its old name takes it back at once.
	RegisterNode(ctx context.Context, name, addr string, ttl time.Duration) error
	// LiveNodes are the nodes whose lease has not run out, by name.
	LiveNodes(ctx context.Context) ([]store.Node, error)
	// LeaveNode ends name's lease (a clean shutdown).
	LeaveNode(ctx context.Context, name string) error
}

// StoreConfig says which database to open.
type StoreConfig struct {
	// Database is a PostgreSQL URL (postgres://...); empty means SQLite in
	// DataDir.
	Database string
	DataDir  string
	// Create makes the database (SQLite) or relay's schema in it
	// (PostgreSQL) when there is none. The server's start does; relay
	// token commands do only with --init.
	Create bool
	// RevocationPoll is how often revocations are looked for by polling;
	// 0 means the backend's default.
	RevocationPoll time.Duration
}

// ErrNoDatabase means StoreConfig pointed at no relay database.
var ErrNoDatabase = store.ErrNoDatabase

// OpenStore opens the database cfg names.
func OpenStore(ctx context.Context, cfg StoreConfig) (Store, error) {
	if cfg.Database != "" {
		if !strings.HasPrefix(cfg.Database, "postgres://") && !strings.HasPrefix(cfg.Database, "postgresql://") {
			return nil, fmt.Errorf("--database: want a PostgreSQL URL, postgres://USER@HOST/DATABASE")
		}
		st, err := postgres.Open(ctx, cfg.Database, postgres.Options{Create: cfg.Create, RevocationPoll: cfg.RevocationPoll})
		if err != nil {
			return nil, err
		}
		return st, nil
	}
	if cfg.DataDir == "" {
		return nil, errors.New("no database: pass --data DIR (or --database postgres://...)")
	}
	st, err := sqlite.Open(ctx, cfg.DataDir, sqlite.Options{Create: cfg.Create, RevocationPoll: cfg.RevocationPoll})
	if err != nil {
		return nil, err
	}
	return st, nil
}
