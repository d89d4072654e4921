package protocol

import (
	"fmt"
	"sync/atomic"
	"time"
)

// watchdog decides when a session whose transport has no idle timeout of
// its own (yamux) is dead: when nothing at all was received for the idle
// timeout. It also sends a keep-alive whenever this side has sent nothing
// for the keep-alive interval, so the peer always has bytes to count, even
// while its own probes wait behind the data it sends (yamux has no ACKs
// that would tell a sender its peer is alive).
type watchdog struct {
	received  func() int64 // bytes received so far
	sent      func() int64 // bytes sent so far
	keepalive func()
	keepAlive atomic.Int64 // nanoseconds
	idle      atomic.Int64 // nanoseconds
	changed   chan struct{}
}

func newWatchdog(l Liveness, received, sent func() int64, keepalive func()) *watchdog {
	w := &watchdog{received: received, sent: sent, keepalive: keepalive, changed: make(chan struct{}, 1)}
	w.set(l)
	return w
}

func (w *watchdog) set(l Liveness) {
	if l.KeepAlive <= 0 || l.IdleTimeout <= 0 {
		l = LivenessFor(0)
	}
	w.keepAlive.Store(int64(l.KeepAlive))
	w.idle.Store(int64(l.IdleTimeout))
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

func (w *watchdog) tick() time.Duration {
	return max(time.Duration(w.idle.Load())/15, time.Millisecond)
}

// run checks a few times per idle timeout until done closes (nil) or the
// session is found dead (ErrPeerSilent). Silence is counted only while
// this process runs: a check that comes late (CPU starved, or the machine
// asleep) counts for two checks at most, so a busy process never declares
// its peer dead for its own stall.
func (w *watchdog) run(done <-chan struct{}) error {
	var (
		silent, quiet time.Duration // since bytes last came in, went out
		seen          = w.received()
		said          = w.sent()
		prev          = time.Now()
	)
	t := time.NewTimer(w.tick())
	defer t.Stop()
	for {
		select {
		case <-done:
			return nil
		case <-w.changed:
		case <-t.C:
		}
		tick := w.tick()
		now := time.Now()
		step := min(now.Sub(prev), 2*tick)
		prev = now
		if n := w.received(); n != seen {
			seen, silent = n, 0
		} else {
			silent += step
		}
		if n := w.sent(); n != said {
			said, quiet = n, 0
		} else {
			quiet += step
		}
		if silent >= time.Duration(w.idle.Load()) {
			return fmt.Errorf("%w: nothing received for %s", ErrPeerSilent, silent.Round(time.Millisecond))
		}
		if quiet >= time.Duration(w.keepAlive.Load()) {
			w.keepalive()
			said, quiet = w.sent(), 0
		}
		t.Reset(tick)
	}
}
