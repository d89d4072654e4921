package protocol

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// YamuxConfig is the yamux configuration both sides use.
func YamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	// Waiting streams beyond the backlog are reset silently, and the same
	// number bounds the streams a side may have opened and the peer not
	// yet acknowledged: size it to what the server may push at once. The
	// server accepts one stream from an agent and ends the session on a
	// second (server/session.go), so an agent's backlog is never its to
	// fill.
	c.AcceptBacklog = MaxConcurrentDeliveries
	// The default 256 KiB window bounds one stream to window/RTT. Windows
	// grow only as the reader consumes, so streams nobody reads stay at
	// yamux's initial 256 KiB.
	c.MaxStreamWindowSize = 2 << 20
	// Liveness is the session watchdog's job (every byte read counts).
	// yamux's keep-alive queues its ping behind data frames, waits for the
	// pong behind the peer's, and ends the session itself when that takes
	// longer than ConnectionWriteTimeout: a busy session taken for dead.
	c.EnableKeepAlive = false
	// A frame may wait long in yamux's one send queue when many streams
	// write at once; failing the write (or, for a window update, the
	// reader) then would break a healthy session. A dead peer is the
	// watchdog's to notice, so this is only a safety valve.
	c.ConnectionWriteTimeout = 2 * time.Minute
	c.LogOutput = io.Discard
	return c
}

// serverAcceptBacklog is the server's yamux backlog. yamux sizes two
// things with it: the queue of streams the peer opened and this side has
// not accepted (an agent opens one), and how many streams this side may
// have opened that the peer has not acknowledged yet. An agent
// acknowledges a delivery stream as soon as its accept loop takes it, so
// 256 unacknowledged opens only slow a burst of more than 256 new streams
// within one round trip (deliveries beyond wait for acknowledgements, as
// they wait beyond MaxConcurrentDeliveries). The queue's slots are 8 bytes
// each, held by every session from its start: 1,024 of them were 8 KiB
// of an idle tunnel's cost (issue 11).
const serverAcceptBacklog = 256

func serverYamuxConfig() *yamux.Config {
	c := YamuxConfig()
	c.AcceptBacklog = serverAcceptBacklog
	return c
}

// ServerYamux starts the server side of a yamux session on an accepted TLS
// connection that negotiated ALPN.
//
// An agent opens one stream, the control stream, and nothing else: a second
// stream it opens, before its Hello or after its Welcome, ends the session
// with ErrTooManyStreams as soon as its first frame is read, so a stranger
// cannot make the server buffer streams (nothing needs to accept them to
// find out).
func ServerYamux(conn net.Conn, l Liveness) (Session, error) {
	yc := newYamuxConn(conn)
	yc.maxIncoming = 1
	ys, err := yamux.Server(yc, serverYamuxConfig())
	if err != nil {
		return nil, fmt.Errorf("start yamux: %w", err)
	}
	return newYamuxSession(ys, yc, l), nil
}

// ClientYamux starts the agent side of a yamux session on conn.
func ClientYamux(conn net.Conn, l Liveness) (Session, error) {
	yc := newYamuxConn(conn)
	ys, err := yamux.Client(yc, YamuxConfig())
	if err != nil {
		return nil, fmt.Errorf("start yamux: %w", err)
	}
	return newYamuxSession(ys, yc, l), nil
}

// DialTCP dials addr over TLS, checks ALPN and starts a yamux client.
func DialTCP(ctx context.Context, addr string, tlsConf *tls.Config, l Liveness) (Session, error) {
	conf := tlsConf.Clone()
	conf.NextProtos = []string{ALPN}
	d := tls.Dialer{Config: conf, NetDialer: &net.Dialer{KeepAlive: 15 * time.Second}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		// A remote TLS alert has no exported type over TCP
		// (tls.AlertError is QUIC's), so the alert is known by its text.
		if strings.Contains(err.Error(), "no application protocol") {
			return nil, fmt.Errorf("%w: %s does not speak %s; is it a relay server? (%w)", ErrVersionMismatch, addr, ALPN, err)
		}
		return nil, err
	}
	tc := c.(*tls.Conn)
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
		tc.Close()
		return nil, fmt.Errorf("%w: server did not negotiate %s (got %q); is it a relay server?", ErrVersionMismatch, ALPN, p)
	}
	sess, err := ClientYamux(tc, l)
	if err != nil {
		tc.Close()
		return nil, err
	}
	return sess, nil
}

