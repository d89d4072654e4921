package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/relaytunnel/relay/protocol"
)

// edge is the HTTPS handler providers talk to: Host -> tunnel -> stream.
type edge struct {
	s *Server
	// transport sends a request built elsewhere (the offline queue's
	// hand-over) through a tunnel named in its context.
	transport *streamTransport
}

func newEdge(s *Server) *edge {
	return &edge{s: s, transport: &streamTransport{s: s}}
}

type deliveryKey struct{}

// delivery is one request on its way through a tunnel.
type delivery struct {
	t   *tunnel
	hdr protocol.Delivery
}

// preRead is how much of a request body the edge reads before it takes
// one of the tunnel's delivery slots and opens a stream. Most webhooks fit:
// they then cross the tunnel in one write, a slow sender holds no slot
// while it trickles, and a malformed body is answered 400 before the
// agent sees anything. A larger body streams on behind its first part.
const preRead = 64 << 10

// tunnelLoad is the edge's bookkeeping for one tunnel: the deliveries in
// flight (bounded, for a fair share of the agent), and refusals waiting to
// be told to the agent.
type tunnelLoad struct {
	deliveries atomic.Int64 // admitted and not finished
	streaming  atomic.Int64 // of those, bodies still arriving from the provider

	mu      sync.Mutex
	refused []protocol.Refusal
	dropped int
	sending bool

	streamsOnce sync.Once
	streams     *protocol.Streams
}

// streamsOf is the tunnel's delivery streams, kept open between
// deliveries: at most half the tunnel's delivery slots' worth idle.
func (e *edge) streamsOf(t *tunnel) *protocol.Streams {
	t.load.streamsOnce.Do(func() { t.load.streams = protocol.NewStreams(t.sess, e.s.cfg.MaxDeliveries/2) })
	return t.load.streams
}

// maxNotice bounds the refusals one notice lists; more are counted.
const maxNotice = 64

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
	forwardedHeaders(r, host)
	t := s.reg.get(name)
	if t == nil {
		e.serveNoAgent(w, r, name)
		return
	}
	e.serveLive(w, r, t)
}

// forwardedHeaders makes r's headers what the agent and the queue keep:
// relay's own X-Relay-* headers and a client-chosen identity never pass
// (a provider could forge a replay marker or an IP), the X-Forwarded-*
// and X-Real-IP headers say who really connected, and Host is canonical.
func forwardedHeaders(r *http.Request, host string) {
	h := r.Header
	for k := range h {
		if len(k) > len(protocol.HeaderPrefix) && strings.EqualFold(k[:len(protocol.HeaderPrefix)], protocol.HeaderPrefix) {
			delete(h, k)
		}
	}
	delete(h, "Forwarded")
	if _, port, err := net.SplitHostPort(r.Host); err == nil {
		host = net.JoinHostPort(host, port)
	}
	r.Host = host
	ip, _, _ := net.SplitHostPort(r.RemoteAddr)
	h["X-Forwarded-For"] = []string{ip}
	h["X-Real-Ip"] = []string{ip}
	h["X-Forwarded-Host"] = []string{host}
	h["X-Forwarded-Proto"] = httpsValue
}

var httpsValue = []string{"https"}

// serveNoAgent answers for a name whose agent is not connected: the
// offline queue when the name is reserved, 404 otherwise.
func (e *edge) serveNoAgent(w http.ResponseWriter, r *http.Request, name string) {
	ok, err := e.s.reserved(r.Context(), name)
	if err != nil || !ok {
		writeError(w, http.StatusNotFound, "unknown_tunnel", fmt.Sprintf("no tunnel named %q on this relay", name))
		return
	}
	start := time.Now()
	body := e.limitBody(w, r)
	tw := &trackedWriter{ResponseWriter: w, body: body}
	e.serveOffline(tw, r, name)
	if !tw.wrote && body != nil && body.err != nil {
		// The queue gave up on a body that failed to arrive; say why.
		status, code, msg := body.refusal(e.s.cfg.MaxBody)
		if status != 0 {
			body.closeUnlessRead(w)
			writeError(w, status, code, msg)
		}
		tw.status = status
	}
	e.s.metrics.delivered(name, transportOffline, tw.status, time.Since(start), body.bytes(), 0)
}

// trackedWriter notes whether a handler answered, and closes the
// connection after an answer given before the body was read.
type trackedWriter struct {
	http.ResponseWriter
	body   *edgeBody
	wrote  bool
	status int
}

