package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/relaytunnel/relay/client/record"
	"github.com/relaytunnel/relay/internal/dialer"
	"github.com/relaytunnel/relay/internal/provider"
	"github.com/relaytunnel/relay/protocol"
)

// This file is the agent's handling of one delivery, top to bottom:
// accept the stream -> read the request -> recognise and verify -> dedup
// -> forward to the local app (with retry) -> answer the relay -> the
// console line -> the recording. One goroutine does all of it, and only
// it writes the delivery below.

// delivery is what the agent saw of one delivery.
type delivery struct {
	transport string
	req       *http.Request // the request as it arrived; its body is consumed

	status     int
	respHeader http.Header
	err        string // why the local app did not answer, if it did not
	started    time.Time
	answered   time.Time // the local app's response headers
	finished   time.Time

	reqBody, respBody   record.Body // the first bytes of each, up to the recording cap
	recognized          provider.Recognition
	verdict             provider.Verdict
	outcome             string // one of record's Outcome constants
	attempts            []record.Attempt
	duplicateOf         int64
	refusedBy, refusal  string // who answered instead of the local app, and why
	queued              bool
	receivedAt          time.Time
	remoteAddr, relayID string
}

// localApp is the connection pool to the developer's app; replays use it
// too.
type localApp struct {
	transport *http.Transport
}

