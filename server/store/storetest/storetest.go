// Package storetest is the conformance suite every backend of the relay
// server's Store passes (store/sqlite, store/postgres): one behaviour,
// whatever the database. Each backend's tests call Run.
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/acme/autocert"

	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/server"
	"github.com/relaytunnel/relay/server/store"
)

// Opener opens a handle on one database; every call is another handle,
// as another process or node would have. The handle is closed when the
// test ends.
type Opener func(t *testing.T) server.Store

// Fresh makes a new, empty database and says how to open it.
type Fresh func(t *testing.T) Opener

// Run runs the suite against the backend fresh makes.
func Run(t *testing.T, fresh Fresh) {
	for _, tc := range []struct {
		name string
		test func(t *testing.T, open Opener)
	}{
		{"Tokens", testTokens},
		{"TokenNamesAreReservedOnceUnderConcurrency", testConcurrentNames},
		{"HundredConcurrentAuthenticationsAllSucceed", testConcurrentAuth},
		{"RevocationsReachAWatcherOnAnotherHandle", testRevocations},
		{"QueueHandsOverInStoredOrder", testQueueOrder},
		{"QueueBodiesRoundTripInChunks", testQueueBodies},
		{"QueuedDeliveryIsInvisibleUntilWhole", testInvisibleUntilWhole},
		{"QueueStatsCountEveryNamesQueuedDeliveriesAtOnce", testQueueStats},
		{"QueueLimits", testQueueLimits},
		{"ConcurrentEnqueuesKeepTheCountLimit", testConcurrentEnqueue},
		{"AttemptsFailuresAndOutcomesReachTheLog", testAttemptsAndLog},
		{"QueueClaims", testClaims},
		{"PurgeSpoolsRemovesOnlyAbandonedUploads", testPurgeSpools},
		{"CertCache", testCertCache},
		{"NodeLeases", testNodes},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.test(t, fresh(t)) })
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// must(f())(t) is f's value, or the test's end on f's error.
func must[T any](v T, err error) func(*testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func testTokens(t *testing.T, open Opener) {
	ctx := ctxT(t)
	s := open(t)
	tok, secret, err := s.CreateToken(ctx, "stripe-dev", "gh")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok.ID, "tok_") || !strings.HasPrefix(secret, "relay_") {
		t.Fatalf("CreateToken = %+v, %q", tok, secret)
	}
	t.Run("the secret authenticates and names its token, first name first", func(t *testing.T) {
		got, err := s.Authenticate(ctx, secret)
		if err != nil || got.ID != tok.ID || !slices.Equal(got.Names, []string{"stripe-dev", "gh"}) {
			t.Fatalf("Authenticate = %+v, %v", got, err)
		}
	})
	t.Run("a wrong secret is a bad token", func(t *testing.T) {
		if _, err := s.Authenticate(ctx, secret+"x"); !errors.Is(err, store.ErrBadToken) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("a token needs valid names", func(t *testing.T) {
		for _, names := range [][]string{nil, {"Bad.Name"}, {"ok", "-no"}} {
			if _, _, err := s.CreateToken(ctx, names...); !errors.Is(err, store.ErrInvalidName) {
				t.Errorf("CreateToken(%q) = %v, want ErrInvalidName", names, err)
			}
		}
	})
	t.Run("the owner of a reserved name is its token", func(t *testing.T) {
		if id, err := s.NameOwner(ctx, "gh"); err != nil || id != tok.ID {
			t.Fatalf("NameOwner = %q, %v", id, err)
		}
		if _, err := s.NameOwner(ctx, "nobody"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unreserved: %v", err)
		}
	})
	t.Run("another token cannot reserve a taken name", func(t *testing.T) {
		if _, _, err := s.CreateToken(ctx, "other", "stripe-dev"); !errors.Is(err, store.ErrNameTaken) {
			t.Fatalf("err = %v", err)
		}
		if _, err := s.NameOwner(ctx, "other"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("a refused token kept a name: %v", err)
		}
	})
	t.Run("queueing is on by default and follows SetQueueing", func(t *testing.T) {
		if on, err := s.Queueing(ctx, "gh"); err != nil || !on {
			t.Fatalf("Queueing = %v, %v", on, err)
		}
		for _, on := range []bool{false, false, true} {
			if err := s.SetQueueing(ctx, "gh", on); err != nil {
				t.Fatal(err)
			}
			if got, err := s.Queueing(ctx, "gh"); err != nil || got != on {
				t.Fatalf("Queueing = %v, %v; want %v", got, err, on)
			}
		}
		if _, err := s.Queueing(ctx, "nobody"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unreserved: %v", err)
		}
	})
	t.Run("authenticating writes nothing; TouchTokens records the last use", func(t *testing.T) {
		got := must(s.Authenticate(ctx, secret))(t)
		if !got.LastUsedAt.IsZero() {
			t.Fatalf("LastUsedAt = %v before any TouchTokens", got.LastUsedAt)
		}
		at := time.Now().Truncate(time.Millisecond)
		if err := s.TouchTokens(ctx, map[string]time.Time{tok.ID: at, "tok_gone": at}); err != nil {
			t.Fatal(err)
		}
		if err := s.TouchTokens(ctx, map[string]time.Time{tok.ID: at.Add(-time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if got := must(s.Authenticate(ctx, secret))(t); !got.LastUsedAt.Equal(at) {
			t.Fatalf("LastUsedAt = %v, want %v (an older use never moves it back)", got.LastUsedAt, at)
		}
	})
	t.Run("another handle sees the same tokens", func(t *testing.T) {
		other := open(t)
		if got, err := other.Authenticate(ctx, secret); err != nil || got.ID != tok.ID {
			t.Fatalf("Authenticate on another handle = %+v, %v", got, err)
		}
	})
	t.Run("a revoked token is refused, listed as revoked, and frees its names", func(t *testing.T) {
		if err := s.RevokeToken(ctx, tok.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, secret); !errors.Is(err, store.ErrBadToken) {
			t.Fatalf("revoked token: %v", err)
		}
		if _, err := s.NameOwner(ctx, "gh"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("name of a revoked token: %v", err)
		}
		tok2, _ := must2(t)(s.CreateToken(ctx, "stripe-dev"))
		if id := must(s.NameOwner(ctx, "stripe-dev"))(t); id != tok2.ID {
			t.Fatalf("re-issued name owned by %s, want %s", id, tok2.ID)
		}
		if err := s.RevokeToken(ctx, tok.ID); !errors.Is(err, store.ErrRevoked) {
			t.Fatalf("second revoke: %v", err)
		}
		if err := s.RevokeToken(ctx, "tok_nope"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown token: %v", err)
		}
		toks := must(s.ListTokens(ctx))(t)
		if len(toks) != 2 || toks[0].CreatedAt.Before(toks[1].CreatedAt) {
			t.Fatalf("ListTokens = %+v, want two, newest first", toks)
		}
		if toks[0].ID != tok2.ID {
			toks[0], toks[1] = toks[1], toks[0] // created in the same millisecond
		}
		// The revoked token keeps, for the record, the name nobody took.
		if toks[0].ID != tok2.ID || toks[0].Revoked || !slices.Equal(toks[0].Names, []string{"stripe-dev"}) ||
			toks[1].ID != tok.ID || !toks[1].Revoked || !slices.Equal(toks[1].Names, []string{"gh"}) {
			t.Fatalf("ListTokens = %+v", toks)
		}
	})
}

// must2 unwraps a three-value result.
func must2(t *testing.T) func(store.Token, string, error) (store.Token, string) {
	return func(tok store.Token, secret string, err error) (store.Token, string) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return tok, secret
	}
}

func testConcurrentNames(t *testing.T, open Opener) {
	ctx := ctxT(t)
	a, b := open(t), open(t)
	var ok, taken atomic.Int32
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			s := a
			if i%2 == 1 {
				s = b
			}
			_, _, err := s.CreateToken(ctx, "contested")
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, store.ErrNameTaken):
				taken.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 1 || taken.Load() != 15 {
		t.Fatalf("%d tokens reserved the name and %d were refused; want 1 and 15", ok.Load(), taken.Load())
	}
}

func testConcurrentAuth(t *testing.T, open Opener) {
	ctx := ctxT(t)
	s := open(t)
	secrets := make([]string, 10)
	for i := range secrets {
		_, secrets[i] = must2(t)(s.CreateToken(ctx, fmt.Sprintf("agent-%d", i)))
	}
	// Handshakes also record the queueing choice: the mix a burst of
	// reconnecting agents makes.
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			tok, err := s.Authenticate(ctx, secrets[i%len(secrets)])
			if err != nil {
				t.Errorf("authentication %d: %v", i, err)
				return
			}
			if err := s.SetQueueing(ctx, tok.Names[0], true); err != nil {
				t.Errorf("SetQueueing %d: %v", i, err)
			}
		})
	}
	wg.Wait()
}