func (w *trackedWriter) WriteHeader(code int) {
	if !w.wrote {
		w.wrote, w.status = true, code
		w.body.closeUnlessRead(w.ResponseWriter)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *trackedWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}
func (w *trackedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// serveLive sends one delivery through the tunnel's agent.
func (e *edge) serveLive(w http.ResponseWriter, r *http.Request, t *tunnel) {
	s := e.s
	start := time.Now()
	hdr := protocol.Delivery{ID: newID("dlv"), ReceivedAt: start.UnixNano(), RemoteAddr: r.RemoteAddr}
	w.Header()[protocol.HeaderDelivery] = []string{hdr.ID}
	var body *edgeBody
	refuse := func(status int, code, msg string) {
		if status == 0 {
			return // the provider went away; nobody is left to answer
		}
		if status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		body.closeUnlessRead(w)
		writeError(w, status, code, msg)
		e.tell(t, protocol.Refusal{ID: hdr.ID, ReceivedAt: hdr.ReceivedAt, RemoteAddr: hdr.RemoteAddr, Method: r.Method,
			Host: r.Host, URI: r.URL.RequestURI(), Status: status, Code: code, Message: msg})
		e.logDelivery(t, r, status, start, 0, 0)
	}
	if isUpgrade(r) {
		refuse(http.StatusNotImplemented, "upgrade_unsupported",
			"relay forwards webhooks (plain HTTP requests); WebSocket, CONNECT and other upgrades are not tunnelled")
		return
	}
	if r.ContentLength > s.cfg.MaxBody {
		refuse(http.StatusRequestEntityTooLarge, "body_too_large",
			fmt.Sprintf("request body is %d bytes; this relay forwards at most %d", r.ContentLength, s.cfg.MaxBody))
		return
	}

	// The start of the body, before a slot is taken.
	body = e.limitBody(w, r)
	buf := getBuffer()
	defer putBuffer(buf)
	complete := true
	if body != nil {
		var err error
		if complete, err = readUpTo(buf, body, preRead); err != nil {
			refuse(body.refusal(s.cfg.MaxBody))
			return
		}
	}

	load := &t.load
	defer load.deliveries.Add(-1)
	if load.deliveries.Add(1) > int64(s.cfg.MaxDeliveries) {
		refuse(http.StatusServiceUnavailable, "tunnel_busy",
			fmt.Sprintf("this tunnel is carrying %d deliveries at once, its limit; retry shortly", s.cfg.MaxDeliveries))
		return
	}
	if !complete {
		// Bodies still arriving may hold at most half the slots: slow
		// uploads cannot starve the tunnel's ordinary deliveries.
		defer load.streaming.Add(-1)
		if load.streaming.Add(1) > int64(s.cfg.MaxDeliveries/2) {
			refuse(http.StatusServiceUnavailable, "tunnel_busy",
				"this tunnel is receiving as many large uploads at once as it allows; retry shortly")
			return
		}
	}
	s.flight.add()
	defer s.flight.done()
	t.flight.add()
	defer t.flight.done()

	out := *r // shallow: the header map and the rest are the handler's own
	out.Trailer, out.TransferEncoding, out.Close, out.GetBody = nil, nil, false, nil
	protocol.RemoveHopHeaders(out.Header)
	in := bytes.NewReader(buf.Bytes())
	switch {
	case body == nil:
		out.Body, out.ContentLength = http.NoBody, 0
	case complete:
		out.Body, out.ContentLength = io.NopCloser(in), int64(buf.Len())
		out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil }
	default:
		out.Body = io.NopCloser(io.MultiReader(in, body)) // ContentLength as the provider declared it
	}
	resp, err := e.streamsOf(t).RoundTrip(r.Context(), hdr, &out, s.cfg.ResponseTimeout)
	if err != nil {
		status, code, msg := e.failure(r, body, err)
		if status != 0 && body != nil && body.err != nil {
			refuse(status, code, msg) // the provider's body, not the tunnel, failed
			return
		}
		if status == http.StatusBadGateway {
			w.Header().Set("Retry-After", "10")
		}
		if status != 0 {
			body.closeUnlessRead(w)
			writeError(w, status, code, msg)
		}
		e.logDelivery(t, r, status, start, 0, 0)
		return
	}
	defer resp.Body.Close()
	h := w.Header()
	protocol.RemoveHopHeaders(resp.Header)
	for k, vv := range resp.Header {
		h[k] = vv
	}
	body.closeUnlessRead(w) // the agent answered before the body ended
	w.WriteHeader(resp.StatusCode)
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		e.logDelivery(t, r, resp.StatusCode, start, body.bytes(), n)
		if r.Context().Err() == nil {
			// The agent's answer was cut: cut the provider's too, so a
			// short body never looks whole.
			panic(http.ErrAbortHandler)
		}
		return
	}
	for k, vv := range resp.Trailer {
		h[http.TrailerPrefix+k] = vv
	}
	e.logDelivery(t, r, resp.StatusCode, start, body.bytes(), n)
}

