package client

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"sync"
	"time"

	"github.com/relaytunnel/relay/client/record"
)

// DefaultDedupWindow is how long --dedup remembers a forwarded event.
const DefaultDedupWindow = 24 * time.Hour

// dedup remembers which provider events reached the local app. Deliveries
// of one event are serialised, so a duplicate that arrives while the first
// is still at the app waits for its answer instead of racing it. Marks are
// kept in the recording store, so they survive a restart of the agent.
type dedup struct {
	store  *record.Store // nil: memory only
	window time.Duration
	log    *slog.Logger

	mu     sync.Mutex
	locks  map[string]*keyLock
	memory map[string]time.Time
}

type keyLock struct {
	mu      sync.Mutex
	waiters int
}

func newDedup(store *record.Store, window time.Duration, log *slog.Logger) *dedup {
	return &dedup{store: store, window: window, log: log, locks: map[string]*keyLock{}, memory: map[string]time.Time{}}
}

// lock serialises deliveries of key; call the returned func when done.
func (d *dedup) lock(key string) func() {
	d.mu.Lock()
	l := d.locks[key]
	if l == nil {
		l = &keyLock{}
		d.locks[key] = l
	}
	l.waiters++
	d.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		d.mu.Lock()
		if l.waiters--; l.waiters == 0 {
			delete(d.locks, key)
		}
		d.mu.Unlock()
	}
}

// seen reports whether key reached the local app within the window.
func (d *dedup) seen(ctx context.Context, key string) bool {
	since := time.Now().Add(-d.window)
	d.mu.Lock()
	at, ok := d.memory[key]
	d.mu.Unlock()
	if ok && at.After(since) {
		return true
	}
	if d.store == nil {
		return false
	}
	seen, err := d.store.Seen(ctx, key, since)
	if err != nil {
		d.log.Warn("--dedup could not look up an event; forwarding it", "key", key, "err", err)
	}
	return err == nil && seen
}

// mark notes that key reached the local app and got a 2xx. The store
// write finishes before the answer goes back to the relay, so a
// redelivery after the agent is killed still finds it.
func (d *dedup) mark(ctx context.Context, key string) {
	now := time.Now()
	d.mu.Lock()
	d.memory[key] = now
	if len(d.memory) > 100000 {
		for k, at := range d.memory {
			if now.Sub(at) > d.window {
				delete(d.memory, k)
			}
		}
	}
	d.mu.Unlock()
	if d.store != nil {
		if err := d.store.MarkSeen(context.WithoutCancel(ctx), key, now); err != nil {
			d.log.Warn("--dedup could not note a forwarded event; a redelivery after a restart would pass", "key", key, "err", err)
		}
	}
}

// maxEventKey bounds a dedup key: event ids come from strangers' headers,
// and a key is kept in memory and on disk for the whole window.
const maxEventKey = 200

// eventKey is the dedup key of a provider's event; an id too long to keep
// is kept as its SHA-256.
func eventKey(provider, eventID string) string {
	key := provider + ":" + eventID
	if len(key) <= maxEventKey {
		return key
	}
	sum := sha256.Sum256([]byte(eventID))
	return provider + ":sha256:" + hex.EncodeToString(sum[:])
}