func testRevocations(t *testing.T, open Opener) {
	ctx := ctxT(t)
	watcher, revoker := open(t), open(t)
	before, _ := must2(t)(revoker.CreateToken(ctx, "before"))
	after, _ := must2(t)(revoker.CreateToken(ctx, "after"))
	if err := revoker.RevokeToken(ctx, before.ID); err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	ch, err := watcher.WatchRevocations(wctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := revoker.RevokeToken(ctx, after.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-ch:
		if id != after.ID {
			t.Fatalf("watch reported %s, want %s (revoked after the watch began, not %s before it)", id, after.ID, before.ID)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a revocation on another handle did not reach the watcher in 30s")
	}
	stop()
	for range ch {
	}
}

// header is what a provider might send.
func header(i int) http.Header {
	return http.Header{"Content-Type": {"application/json"}, "X-N": {fmt.Sprint(i)}, "X-Multi": {"a", "b"}}
}

func queued(name string, i int, size int64) *store.Queued {
	return &store.Queued{
		Name: name, DeliveryID: fmt.Sprintf("dlv_%s_%d_%d", name, i, time.Now().UnixNano()),
		ReceivedAt: time.Unix(1700000000, int64(i)), RemoteAddr: "192.0.2.1:1234",
		Method: "POST", URI: fmt.Sprintf("/hook?n=%d", i), Host: name + ".relay.test",
		Header: header(i), BodySize: size,
	}
}

var roomy = store.QueueLimits{MaxCount: 1000, MaxBytes: 1 << 30, MaxTotalBytes: 1 << 30}

func enqueue(t *testing.T, s server.Store, name string, i int, body string) *store.Queued {
	t.Helper()
	q := queued(name, i, int64(len(body)))
	if err := s.Enqueue(ctxT(t), q, strings.NewReader(body), roomy); err != nil {
		t.Fatalf("enqueue %d: %v", i, err)
	}
	return q
}

func readBody(t *testing.T, s server.Store, q *store.Queued) []byte {
	t.Helper()
	rc := s.QueuedBody(ctxT(t), q)
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read body of %s: %v", q.DeliveryID, err)
	}
	return b
}

func testQueueOrder(t *testing.T, open Opener) {
	ctx := ctxT(t)
	s, other := open(t), open(t)
	for i := range 5 {
		enqueue(t, s, "orders", i, fmt.Sprintf(`{"n":%d}`, i))
		enqueue(t, s, "elsewhere", i, "x")
	}
	if n := must(s.QueueLen(ctx, "orders"))(t); n != 5 {
		t.Fatalf("QueueLen = %d", n)
	}
	for i := range 5 {
		// Another handle (node) hands over what this one stored.
		q := must(other.NextQueued(ctx, "orders"))(t)
		want := queued("orders", i, 0)
		if q.Method != want.Method || q.URI != want.URI || q.Host != want.Host || q.RemoteAddr != want.RemoteAddr ||
			!q.ReceivedAt.Equal(want.ReceivedAt) || fmt.Sprint(q.Header) != fmt.Sprint(want.Header) || q.Attempts != 0 {
			t.Fatalf("delivery %d came back as %+v", i, q)
		}
		if b := readBody(t, other, q); string(b) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("delivery %d has body %q", i, b)
		}
		if err := other.Ack(ctx, q, store.OutcomeDelivered, 200); err != nil {
			t.Fatal(err)
		}
		if err := other.Ack(ctx, q, store.OutcomeDelivered, 200); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("second ack: %v", err)
		}
	}
	if _, err := s.NextQueued(ctx, "orders"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("empty queue: %v", err)
	}
	if n := must(s.QueueLen(ctx, "elsewhere"))(t); n != 5 {
		t.Fatalf("another name's queue has %d, want 5 untouched", n)
	}
}

