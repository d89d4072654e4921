package client

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
	"net/http/httputil"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/relaytunnel/relay/client/record"
	"github.com/relaytunnel/relay/internal/dialer"
	"github.com/relaytunnel/relay/internal/provider"
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

	// ReqBody and RespBody hold the first bytes of each body, up to the
	// recording cap; the Truncated flags say there was more.
	ReqBody, RespBody                   []byte
	ReqBodyTruncated, RespBodyTruncated bool

	Provider provider.Recognition
	Verdict  provider.Verdict
	// Outcome is one of record's Outcome constants.
	Outcome     string
	Attempts    []record.Attempt
	DuplicateOf int64
	// RecordID is set once the recording is written (0 without a store).
	RecordID int64
}

type connKey struct{}

// forwarder serves HTTP on delivery streams and proxies to the local app
// over a pooled transport.
type forwarder struct {
	cfg       *resolved
	srv       *http.Server
	proxy     *httputil.ReverseProxy
	transport *http.Transport
	report    func(*Delivery)
	dedup     *dedup
}

func newForwarder(cfg *resolved, report func(*Delivery)) *forwarder {
	f := &forwarder{cfg: cfg, report: report, dedup: newDedup(cfg.Store, cfg.DedupWindow)}
	f.transport = &http.Transport{
		Proxy:                 nil, // the local app is local; never go through HTTP_PROXY
		DialContext:           (&dialer.Dialer{Dialer: net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}}).DialContext,
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
		Transport:      &retryTransport{base: f.transport, budget: cfg.Retry, cfg: cfg},
		ModifyResponse: f.answered,
		ErrorHandler:   f.proxyError,
		ErrorLog:       slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
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
	f.transport.CloseIdleConnections()
}

// ServeHTTP forwards one delivery and reports it. The first BodyCap bytes
// of the body are read before forwarding: they are what is recorded, what
// recognition and the signature check read, and what --retry resends. A
// larger body streams on behind them and is checked by nobody.
func (f *forwarder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	dc, _ := r.Context().Value(connKey{}).(*protocol.DeliveryConn)
	d := &Delivery{Request: r, Started: time.Now(), Outcome: record.OutcomeForwarded}
	if dc != nil {
		d.Header, d.Transport, d.Started = dc.Header(), dc.Transport(), dc.Started()
	}
	defer func() {
		d.Finished = time.Now()
		if f.report != nil {
			f.report(d)
		}
	}()

	complete, err := f.readPrefix(r, d)
	if err != nil {
		// The relay's stream broke mid-body: nobody is left to answer.
		d.Outcome, d.Error = record.OutcomeFailed, "request body: "+err.Error()
		return
	}
	d.Provider = provider.Recognize(r.Method, r.URL, r.Header, d.ReqBody)
	switch {
	case complete:
		d.Verdict = f.cfg.verifier.Verify(r.Context(), d.Provider.Provider, r.Method, r.URL, r.Header, d.ReqBody)
	case d.Provider.Provider != "":
		d.Verdict = provider.Verdict{Status: provider.StatusUnchecked, Reason: fmt.Sprintf("body larger than %d bytes", f.cfg.bodyCap)}
	}
	cw := &captureWriter{ResponseWriter: w, d: d, limit: f.cfg.bodyCap}
	if f.cfg.VerifyReject && f.rejects(d) {
		d.Outcome = record.OutcomeRejected
		writeRelayJSON(cw, http.StatusUnauthorized, protocol.HeaderVerdict, string(d.Verdict.Status), "invalid_signature",
			fmt.Sprintf("relay agent refused this %s delivery: signature %s (%s)", d.Provider.Provider, d.Verdict.Status, d.Verdict.Reason))
		return
	}
	var key string
	if f.cfg.Dedup && d.Provider.EventID != "" {
		key = d.Provider.Provider + ":" + d.Provider.EventID
		unlock := f.dedup.lock(key)
		defer unlock()
		if f.dedup.seen(r.Context(), key) {
			d.Outcome = record.OutcomeDuplicate
			if f.cfg.Store != nil {
				d.DuplicateOf = f.cfg.Store.FirstForwarded(r.Context(), d.Provider.Provider, d.Provider.EventID)
			}
			writeRelayJSON(cw, http.StatusOK, protocol.HeaderDuplicate, "true", "duplicate",
				fmt.Sprintf("event %s was already delivered to the local app; not forwarded again (--dedup)", d.Provider.EventID))
			return
		}
	}
	ctx := context.WithValue(r.Context(), deliveryReport{}, d)
	if key != "" {
		ctx = context.WithValue(ctx, dedupKey{}, key)
	}
	f.proxy.ServeHTTP(cw, r.WithContext(ctx))
	if d.Status == 0 && d.Error == "" {
		d.Status = http.StatusOK // the handler wrote nothing: net/http answers 200
	}
	if d.Error != "" {
		d.Outcome = record.OutcomeFailed
	}
}

