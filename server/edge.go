package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/relaytunnel/relay/protocol"
)

// edge is the HTTPS handler providers talk to: Host -> tunnel -> stream.
type edge struct {
	s         *Server
	proxy     *httputil.ReverseProxy
	transport *streamTransport
}

func newEdge(s *Server) *edge {
	e := &edge{s: s, transport: &streamTransport{s: s}}
	e.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = pr.In.Host
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
			// The edge already answered 100-continue to the provider; the
			// agent must not answer it again into the response stream.
			pr.Out.Header.Del("Expect")
		},
		Transport:    e.transport,
		ErrorHandler: e.proxyError,
		ErrorLog:     slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return e
}

type deliveryKey struct{}

// delivery is one request on its way through a tunnel.
type delivery struct {
	t    *tunnel
	hdr  protocol.Delivery
	body *limitedBody
}

// limitedBody remembers that the body limit was hit: req.Write hides the
// *http.MaxBytesError behind a type that does not unwrap.
type limitedBody struct {
	io.ReadCloser
	tooLarge *http.MaxBytesError
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
		b.tooLarge = mbe
	}
	return n, err
}

func (e *edge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := e.s
	host := strings.TrimSuffix(strings.ToLower(hostOnly(r.Host)), ".")
	if host == s.cfg.Domain || host == "" {
		e.serveApex(w, r)
		return
	}
	name, ok := strings.CutSuffix(host, "."+s.cfg.Domain)
	if !ok || strings.Contains(name, ".") || name == "" {
		writeError(w, http.StatusNotFound, "unknown_host", fmt.Sprintf("%s is not served by this relay (it serves NAME.%s)", host, s.cfg.Domain))
		return
	}
	t := s.reg.get(name)
	if t == nil {
		if ok, err := s.reserved(r.Context(), name); err == nil && ok {
			e.serveOffline(w, r, name)
			return
		}
		writeError(w, http.StatusNotFound, "unknown_tunnel", fmt.Sprintf("no tunnel named %q on this relay", name))
		return
	}
	if r.ContentLength > s.cfg.MaxBody {
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large",
			fmt.Sprintf("request body is %d bytes; this relay forwards at most %d", r.ContentLength, s.cfg.MaxBody))
		return
	}
	lb := &limitedBody{ReadCloser: http.MaxBytesReader(w, r.Body, s.cfg.MaxBody)}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = lb
	}
	s.flight.add()
	defer s.flight.done()
	t.flight.add()
	defer t.flight.done()
	d := &delivery{t: t, body: lb, hdr: protocol.Delivery{
		ID:         newID("dlv"),
		ReceivedAt: time.Now().UnixNano(),
		RemoteAddr: r.RemoteAddr,
	}}
	w.Header().Set("X-Relay-Delivery", d.hdr.ID)
	e.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), deliveryKey{}, d)))
}

func (e *edge) serveApex(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/api/log":
		e.serveLog(w, r)
	case "/healthz":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	case "/":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "relay server for %s\ntunnels live at https://NAME.%s\n", e.s.cfg.Domain, e.s.cfg.Domain)
	default:
		writeError(w, http.StatusNotFound, "not_found", "nothing here; tunnels live at NAME."+e.s.cfg.Domain)
	}
}

// Errors the transport returns, mapped to statuses by proxyError.
var (
	errAgentGone    = errors.New("agent disconnected")
	errAgentTimeout = errors.New("agent did not answer in time")
)

func (e *edge) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	var mbe *http.MaxBytesError
	if d, _ := r.Context().Value(deliveryKey{}).(*delivery); d != nil && d.body.tooLarge != nil {
		mbe = d.body.tooLarge
	}
	switch {
	case mbe != nil || errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large",
			fmt.Sprintf("request body is over the %d-byte limit of this relay", mbe.Limit))
	case r.Context().Err() != nil:
		// The provider went away; nobody is left to answer.
		e.s.log.Debug("provider went away", "host", r.Host, "err", err)
	case errors.Is(err, errAgentTimeout):
		writeError(w, http.StatusGatewayTimeout, "agent_timeout",
			fmt.Sprintf("the agent did not answer within %s", e.s.cfg.ResponseTimeout))
	case errors.Is(err, errAgentGone):
		w.Header().Set("Retry-After", "10")
		writeError(w, http.StatusBadGateway, "agent_disconnected", "the agent's connection dropped during this delivery; retry later")
	default:
		e.s.log.Info("delivery failed", "host", r.Host, "err", err)
		writeError(w, http.StatusBadGateway, "tunnel_error", "the delivery could not pass through the tunnel: "+err.Error())
	}
}

// writeError answers with the short JSON body every relay error has.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Relay-Error", code)
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}{code, msg})
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// streamTransport sends each request over a new stream of its tunnel's
// session: a Delivery frame, then the request as HTTP/1.1.
type streamTransport struct{ s *Server }

var (
	bufWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}
	bufReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 32<<10) }}
)

func (tr *streamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	d, _ := req.Context().Value(deliveryKey{}).(*delivery)
	if d == nil {
		return nil, errors.New("request without a tunnel")
	}
	ctx := req.Context()
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	st, err := d.t.sess.OpenStream(octx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("%w: open stream: %v", errAgentGone, err)
	}
	// The provider leaving, or the agent taking too long to answer,
	// aborts the stream; every blocked read and write then returns.
	var timedOut atomic.Bool
	timer := time.AfterFunc(tr.s.cfg.ResponseTimeout, func() {
		timedOut.Store(true)
		st.Close()
	})
	stop := context.AfterFunc(ctx, func() { st.Close() })
	fail := func(err error) (*http.Response, error) {
		timer.Stop()
		stop()
		st.Close()
		if timedOut.Load() {
			return nil, errAgentTimeout
		}
		return nil, err
	}
	if err := protocol.WriteMessage(st, protocol.FrameDelivery, d.hdr); err != nil {
		return fail(fmt.Errorf("%w: write delivery header: %v", errAgentGone, err))
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
		if we := <-werr; we != nil && !protocol.IsClosed(we) {
			return fail(we) // a body over the limit, or the provider's read failed
		}
		return fail(fmt.Errorf("%w: read response: %v", errAgentGone, err))
	}
	resp.Body = &responseBody{ReadCloser: resp.Body, st: st, br: br, stop: stop}
	return resp, nil
}

// responseBody closes the stream once the agent's response is consumed.
type responseBody struct {
	io.ReadCloser
	st   protocol.Stream
	br   *bufio.Reader
	stop func() bool
	once sync.Once
}

func (b *responseBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() {
		b.stop()
		b.st.Close()
		// ReverseProxy reads and closes the body in one goroutine, so no
		// Read can race with handing the reader back.
		b.br.Reset(nil)
		bufReaders.Put(b.br)
	})
	return err
}