func testQueueBodies(t *testing.T, open Opener) {
	ctx := ctxT(t)
	s := open(t)
	for _, tt := range []struct {
		name     string
		size     int64
		declared bool
	}{
		{"an empty body", 0, true},
		{"one byte", 1, true},
		{"exactly one chunk", store.ChunkSize, true},
		{"one byte over a chunk", store.ChunkSize + 1, true},
		{"several chunks and a bit, length declared", 3*store.ChunkSize + 17, true},
		{"several chunks, length not declared (chunked)", 2*store.ChunkSize + 5, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := queued("bodies", 0, tt.size)
			if !tt.declared {
				q.BodySize = -1
			}
			if err := s.Enqueue(ctx, q, &relaytest.PatternReader{N: tt.size}, roomy); err != nil {
				t.Fatal(err)
			}
			got := must(s.NextQueued(ctx, "bodies"))(t)
			if got.BodySize != tt.size {
				t.Fatalf("BodySize = %d, want %d", got.BodySize, tt.size)
			}
			if sha256.Sum256(readBody(t, s, got)) != relaytest.PatternSum(tt.size) {
				t.Fatal("the body came back different")
			}
			if err := s.Ack(ctx, got, store.OutcomeDelivered, 200); err != nil {
				t.Fatal(err)
			}
			if tt.size > 0 {
				if _, err := io.ReadAll(s.QueuedBody(ctx, got)); err == nil {
					t.Fatal("the body outlived its delivery")
				}
			}
		})
	}
}