// yamuxSession is a yamux session plus the watchdog yamux lacks: it ends
// the session when nothing at all was read from the connection for the
// idle timeout, and writes a keep-alive frame whenever nothing was written
// for a keep-alive interval.
type yamuxSession struct {
	s    *yamux.Session
	conn *yamuxConn
	dog  *watchdog

	errOnce sync.Once
	err     error // why the session ended; set before it ends

	// The streams not yet closed, so that end can release their readers
	// before yamux shuts down: yamux v0.1.2's Read loops without
	// blocking from the moment its session closes until it reaches that
	// stream in its force-close, and with many idle streams the spinning
	// readers starve the close itself for seconds on a busy machine.
	smu     sync.Mutex
	streams map[*yamuxStream]struct{}
	ended   bool
}

func newYamuxSession(ys *yamux.Session, conn *yamuxConn, l Liveness) *yamuxSession {
	s := &yamuxSession{s: ys, conn: conn, streams: make(map[*yamuxStream]struct{})}
	s.dog = newWatchdog(l, conn.received.Load, conn.sent.Load, conn.keepalive)
	s.dog.start(ys.CloseChan(), s.end)
	return s
}

// SetLiveness changes the timings of a running session, as an agent does
// once the server's Welcome tells its keep-alive interval. A QUIC session
// negotiated its idle timeout in the handshake and keeps it.
func SetLiveness(sess Session, l Liveness) {
	if s, ok := sess.(*yamuxSession); ok {
		s.dog.set(l)
	}
}

// end records why the session ends and ends it, without waiting for the
// watchdog (which may be the caller).
func (s *yamuxSession) end(err error) {
	s.setErr(err)
	s.smu.Lock()
	s.ended = true
	open := make([]*yamuxStream, 0, len(s.streams))
	for st := range s.streams {
		open = append(open, st)
	}
	s.smu.Unlock()
	for _, st := range open {
		st.Stream.SetReadDeadline(time.Unix(1, 0))
	}
	s.s.Close()
	s.conn.Close()
}

// stream wraps st and tracks it until it is closed.
func (s *yamuxSession) stream(st *yamux.Stream) *yamuxStream {
	ys := &yamuxStream{Stream: st, conn: s.conn, sess: s}
	s.smu.Lock()
	ended := s.ended
	if !ended {
		s.streams[ys] = struct{}{}
	}
	s.smu.Unlock()
	if ended {
		st.SetReadDeadline(time.Unix(1, 0))
	}
	return ys
}

func (s *yamuxSession) closed(st *yamuxStream) {
	s.smu.Lock()
	delete(s.streams, st)
	s.smu.Unlock()
}

func (s *yamuxSession) isEnded() bool {
	s.smu.Lock()
	defer s.smu.Unlock()
	return s.ended
}

// setErr keeps the first reason the session ended. A connection that had
// already failed (the peer hung up, or its kernel reset the connection)
// is that reason, whoever notices it first.
func (s *yamuxSession) setErr(err error) {
	s.errOnce.Do(func() {
		if cerr := s.conn.readErr(); cerr != nil {
			if errors.Is(cerr, ErrTooManyStreams) {
				err = cerr
			} else if errors.Is(cerr, io.EOF) {
				err = fmt.Errorf("%w: the peer closed the connection", ErrSessionClosed)
			} else {
				err = fmt.Errorf("connection failed: %w", cerr)
			}
		}
		s.err = err
	})
}

