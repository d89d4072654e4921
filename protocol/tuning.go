package protocol

import (
	"encoding/binary"
	"net"
)

// The transports' performance knobs that are not plain configuration
// live here, next to QUICConfig and YamuxConfig's callers.

// yamux writes every frame as two writes on its connection, the 12-byte
// header and then the body. Over TLS each write is a record of its own and
// a system call, so a small delivery paid for four records where two
// carry it. frameConn holds a data frame's header back until its body
// arrives (yamux writes them back to back from one goroutine) and writes
// both as one.
type frameConn struct {
	net.Conn
	hdr    [yamuxHeader]byte
	held   bool
	joined []byte
}

// yamux's frame header: version, type, flags (2), stream id (4), length (4).
const (
	yamuxHeader = 12
	yamuxData   = 0
	// joinUpTo is the largest body joined with its header: a TLS record
	// carries 16 KiB, and larger bodies cost a record each anyway.
	joinUpTo = 16<<10 - yamuxHeader
)

// joinFrames wraps the connection a yamux session writes to.
func joinFrames(c net.Conn) net.Conn { return &frameConn{Conn: c} }

func (c *frameConn) Write(p []byte) (int, error) {
	if c.held {
		c.held = false
		if len(p) > joinUpTo {
			if _, err := c.Conn.Write(c.hdr[:]); err != nil {
				return 0, err
			}
			return c.Conn.Write(p)
		}
		c.joined = append(append(c.joined[:0], c.hdr[:]...), p...)
		n, err := c.Conn.Write(c.joined)
		return max(n-yamuxHeader, 0), err
	}
	if len(p) == yamuxHeader && p[1] == yamuxData && binary.BigEndian.Uint32(p[8:]) > 0 {
		// A data frame's header: its body is the very next write.
		copy(c.hdr[:], p)
		c.held = true
		return len(p), nil
	}
	return c.Conn.Write(p)
}
