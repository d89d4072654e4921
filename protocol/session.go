package protocol

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/quic-go/quic-go"
)

// Stream is one bidirectional byte stream of a Session. Close ends both
// directions; CloseWrite only says "no more bytes from me".
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

// QUICConfig is the quic-go configuration both sides use. Keep-alive is on
// because quic-go's default (off, 30 s idle) lets a quiet tunnel die.
func QUICConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:       5 * time.Second,
		MaxIdleTimeout:             30 * time.Second,
		KeepAlivePeriod:            10 * time.Second,
		MaxIncomingStreams:         MaxConcurrentDeliveries,
		MaxStreamReceiveWindow:     8 << 20,
		MaxConnectionReceiveWindow: 32 << 20,
	}
}

// YamuxConfig is the yamux configuration both sides use.
func YamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	// Waiting streams beyond the backlog are reset silently: size it to
	// what the server may push at once.
	c.AcceptBacklog = MaxConcurrentDeliveries
	// The default 256 KiB window bounds one stream to window/RTT.
	c.MaxStreamWindowSize = 2 << 20
	c.KeepAliveInterval = 10 * time.Second
	c.ConnectionWriteTimeout = 10 * time.Second
	c.StreamCloseTimeout = time.Minute
	c.LogOutput = io.Discard
	return c
}

// NewQUICSession wraps an established quic-go connection.
func NewQUICSession(c *quic.Conn) Session { return &quicSession{c: c} }

type quicSession struct{ c *quic.Conn }

func (s *quicSession) OpenStream(ctx context.Context) (Stream, error) {
	st, err := s.c.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return &quicStream{Stream: st, c: s.c}, nil
}

func (s *quicSession) AcceptStream(ctx context.Context) (Stream, error) {
	st, err := s.c.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return &quicStream{Stream: st, c: s.c}, nil
}

func (s *quicSession) Close() error          { return s.c.CloseWithError(0, "closed") }
func (s *quicSession) Done() <-chan struct{} { return s.c.Context().Done() }
func (s *quicSession) Transport() string     { return TransportQUIC }
func (s *quicSession) RemoteAddr() net.Addr  { return s.c.RemoteAddr() }

type quicStream struct {
	*quic.Stream
	c *quic.Conn
}

func (s *quicStream) LocalAddr() net.Addr  { return s.c.LocalAddr() }
func (s *quicStream) RemoteAddr() net.Addr { return s.c.RemoteAddr() }

// CloseWrite sends FIN: quic-go's Close is already a half-close.
func (s *quicStream) CloseWrite() error { return s.Stream.Close() }

// Close aborts reading too, so a peer still sending learns at once.
func (s *quicStream) Close() error {
	s.Stream.CancelRead(0)
	return s.Stream.Close()
}

// NewYamuxSession wraps a yamux session running over conn (a *tls.Conn).
func NewYamuxSession(ys *yamux.Session, conn net.Conn) Session {
	return &yamuxSession{s: ys, conn: conn}
}

type yamuxSession struct {
	s    *yamux.Session
	conn net.Conn
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
	return &yamuxStream{Stream: st}, nil
}

func (s *yamuxSession) AcceptStream(ctx context.Context) (Stream, error) {
	st, err := s.s.AcceptStreamWithContext(ctx)
	if err != nil {
		return nil, err
	}
	return &yamuxStream{Stream: st}, nil
}

func (s *yamuxSession) Close() error {
	err := s.s.Close()
	s.conn.Close()
	return err
}
func (s *yamuxSession) Done() <-chan struct{} { return s.s.CloseChan() }
func (s *yamuxSession) Transport() string     { return TransportTCP }
func (s *yamuxSession) RemoteAddr() net.Addr  { return s.conn.RemoteAddr() }

type yamuxStream struct {
	*yamux.Stream
	once sync.Once
}

// CloseWrite sends FIN: yamux's Close is a half-close.
func (s *yamuxStream) CloseWrite() error { return s.Stream.Close() }

// Close sends FIN and fails any read or write still waiting: yamux has no
// abort, so an expired deadline is how blocked callers are released.
func (s *yamuxStream) Close() error {
	var err error
	s.once.Do(func() {
		err = s.Stream.Close()
		s.Stream.SetDeadline(time.Unix(1, 0))
	})
	return err
}

// ServerYamux starts the server side of a yamux session on an accepted TLS
// connection that negotiated ALPN.
func ServerYamux(conn net.Conn) (Session, error) {
	ys, err := yamux.Server(joinFrames(conn), YamuxConfig())
	if err != nil {
		return nil, fmt.Errorf("start yamux: %w", err)
	}
	return NewYamuxSession(ys, conn), nil
}

// DialTCP dials addr over TLS, checks ALPN and starts a yamux client.
func DialTCP(ctx context.Context, addr string, tlsConf *tls.Config) (Session, error) {
	conf := tlsConf.Clone()
	conf.NextProtos = []string{ALPN}
	d := tls.Dialer{Config: conf, NetDialer: &net.Dialer{KeepAlive: 15 * time.Second}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if strings.Contains(err.Error(), "no application protocol") {
			return nil, fmt.Errorf("%w: %s does not speak %s; is it a relay server?", ErrVersionMismatch, addr, ALPN)
		}
		return nil, err
	}
	tc := c.(*tls.Conn)
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
		tc.Close()
		return nil, fmt.Errorf("%w: server did not negotiate %s (got %q); is it a relay server?", ErrVersionMismatch, ALPN, p)
	}
	ys, err := yamux.Client(joinFrames(tc), YamuxConfig())
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("start yamux: %w", err)
	}
	return NewYamuxSession(ys, tc), nil
}

// DialQUIC dials addr over QUIC with ALPN relay/1.
func DialQUIC(ctx context.Context, addr string, tlsConf *tls.Config) (Session, error) {
	conf := tlsConf.Clone()
	conf.NextProtos = []string{ALPN}
	c, err := quic.DialAddr(ctx, addr, conf, QUICConfig())
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
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, yamux.ErrStreamClosed) ||
		errors.Is(err, context.Canceled) || errors.As(err, &appErr) || errors.As(err, &idle)
}
