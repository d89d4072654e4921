package protocol

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// watchdog decides when a session whose transport has no idle timeout of
// its own (yamux) is dead: when nothing at all was received for the idle
// timeout. It also sends a keep-alive whenever this side has sent nothing
// for the keep-alive interval, so the peer always has bytes to count, even
// while its own probes wait behind the data it sends (yamux has no ACKs
// that would tell a sender its peer is alive).
//
// It checks from a timer, not a goroutine of its own: an idle session
// should cost as little as it can (issue 11).
type watchdog struct {
	received  func() int64 // bytes received so far
	sent      func() int64 // bytes sent so far
	keepalive func()
	keepAlive atomic.Int64 // nanoseconds
	idle      atomic.Int64 // nanoseconds

	mu            sync.Mutex // one check at a time; guards what follows
	t             *time.Timer
	done          <-chan struct{}
	dead          func(error)
	stopped       bool
	silent, quiet time.Duration // since bytes last came in, went out
	seen, said    int64
	prev          time.Time
}

func newWatchdog(l Liveness, received, sent func() int64, keepalive func()) *watchdog {
	w := &watchdog{received: received, sent: sent, keepalive: keepalive}
	w.set(l)
	return w
}

// set changes the timings; a running watchdog checks again at once.
func (w *watchdog) set(l Liveness) {
	if l.KeepAlive <= 0 || l.IdleTimeout <= 0 {
		l = LivenessFor(0)
	}
	w.keepAlive.Store(int64(l.KeepAlive))
	w.idle.Store(int64(l.IdleTimeout))
	w.mu.Lock()
	if w.t != nil && !w.stopped {
		w.t.Reset(0)
	}
	w.mu.Unlock()
}

func (w *watchdog) tick() time.Duration {
	return max(time.Duration(w.idle.Load())/15, time.Millisecond)
}

// start checks a few times per idle timeout until done closes or stop is
// called, or until the session is found dead: then it calls dead (once,
// from the timer) with ErrPeerSilent. Silence is counted only while this
// process runs: a check that comes late (CPU starved, or the machine
// asleep) counts for two checks at most, so a busy process never declares
// its peer dead for its own stall.
func (w *watchdog) start(done <-chan struct{}, dead func(error)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done, w.dead = done, dead
	w.seen, w.said, w.prev = w.received(), w.sent(), time.Now()
	w.t = time.AfterFunc(w.tick(), w.check)
}

// stop ends the checks; a check under way finishes first.
func (w *watchdog) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	if w.t != nil {
		w.t.Stop()
	}
}

func (w *watchdog) check() {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return
	}
	select {
	case <-w.done:
		w.stopped = true
		w.mu.Unlock()
		return
	default:
	}
	tick := w.tick()
	now := time.Now()
	step := min(now.Sub(w.prev), 2*tick)
	w.prev = now
	if n := w.received(); n != w.seen {
		w.seen, w.silent = n, 0
	} else {
		w.silent += step
	}
	if n := w.sent(); n != w.said {
		w.said, w.quiet = n, 0
	} else {
		w.quiet += step
	}
	if w.silent >= time.Duration(w.idle.Load()) {
		w.stopped = true
		err := fmt.Errorf("%w: nothing received for %s", ErrPeerSilent, w.silent.Round(time.Millisecond))
		w.mu.Unlock()
		w.dead(err)
		return
	}
	if w.quiet >= time.Duration(w.keepAlive.Load()) {
		// Under the lock, so a second check that set started cannot send
		// a second one; it only asks for a frame, the writer sends it.
		w.keepalive()
		w.said, w.quiet = w.sent(), 0
	}
	w.t.Reset(tick)
	w.mu.Unlock()
}
