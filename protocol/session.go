package protocol

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/quic-go/quic-go"
)

// Stream is one bidirectional byte stream of a Session.
//
// Close aborts the stream in both directions: a Read or Write blocked on it
// returns at once, and the peer's Read and Write fail with ErrStreamAborted
// instead of seeing a clean end. CloseWrite is the graceful half-close: the
// peer reads io.EOF after the last byte and may still answer.
type Stream interface {
	net.Conn
	CloseWrite() error
}

// Session is a multiplexed connection between a server and an agent.
type Session interface {
	OpenStream(ctx context.Context) (Stream, error)
	AcceptStream(ctx context.Context) (Stream, error)
	// Close ends the session and every stream on it.
	Close() error
	// Done is closed once the session has ended, for whatever reason.
	Done() <-chan struct{}
	// Err says why the session ended (ErrPeerSilent when the peer sent
	// nothing for the idle timeout); nil while it runs.
	Err() error
	// Transport is "quic" or "tcp".
	Transport() string
	RemoteAddr() net.Addr
}

// Transport names.
const (
	TransportQUIC = "quic"
	TransportTCP  = "tcp"
)

// MaxConcurrentDeliveries is how many delivery streams one session carries
// at once; the server's OpenStream waits beyond it.
const MaxConcurrentDeliveries = 1024

var (
	// ErrStreamAborted is what Read and Write return on a stream that
	// either side aborted with Close.
	ErrStreamAborted = errors.New("stream aborted")
	// ErrPeerSilent ends a session on which nothing at all arrived for
	// the idle timeout: the peer is gone (a laptop asleep, a cable cut, a
	// process killed) even if the kernel still holds the connection.
	ErrPeerSilent = errors.New("peer went silent")
	// ErrSessionClosed is a session's Err after a Close from this side or
	// an orderly end from the peer's.
	ErrSessionClosed = errors.New("session closed")
	// ErrTooManyStreams ends a session on which the peer opened more
	// streams than it may (an agent opens only the control stream).
	ErrTooManyStreams = errors.New("protocol violation: the peer opened too many streams")
)

// Liveness timings. These are the defaults of both sides; a server's
// Heartbeat setting replaces KeepAlive and the idle timeout follows it.
const (
	// DefaultKeepAlive is how long a session may go without receiving
	// anything before this side sends something that asks for an answer.
	DefaultKeepAlive = 5 * time.Second
	// DefaultIdleTimeout is how long a session may go without receiving
	// anything at all before it is declared dead: three keep-alives.
	DefaultIdleTimeout = 3 * DefaultKeepAlive
	// AgentKeepAlive is the agent's, shorter: a probe sent after a second
	// of quiet is what a restarted server answers with a reset (QUIC
	// stateless reset, TCP RST), so the agent learns of a restart within a
	// second or two of the server coming back instead of by silence.
	AgentKeepAlive = time.Second
)

// Liveness says how a session tells a dead peer from a quiet or busy one.
// Every byte (QUIC: every packet) received is a sign of life, so a peer
// busy sending data is never taken for a dead one; probes are the
// transports' own (QUIC PING frames, yamux pings) and only matter when the
// session is otherwise quiet.
type Liveness struct {
	// KeepAlive is how long the session may receive nothing before this
	// side sends a probe the peer must answer.
	KeepAlive time.Duration
	// IdleTimeout is how long the session may receive nothing before it
	// ends with ErrPeerSilent.
	IdleTimeout time.Duration
}

// LivenessFor is the Liveness of a session whose keep-alive interval is
// keepAlive (the server's Heartbeat): the idle timeout is three of them.
// Zero means the defaults.
func LivenessFor(keepAlive time.Duration) Liveness {
	if keepAlive <= 0 {
		keepAlive = DefaultKeepAlive
	}
	return Liveness{KeepAlive: keepAlive, IdleTimeout: 3 * keepAlive}
}

// ServerQUICConfig is the quic-go configuration of the server's listener.
// An agent opens one stream, the control stream, and nothing else, so it
// may not open more: a stranger cannot make the server hold streams.
func ServerQUICConfig(l Liveness) *quic.Config {
	c := quicConfig(l)
	c.MaxIncomingStreams = 1
	return c
}

// AgentQUICConfig is the quic-go configuration agents dial with. The
// session's idle timeout is the smaller of both sides' (QUIC negotiates it),
// so a server with a short Heartbeat shortens the agent's too.
func AgentQUICConfig(l Liveness) *quic.Config {
	c := quicConfig(l)
	c.MaxIncomingStreams = MaxConcurrentDeliveries
	return c
}

func quicConfig(l Liveness) *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout: 5 * time.Second,
		// Any packet received restarts the idle timer, and PING frames
		// are control frames sent ahead of stream data: QUIC's own
		// keep-alive is exactly the liveness relay needs.
		MaxIdleTimeout:             l.IdleTimeout,
		KeepAlivePeriod:            l.KeepAlive,
		MaxIncomingUniStreams:      -1,
		MaxStreamReceiveWindow:     8 << 20,
		MaxConnectionReceiveWindow: 32 << 20,
	}
}

// NewQUICSession wraps an established quic-go connection.
func NewQUICSession(c *quic.Conn) Session { return &quicSession{c: c} }

type quicSession struct{ c *quic.Conn }