func newLocalApp(cfg *resolved) *localApp {
	return &localApp{transport: &http.Transport{
		Proxy:                 nil, // the local app is local; never go through HTTP_PROXY
		DialContext:           (&dialer.Dialer{Dialer: net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: cfg.Timeout,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}}
}

// acceptDeliveries serves every stream the server opens on sess until the
// session ends, each in a goroutine of its own, at most MaxDeliveries at
// once: beyond that a delivery is answered 503 at once.
func (a *Agent) acceptDeliveries(sess protocol.Session) {
	var busy atomic.Int64
	for {
		st, err := sess.AcceptStream(context.Background())
		if err != nil {
			return
		}
		a.inflight.Add(1)
		go func() {
			defer a.inflight.Done()
			a.serveStream(st, sess.Transport(), &busy)
		}()
	}
}

// serveStream handles the deliveries on one stream, one after another:
// the server keeps a stream open for its next delivery when the last one
// was small, so this goroutine lives as long as the stream does. A stream
// may also carry a notice of deliveries the edge answered itself.
func (a *Agent) serveStream(st protocol.Stream, transport string, busy *atomic.Int64) {
	for {
		in, err := protocol.ReadInbound(st)
		if err != nil {
			if err != io.EOF {
				a.cfg.Logger.Debug("unreadable stream from the relay", "err", err)
			}
			return
		}
		if in.Notice != nil {
			a.refusedByRelay(in.Notice)
			return
		}
		d := &delivery{
			transport: transport, req: in.Request, started: in.Started,
			outcome: record.OutcomeForwarded, queued: in.Delivery.Queued, relayID: in.Delivery.ID,
			remoteAddr: in.Delivery.RemoteAddr, receivedAt: in.Started,
		}
		if in.Delivery.ReceivedAt != 0 {
			d.receivedAt = time.Unix(0, in.Delivery.ReceivedAt)
		}
		if n := busy.Add(1); n > int64(a.cfg.MaxDeliveries) {
			busy.Add(-1)
			a.refuseBusy(in, d)
		} else {
			a.deliver(in, d)
			busy.Add(-1)
		}
		d.finished = time.Now()
		a.metrics.delivered(d)
		a.record(d, a.report(d))
		if !in.Kept() {
			return
		}
	}
}

// deliver runs one delivery from its request to the answer on the stream.
func (a *Agent) deliver(in *protocol.Inbound, d *delivery) {
	r := in.Request
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in.Abandoned(cancel)

	// Read the start of the body: it is what is recorded, what recognition
	// and the signature check read, and what --retry resends. A larger
	// body streams on behind it and is checked by nobody.
	prefix, whole, err := readPrefix(r.Body, a.cfg.bodyCap)
	d.reqBody = record.Body{Data: prefix, Size: int64(len(prefix)), Truncated: !whole}
	if err != nil {
		// The relay's stream broke mid-body: nobody is left to answer.
		in.Abort()
		d.outcome, d.err = record.OutcomeFailed, "request body: "+err.Error()
		return
	}

	d.recognized = provider.Recognize(r.Method, r.URL, r.Header, prefix)
	switch {
	case whole:
		d.verdict = a.cfg.verifier.Verify(ctx, d.recognized.Provider, r.Method, r.URL, r.Header, prefix)
	case d.recognized.Provider != "":
		d.verdict = provider.Verdict{Status: provider.StatusUnchecked, Reason: fmt.Sprintf("body larger than %d bytes", a.cfg.bodyCap)}
	}
	if a.cfg.VerifyReject && a.rejects(d) {
		d.outcome = record.OutcomeRejected
		a.answer(in, d, relayJSON(http.StatusUnauthorized, protocol.HeaderVerdict, string(d.verdict.Status), "invalid_signature",
			fmt.Sprintf("relay agent refused this %s delivery: signature %s (%s)", d.recognized.Provider, d.verdict.Status, d.verdict.Reason)))
		return
	}

	var dedupKey string
	if a.cfg.Dedup && d.recognized.EventID != "" {
		dedupKey = eventKey(d.recognized.Provider, d.recognized.EventID)
		unlock := a.dedup.lock(dedupKey)
		defer unlock()
		if a.dedup.seen(ctx, dedupKey) {
			d.outcome = record.OutcomeDuplicate
			if a.cfg.Store != nil {
				d.duplicateOf = a.cfg.Store.FirstForwarded(ctx, d.recognized.Provider, d.recognized.EventID)
			}
			a.answer(in, d, relayJSON(http.StatusOK, protocol.HeaderDuplicate, "true", "duplicate",
				fmt.Sprintf("event %s was already delivered to the local app; not forwarded again (--dedup)", d.recognized.EventID)))
			return
		}
	}

	var body io.Reader = bytes.NewReader(prefix)
	size := int64(len(prefix))
	if !whole {
		body = io.MultiReader(body, &counter{r: r.Body, n: &d.reqBody.Size})
		size = r.ContentLength // -1 (chunked) when the provider sent no length
	}
	out := a.outgoing(ctx, r, body, size, whole)
	resp, attempts, err := a.forward(ctx, out, whole, d.req)
	d.attempts = attempts
	if ctx.Err() != nil {
		// The relay gave the delivery up; nobody reads an answer.
		if resp != nil {
			resp.Body.Close()
		}
		in.Abort()
		d.outcome, d.err = record.OutcomeFailed, "the relay gave up on this delivery (the provider went away or timed out)"
		return
	}
	if err != nil {
		status, code, msg := classify(err, a.cfg)
		d.outcome, d.err = record.OutcomeFailed, msg
		a.answer(in, d, relayJSON(status, protocol.HeaderError, code, code, msg))
		return
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body.Close()
		msg := "the local app switched protocols (101); relay forwards webhooks, not WebSocket or other upgrades"
		d.outcome, d.err = record.OutcomeFailed, msg
		a.answer(in, d, relayJSON(http.StatusBadGateway, protocol.HeaderError, "upgrade_unsupported", "upgrade_unsupported", msg))
		return
	}
	d.answered = time.Now()
	if dedupKey != "" && resp.StatusCode/100 == 2 {
		// On disk before the answer leaves, so a redelivery after the
		// agent is killed still finds it.
		a.dedup.mark(ctx, dedupKey)
	}
	a.answer(in, d, resp)
}

// answer writes resp to the relay, keeping the first bytes of its body
// for the recording.
func (a *Agent) answer(in *protocol.Inbound, d *delivery, resp *http.Response) {
	protocol.RemoveHopHeaders(resp.Header)
	d.status, d.respHeader = resp.StatusCode, resp.Header
	capture := &capture{r: resp.Body, limit: a.cfg.bodyCap}
	resp.Body = capture
	err := in.Respond(resp)
	capture.r.Close()
	d.respBody = capture.body()
	if err != nil && d.err == "" {
		d.outcome, d.err = record.OutcomeFailed, "answer to the relay: "+err.Error()
	}
}

// refuseBusy answers a delivery beyond the session's cap without reading
// its body.
func (a *Agent) refuseBusy(in *protocol.Inbound, d *delivery) {
	d.outcome, d.refusedBy = record.OutcomeRefused, "agent"
	d.err = fmt.Sprintf("more than %d deliveries at once; answered 503 without forwarding", a.cfg.MaxDeliveries)
	resp := relayJSON(http.StatusServiceUnavailable, protocol.HeaderError, "agent_busy", "agent_busy",
		"the relay agent is handling as many deliveries as it allows; retry later")
	resp.Header.Set("Retry-After", "1")
	d.status = resp.StatusCode
	in.Respond(resp)
}

// readPrefix reads up to limit bytes of body; whole says it ended within
// them. The buffer grows with the bytes that arrive, never from a length
// the sender declared, and never past limit+1.
func readPrefix(body io.Reader, limit int64) (prefix []byte, whole bool, err error) {
	if body == nil || body == http.NoBody {
		return nil, true, nil
	}
	buf := make([]byte, 0, 512)
	for int64(len(buf)) <= limit {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, int(min(int64(cap(buf)), limit+1-int64(len(buf)))))
		}
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, true, nil
		}
		if err != nil {
			return nil, false, err
		}
	}
	return buf, false, nil
}

