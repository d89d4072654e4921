package sqlite_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/relaytunnel/relay/internal/sqlitedb"
	"github.com/relaytunnel/relay/server"
	"github.com/relaytunnel/relay/server/store"
	"github.com/relaytunnel/relay/server/store/sqlite"
	"github.com/relaytunnel/relay/server/store/storetest"
)

func open(t *testing.T, dir string, opt sqlite.Options) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Opener {
		dir := t.TempDir()
		opt := sqlite.Options{Create: true}
		return func(t *testing.T) server.Store { return open(t, dir, opt) }
	})
}

func TestAMissingDatabaseIsNotCreatedUnlessAsked(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "typo")
	_, err := sqlite.Open(context.Background(), dir, sqlite.Options{})
	if !errors.Is(err, store.ErrNoDatabase) || !bytes.Contains([]byte(err.Error()), []byte(dir)) {
		t.Fatalf("Open of %s = %v, want ErrNoDatabase naming the directory", dir, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the directory was created: %v", err)
	}
	open(t, dir, sqlite.Options{Create: true}).Close()
	open(t, dir, sqlite.Options{}) // now it exists
}

func TestTheSecretIsStoredOnlyAsAHash(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, sqlite.Options{Create: true})
	_, secret, err := s.CreateToken(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, f := range []string{"relay.db", "relay.db-wal"} {
		b, _ := os.ReadFile(filepath.Join(dir, f))
		if bytes.Contains(b, []byte(secret)) {
			t.Fatalf("%s holds the secret in clear", f)
		}
	}
}

func TestADatabaseFromANewerRelayIsRefused(t *testing.T) {
	dir := t.TempDir()
	open(t, dir, sqlite.Options{Create: true}).Close()
	db, _ := sql.Open("sqlite", filepath.Join(dir, sqlite.FileName))
	db.Exec(`PRAGMA user_version = 999`)
	db.Close()
	if _, err := sqlite.Open(context.Background(), dir, sqlite.Options{}); !errors.Is(err, store.ErrSchemaTooNew) {
		t.Fatalf("err = %v", err)
	}
}

// TestQueuedBodiesSurviveTheMoveToChunks opens a database written by the
// previous relay (schema 2: bodies inside the queue rows) with deliveries
// waiting, and hands them over.
func TestQueuedBodiesSurviveTheMoveToChunks(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	v2 := sqlite.Migrations()[:2]
	db, err := sqlitedb.Open(ctx, filepath.Join(dir, sqlite.FileName), sqlitedb.Options{Migrations: v2})
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 40000) // 640,000 bytes: three chunks
	for i, body := range [][]byte{[]byte(`{"small":1}`), big, {}} {
		if _, err := db.Exec(`INSERT INTO queue (name, delivery_id, received_at, remote_addr, method, uri, host, header, body, attempts)
			VALUES ('old', ?, 1, '192.0.2.1:1', 'POST', '/x', 'old.relay.test', '{"X-A":["b"]}', ?, 2)`, "dlv_"+string(rune('a'+i)), body); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	s := open(t, dir, sqlite.Options{})
	for i, want := range [][]byte{[]byte(`{"small":1}`), big, {}} {
		q, err := s.NextQueued(ctx, "old")
		if err != nil {
			t.Fatalf("delivery %d: %v", i, err)
		}
		b := readAll(t, s, q)
		if !bytes.Equal(b, want) || q.Attempts != 2 || q.Header.Get("X-A") != "b" {
			t.Fatalf("delivery %d came back with %d bytes (want %d), attempts %d, header %v", i, len(b), len(want), q.Attempts, q.Header)
		}
		if err := s.Ack(ctx, q, store.OutcomeDelivered, 200); err != nil {
			t.Fatal(err)
		}
	}
}

func readAll(t *testing.T, s *sqlite.Store, q *store.Queued) []byte {
	t.Helper()
	rc := s.QueuedBody(context.Background(), q)
	defer rc.Close()
	b := new(bytes.Buffer)
	if _, err := b.ReadFrom(rc); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