func (s *quicSession) OpenStream(ctx context.Context) (Stream, error) {
	st, err := s.c.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return &quicStream{st: st, c: s.c}, nil
}

func (s *quicSession) AcceptStream(ctx context.Context) (Stream, error) {
	st, err := s.c.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return &quicStream{st: st, c: s.c}, nil
}

func (s *quicSession) Close() error          { return s.c.CloseWithError(0, "closed") }
func (s *quicSession) Done() <-chan struct{} { return s.c.Context().Done() }
func (s *quicSession) Transport() string     { return TransportQUIC }
func (s *quicSession) RemoteAddr() net.Addr  { return s.c.RemoteAddr() }

func (s *quicSession) Err() error {
	cause := context.Cause(s.c.Context())
	if cause == nil {
		return nil
	}
	var idle *quic.IdleTimeoutError
	if errors.As(cause, &idle) {
		return fmt.Errorf("%w: %w", ErrPeerSilent, cause)
	}
	var appErr *quic.ApplicationError
	if errors.As(cause, &appErr) && appErr.ErrorCode == 0 {
		return fmt.Errorf("%w: %w", ErrSessionClosed, cause)
	}
	return cause
}

// abortCode is the QUIC error code of a stream aborted by Close.
const abortCode quic.StreamErrorCode = 1

type quicStream struct {
	st *quic.Stream
	c  *quic.Conn

	mu      sync.Mutex // orders CloseWrite and Close: quic-go forbids Close after CancelWrite
	aborted bool
	fin     bool
}

func (s *quicStream) Read(p []byte) (int, error) {
	n, err := s.st.Read(p)
	if err != nil {
		s.connEnded(err)
	}
	return n, quicStreamErr(err)
}

func (s *quicStream) Write(p []byte) (int, error) {
	n, err := s.st.Write(p)
	if err != nil {
		s.connEnded(err)
	}
	return n, quicStreamErr(err)
}

// connEnded waits, when err says the connection ended, until the session
// says so too: quic-go fails the streams just before it marks the
// connection done, and a caller that sees a stream fail and then asks the
// session why (Session.Err, to tell a silent peer from a hang-up) must not
// find it still running. The wait is that gap; the bound only guards it.
func (s *quicStream) connEnded(err error) {
	if !isConnErr(err) {
		return
	}
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-s.c.Context().Done():
	case <-t.C:
	}
}

// isConnErr says err is a quic-go connection's end. A type switch rather
// than errors.As: this runs on every stream's io.EOF, allocation-free.
func isConnErr(err error) bool {
	for ; err != nil; err = errors.Unwrap(err) {
		switch err.(type) {
		case *quic.IdleTimeoutError, *quic.ApplicationError, *quic.TransportError, *quic.StatelessResetError, *quic.HandshakeTimeoutError:
			return true
		}
	}
	return false
}

func quicStreamErr(err error) error {
	var se *quic.StreamError
	if err != nil && errors.As(err, &se) {
		return fmt.Errorf("%w: %w", ErrStreamAborted, err)
	}
	return err
}

func (s *quicStream) LocalAddr() net.Addr                { return s.c.LocalAddr() }
func (s *quicStream) RemoteAddr() net.Addr               { return s.c.RemoteAddr() }
func (s *quicStream) SetDeadline(t time.Time) error      { return s.st.SetDeadline(t) }
func (s *quicStream) SetReadDeadline(t time.Time) error  { return s.st.SetReadDeadline(t) }
func (s *quicStream) SetWriteDeadline(t time.Time) error { return s.st.SetWriteDeadline(t) }

// CloseWrite sends FIN. Like quic-go's Close, it must not race a Write.
func (s *quicStream) CloseWrite() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.aborted {
		return ErrStreamAborted
	}
	if s.fin {
		return nil
	}
	s.fin = true
	return s.st.Close()
}

// Close aborts both directions (RESET_STREAM and STOP_SENDING): blocked
// calls return, unsent data is dropped, and the peer learns of the abort
// instead of reading a clean FIN. It is safe to call while another
// goroutine writes.
func (s *quicStream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.aborted {
		s.aborted = true
		// After CloseWrite the bytes sent are whole and the peer may
		// still be reading them: only reading is aborted (as a TCP close
		// after shutdown(SHUT_WR) still delivers what was sent).
		if !s.fin {
			s.st.CancelWrite(abortCode)
		}
		s.st.CancelRead(abortCode)
	}
	return nil
}

// DialQUIC dials addr over QUIC with ALPN relay/1.
func DialQUIC(ctx context.Context, addr string, tlsConf *tls.Config, l Liveness) (Session, error) {
	conf := tlsConf.Clone()
	conf.NextProtos = []string{ALPN}
	c, err := quic.DialAddr(ctx, addr, conf, AgentQUICConfig(l))
	if err != nil {
		return nil, err
	}
	return NewQUICSession(c), nil
}

// IsClosed reports errors that only mean the session or stream has ended.
func IsClosed(err error) bool {
	if err == nil {
		return false
	}
	var appErr *quic.ApplicationError
	var idle *quic.IdleTimeoutError
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, ErrStreamAborted) ||
		errors.Is(err, ErrPeerSilent) || errors.Is(err, ErrSessionClosed) ||
		errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, yamux.ErrStreamClosed) ||
		errors.Is(err, context.Canceled) || errors.As(err, &appErr) || errors.As(err, &idle)
}
