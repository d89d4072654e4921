package protocol

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// ErrHeartbeatTimeout means the peer stopped answering pings: the session
// looks alive to the kernel but carries nothing (a laptop that slept).
var ErrHeartbeatTimeout = errors.New("peer stopped answering heartbeats")

// ErrGoAway is returned by Control.Run when the server ended the session on
// purpose; errors.As gives the GoAway.
type GoAwayError struct{ GoAway GoAway }

func (e *GoAwayError) Error() string {
	if e.GoAway.Message != "" {
		return "server ended the session: " + e.GoAway.Reason + ": " + e.GoAway.Message
	}
	return "server ended the session: " + e.GoAway.Reason
}

// Control runs the control stream after the handshake: heartbeats both
// ways and the server's GoAway.
type Control struct {
	st       Stream
	interval time.Duration
	wmu      sync.Mutex
	lastSeen atomic.Int64 // unix nanos of the last frame from the peer
	rtt      atomic.Int64 // nanoseconds, last measured
}

// NewControl wraps the control stream. interval is how often to ping; the
// peer is declared gone after three intervals of silence.
func NewControl(st Stream, interval time.Duration) *Control {
	c := &Control{st: st, interval: interval}
	c.lastSeen.Store(time.Now().UnixNano())
	return c
}

// RTT is the round-trip time of the latest answered ping.
func (c *Control) RTT() time.Duration { return time.Duration(c.rtt.Load()) }

// SendGoAway tells the agent why the session is ending.
func (c *Control) SendGoAway(g GoAway) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.st.SetWriteDeadline(time.Now().Add(2 * time.Second))
	return WriteMessage(c.st, FrameGoAway, g)
}

func (c *Control) write(t FrameType, p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.st.SetWriteDeadline(time.Now().Add(c.interval * 3))
	return WriteFrame(c.st, t, p)
}

// Run pings every interval and answers the peer's pings until ctx ends, the
// stream fails, the peer falls silent, or a GoAway arrives. It closes the
// control stream before returning; the caller closes the session.
func (c *Control) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		errc <- c.readLoop()
	}()
	defer func() {
		c.st.Close()
		wg.Wait()
	}()

	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			return err
		case now := <-t.C:
			if silent := now.Sub(time.Unix(0, c.lastSeen.Load())); silent > 3*c.interval {
				return fmt.Errorf("%w (silent for %s)", ErrHeartbeatTimeout, silent.Round(time.Millisecond))
			}
			var p [8]byte
			binary.BigEndian.PutUint64(p[:], uint64(now.UnixNano()))
			if err := c.write(FramePing, p[:]); err != nil {
				return fmt.Errorf("send heartbeat: %w", err)
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
		c.lastSeen.Store(time.Now().UnixNano())
		switch t {
		case FramePing:
			if err := c.write(FramePong, p); err != nil {
				return fmt.Errorf("answer heartbeat: %w", err)
			}
		case FramePong:
			if len(p) == 8 {
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
		default:
			// Unknown frames on the control stream are ignored so a newer
			// peer can add some without breaking this one.
		}
	}
}