// readPrefix reads up to the recording cap of r's body into d and puts
// the body back together for forwarding. It reports whether the whole body
// was read.
func (f *forwarder) readPrefix(r *http.Request, d *Delivery) (bool, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return true, nil
	}
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(min(r.ContentLength, f.cfg.bodyCap+1)))
	}
	n, err := io.CopyN(&buf, r.Body, f.cfg.bodyCap+1)
	if err != nil && err != io.EOF {
		return false, err
	}
	if n <= f.cfg.bodyCap {
		d.ReqBody, d.ReqBytes = buf.Bytes(), n
		body := d.ReqBody
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		r.ContentLength = n
		return true, nil
	}
	d.ReqBody, d.ReqBodyTruncated = buf.Bytes()[:f.cfg.bodyCap], true
	r.Body = &countingBody{ReadCloser: multiReadCloser{io.MultiReader(bytes.NewReader(buf.Bytes()), r.Body), r.Body}, d: d}
	return false, nil
}

type multiReadCloser struct {
	io.Reader
	io.Closer
}

// rejects reports whether --verify reject refuses d: a signature that does
// not hold, or none at all from a provider whose secret is configured.
func (f *forwarder) rejects(d *Delivery) bool {
	switch d.Verdict.Status {
	case provider.StatusInvalid:
		return true
	case provider.StatusUnsigned:
		return f.cfg.Secrets[d.Provider.Provider] != ""
	}
	return false
}

// answered runs when the local app's response headers arrive, before any
// of it goes back to the relay: a 2xx marks a --dedup key as delivered.
func (f *forwarder) answered(resp *http.Response) error {
	if key, ok := resp.Request.Context().Value(dedupKey{}).(string); ok && resp.StatusCode/100 == 2 {
		f.dedup.mark(resp.Request.Context(), key)
	}
	return nil
}

// writeRelayJSON answers on the local app's behalf with the agent's own
// short JSON.
func writeRelayJSON(w http.ResponseWriter, status int, header, value, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(header, value)
	w.WriteHeader(status)
	body := map[string]string{"message": msg, "result": code}
	if status >= 400 {
		body = map[string]string{"message": msg, "error": code}
	}
	json.NewEncoder(w).Encode(body)
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
	w.Header().Set(protocol.HeaderError, code)
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

// countingBody counts a streamed body that outgrew the recording cap.
type countingBody struct {
	io.ReadCloser
	d *Delivery
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.d.ReqBytes += int64(n)
	return n, err
}

// captureWriter notes the status and headers the local app answered with,
// and keeps the first limit bytes of its body.
type captureWriter struct {
	http.ResponseWriter
	d     *Delivery
	limit int64
	wrote bool
}

func (c *captureWriter) WriteHeader(code int) {
	if !c.wrote && code >= 200 {
		c.wrote = true
		c.d.Status = code
		c.d.RespHeader = c.Header().Clone()
		if c.d.Error == "" && c.d.Outcome == record.OutcomeForwarded {
			c.d.Answered = time.Now() // the local app's answer, not the agent's own
		}
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *captureWriter) Write(p []byte) (int, error) {
	if !c.wrote {
		c.WriteHeader(http.StatusOK)
	}
	n, err := c.ResponseWriter.Write(p)
	if room := c.limit - int64(len(c.d.RespBody)); room > 0 {
		c.d.RespBody = append(c.d.RespBody, p[:min(int64(n), room)]...)
	}
	if int64(n) > c.limit-c.d.RespBytes {
		c.d.RespBodyTruncated = true
	}
	c.d.RespBytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush on the real writer.
func (c *captureWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// onDelivery prints the console line for one delivery and records it.
func (a *Agent) onDelivery(d *Delivery) {
	r := d.Request
	dur := d.Finished.Sub(d.Started)
	status := strconv.Itoa(d.Status)
	if d.Status == 0 {
		status = "---" // nobody was left to answer (the relay gave up on it)
	}
	line := fmt.Sprintf("%s %s %s %s", r.Method, r.URL.RequestURI(), status, dur.Round(100*time.Microsecond))
	var tags []string
	if d.Header.Queued {
		tags = append(tags, "queued")
	}
	if d.Provider.Event != "" {
		tags = append(tags, d.Provider.Provider+" "+d.Provider.Event)
	}
	if v := d.Verdict.Status; v == provider.StatusValid || v == provider.StatusInvalid || (v == provider.StatusUnsigned && a.cfg.Secrets[d.Provider.Provider] != "") {
		tags = append(tags, "signature "+string(v))
	}
	switch d.Outcome {
	case record.OutcomeRejected:
		tags = append(tags, "rejected: "+d.Verdict.Reason)
	case record.OutcomeDuplicate:
		tags = append(tags, "duplicate, not forwarded")
	}
	if n := len(d.Attempts); n > 1 {
		tags = append(tags, fmt.Sprintf("%d attempts", n))
	}
	if len(tags) > 0 {
		line += " (" + strings.Join(tags, ", ") + ")"
	}
	if d.Error != "" {
		line += " - " + d.Error
	}
	fmt.Fprintf(a.cfg.Console, "%s %s\n", d.Started.Format("15:04:05"), line)
	a.cfg.Logger.Debug("delivery", "id", d.Header.ID, "method", r.Method, "path", r.URL.Path, "status", d.Status, "duration", dur)
	if a.rec != nil {
		a.rec.add(a.recording(d), d)
	} else if a.OnDelivery != nil {
		a.OnDelivery(d)
	}
}
