package inspect

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// subscriberBuffer is how many ids an event stream may fall behind before it
// is told to resync instead; the recorder must never wait for a browser.
const subscriberBuffer = 64

// infoChanged travels the hub in place of a delivery id (ids start at 1):
// the page should ask for /api/info again.
const infoChanged = 0

// eventWriteTimeout bounds each write to an event stream, so a page that
// stopped reading cannot hold its handler forever.
const eventWriteTimeout = 10 * time.Second

// hub fans "delivery recorded" notices out to the open event streams.
type hub struct {
	mu      sync.Mutex
	subs    map[*subscriber]struct{}
	changed chan struct{} // closed and replaced whenever subs changes
}

type subscriber struct {
	ids    chan int64
	lagged atomic.Bool // an id was dropped: the page must reload its list
}

func newHub() *hub {
	return &hub{subs: make(map[*subscriber]struct{}), changed: make(chan struct{})}
}

func (h *hub) subscribe() *subscriber {
	sub := &subscriber{ids: make(chan int64, subscriberBuffer)}
	h.mu.Lock()
	h.subs[sub] = struct{}{}
	h.signalLocked()
	h.mu.Unlock()
	return sub
}

func (h *hub) unsubscribe(sub *subscriber) {
	h.mu.Lock()
	delete(h.subs, sub)
	h.signalLocked()
	h.mu.Unlock()
}

func (h *hub) signalLocked() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// watch returns the number of subscribers and a channel closed when it
// changes; tests wait on it instead of sleeping.
func (h *hub) watch() (int, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs), h.changed
}

func (h *hub) publish(id int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.subs {
		select {
		case sub.ids <- id:
		default:
			sub.lagged.Store(true)
		}
	}
}

// handleEvents is GET /api/events: a Server-Sent Events stream with one
// "delivery" event per recorded delivery, "info" when the agent's Info
// changed, "resync" when the page fell behind, and a comment now and then to
// show it is alive. It ends when the page goes
// away or Serve shuts down.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")

	// Subscribe before the headers go out: once a client sees them, every
	// later Notify reaches it.
	sub := s.hub.subscribe()
	defer s.hub.unsubscribe(sub)

	send := func(msg string) bool {
		rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout))
		if _, err := fmt.Fprint(w, msg); err != nil {
			s.log.Debug("inspector event stream ended", "err", err)
			return false
		}
		if err := rc.Flush(); err != nil {
			s.log.Debug("inspector event stream ended", "err", err)
			return false
		}
		return true
	}
	w.WriteHeader(http.StatusOK)
	if !send("retry: 2000\n\n") {
		return
	}
	tick := time.NewTicker(s.keepAlive)
	defer tick.Stop()
	stop := stopping(r)
	for {
		var msg string
		select {
		case <-r.Context().Done():
			return
		case <-stop:
			return
		case id := <-sub.ids:
			if id == infoChanged {
				msg = "event: info\ndata: {}\n\n"
			} else {
				msg = fmt.Sprintf("event: delivery\ndata: {\"id\":%d}\n\n", id)
			}
			if sub.lagged.Swap(false) {
				msg += "event: resync\ndata: {}\n\n"
			}
		case <-tick.C:
			msg = ": keep-alive\n\n"
		}
		if !send(msg) {
			return
		}
	}
}