// gatedBody yields n chunks, then waits for release before it ends (or
// fails with err).
type gatedBody struct {
	r       io.Reader
	release chan error
}

func (g *gatedBody) Read(p []byte) (int, error) {
	n, err := g.r.Read(p)
	if errors.Is(err, io.EOF) {
		if err := <-g.release; err != nil {
			return n, err
		}
	}
	return n, err
}

// spooling starts an Enqueue of a multi-chunk body that stops before its
// end, and returns when the store counts it as arriving.
func spooling(t *testing.T, s server.Store, name string) (*store.Queued, chan error, <-chan error) {
	t.Helper()
	ctx := ctxT(t)
	size := int64(2*store.ChunkSize + 3)
	q := queued(name, 0, size)
	release := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		done <- s.Enqueue(ctx, q, &gatedBody{r: &relaytest.PatternReader{N: size}, release: release}, roomy)
	}()
	relaytest.WaitFor(t, "the upload to be counted", func() bool {
		return errors.Is(s.QueueRoom(ctx, name, 0, store.QueueLimits{MaxCount: 1}), store.ErrQueueFull)
	})
	return q, release, done
}

func testInvisibleUntilWhole(t *testing.T, open Opener) {
	ctx := ctxT(t)
	s := open(t)
	t.Run("an upload in progress is counted but not handed over", func(t *testing.T) {
		q, release, done := spooling(t, s, "slow")
		if _, err := s.NextQueued(ctx, "slow"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("NextQueued during the upload: %v", err)
		}
		if n := must(s.QueueLen(ctx, "slow"))(t); n != 0 {
			t.Fatalf("QueueLen during the upload = %d", n)
		}
		release <- nil
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		got := must(s.NextQueued(ctx, "slow"))(t)
		if got.DeliveryID != q.DeliveryID || sha256.Sum256(readBody(t, s, got)) != relaytest.PatternSum(q.BodySize) {
			t.Fatalf("after the upload: %+v", got)
		}
		if err := s.Ack(ctx, got, store.OutcomeDelivered, 200); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a body cut short leaves nothing behind", func(t *testing.T) {
		_, release, done := spooling(t, s, "cut")
		release <- io.ErrUnexpectedEOF
		if err := <-done; !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("Enqueue of a cut body = %v", err)
		}
		if _, err := s.NextQueued(ctx, "cut"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("a cut body was queued: %v", err)
		}
		if err := s.QueueRoom(ctx, "cut", 0, store.QueueLimits{MaxCount: 1, MaxTotalBytes: 1}); err != nil {
			t.Fatalf("a cut body still counts: %v", err)
		}
	})
}

