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
func (c *Control) SendGoAway(g GoAway) error {
	c.wlock <- struct{}{}
	defer func() { <-c.wlock }()
	c.st.SetWriteDeadline(time.Now().Add(2 * time.Second))
	defer c.st.SetWriteDeadline(time.Time{})
	return WriteMessage(c.st, FrameGoAway, g)
}

// SendNodes tells the agent the cluster's live nodes.
func (c *Control) SendNodes(n Nodes) error {
	c.wlock <- struct{}{}
	defer func() { <-c.wlock }()
	c.st.SetWriteDeadline(time.Now().Add(2 * time.Second))
	defer c.st.SetWriteDeadline(time.Time{})
	return WriteMessage(c.st, FrameNodes, n)
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
func (c *Control) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		errc <- c.readLoop()
	}()
	go func() {
		defer wg.Done()
		if err := c.pingLoop(stop); err != nil {
			errc <- err
		}
	}()
	defer func() {
		close(stop)
		c.st.Close() // releases a read or write blocked on the stream
		wg.Wait()
	}()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case err := <-errc:
		return err
	}
}

// pingLoop sends a ping every interval, and every probe while one is
// unanswered. A ping stuck behind data only delays the next one: the loop
// never waits on an answer.
func (c *Control) pingLoop(stop <-chan struct{}) error {
	t := time.NewTicker(c.probe)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-stop:
			return nil
		case now := <-t.C:
			if since := now.Sub(last); since < c.interval && !(c.waiting.Load() && since >= c.probe) {
				continue
			}
			last = now
			c.waiting.Store(true)
			var p [pingLen]byte
			binary.BigEndian.PutUint64(p[:], uint64(now.UnixNano()))
			if err := c.write(FramePing, p[:]); err != nil {
				return fmt.Errorf("send ping: %w", err)
			}
		}
	}
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
