package client

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
	"sync"
	"syscall"
	"time"

	"github.com/relaytunnel/relay/protocol"
)

// Delivery is what the agent saw of one delivery, reported when it ends.
type Delivery struct {
	Header     protocol.Delivery
	Transport  string
	Request    *http.Request // body already consumed
	Status     int
	RespHeader http.Header
	Error      string // why the local app did not answer, if it did not
	Started    time.Time
	Answered   time.Time // local app's response headers
	Finished   time.Time
	ReqBytes   int64
	RespBytes  int64
}

// deliveryConn is a delivery stream as the HTTP server sees it: reading
// first consumes the Delivery frame, then the HTTP request follows.
type deliveryConn struct {
	protocol.Stream
	transport string
	once      sync.Once
	hdr       protocol.Delivery
	hdrErr    error
	started   time.Time
}

func newDeliveryConn(st protocol.Stream, transport string) *deliveryConn {
	return &deliveryConn{Stream: st, transport: transport}
}

func (c *deliveryConn) readHeader() {
	c.once.Do(func() {
		c.started = time.Now()
		c.hdrErr = protocol.ReadMessage(c.Stream, protocol.FrameDelivery, &c.hdr)
	})
}

func (c *deliveryConn) Read(p []byte) (int, error) {
	c.readHeader()
	if c.hdrErr != nil {
		return 0, c.hdrErr
	}
	return c.Stream.Read(p)
}

// streamListener feeds accepted streams of every session to one
// http.Server, so the server outlives reconnects.
type streamListener struct {
	ch     chan net.Conn
	done   chan struct{}
	closer sync.Once
}

func newStreamListener() *streamListener {
	return &streamListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *streamListener) put(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *streamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *streamListener) Close() error {
	l.closer.Do(func() { close(l.done) })
	return nil
}

func (l *streamListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

type connKey struct{}

// forwarder serves HTTP on delivery streams and proxies to the local app
// over a pooled transport.
type forwarder struct {
	cfg    *resolved
	srv    *http.Server
	proxy  *httputil.ReverseProxy
	report func(*Delivery)
}

func newForwarder(cfg *resolved, report func(*Delivery)) *forwarder {
	f := &forwarder{cfg: cfg, report: report}
	transport := &http.Transport{
		Proxy:                 nil, // the local app is local; never go through HTTP_PROXY
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: cfg.Timeout,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
	target := cfg.target
	f.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			if cfg.HostHeader == "preserve" {
				pr.Out.Host = pr.In.Host
			}
			// The edge set these from the provider's connection; pass them on.
			for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
				if v, ok := pr.In.Header[h]; ok {
					pr.Out.Header[h] = v
				}
			}
		},
		Transport:    transport,
		ErrorHandler: f.proxyError,
		ErrorLog:     slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	f.srv = &http.Server{
		Handler:           f,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       30 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
		ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	return f
}

func (f *forwarder) serve(l net.Listener) { f.srv.Serve(l) }

func (f *forwarder) shutdown(ctx context.Context) {
	if err := f.srv.Shutdown(ctx); err != nil {
		f.srv.Close()
	}
}

// ServeHTTP forwards one delivery and reports it.
func (f *forwarder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	dc, _ := r.Context().Value(connKey{}).(*deliveryConn)
	d := &Delivery{Request: r, Started: time.Now()}
	if dc != nil {
		d.Header, d.Transport, d.Started = dc.hdr, dc.transport, dc.started
	}
	body := &countingBody{ReadCloser: r.Body}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = body
	}
	cw := &captureWriter{ResponseWriter: w, d: d}
	r = r.WithContext(context.WithValue(r.Context(), deliveryReport{}, d))
	f.proxy.ServeHTTP(cw, r)
	d.Finished = time.Now()
	d.ReqBytes = body.n
	if d.Status == 0 {
		d.Status = http.StatusOK
	}
	if f.report != nil {
		f.report(d)
	}
}

type deliveryReport struct{}

// Errors the local app causes, each with its status and a hint.
func (f *forwarder) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	d, _ := r.Context().Value(deliveryReport{}).(*Delivery)
	status, code, msg := classify(err, f.cfg)
	if d != nil {
		d.Error = msg
	}
	if r.Context().Err() != nil {
		return // the relay abandoned the stream; nobody reads an answer
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Relay-Error", code)
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}{code, msg})
}

func classify(err error, cfg *resolved) (int, string, string) {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return http.StatusBadGateway, "local_app_unreachable",
			fmt.Sprintf("relay agent could not connect to %s (connection refused); is your app running?", cfg.target)
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, "local_app_timeout",
			fmt.Sprintf("%s did not answer within %s", cfg.target, cfg.Timeout)
	default:
		return http.StatusBadGateway, "local_app_error", fmt.Sprintf("forwarding to %s failed: %v", cfg.target, err)
	}
}

type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}

// captureWriter notes the status and headers the local app answered with.
type captureWriter struct {
	http.ResponseWriter
	d     *Delivery
	wrote bool
}

func (c *captureWriter) WriteHeader(code int) {
	if !c.wrote && code >= 200 {
		c.wrote = true
		c.d.Status = code
		c.d.RespHeader = c.Header().Clone()
		c.d.Answered = time.Now()
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *captureWriter) Write(p []byte) (int, error) {
	if !c.wrote {
		c.WriteHeader(http.StatusOK)
	}
	n, err := c.ResponseWriter.Write(p)
	c.d.RespBytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush on the real writer.
func (c *captureWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// onDelivery prints the console line for one delivery.
func (a *Agent) onDelivery(d *Delivery) {
	r := d.Request
	tag := ""
	if d.Header.Queued {
		tag = " (queued)"
	}
	dur := d.Finished.Sub(d.Started)
	line := fmt.Sprintf("%s %s %d %s%s", r.Method, r.URL.RequestURI(), d.Status, dur.Round(100*time.Microsecond), tag)
	if d.Error != "" {
		line += " - " + d.Error
	}
	fmt.Fprintf(a.cfg.Console, "%s %s\n", d.Started.Format("15:04:05"), line)
	a.cfg.Logger.Debug("delivery", "id", d.Header.ID, "method", r.Method, "path", r.URL.Path, "status", d.Status, "duration", dur)
	if a.OnDelivery != nil {
		a.OnDelivery(d)
	}
}