// testQueueStats holds QueueStats to QueueLen: a name counts the
// deliveries stored whole and not acked, and its oldest is the earliest
// ReceivedAt among those (not the first stored). A name whose deliveries
// were all acked, delivered or dead-lettered, is absent, as is a name
// whose only delivery is still arriving: the scrape shows both as 0.
func testQueueStats(t *testing.T, open Opener) {
	ctx := ctxT(t)
	s, other := open(t), open(t)
	if got := must(other.QueueStats(ctx))(t); len(got) != 0 {
		t.Fatalf("QueueStats of an empty queue = %v", got)
	}
	// "late" stores a delivery received before the one stored first (a
	// slow upload commits after a quick one).
	late := []*store.Queued{enqueue(t, s, "late", 5, "a"), enqueue(t, s, "late", 2, "b"), enqueue(t, s, "late", 7, "c")}
	head := enqueue(t, s, "acked-head", 0, "a")
	rest := []*store.Queued{enqueue(t, s, "acked-head", 1, "b"), enqueue(t, s, "acked-head", 3, "c")}
	delivered, dead := enqueue(t, s, "drained", 0, "a"), enqueue(t, s, "drained", 1, "b")
	for _, a := range []struct {
		q       *store.Queued
		outcome string
		status  int
	}{{head, store.OutcomeDelivered, 200}, {delivered, store.OutcomeDelivered, 200}, {dead, store.OutcomeDeadLettered, 504}} {
		if err := s.Ack(ctx, a.q, a.outcome, a.status); err != nil {
			t.Fatal(err)
		}
	}
	_, release, done := spooling(t, s, "arriving")
	defer func() {
		release <- io.ErrUnexpectedEOF
		<-done
	}()

	got := must(other.QueueStats(ctx))(t)
	want := map[string]store.QueueStat{
		"late":       {Count: 3, Oldest: late[1].ReceivedAt},
		"acked-head": {Count: 2, Oldest: rest[0].ReceivedAt},
	}
	if len(got) != len(want) {
		t.Errorf("QueueStats has %d names, want %d (drained and arriving absent): %v", len(got), len(want), got)
	}
	for name, w := range want {
		g, ok := got[name]
		if !ok || g.Count != w.Count || !g.Oldest.Equal(w.Oldest) {
			t.Errorf("QueueStats[%q] = %+v (present %v), want %+v", name, g, ok, w)
		}
		if n := must(other.QueueLen(ctx, name))(t); n != g.Count {
			t.Errorf("QueueStats[%q].Count = %d, QueueLen = %d", name, g.Count, n)
		}
	}
}

// unread fails the test if the body is read: limits must refuse first.
type unread struct{ t *testing.T }

func (u unread) Read([]byte) (int, error) {
	u.t.Error("the body was read although the limits refuse it")
	return 0, io.ErrUnexpectedEOF
}