func (s *yamuxSession) OpenStream(ctx context.Context) (Stream, error) {
	// yamux's Open does not block on the peer (no stream limit), so the
	// context only matters if the session is already gone.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st, err := s.s.OpenStream()
	if err != nil {
		return nil, err
	}
	return s.stream(st), nil
}

func (s *yamuxSession) AcceptStream(ctx context.Context) (Stream, error) {
	st, err := s.s.AcceptStreamWithContext(ctx)
	if err != nil {
		return nil, err
	}
	return s.stream(st), nil
}

// Close ends the session and stops its watchdog.
func (s *yamuxSession) Close() error {
	s.end(ErrSessionClosed)
	s.dog.stop()
	return nil
}

func (s *yamuxSession) Done() <-chan struct{} { return s.s.CloseChan() }
func (s *yamuxSession) Transport() string     { return TransportTCP }
func (s *yamuxSession) RemoteAddr() net.Addr  { return s.conn.RemoteAddr() }

func (s *yamuxSession) Err() error {
	select {
	case <-s.s.CloseChan():
	default:
		return nil
	}
	s.setErr(ErrSessionClosed)
	return s.err
}

type yamuxStream struct {
	*yamux.Stream
	conn    *yamuxConn
	sess    *yamuxSession
	aborted atomic.Bool
	finSent atomic.Bool
	once    sync.Once
}

func (s *yamuxStream) Read(p []byte) (int, error) {
	if s.aborted.Load() {
		return 0, ErrStreamAborted
	}
	n, err := s.Stream.Read(p)
	if (err == io.EOF && !s.conn.finished(s.StreamID())) || (errors.Is(err, yamux.ErrTimeout) && s.sess.isEnded()) {
		// yamux ends every stream with a clean EOF when the session
		// ends (and end releases readers with a past deadline); only the
		// peer's FIN is the end of the stream.
		return n, fmt.Errorf("%w before the stream ended: %w", ErrSessionClosed, io.ErrUnexpectedEOF)
	}
	return n, s.streamErr(err)
}

func (s *yamuxStream) Write(p []byte) (int, error) {
	if s.aborted.Load() {
		return 0, ErrStreamAborted
	}
	n, err := s.Stream.Write(p)
	return n, s.streamErr(err)
}

func (s *yamuxStream) streamErr(err error) error {
	switch {
	case err == nil || err == io.EOF:
		return err
	case s.aborted.Load():
		return fmt.Errorf("%w: %w", ErrStreamAborted, err)
	case errors.Is(err, yamux.ErrConnectionReset):
		return fmt.Errorf("%w by the peer: %w", ErrStreamAborted, err)
	}
	return err
}

// Deadlines set after Close would undo the expired one that released
// blocked callers.
func (s *yamuxStream) SetDeadline(t time.Time) error {
	if s.aborted.Load() {
		return nil
	}
	return s.Stream.SetDeadline(t)
}

func (s *yamuxStream) SetReadDeadline(t time.Time) error {
	if s.aborted.Load() {
		return nil
	}
	return s.Stream.SetReadDeadline(t)
}

func (s *yamuxStream) SetWriteDeadline(t time.Time) error {
	if s.aborted.Load() {
		return nil
	}
	return s.Stream.SetWriteDeadline(t)
}

// CloseWrite sends FIN: yamux's Close is a half-close.
func (s *yamuxStream) CloseWrite() error {
	if s.aborted.Load() {
		return ErrStreamAborted
	}
	s.finSent.Store(true)
	return s.Stream.Close()
}

// Close aborts the stream. yamux v0.1.2 has no abort of its own, so:
// an expired deadline releases a Read or Write blocked here; a RST frame
// written between yamux's frames makes the peer's Read and Write fail at
// once (yamux then drops what it buffered: never a clean EOF after a cut
// body); and yamux's Close does its own bookkeeping. After CloseWrite the
// bytes sent are whole and the peer may still be reading them, so no RST
// goes out (as a TCP close after shutdown(SHUT_WR) delivers them).
func (s *yamuxStream) Close() error {
	s.once.Do(func() {
		s.aborted.Store(true)
		s.Stream.SetDeadline(time.Unix(1, 0))
		if !s.finSent.Load() {
			s.conn.reset(s.StreamID())
		}
		s.Stream.Close()
		s.conn.forget(s.StreamID())
		s.sess.closed(s)
	})
	return nil
}

