package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relaytunnel/relay/internal/pgtest"
	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/server/certs"
	"github.com/relaytunnel/relay/server/store/postgres"
)

// TestNodesTakeTurnsAtOrderingANamesCertificate: two handles on one
// database (two nodes) lock the same name in turn, different names at
// once, and a turn whose holder's connection dies passes on.
func TestNodesTakeTurnsAtOrderingANamesCertificate(t *testing.T) {
	url := pgtest.URL(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	locker := func() certs.IssueLocker {
		l, ok := open(t, url, postgres.Options{Create: true}).CertCache().(certs.IssueLocker)
		if !ok {
			t.Fatal("the PostgreSQL certificate cache is not a certs.IssueLocker: nodes would order at once")
		}
		return l
	}
	n1, n2 := locker(), locker()
	const name = "hooks.relay.test"

	unlock1, err := n1.LockIssue(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	other, err := n2.LockIssue(ctx, "other.relay.test")
	if err != nil {
		t.Fatalf("another name waited for %s's turn: %v", name, err)
	}
	other()

	type turn struct {
		unlock func()
		err    error
	}
	took := make(chan turn, 1)
	go func() {
		u, err := n2.LockIssue(ctx, name)
		took <- turn{u, err}
	}()
	relaytest.WaitFor(t, "n2 to wait for the turn", func() bool { return waitingForAdvisoryLocks(t, url) == 1 })
	select {
	case tk := <-took:
		t.Fatalf("n2 took %s's turn while n1 held it (err %v)", name, tk.err)
	default:
	}
	unlock1()
	tk := <-took
	if tk.err != nil {
		t.Fatalf("n2 did not get the turn n1 gave back: %v", tk.err)
	}

	// n2 holds the turn now; its connection dies (as with its node).
	go func() {
		u, err := n1.LockIssue(ctx, name)
		took <- turn{u, err}
	}()
	relaytest.WaitFor(t, "n1 to wait for the turn", func() bool { return waitingForAdvisoryLocks(t, url) == 1 })
	exec(t, url, `SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
	if tk := <-took; tk.err != nil {
		t.Fatalf("the turn of a dead holder did not pass on: %v", tk.err)
	} else {
		tk.unlock()
	}
	tk.unlock() // after its connection died: must not hang or panic

	// A wait ends with its context.
	unlock, err := n1.LockIssue(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	short, stop := context.WithCancel(ctx)
	go func() {
		u, err := n2.LockIssue(short, name)
		took <- turn{u, err}
	}()
	relaytest.WaitFor(t, "n2 to wait for the turn", func() bool { return waitingForAdvisoryLocks(t, url) == 1 })
	stop()
	if tk := <-took; tk.err == nil {
		tk.unlock()
		t.Fatal("n2 got the turn n1 holds after its context ended")
	}
}

func waitingForAdvisoryLocks(t *testing.T, url string) int {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