func testQueueLimits(t *testing.T, open Opener) {
	ctx := ctxT(t)
	s := open(t)
	enqueue(t, s, "full", 0, "0123456789")
	enqueue(t, s, "other", 0, strings.Repeat("x", 100))
	tests := []struct {
		name string
		lim  store.QueueLimits
		size int64 // declared; -1 unknown
		body func(t *testing.T) io.Reader
	}{
		{"the count limit refuses before reading", store.QueueLimits{MaxCount: 1}, 1,
			func(t *testing.T) io.Reader { return unread{t} }},
		{"a declared size over the name's bytes refuses before reading", store.QueueLimits{MaxBytes: 15}, 6,
			func(t *testing.T) io.Reader { return unread{t} }},
		{"a declared size over the total refuses before reading", store.QueueLimits{MaxTotalBytes: 115}, 6,
			func(t *testing.T) io.Reader { return unread{t} }},
		{"an undeclared small body over the name's bytes is refused", store.QueueLimits{MaxBytes: 15}, -1,
			func(*testing.T) io.Reader { return strings.NewReader("123456") }},
		{"an undeclared large body is refused as it passes the name's bytes", store.QueueLimits{MaxBytes: store.ChunkSize + 20}, -1,
			func(*testing.T) io.Reader { return &relaytest.PatternReader{N: 4 * store.ChunkSize} }},
		{"an undeclared large body is refused as it passes the total", store.QueueLimits{MaxTotalBytes: store.ChunkSize + 200}, -1,
			func(*testing.T) io.Reader { return &relaytest.PatternReader{N: 4 * store.ChunkSize} }},
		{"a body that lied about its size is refused at the end", store.QueueLimits{MaxBytes: store.ChunkSize + 20}, 5,
			func(*testing.T) io.Reader { return &relaytest.PatternReader{N: store.ChunkSize + 11} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := queued("full", 1, tt.size)
			err := s.Enqueue(ctx, q, tt.body(t), tt.lim)
			if !errors.Is(err, store.ErrQueueFull) {
				t.Fatalf("Enqueue = %v, want ErrQueueFull", err)
			}
			if n := must(s.QueueLen(ctx, "full"))(t); n != 1 {
				t.Fatalf("QueueLen = %d after a refusal", n)
			}
			if err := s.QueueRoom(ctx, "full", 0, store.QueueLimits{MaxTotalBytes: 110}); err != nil {
				t.Fatalf("a refused body still counts: %v", err)
			}
		})
	}
	t.Run("within every limit the delivery is stored", func(t *testing.T) {
		lim := store.QueueLimits{MaxCount: 2, MaxBytes: 20, MaxTotalBytes: 120}
		if err := s.QueueRoom(ctx, "full", 10, lim); err != nil {
			t.Fatal(err)
		}
		if err := s.Enqueue(ctx, queued("full", 2, 10), strings.NewReader("0123456789"), lim); err != nil {
			t.Fatal(err)
		}
	})
}

func testConcurrentEnqueue(t *testing.T, open Opener) {
	ctx := ctxT(t)
	a, b := open(t), open(t)
	lim := store.QueueLimits{MaxCount: 10}
	var ok, full atomic.Int32
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			s := a
			if i%2 == 1 {
				s = b
			}
			err := s.Enqueue(ctx, queued("busy", i, 2), strings.NewReader("hi"), lim)
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, store.ErrQueueFull):
				full.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 10 || full.Load() != 10 || must(a.QueueLen(ctx, "busy"))(t) != 10 {
		t.Fatalf("%d stored, %d refused, %d queued; want 10, 10, 10", ok.Load(), full.Load(), must(a.QueueLen(ctx, "busy"))(t))
	}
}