// failure is what the provider gets when a delivery did not come back;
// status 0 means nobody is left to answer.
func (e *edge) failure(r *http.Request, body *edgeBody, err error) (int, string, string) {
	switch {
	case body != nil && body.err != nil:
		return body.refusal(e.s.cfg.MaxBody)
	case r.Context().Err() != nil:
		return 0, "", ""
	case errors.Is(err, protocol.ErrAgentTimeout):
		return http.StatusGatewayTimeout, "agent_timeout", fmt.Sprintf("the agent did not answer within %s", e.s.cfg.ResponseTimeout)
	case errors.Is(err, protocol.ErrAgentGone):
		return http.StatusBadGateway, "agent_disconnected", "the agent's connection dropped during this delivery; retry later"
	default:
		e.s.log.Info("delivery failed", "host", r.Host, "err", err)
		return http.StatusBadGateway, "tunnel_error", "the delivery could not pass through the tunnel: " + err.Error()
	}
}

// isUpgrade reports requests that want the connection, not an answer:
// protocol upgrades (WebSocket) and CONNECT.
func isUpgrade(r *http.Request) bool {
	if r.Method == http.MethodConnect {
		return true
	}
	if len(r.Header["Upgrade"]) == 0 {
		return false
	}
	for _, v := range r.Header["Connection"] {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return true
			}
		}
	}
	return false
}

// logDelivery is the server's one line per delivery.
func (e *edge) logDelivery(t *tunnel, r *http.Request, status int, start time.Time, in, out int64) {
	e.s.log.LogAttrs(r.Context(), slog.LevelInfo, "delivery",
		slog.String("name", t.name), slog.String("method", r.Method), slog.String("path", r.URL.Path),
		slog.Int("status", status), slog.Duration("duration", time.Since(start)),
		slog.Int64("bytes_in", in), slog.Int64("bytes_out", out))
	e.s.metrics.delivered(t.name, t.sess.Transport(), status, time.Since(start), in, out)
}

// tell queues a refusal for the tunnel's agent; one notice stream at a
// time carries what has gathered, so a flood of refusals costs the agent a
// trickle of streams.
func (e *edge) tell(t *tunnel, rf protocol.Refusal) {
	if e.s.ctx.Err() != nil {
		return // shutting down: the sessions are going
	}
	l := &t.load
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.refused) < maxNotice {
		l.refused = append(l.refused, rf)
	} else {
		l.dropped++
	}
	if l.sending {
		return
	}
	l.sending = true
	e.s.wg.Add(1)
	go func() {
		defer e.s.wg.Done()
		for {
			l.mu.Lock()
			n := protocol.Notice{Refused: l.refused, Dropped: l.dropped}
			l.refused, l.dropped = nil, 0
			if len(n.Refused) == 0 && n.Dropped == 0 {
				l.sending = false
				l.mu.Unlock()
				return
			}
			l.mu.Unlock()
			ctx, cancel := context.WithTimeout(e.s.ctx, 5*time.Second)
			if err := protocol.SendNotice(ctx, t.sess, n); err != nil {
				e.s.log.Debug("could not tell the agent about refused deliveries", "name", t.name, "err", err)
			}
			cancel()
		}
	}()
}

// edgeBody is a provider's request body as the edge reads it: at most
// MaxBody bytes, at a minimum rate, and the first error kept so a failed
// delivery can be blamed on the body rather than the tunnel.
type edgeBody struct {
	r        io.ReadCloser
	deadline interface{ SetReadDeadline(time.Time) error }
	grace    time.Duration
	rate     int64 // bytes per second that buy more time
	start    time.Time
	until    time.Time // the read deadline now set
	n        atomic.Int64
	eof      atomic.Bool
	err      error // the first error; read once the reader is done
}

// limitBody wraps r.Body for reading at the edge (nil without a body).
func (e *edge) limitBody(w http.ResponseWriter, r *http.Request) *edgeBody {
	if r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	b := &edgeBody{r: http.MaxBytesReader(w, r.Body, e.s.cfg.MaxBody), grace: e.s.cfg.BodyTimeout, rate: e.s.cfg.MinBodyRate}
	b.deadline, _ = unwrapWriter(w).(interface{ SetReadDeadline(time.Time) error })
	r.Body = b
	return b
}