// yamux frame layout (yamux spec.md): version, type, flags (2), stream id
// (4), length (4); only data frames carry a body, of length bytes.
const (
	yamuxHeaderLen        = 12
	yamuxTypeData         = 0
	yamuxTypeWindowUpdate = 1
	yamuxTypePing         = 2
	yamuxFlagSYN          = 0x1
	yamuxFlagACK          = 0x2
	yamuxFlagFIN          = 0x4
	yamuxFlagRST          = 0x8
	// keepaliveID is the ping id of keep-alive frames: yamux numbers its
	// own pings from 0 and would need four billion to reach it.
	keepaliveID = 1<<32 - 1
)

// yamuxConn is the connection under a yamux session. It counts the bytes
// read (the session's sign of life), notes which streams the peer ended
// with FIN, and writes RST frames for aborted streams, always between two
// of yamux's frames.
type yamuxConn struct {
	net.Conn
	received atomic.Int64
	sent     atomic.Int64
	in       frameTracker // read side: only yamux's receive loop reads

	// maxIncoming, when positive, is how many streams the peer may open
	// over the session's life; incoming counts them (receive loop only).
	maxIncoming, incoming int

	finMu sync.Mutex
	fins  map[uint32]struct{} // streams the peer sent FIN on, until read to EOF

	errMu sync.Mutex
	rerr  error // first read error

	wmu sync.Mutex   // one writer at a time: yamux's send loop or a reset
	out frameTracker // write side, under wmu

	pmu    sync.Mutex
	resets []uint32 // streams to reset at the next frame boundary
	ping   bool     // a keep-alive frame is due at the next boundary
}

func newYamuxConn(c net.Conn) *yamuxConn {
	// Frames are joined below the tracker: resets and keep-alives go out
	// between whole frames, never between a held header and its body.
	return &yamuxConn{Conn: joinFrames(c), fins: make(map[uint32]struct{})}
}

func (c *yamuxConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.received.Add(int64(n))
		c.in.track(p[:n], c.noteHeader)
		if c.maxIncoming > 0 && c.incoming > c.maxIncoming {
			// yamux's receive loop ends on the error and closes the
			// session; what it has not parsed yet is dropped with it.
			n, err = 0, fmt.Errorf("%w: the peer opened stream %d of at most %d", ErrTooManyStreams, c.incoming, c.maxIncoming)
		}
	}
	if err != nil {
		c.errMu.Lock()
		if c.rerr == nil {
			c.rerr = err
		}
		c.errMu.Unlock()
	}
	return n, err
}

func (c *yamuxConn) noteHeader(hdr []byte) {
	flags := binary.BigEndian.Uint16(hdr[2:])
	if flags&yamuxFlagSYN != 0 && (hdr[1] == yamuxTypeData || hdr[1] == yamuxTypeWindowUpdate) {
		c.incoming++ // a SYN opens a stream (on pings it asks for an answer)
	}
	if flags&yamuxFlagFIN != 0 {
		c.finMu.Lock()
		c.fins[binary.BigEndian.Uint32(hdr[4:])] = struct{}{}
		c.finMu.Unlock()
	}
}

// finished reports (once) whether the peer ended stream id with FIN.
func (c *yamuxConn) finished(id uint32) bool {
	c.finMu.Lock()
	defer c.finMu.Unlock()
	_, ok := c.fins[id]
	delete(c.fins, id)
	return ok
}

func (c *yamuxConn) forget(id uint32) {
	c.finMu.Lock()
	delete(c.fins, id)
	c.finMu.Unlock()
}