func testAttemptsAndLog(t *testing.T, open Opener) {
	ctx := ctxT(t)
	s := open(t)
	first := enqueue(t, s, "logged", 0, "a")
	second := enqueue(t, s, "logged", 1, "b")
	q := must(s.NextQueued(ctx, "logged"))(t)
	if err := s.Attempted(ctx, q, false, "local app did not answer: local_app_unreachable (502)"); err != nil {
		t.Fatal(err)
	}
	if err := s.Attempted(ctx, q, true, "local app did not answer: local_app_timeout (504)"); err != nil {
		t.Fatal(err)
	}
	if q.Attempts != 2 || q.Failures != 1 {
		t.Fatalf("after two attempts, one a failure: attempts %d, failures %d", q.Attempts, q.Failures)
	}
	if again := must(s.NextQueued(ctx, "logged"))(t); again.Attempts != 2 || again.Failures != 1 {
		t.Fatalf("stored counts: attempts %d, failures %d", again.Attempts, again.Failures)
	}
	if err := s.Ack(ctx, q, store.OutcomeDeadLettered, 504); err != nil {
		t.Fatal(err)
	}
	if next := must(s.NextQueued(ctx, "logged"))(t); next.DeliveryID != second.DeliveryID {
		t.Fatalf("after the dead letter the head is %s, want %s", next.DeliveryID, second.DeliveryID)
	}
	if err := s.Attempted(ctx, first, true, "x"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("attempt on a removed delivery: %v", err)
	}
	if err := s.Ack(ctx, second, store.OutcomeDelivered, 200); err != nil {
		t.Fatal(err)
	}
	lg := must(s.DeliveryLog(ctx, "logged", 10))(t)
	if len(lg) != 2 {
		t.Fatalf("log has %d lines, want one per delivery: %+v", len(lg), lg)
	}
	newest, oldest := lg[0], lg[1]
	if newest.DeliveryID != second.DeliveryID || newest.Outcome != store.OutcomeDelivered || newest.Status != 200 || !newest.Queued {
		t.Fatalf("newest log line: %+v", newest)
	}
	if oldest.DeliveryID != first.DeliveryID || oldest.Outcome != store.OutcomeDeadLettered || oldest.Status != 504 ||
		oldest.Attempts != 2 || !strings.Contains(oldest.Error, "local_app_timeout") || oldest.Method != "POST" || oldest.URI != "/hook?n=0" ||
		!oldest.ReceivedAt.Equal(first.ReceivedAt) {
		t.Fatalf("dead-lettered log line: %+v", oldest)
	}
	if lg := must(s.DeliveryLog(ctx, "logged", 1))(t); len(lg) != 1 || lg[0].DeliveryID != second.DeliveryID {
		t.Fatalf("DeliveryLog with a limit: %+v", lg)
	}
	if lg := must(s.DeliveryLog(ctx, "nobody", 10))(t); len(lg) != 0 {
		t.Fatalf("another name's log: %+v", lg)
	}
}

func testClaims(t *testing.T, open Opener) {
	ctx := ctxT(t)
	a, b := open(t), open(t)
	claim := func(s server.Store, holder string, ttl time.Duration) bool {
		t.Helper()
		return must(s.ClaimQueue(ctx, "drained", holder, ttl))(t)
	}
	if !claim(a, "node-a", time.Minute) {
		t.Fatal("the first claim was refused")
	}
	if claim(b, "node-b", time.Minute) {
		t.Fatal("a second holder claimed a live claim")
	}
	if !claim(a, "node-a", time.Minute) {
		t.Fatal("the holder could not renew its claim")
	}
	if !must(b.ClaimQueue(ctx, "another", "node-b", time.Minute))(t) {
		t.Fatal("a claim on another name was refused")
	}
	if err := b.ReleaseQueue(ctx, "drained", "node-b"); err != nil {
		t.Fatal(err)
	}
	if claim(b, "node-b", time.Minute) {
		t.Fatal("a release by a non-holder ended the claim")
	}
	if err := a.ReleaseQueue(ctx, "drained", "node-a"); err != nil {
		t.Fatal(err)
	}
	if !claim(b, "node-b", -time.Second) {
		t.Fatal("a released claim could not be taken")
	}
	// node-b's claim expired at once (a node that died): it is taken over.
	if !claim(a, "node-a", time.Minute) {
		t.Fatal("an expired claim could not be taken over")
	}
}

