package protocol

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Both ends of a delivery stream live in this file: the server's
// RoundTrip, which writes the Delivery frame and the request and reads the
// response, and the agent's DeliveryConn and StreamListener, which read the
// frame and hand the rest of the stream to an HTTP server.

// Headers relay itself sets on the HTTP messages it carries. Any header
// with HeaderPrefix that a provider sends is relay's, not the provider's,
// and the edge removes it before forwarding.
const (
	HeaderPrefix = "X-Relay-"
	// HeaderDelivery carries the relay's delivery id back to the provider.
	HeaderDelivery = "X-Relay-Delivery"
	// HeaderError is set on every answer relay gives on the local app's
	// behalf (an error it could not forward past); its value is the code
	// in the JSON body. The server's queue keeps a delivery whose answer
	// carries it.
	HeaderError = "X-Relay-Error"
	// HeaderReplayOf marks a replay with the recording it repeats.
	HeaderReplayOf = "X-Relay-Replay-Of"
	// HeaderDuplicate marks the agent's answer to a --dedup duplicate.
	HeaderDuplicate = "X-Relay-Duplicate"
	// HeaderVerdict carries the signature verdict of a refused delivery.
	HeaderVerdict = "X-Relay-Verdict"
)

// HopHeaders describe one connection, not the request: they are never
// stored, forwarded or replayed (RFC 9110 §7.6.1, plus the Proxy-
// headers and Expect, which the edge already answered).
var HopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Expect",
}

// RemoveHopHeaders deletes the hop-by-hop headers from h, including those
// the Connection header names.
func RemoveHopHeaders(h http.Header) {
	for _, v := range h["Connection"] {
		for _, name := range strings.Split(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range HopHeaders {
		h.Del(name)
	}
}

// Errors RoundTrip returns for the agent's side of a delivery.
var (
	// ErrAgentGone means the session or the stream broke before the
	// agent's answer arrived.
	ErrAgentGone = errors.New("agent disconnected")
	// ErrAgentTimeout means the agent did not answer within the timeout.
	ErrAgentTimeout = errors.New("agent did not answer in time")
)

var (
	bufWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}
	bufReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 32<<10) }}
)

// RoundTrip is the server's end of one delivery: it opens a stream on
// sess, writes the Delivery frame and req as HTTP/1.1, and reads the
// agent's response. Closing the response body closes the stream. ctx
// ending, or no response headers within timeout, aborts the stream; every
// blocked read and write then returns.
func RoundTrip(ctx context.Context, sess Session, hdr Delivery, req *http.Request, timeout time.Duration) (*http.Response, error) {
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	st, err := sess.OpenStream(octx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("%w: open stream: %w", ErrAgentGone, err)
	}
	var timedOut atomic.Bool
	timer := time.AfterFunc(timeout, func() {
		timedOut.Store(true)
		st.Close()
	})
	stop := context.AfterFunc(ctx, func() { st.Close() })
	fail := func(err error) (*http.Response, error) {
		timer.Stop()
		stop()
		st.Close()
		if timedOut.Load() {
			return nil, ErrAgentTimeout
		}
		return nil, err
	}
	if err := WriteMessage(st, FrameDelivery, hdr); err != nil {
		return fail(fmt.Errorf("%w: write delivery header: %w", ErrAgentGone, err))
	}

	werr := make(chan error, 1)
	go func() {
		bw := bufWriters.Get().(*bufio.Writer)
		bw.Reset(st)
		err := req.Write(bw)
		if err == nil {
			err = bw.Flush()
		}
		bw.Reset(nil)
		bufWriters.Put(bw)
		if err != nil {
			// Cut the stream so the agent sees an unfinished body rather
			// than a complete request.
			st.Close()
		}
		// On success the write side stays open: net/http cancels a
		// request's context when its connection reads EOF, so a
		// half-close here would abort the delivery on the agent.
		werr <- err
	}()

	br := bufReaders.Get().(*bufio.Reader)
	br.Reset(st)
	resp, err := http.ReadResponse(br, req)
	timer.Stop()
	if err != nil {
		br.Reset(nil)
		bufReaders.Put(br)
		st.Close()
		if we := <-werr; we != nil && !IsClosed(we) {
			return fail(we) // a body over the limit, or the provider's read failed
		}
		return fail(fmt.Errorf("%w: read response: %w", ErrAgentGone, err))
	}
	resp.Body = &responseBody{ReadCloser: resp.Body, st: st, br: br, stop: stop}
	return resp, nil
}

// responseBody closes the stream once the agent's response is consumed.
type responseBody struct {
	io.ReadCloser
	st   Stream
	br   *bufio.Reader
	stop func() bool
	once sync.Once
}

func (b *responseBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() {
		b.stop()
		b.st.Close()
		// The reader of the body closes it in the same goroutine, so no
		// Read can race with handing the reader back.
		b.br.Reset(nil)
		bufReaders.Put(b.br)
	})
	return err
}

// DeliveryConn is the agent's end of a delivery stream, as an HTTP server
// sees it: reading first consumes the Delivery frame, then the HTTP
// request follows.
type DeliveryConn struct {
	Stream
	transport string
	once      sync.Once
	hdr       Delivery
	hdrErr    error
	started   time.Time
}

// NewDeliveryConn wraps a stream the server opened on a session of the
// given transport.
func NewDeliveryConn(st Stream, transport string) *DeliveryConn {
	return &DeliveryConn{Stream: st, transport: transport}
}

func (c *DeliveryConn) readHeader() {
	c.once.Do(func() {
		c.started = time.Now()
		c.hdrErr = ReadMessage(c.Stream, FrameDelivery, &c.hdr)
	})
}

func (c *DeliveryConn) Read(p []byte) (int, error) {
	c.readHeader()
	if c.hdrErr != nil {
		return 0, c.hdrErr
	}
	return c.Stream.Read(p)
}

// Header is the stream's Delivery frame (zero until the first Read).
func (c *DeliveryConn) Header() Delivery { return c.hdr }

// Transport is the transport of the session the stream belongs to.
func (c *DeliveryConn) Transport() string { return c.transport }

// Started is when the agent began reading the stream.
func (c *DeliveryConn) Started() time.Time { return c.started }

// StreamListener feeds the delivery streams of every session to one
// http.Server, so the server outlives reconnects.
type StreamListener struct {
	ch     chan net.Conn
	done   chan struct{}
	closer sync.Once
}

// NewStreamListener makes an empty listener; AcceptDeliveries fills it.
func NewStreamListener() *StreamListener {
	return &StreamListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

// AcceptDeliveries hands every stream the server opens on sess to l until
// the session or l ends.
func (l *StreamListener) AcceptDeliveries(sess Session) {
	for {
		st, err := sess.AcceptStream(context.Background())
		if err != nil {
			return
		}
		select {
		case l.ch <- NewDeliveryConn(st, sess.Transport()):
		case <-l.done:
			st.Close()
			return
		}
	}
}

// Accept implements net.Listener.
func (l *StreamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *StreamListener) Close() error {
	l.closer.Do(func() { close(l.done) })
	return nil
}

// Addr implements net.Listener.
func (l *StreamListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