// outgoing is the request for the local app: the provider's, minus
// hop-by-hop headers, to the target's URL. A body held whole goes with a
// Content-Length, never chunked: some apps cannot read chunked bodies.
func (a *Agent) outgoing(ctx context.Context, in *http.Request, body io.Reader, size int64, whole bool) *http.Request {
	target := a.cfg.target
	u := *in.URL
	u.Scheme, u.Host = target.Scheme, target.Host
	if target.Path != "" && target.Path != "/" {
		u.Path, u.RawPath = joinPath(target, in.URL)
	}
	if target.RawQuery != "" {
		u.RawQuery = strings.TrimSuffix(target.RawQuery+"&"+in.URL.RawQuery, "&")
	}
	h := in.Header
	protocol.RemoveHopHeaders(h)
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""} // no Go default added
	}
	out := &http.Request{
		Method: in.Method, URL: &u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: io.NopCloser(body), ContentLength: size,
	}
	if a.cfg.HostHeader == "preserve" {
		out.Host = in.Host
	}
	if size == 0 {
		out.Body = http.NoBody
	}
	if whole {
		prefix := body.(*bytes.Reader)
		out.GetBody = func() (io.ReadCloser, error) {
			r := *prefix
			r.Seek(0, io.SeekStart)
			return io.NopCloser(&r), nil
		}
	}
	return out.WithContext(ctx)
}

// joinPath puts the request's path under the target's, as
// httputil.ReverseProxy does.
func joinPath(target, in *url.URL) (path, rawpath string) {
	if target.RawPath == "" && in.RawPath == "" {
		return singleJoin(target.Path, in.Path), ""
	}
	return singleJoin(target.Path, in.Path), singleJoin(target.EscapedPath(), in.EscapedPath())
}

func singleJoin(a, b string) string {
	switch as, bs := strings.HasSuffix(a, "/"), strings.HasPrefix(b, "/"); {
	case as && bs:
		return a + b[1:]
	case !as && !bs:
		return a + "/" + b
	}
	return a + b
}

// rejects reports whether --verify reject refuses d: a signature that does
// not hold, or none at all from a provider whose secret is configured.
func (a *Agent) rejects(d *delivery) bool {
	switch d.verdict.Status {
	case provider.StatusInvalid:
		return true
	case provider.StatusUnsigned:
		return a.cfg.Secrets[d.recognized.Provider] != ""
	}
	return false
}

// relayJSON is an answer the agent gives on the local app's behalf, with
// its own short JSON.
func relayJSON(status int, header, value, code, msg string) *http.Response {
	key := "result"
	if status >= 400 {
		key = "error"
	}
	b, _ := json.Marshal(map[string]string{key: code, "message": msg})
	b = append(b, '\n')
	return &http.Response{
		StatusCode: status, ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"application/json"}, header: {value}},
		Body:          io.NopCloser(bytes.NewReader(b)),
		ContentLength: int64(len(b)),
	}
}

// classify says what the provider gets when the local app did not answer.
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

// counter counts the bytes of a body that outgrew the recording cap.
type counter struct {
	r io.Reader
	n *int64
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}

// capture passes a response body on and keeps its first limit bytes.
type capture struct {
	r     io.ReadCloser
	limit int64
	kept  []byte
	size  int64
}

func (c *capture) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if room := c.limit - int64(len(c.kept)); room > 0 && n > 0 {
		c.kept = append(c.kept, p[:min(int64(n), room)]...)
	}
	c.size += int64(n)
	return n, err
}

func (c *capture) Close() error { return nil } // the owner closes the real body

func (c *capture) body() record.Body {
	return record.Body{Data: c.kept, Size: c.size, Truncated: c.size > int64(len(c.kept))}
}