func testPurgeSpools(t *testing.T, open Opener) {
	ctx := ctxT(t)
	s := open(t)
	enqueue(t, s, "kept", 0, "whole")
	_, release, done := spooling(t, s, "abandoned")
	if n := must(s.PurgeSpools(ctx, time.Now().Add(-time.Hour)))(t); n != 0 {
		t.Fatalf("PurgeSpools removed %d uploads that started since", n)
	}
	if n := must(s.PurgeSpools(ctx, time.Now().Add(time.Minute)))(t); n != 1 {
		t.Fatalf("PurgeSpools removed %d uploads, want the 1 in progress", n)
	}
	// The upload was not dead after all: it must fail, never queue a body
	// with chunks missing.
	release <- nil
	if err := <-done; err == nil {
		t.Fatal("an upload whose spool was purged was queued")
	}
	if _, err := s.NextQueued(ctx, "abandoned"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("NextQueued after a purge: %v", err)
	}
	if n := must(s.QueueLen(ctx, "kept"))(t); n != 1 {
		t.Fatalf("a whole delivery was purged: QueueLen = %d", n)
	}
	if err := s.QueueRoom(ctx, "abandoned", 0, store.QueueLimits{MaxCount: 1}); err != nil {
		t.Fatalf("the purged upload still counts: %v", err)
	}
}

func testCertCache(t *testing.T, open Opener) {
	ctx := ctxT(t)
	c := open(t).CertCache()
	if _, err := c.Get(ctx, "relay.test"); !errors.Is(err, autocert.ErrCacheMiss) {
		t.Fatalf("Get of a missing key = %v, want ErrCacheMiss", err)
	}
	data := bytes.Repeat([]byte{0, 1, 2, 0xff}, 1000)
	for _, v := range [][]byte{[]byte("first"), data} {
		if err := c.Put(ctx, "relay.test", v); err != nil {
			t.Fatal(err)
		}
		if got := must(c.Get(ctx, "relay.test"))(t); !bytes.Equal(got, v) {
			t.Fatalf("Get = %d bytes, want the %d put", len(got), len(v))
		}
	}
	if err := c.Delete(ctx, "relay.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "relay.test"); err != nil {
		t.Fatalf("deleting a missing key: %v", err)
	}
	if _, err := c.Get(ctx, "relay.test"); !errors.Is(err, autocert.ErrCacheMiss) {
		t.Fatalf("Get after Delete = %v", err)
	}
}

func nodeNames(t *testing.T, s server.Store) []string {
	t.Helper()
	nodes, err := s.LiveNodes(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range nodes {
		names = append(names, n.Name+"="+n.Addr)
	}
	return names
}

func testNodes(t *testing.T, open Opener) {
	ctx := ctxT(t)
	n1, n2, reader := open(t), open(t), open(t)
	if err := n1.RegisterNode(ctx, "n1", "10.0.0.1:443", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := n2.RegisterNode(ctx, "n2", "10.0.0.2:443", time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Run("every live node is listed by name, on any handle", func(t *testing.T) {
		if got, want := nodeNames(t, reader), []string{"n1=10.0.0.1:443", "n2=10.0.0.2:443"}; !slices.Equal(got, want) {
			t.Fatalf("live nodes = %v, want %v", got, want)
		}
	})
	t.Run("a node restarted under its name takes it back at once, at its new address", func(t *testing.T) {
		restarted := open(t)
		if err := restarted.RegisterNode(ctx, "n1", "10.0.0.9:443", time.Minute); err != nil {
			t.Fatal(err)
		}
		if got, want := nodeNames(t, reader), []string{"n1=10.0.0.9:443", "n2=10.0.0.2:443"}; !slices.Equal(got, want) {
			t.Fatalf("live nodes = %v, want %v", got, want)
		}
	})
	t.Run("a node whose lease ran out is gone", func(t *testing.T) {
		if err := n2.RegisterNode(ctx, "n3", "10.0.0.3:443", 200*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		relaytest.WaitFor(t, "n3's lease to run out", func() bool { return !slices.Contains(nodeNames(t, reader), "n3=10.0.0.3:443") })
		if got := nodeNames(t, reader); len(got) != 2 {
			t.Fatalf("live nodes = %v, want n1 and n2 only", got)
		}
	})
	t.Run("a node that leaves is gone at once", func(t *testing.T) {
		if err := n2.LeaveNode(ctx, "n2"); err != nil {
			t.Fatal(err)
		}
		if got, want := nodeNames(t, reader), []string{"n1=10.0.0.9:443"}; !slices.Equal(got, want) {
			t.Fatalf("live nodes = %v, want %v", got, want)
		}
	})
}
