package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relaytunnel/relay/internal/pgtest"
	"github.com/relaytunnel/relay/server"
	"github.com/relaytunnel/relay/server/store"
	"github.com/relaytunnel/relay/server/store/postgres"
	"github.com/relaytunnel/relay/server/store/storetest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func open(t *testing.T, url string, opt postgres.Options) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), url, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Opener {
		url := pgtest.URL(t)
		return func(t *testing.T) server.Store { return open(t, url, postgres.Options{Create: true}) }
	})
}

func TestADatabaseWithoutRelaysSchemaIsRefusedUnlessAsked(t *testing.T) {
	url := pgtest.URL(t)
	_, err := postgres.Open(context.Background(), url, postgres.Options{})
	if !errors.Is(err, store.ErrNoDatabase) || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("Open = %v, want ErrNoDatabase naming the database", err)
	}
	open(t, url, postgres.Options{Create: true}).Close()
	open(t, url, postgres.Options{}) // now it has the schema
}

func TestADatabaseFromANewerRelayIsRefused(t *testing.T) {
	url := pgtest.URL(t)
	open(t, url, postgres.Options{Create: true}).Close()
	exec(t, url, `UPDATE relay_schema SET version = 999`)
	if _, err := postgres.Open(context.Background(), url, postgres.Options{}); !errors.Is(err, store.ErrSchemaTooNew) {
		t.Fatalf("err = %v", err)
	}
}

func TestAPasswordNeverAppearsInErrors(t *testing.T) {
	_, err := postgres.Open(context.Background(), "postgres://relay:s3cret-pw@127.0.0.1:1/relay?connect_timeout=5", postgres.Options{})
	if err == nil || strings.Contains(err.Error(), "s3cret-pw") {
		t.Fatalf("Open of an unreachable database = %v", err)
	}
	_, err = postgres.Open(context.Background(), "postgres://relay:s3cret-pw@[bad/relay", postgres.Options{})
	if err == nil || strings.Contains(err.Error(), "s3cret-pw") {
		t.Fatalf("Open of a malformed URL = %v", err)
	}
}

// TestARevocationArrivesByNotification sets the fallback poll out of
// reach: only LISTEN/NOTIFY can bring the revocation.
func TestARevocationArrivesByNotification(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := pgtest.URL(t)
	watcher := open(t, url, postgres.Options{Create: true, RevocationPoll: time.Hour})
	revoker := open(t, url, postgres.Options{})
	tok, _, err := revoker.CreateToken(ctx, "notified")
	if err != nil {
		t.Fatal(err)
	}
	ch, err := watcher.WatchRevocations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The listener may not be listening yet; it reads the table once it
	// is, so the revocation arrives either way, without the poll.
	if err := revoker.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-ch:
		if id != tok.ID {
			t.Fatalf("got %s, want %s", id, tok.ID)
		}
	case <-ctx.Done():
		t.Fatal("the revocation never arrived")
	}
	// Once listening, a second revocation needs the notification itself.
	tok2, _, _ := revoker.CreateToken(ctx, "notified-again")
	if err := revoker.RevokeToken(ctx, tok2.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-ch:
		if id != tok2.ID {
			t.Fatalf("got %s, want %s", id, tok2.ID)
		}
	case <-ctx.Done():
		t.Fatal("the second revocation never arrived: NOTIFY did not wake the watcher")
	}
}

func exec(t *testing.T, url, sql string) {
	t.Helper()
	c, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(context.Background(), sql); err != nil {
		t.Fatal(err)
	}
}

func TestAQueuedDeliveryWakesAWatcherOnAnotherHandle(t *testing.T) {
	url := pgtest.URL(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	watcher, sender := open(t, url, postgres.Options{Create: true}), open(t, url, postgres.Options{Create: true})
	ch, err := watcher.WatchQueued(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := <-ch; got != "" {
		t.Fatalf("first report = %q, want \"\" (listening: look at every name)", got)
	}
	q := &store.Queued{Name: "woken", DeliveryID: "dlv_woken", ReceivedAt: time.Now(), Method: "POST", URI: "/", Host: "woken.example", Header: http.Header{}, BodySize: 2}
	if err := sender.Enqueue(ctx, q, strings.NewReader("{}"), store.QueueLimits{MaxCount: 10, MaxBytes: 1 << 20, MaxTotalBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-ch:
		if got != "woken" {
			t.Fatalf("watch reported %q, want woken", got)
		}
	case <-ctx.Done():
		t.Fatal("a delivery queued on another handle did not wake the watcher")
	}
	cancel()
	for range ch {
	}
}

// TestAWatcherThatIsNotReadLosesNoQueuedName: the server polls nothing,
// so a name the reader was too busy to take must still come.
func TestAWatcherThatIsNotReadLosesNoQueuedName(t *testing.T) {
	url := pgtest.URL(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	watcher, sender := open(t, url, postgres.Options{Create: true}), open(t, url, postgres.Options{Create: true})
	ch, err := watcher.WatchQueued(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := <-ch; got != "" {
		t.Fatalf("first report = %q, want \"\"", got)
	}
	const n = 200 // more than any buffer a watcher could drop beyond
	want := map[string]bool{}
	for i := range n + 1 {
		name := fmt.Sprintf("busy-%03d", i)
		if i == n {
			name = "last"
		}
		want[name] = true
		q := &store.Queued{Name: name, DeliveryID: "dlv_" + name, ReceivedAt: time.Now(), Method: "POST", URI: "/", Host: name + ".example", Header: http.Header{}, BodySize: 2}
		if err := sender.Enqueue(ctx, q, strings.NewReader("{}"), store.QueueLimits{MaxCount: 10, MaxBytes: 1 << 20, MaxTotalBytes: 1 << 30}); err != nil {
			t.Fatal(err)
		}
	}
	for len(want) > 0 {
		select {
		case got := <-ch:
			if got == "" {
				return // told to look at every name: nothing is lost
			}
			delete(want, got)
		case <-ctx.Done():
			t.Fatalf("%d queued names never came, among them %v", len(want), slices.Collect(maps.Keys(want))[:min(len(want), 3)])
		}
	}
}