func (c *yamuxConn) readErr() error {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	if c.rerr != nil && (errors.Is(c.rerr, net.ErrClosed) || strings.Contains(c.rerr.Error(), "use of closed")) {
		return nil // this side closed it
	}
	return c.rerr
}

func (c *yamuxConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	if err := c.flushResets(); err != nil {
		c.wmu.Unlock()
		return 0, err
	}
	n, err := c.Conn.Write(p)
	c.sent.Add(int64(n))
	c.out.track(p[:n], nil)
	if err == nil {
		err = c.flushResets()
	}
	c.wmu.Unlock()
	c.kick()
	return n, err
}

// keepalive asks for a keep-alive frame: a ping answer for no ping of the
// peer's (an id yamux never reaches), which the peer's yamux drops
// and its watchdog counts. Unlike a yamux ping it waits for no answer, so
// it never sits behind data the peer is busy sending.
func (c *yamuxConn) keepalive() {
	c.pmu.Lock()
	c.ping = true
	c.pmu.Unlock()
	c.kick()
}

// reset asks for a RST frame for stream id.
func (c *yamuxConn) reset(id uint32) {
	c.pmu.Lock()
	c.resets = append(c.resets, id)
	c.pmu.Unlock()
	c.kick()
}

// kick writes pending resets now if no write is under way; a writer that
// holds the lock kicks again after it lets go, so none is left behind.
func (c *yamuxConn) kick() {
	for c.pending() && c.wmu.TryLock() {
		between := c.out.between()
		err := c.flushResets()
		c.wmu.Unlock()
		if !between || err != nil {
			return // the write that completes the frame flushes them
		}
	}
}

func (c *yamuxConn) pending() bool {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	return len(c.resets) > 0 || c.ping
}

// flushResets writes the pending resets if the byte stream is between
// frames. The caller holds wmu.
func (c *yamuxConn) flushResets() error {
	if !c.out.between() {
		return nil
	}
	c.pmu.Lock()
	ids, ping := c.resets, c.ping
	c.resets, c.ping = nil, false
	c.pmu.Unlock()
	if len(ids) == 0 && !ping {
		return nil
	}
	buf := make([]byte, len(ids)*yamuxHeaderLen, (len(ids)+1)*yamuxHeaderLen)
	for i, id := range ids {
		h := buf[i*yamuxHeaderLen:]
		h[1] = yamuxTypeWindowUpdate
		binary.BigEndian.PutUint16(h[2:], yamuxFlagRST)
		binary.BigEndian.PutUint32(h[4:], id)
	}
	if ping {
		var h [yamuxHeaderLen]byte
		h[1] = yamuxTypePing
		binary.BigEndian.PutUint16(h[2:], yamuxFlagACK)
		binary.BigEndian.PutUint32(h[8:], keepaliveID)
		buf = append(buf, h[:]...)
	}
	n, err := c.Conn.Write(buf)
	c.sent.Add(int64(n))
	return err
}

// frameTracker follows yamux's frames through a byte stream.
type frameTracker struct {
	hdr  [yamuxHeaderLen]byte
	hdrN int    // bytes of a frame header seen so far
	body uint32 // bytes of a data frame's body still to come
}

func (f *frameTracker) between() bool { return f.hdrN == 0 && f.body == 0 }

// track consumes p, calling onHeader (if set) with each complete header.
func (f *frameTracker) track(p []byte, onHeader func(hdr []byte)) {
	for len(p) > 0 {
		if f.body > 0 {
			k := min(uint32(len(p)), f.body)
			f.body -= k
			p = p[k:]
			continue
		}
		k := copy(f.hdr[f.hdrN:], p)
		f.hdrN += k
		p = p[k:]
		if f.hdrN == yamuxHeaderLen {
			f.hdrN = 0
			if f.hdr[1] == yamuxTypeData {
				f.body = binary.BigEndian.Uint32(f.hdr[8:])
			}
			if onHeader != nil {
				onHeader(f.hdr[:])
			}
		}
	}
}
