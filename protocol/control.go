package protocol

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// GoAwayError is returned by Control.Run when the server ended the
// session on purpose; errors.As gives the GoAway.
type GoAwayError struct{ GoAway GoAway }

func (e *GoAwayError) Error() string {
	if e.GoAway.Message != "" {
		return "server ended the session: " + e.GoAway.Reason + ": " + e.GoAway.Message
	}
	return "server ended the session: " + e.GoAway.Reason
}

// Control runs the control stream after the handshake: the server's GoAway,
// and Ping/Pong both ways for the round-trip time. It never decides that the
// peer is gone: a pong may wait behind a saturated process's data, so the
// session decides that from every byte it receives (Session.Err).
type Control struct {
	st       Stream
	interval time.Duration
	probe    time.Duration
	// wlock serialises frame writes. A channel rather than a mutex: a
	// pong waiting behind a ping stuck in flow control is then durably
	// blocked, which testing/synctest needs to move its clock.
	wlock   chan struct{}
	rtt     atomic.Int64 // nanoseconds, last measured
	waiting atomic.Bool  // a ping is unanswered

	// OnNodes, set before Run, is called (on Run's reader) with every
	// Nodes frame the server sends; without it they are ignored.
	OnNodes func(Nodes)
}

// pingLen is the Ping payload: an 8-byte timestamp, padded so that the
// QUIC packet carrying it is long enough to draw a stateless reset from a
// restarted server (quic-go answers no packet of 42 bytes or less).
const pingLen = 32

// NewControl wraps the control stream; interval is how often to ping. While
// a ping is unanswered another follows every AgentKeepAlive (or interval,
// if shorter): each is a fresh packet a restarted server answers with a
// reset, so the restart is learned within about a second of it.
func NewControl(st Stream, interval time.Duration) *Control {
	return &Control{st: st, interval: interval, probe: min(interval, AgentKeepAlive), wlock: make(chan struct{}, 1)}
}

// RTT is the round-trip time of the latest answered ping.
func (c *Control) RTT() time.Duration { return time.Duration(c.rtt.Load()) }

// SendGoAway tells the agent why the session is ending.
func (c *Control) SendGoAway(g GoAway) error { return c.send(FrameGoAway, g) }

// SendNodes tells the agent the cluster's live nodes.
func (c *Control) SendNodes(n Nodes) error { return c.send(FrameNodes, n) }

// send writes one message frame, giving up after 2 s: a peer that does
// not read its control stream must not hold the server's caller.
func (c *Control) send(t FrameType, v any) error {
	c.wlock <- struct{}{}
	defer func() { <-c.wlock }()
	c.st.SetWriteDeadline(time.Now().Add(2 * time.Second))
	defer c.st.SetWriteDeadline(time.Time{})
	return WriteMessage(c.st, t, v)
}

func (c *Control) write(t FrameType, p []byte) error {
	c.wlock <- struct{}{}
	defer func() { <-c.wlock }()
	return WriteFrame(c.st, t, p)
}

// Run pings every interval and answers the peer's pings until ctx ends, the
// stream fails (as it does when the session ends), or a GoAway arrives. It
// aborts the control stream before returning; the caller closes the
// session.
//
// The reader runs on the caller's goroutine and pings go out from a timer:
// an idle session costs one parked goroutine here, not three (issue 11).
func (c *Control) Run(ctx context.Context) error {
	var (
		mu    sync.Mutex
		first error // why Run ends: the first of ctx, a failed ping, the reader
	)
	fail := func(err error) {
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
		c.st.Close() // releases the reader, or a write blocked on the stream
	}
	stopCtx := context.AfterFunc(ctx, func() { fail(ctx.Err()) })
	p := c.startPings(fail)
	err := c.readLoop()
	stopCtx()
	fail(err)
	p.stop()
	mu.Lock()
	defer mu.Unlock()
	return first
}

// pinger sends a ping every interval, and every probe while one is
// unanswered, from a timer. A ping stuck behind data only delays the next
// one: it never waits on an answer.
type pinger struct {
	c    *Control
	fail func(error)

	mu      sync.Mutex
	t       *time.Timer
	last    time.Time // when the latest ping went out
	stopped bool
	running sync.WaitGroup // a ping being written
}

func (c *Control) startPings(fail func(error)) *pinger {
	p := &pinger{c: c, fail: fail, last: time.Now()}
	p.mu.Lock()
	p.t = time.AfterFunc(c.interval, p.fire)
	p.mu.Unlock()
	return p
}

// stop ends the pings and waits for one being written (the caller has
// closed the stream, so the write returns).
func (p *pinger) stop() {
	p.mu.Lock()
	p.stopped = true
	p.t.Stop()
	p.mu.Unlock()
	p.running.Wait()
}

func (p *pinger) fire() {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return
	}
	now := time.Now()
	since := now.Sub(p.last)
	waiting := p.c.waiting.Load()
	if since < p.c.interval && !(waiting && since >= p.c.probe) {
		// Early: a pong came in since the timer was set for a probe.
		next := p.c.interval - since
		if waiting {
			next = p.c.probe - since
		}
		p.t.Reset(next)
		p.mu.Unlock()
		return
	}
	p.last = now
	p.running.Add(1)
	p.mu.Unlock()
	defer p.running.Done()

	p.c.waiting.Store(true)
	var b [pingLen]byte
	binary.BigEndian.PutUint64(b[:], uint64(now.UnixNano()))
	if err := p.c.write(FramePing, b[:]); err != nil {
		p.fail(fmt.Errorf("send ping: %w", err))
		return
	}
	p.mu.Lock()
	if !p.stopped {
		// Counted from when this ping was due, as a ticker would: a write
		// that waited does not push every later ping back.
		p.t.Reset(max(p.c.probe-time.Since(now), 0))
	}
	p.mu.Unlock()
}

func (c *Control) readLoop() error {
	for {
		t, p, err := ReadFrame(c.st)
		if err != nil {
			return fmt.Errorf("control stream: %w", err)
		}
		switch t {
		case FramePing:
			if err := c.write(FramePong, p); err != nil {
				return fmt.Errorf("answer ping: %w", err)
			}
		case FramePong:
			c.waiting.Store(false)
			if len(p) >= 8 {
				sent := int64(binary.BigEndian.Uint64(p))
				if d := time.Now().UnixNano() - sent; d >= 0 {
					c.rtt.Store(d)
				}
			}
		case FrameGoAway:
			var g GoAway
			if err := DecodeMessage(t, p, &g); err != nil {
				return err
			}
			return &GoAwayError{GoAway: g}
		case FrameNodes:
			var n Nodes
			if err := DecodeMessage(t, p, &n); err != nil {
				return err
			}
			if c.OnNodes != nil {
				c.OnNodes(n)
			}
		default:
			// Unknown frames on the control stream are ignored so a newer
			// peer can add some without breaking this one.
		}
	}
}
