package client

import (
	"context"
	"log/slog"
	"net/http"
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
// never waits for the disk.
type recorder struct {
	store   *record.Store
	log     *slog.Logger
	notify  func(*Delivery, int64)
	mu      sync.RWMutex
	running bool
	ch      chan recItem
	done    chan struct{}
}

type recItem struct {
	rd *record.Delivery
	d  *Delivery // nil for replays
}

// recorderBatch bounds one transaction.
const recorderBatch = 256

func newRecorder(store *record.Store, log *slog.Logger, notify func(*Delivery, int64)) *recorder {
	return &recorder{store: store, log: log, notify: notify}
}

// start begins writing in the background until stop.
func (r *recorder) start() {
	r.mu.Lock()
	defer r.mu.Unlock()
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

// add records rd in the background, or at once when not running.
func (r *recorder) add(rd *record.Delivery, d *Delivery) {
	r.mu.RLock()
	if r.running {
		r.ch <- recItem{rd, d}
		r.mu.RUnlock()
		return
	}
	r.mu.RUnlock()
	r.write([]recItem{{rd, d}})
}

func (r *recorder) run(ch <-chan recItem, done chan<- struct{}) {
	defer close(done)
	batch := make([]recItem, 0, recorderBatch)
	for it := range ch {
		batch = append(batch[:0], it)
	more:
		for len(batch) < recorderBatch {
			select {
			case it, ok := <-ch:
				if !ok {
					break more
				}
				batch = append(batch, it)
			default:
				break more
			}
		}
		r.write(batch)
	}
}

func (r *recorder) write(batch []recItem) {
	rds := make([]*record.Delivery, len(batch))
	for i, it := range batch {
		rds[i] = it.rd
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.store.AddBatch(ctx, rds); err != nil {
		r.log.Warn("could not record deliveries", "count", len(rds), "err", err)
	}
	for _, it := range batch {
		if it.d != nil {
			it.d.RecordID = it.rd.ID
		}
		r.notify(it.d, it.rd.ID)
	}
}

// recording is d as the store keeps it.
func (a *Agent) recording(d *Delivery) *record.Delivery {
	r := d.Request
	kind := record.KindLive
	if d.Header.Queued {
		kind = record.KindQueued
	}
	rd := &record.Delivery{
		RelayID:         d.Header.ID,
		Kind:            kind,
		Outcome:         d.Outcome,
		Tunnel:          a.Welcome().Name,
		Transport:       d.Transport,
		Target:          a.cfg.target.String(),
		Method:          r.Method,
		Host:            r.Host,
		Path:            r.URL.EscapedPath(),
		Query:           r.URL.RawQuery,
		RemoteAddr:      d.Header.RemoteAddr,
		RequestHeader:   redact(r.Header, a.cfg.Secrets),
		RequestBody:     record.Body{Data: d.ReqBody, Size: d.ReqBytes, Truncated: d.ReqBodyTruncated},
		Status:          d.Status,
		ResponseHeader:  d.RespHeader,
		ResponseBody:    record.Body{Data: d.RespBody, Size: d.RespBytes, Truncated: d.RespBodyTruncated},
		Error:           d.Error,
		Attempts:        d.Attempts,
		StartedAt:       d.Started,
		AnsweredAt:      d.Answered,
		FinishedAt:      d.Finished,
		Provider:        d.Provider.Provider,
		Event:           d.Provider.Event,
		EventID:         d.Provider.EventID,
		Signature:       string(d.Verdict.Status),
		SignatureReason: d.Verdict.Reason,
		DuplicateOf:     d.DuplicateOf,
	}
	if d.Header.ReceivedAt != 0 {
		rd.ReceivedAt = time.Unix(0, d.Header.ReceivedAt)
	} else {
		rd.ReceivedAt = d.Started
	}
	return rd
}

// redact copies h with every value equal to a configured secret replaced.
func redact(h http.Header, secrets map[string]string) http.Header {
	out := h.Clone()
	if len(secrets) == 0 {
		return out
	}
	for k, vs := range out {
		for i, v := range vs {
			for _, s := range secrets {
				if s != "" && v == s {
					vs[i] = Redacted
				}
			}
		}
		out[k] = vs
	}
	return out
}