// unwrapWriter finds net/http's own writer under wrappers like
// trackedWriter, as http.ResponseController does.
func unwrapWriter(w http.ResponseWriter) http.ResponseWriter {
	for {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return w
		}
		w = u.Unwrap()
	}
}

// Read reads with a deadline of BodyTimeout from the first read plus one
// second for every MinBodyRate bytes that arrived: a sender that trickles
// or goes silent is cut, a slow but steady upload is not.
func (b *edgeBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.deadline != nil && !b.eof.Load() {
		if b.start.IsZero() {
			b.start = time.Now()
		}
		allowed := b.start.Add(b.grace + time.Duration(b.n.Load()/b.rate)*time.Second)
		if !allowed.Equal(b.until) {
			b.until = allowed
			b.deadline.SetReadDeadline(allowed)
		}
	}
	n, err := b.r.Read(p)
	b.n.Add(int64(n))
	switch {
	case err == io.EOF:
		if b.deadline != nil && !b.eof.Load() {
			// The connection's next reads (keep-alive, net/http's own
			// watch for a closed connection) are not the body's.
			b.deadline.SetReadDeadline(time.Time{})
		}
		b.eof.Store(true)
	case err != nil:
		b.err = err
	}
	return n, err
}

func (b *edgeBody) Close() error { return b.r.Close() }

func (b *edgeBody) bytes() int64 {
	if b == nil {
		return 0
	}
	return b.n.Load()
}

// closeUnlessRead marks the answer Connection: close when the body has
// not been read to its end: net/http would otherwise read the rest before
// answering (up to 256 KiB), from a sender that may be stalled on purpose.
func (b *edgeBody) closeUnlessRead(w http.ResponseWriter) {
	if b != nil && !b.eof.Load() {
		w.Header().Set("Connection", "close")
	}
}

// refusal is the answer to a body that failed to arrive; status 0 means
// the provider went away and nobody is left to answer.
func (b *edgeBody) refusal(maxBody int64) (int, string, string) {
	var mbe *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(b.err, &mbe):
		return http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("request body is over the %d-byte limit of this relay", maxBody)
	case errors.Is(b.err, os.ErrDeadlineExceeded), errors.As(b.err, &ne) && ne.Timeout():
		return http.StatusRequestTimeout, "body_timeout",
			fmt.Sprintf("the request body arrived too slowly (%d bytes in %s); send it faster", b.n.Load(), time.Since(b.start).Round(time.Millisecond))
	case errors.Is(b.err, io.ErrUnexpectedEOF), errors.Is(b.err, net.ErrClosed), errors.Is(b.err, context.Canceled):
		return 0, "", "" // the provider hung up mid-body
	default:
		return http.StatusBadRequest, "bad_request_body", "the request body is malformed: " + b.err.Error()
	}
}

// readUpTo reads body into buf until it ends (true) or buf holds more than
// limit bytes (false). buf grows with what arrives.
func readUpTo(buf *bytes.Buffer, body io.Reader, limit int) (bool, error) {
	for buf.Len() <= limit {
		buf.Grow(min(max(buf.Len(), 512), limit+1-buf.Len()))
		b := buf.AvailableBuffer()
		n, err := body.Read(b[:cap(b)])
		buf.Write(b[:n])
		if err == io.EOF {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
	return false, nil
}

// Bodies read at the edge borrow a buffer; buffers that grew large are
// left to the garbage collector so the pool stays small.
var buffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func getBuffer() *bytes.Buffer { return buffers.Get().(*bytes.Buffer) }

func putBuffer(b *bytes.Buffer) {
	if b.Cap() > 16<<10 {
		return
	}
	b.Reset()
	buffers.Put(b)
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

// writeError answers with the short JSON body every relay error has.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(protocol.HeaderError, code)
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

// streamTransport sends a request through the tunnel its context names
// (protocol.RoundTrip): the offline queue's hand-over builds its requests
// itself and sends them this way.
type streamTransport struct{ s *Server }

func (tr *streamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	d, _ := req.Context().Value(deliveryKey{}).(*delivery)
	if d == nil {
		return nil, errors.New("request without a tunnel")
	}
	return tr.s.edge.streamsOf(d.t).RoundTrip(req.Context(), d.hdr, req, tr.s.cfg.ResponseTimeout)
}
