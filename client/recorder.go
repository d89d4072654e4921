package client

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/relaytunnel/relay/client/record"
)

// Redacted replaces a header value equal to one of --secret's secrets
// (GitLab sends its secret as the X-Gitlab-Token header): secrets are never
// written to the recording.
const Redacted = "[redacted by relay]"

// recorder writes recordings off the delivery path: deliveries that end
// together are written in one transaction, and the answer to the provider
// never waits for the disk. Their console lines go out with them, in one
// write.
type recorder struct {
	store   *record.Store
	log     *slog.Logger
	console *console
	mu      sync.RWMutex
	running bool
	ch      chan recItem
	done    chan struct{}
	// recorded learns each new recording's id (the inspector's feed).
	recorded func(id int64)
}

// recorderBatch bounds one transaction; recorderLinger is how long the
// first recording of a batch waits for company while deliveries come
// close together. At thousands a second a transaction per delivery costs
// more than the delivery itself, and a few milliseconds later on disk
// costs nobody. A recording that comes after a quiet spell is written at
// once: batching would gain nothing, and `relay requests` typed the
// moment `relay trigger` returns must list it.
const (
	recorderBatch  = 256
	recorderLinger = 10 * time.Millisecond
)

// recItem is one recording and its console line.
type recItem struct {
	rd   *record.Delivery
	line string
}

func newRecorder(store *record.Store, log *slog.Logger, console *console) *recorder {
	return &recorder{store: store, log: log, console: console}
}

// start begins writing in the background until stop; recorded, if not
// nil, is told the id of every recording written.
func (r *recorder) start(recorded func(id int64)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recorded = recorded
	r.ch = make(chan recItem, 1024)
	r.done = make(chan struct{})
	r.running = true
	go r.run(r.ch, r.done)
}

// stop writes what is pending and returns when it is on disk.
func (r *recorder) stop() {
	r.mu.Lock()
	if !r.running {
		r.mu.Unlock()
		return
	}
	r.running = false
	close(r.ch)
	done := r.done
	r.mu.Unlock()
	<-done
}

// add records rd and prints its console line in the background, or at
// once when not running.
func (r *recorder) add(rd *record.Delivery, line string) {
	r.mu.RLock()
	if r.running {
		r.ch <- recItem{rd, line}
		r.mu.RUnlock()
		return
	}
	r.mu.RUnlock()
	r.write([]recItem{{rd, line}})
}

func (r *recorder) run(ch <-chan recItem, done chan<- struct{}) {
	defer close(done)
	batch := make([]recItem, 0, recorderBatch)
	linger := time.NewTimer(recorderLinger)
	linger.Stop()
	var wrote time.Time // when the last batch was written
	open := true
	for open {
		it, ok := <-ch
		if !ok {
			return
		}
		batch = append(batch[:0], it)
		var wait <-chan time.Time // nil: take only what is already here
		if time.Since(wrote) < recorderLinger {
			linger.Reset(recorderLinger)
			wait = linger.C
		}
	more:
		for len(batch) < recorderBatch {
			var it recItem
			var ok bool
			if wait == nil {
				select {
				case it, ok = <-ch:
				default:
					break more
				}
			} else {
				select {
				case it, ok = <-ch:
				case <-wait:
					break more
				}
			}
			if !ok {
				open = false
				break more
			}
			batch = append(batch, it)
		}
		linger.Stop()
		r.write(batch)
		wrote = time.Now()
	}
}

func (r *recorder) write(batch []recItem) {
	var lines strings.Builder
	rds := make([]*record.Delivery, len(batch))
	for i, it := range batch {
		lines.WriteString(it.line)
		rds[i] = it.rd
	}
	r.console.print(lines.String())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.store.AddBatch(ctx, rds); err != nil {
		r.log.Warn("could not record deliveries", "count", len(rds), "err", err)
		return
	}
	if r.recorded == nil {
		return
	}
	for _, rd := range rds {
		r.recorded(rd.ID)
	}
}

// redact is h with every value equal to a configured secret replaced (a
// copy when something is replaced), and without the empty User-Agent that
// only keeps Go's default off the wire.
func redact(h http.Header, secrets map[string]string) http.Header {
	if ua := h["User-Agent"]; len(ua) == 1 && ua[0] == "" {
		delete(h, "User-Agent")
	}
	if len(secrets) == 0 {
		return h
	}
	var out http.Header
	for k, vs := range h {
		for i, v := range vs {
			for _, s := range secrets {
				if s == "" || v != s {
					continue
				}
				if out == nil {
					out = h.Clone()
				}
				out[k][i] = Redacted
			}
		}
	}
	if out == nil {
		return h
	}
	return out
}
