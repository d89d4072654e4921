package server

import (
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
	w.Header().Set(protocol.HeaderDelivery, d.hdr.ID)
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
	case errors.Is(err, protocol.ErrAgentTimeout):
		writeError(w, http.StatusGatewayTimeout, "agent_timeout",
			fmt.Sprintf("the agent did not answer within %s", e.s.cfg.ResponseTimeout))
	case errors.Is(err, protocol.ErrAgentGone):
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

// streamTransport sends each request over a new stream of its tunnel's
// session (protocol.RoundTrip); the delivery rides in the context because
// ReverseProxy hands its Transport nothing but the request.
type streamTransport struct{ s *Server }

func (tr *streamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	d, _ := req.Context().Value(deliveryKey{}).(*delivery)
	if d == nil {
		return nil, errors.New("request without a tunnel")
	}
	return protocol.RoundTrip(req.Context(), d.t.sess, d.hdr, req, tr.s.cfg.ResponseTimeout)
}