// report is the console line of one delivery.
func (a *Agent) report(d *delivery) string {
	r := d.req
	status := strconv.Itoa(d.status)
	if d.status == 0 {
		status = "---" // nobody was left to answer (the relay gave up on it)
	}
	var b strings.Builder
	b.Grow(128)
	b.WriteString(d.started.Format("15:04:05"))
	b.WriteByte(' ')
	b.WriteString(r.Method)
	b.WriteByte(' ')
	b.WriteString(r.URL.RequestURI())
	b.WriteByte(' ')
	b.WriteString(status)
	b.WriteByte(' ')
	b.WriteString(d.finished.Sub(d.started).Round(100 * time.Microsecond).String())
	var tags []string
	if d.queued {
		tags = append(tags, "queued")
	}
	if d.recognized.Event != "" {
		tags = append(tags, d.recognized.Provider+" "+d.recognized.Event)
	}
	if v := d.verdict.Status; v == provider.StatusValid || v == provider.StatusInvalid || (v == provider.StatusUnsigned && a.cfg.Secrets[d.recognized.Provider] != "") {
		tags = append(tags, "signature "+string(v))
	}
	switch d.outcome {
	case record.OutcomeRejected:
		tags = append(tags, "rejected: "+d.verdict.Reason)
	case record.OutcomeDuplicate:
		tags = append(tags, "duplicate, not forwarded")
	case record.OutcomeRefused:
		tags = append(tags, "refused by the "+d.refusedBy)
	}
	if n := len(d.attempts); n > 1 {
		tags = append(tags, fmt.Sprintf("%d attempts", n))
	}
	if len(tags) > 0 {
		b.WriteString(" (" + strings.Join(tags, ", ") + ")")
	}
	if d.err != "" {
		b.WriteString(" - " + d.err)
	}
	b.WriteByte('\n')
	return b.String()
}

// record hands d and its console line to the recorder, which writes both
// off the delivery path; without recordings the line is printed at once.
func (a *Agent) record(d *delivery, line string) {
	if a.rec == nil {
		a.console.print(line)
		return
	}
	r := d.req
	kind := record.KindLive
	if d.queued {
		kind = record.KindQueued
	}
	a.rec.add(&record.Delivery{
		RelayID:         d.relayID,
		Kind:            kind,
		Outcome:         d.outcome,
		Tunnel:          a.Welcome().Name,
		Transport:       d.transport,
		Target:          a.cfg.target.String(),
		Method:          r.Method,
		Host:            r.Host,
		Path:            r.URL.EscapedPath(),
		Query:           r.URL.RawQuery,
		RemoteAddr:      d.remoteAddr,
		RequestHeader:   redact(r.Header, a.cfg.Secrets),
		RequestBody:     d.reqBody,
		Status:          d.status,
		ResponseHeader:  d.respHeader,
		ResponseBody:    d.respBody,
		Error:           d.err,
		Attempts:        d.attempts,
		ReceivedAt:      d.receivedAt,
		StartedAt:       d.started,
		AnsweredAt:      d.answered,
		FinishedAt:      d.finished,
		Provider:        d.recognized.Provider,
		Event:           d.recognized.Event,
		EventID:         d.recognized.EventID,
		Signature:       string(d.verdict.Status),
		SignatureReason: d.verdict.Reason,
		DuplicateOf:     d.duplicateOf,
	}, line)
}

// refusedByRelay shows on the console, and records, the deliveries the
// edge answered itself (too large, too slow, over the tunnel's cap, an
// upgrade). A body the provider sent malformed is shown but not recorded:
// it is the sender's noise, not a delivery.
func (a *Agent) refusedByRelay(n *protocol.Notice) {
	for _, rf := range n.Refused {
		u, err := url.ParseRequestURI(rf.URI)
		if err != nil {
			u = &url.URL{Path: rf.URI}
		}
		at := time.Unix(0, rf.ReceivedAt)
		d := &delivery{
			req:    &http.Request{Method: rf.Method, URL: u, Host: rf.Host, Header: http.Header{}},
			status: rf.Status, err: rf.Message, outcome: record.OutcomeRefused, refusedBy: "relay",
			started: at, finished: at, receivedAt: at, relayID: rf.ID, remoteAddr: rf.RemoteAddr,
		}
		if line := a.report(d); rf.Status != http.StatusBadRequest {
			a.record(d, line)
		} else {
			a.console.print(line)
		}
	}
	if n.Dropped > 0 {
		a.say("the relay refused %d more deliveries (not listed: too many at once)", n.Dropped)
	}
}

// console is where the human lines go; lines from concurrent deliveries
// never interleave.
type console struct {
	mu sync.Mutex
	w  io.Writer
}

func (c *console) print(line string) {
	c.mu.Lock()
	io.WriteString(c.w, line)
	c.mu.Unlock()
}

// waitDeliveries waits for the deliveries in hand, at most d: their
// sessions are closed by now, so they end quickly.
func (a *Agent) waitDeliveries(d time.Duration) {
	done := make(chan struct{})
	go func() {
		a.inflight.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		a.cfg.Logger.Warn("deliveries still in hand at shutdown")
	}
}
