package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/relaytunnel/relay/internal/provider"
	"github.com/relaytunnel/relay/protocol"
	"github.com/relaytunnel/relay/server/store"
)

// handshakePeek is how much of an offline body is looked at to recognise
// a verification handshake; handshakes are a few hundred bytes.
const handshakePeek = 64 << 10

// serveOffline answers a delivery for a reserved name whose agent is not
// connected: stored durably and 202, or 503 when it must not or cannot be.
// Limits are checked before the body is read, the body goes to the store
// a chunk at a time, a bounded number are received at once, and a sender
// slower than the minimum rate is cut (408).
func (e *edge) serveOffline(w http.ResponseWriter, r *http.Request, name string) {
	s := e.s
	ctx := r.Context()
	offline := func(code, msg string) {
		w.Header().Set("Retry-After", "30")
		writeError(w, http.StatusServiceUnavailable, code, msg)
	}
	if on, err := s.store.Queueing(ctx, name); err != nil || !on {
		offline("tunnel_offline", fmt.Sprintf("the agent for %q is not connected; retry later or start `relay connect` for it", name))
		return
	}
	if r.ContentLength > s.cfg.MaxBody {
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large",
			fmt.Sprintf("request body is %d bytes; this relay forwards at most %d", r.ContentLength, s.cfg.MaxBody))
		return
	}
	lim := s.queueLimits()
	if err := s.store.QueueRoom(ctx, name, r.ContentLength, lim); err != nil {
		s.queueRefused(w, name, err)
		return
	}
	if !s.spoolTurn(ctx) {
		offline("queue_busy", "the relay is receiving too many offline deliveries at once; retry later")
		return
	}
	defer func() { <-s.spoolers }()

	body := newSlowBodyGuard(w, http.MaxBytesReader(w, r.Body, s.cfg.MaxBody), s.cfg.BodyTimeout, s.cfg.MinBodyRate)
	head := make([]byte, handshakePeek)
	n, err := store.Fill(body, head)
	if err != nil && !errors.Is(err, io.EOF) {
		s.bodyFailed(w, r, name, body, err)
		return
	}
	head = head[:n]
	if provider.IsHandshake(r.Method, r.URL, r.Header, head) {
		offline("tunnel_offline", "this is a verification handshake that needs the live app; the agent for "+name+" is not connected")
		return
	}
	rest := io.Reader(body)
	if errors.Is(err, io.EOF) {
		rest = http.NoBody
	}
	hdr := r.Header.Clone()
	protocol.RemoveHopHeaders(hdr)
	ip, _, _ := net.SplitHostPort(r.RemoteAddr)
	hdr.Set("X-Forwarded-For", ip)
	hdr.Set("X-Forwarded-Host", r.Host)
	hdr.Set("X-Forwarded-Proto", "https")
	q := &store.Queued{
		Name:       name,
		DeliveryID: newID("dlv"),
		ReceivedAt: time.Now(),
		RemoteAddr: r.RemoteAddr,
		Method:     r.Method,
		URI:        r.URL.RequestURI(),
		Host:       r.Host,
		Header:     hdr,
		BodySize:   r.ContentLength,
	}
	if err := s.store.Enqueue(ctx, q, io.MultiReader(&byteReader{b: head}, rest), lim); err != nil {
		switch {
		case errors.Is(err, store.ErrQueueFull):
			s.queueRefused(w, name, err)
		case body.failed():
			s.bodyFailed(w, r, name, body, err)
		case ctx.Err() != nil:
			s.log.Debug("provider went away while its delivery was stored", "name", name, "err", err)
		default:
			s.log.Error("enqueue delivery", "name", name, "err", err)
			offline("queue_unavailable", "the relay could not store this delivery; retry later")
		}
		return
	}
	// An agent may have connected while this was being stored: wake its
	// drainer so the delivery does not wait for the next reconnect.
	if t := s.reg.get(name); t != nil {
		t.kickQueue()
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(protocol.HeaderDelivery, q.DeliveryID)
	w.WriteHeader(http.StatusAccepted)
	fmt.Fprintf(w, `{"queued":true,"id":%q,"message":"the agent for %s is offline; the delivery is stored and will be handed over in order when it reconnects"}`+"\n", q.DeliveryID, name)
}

// byteReader is bytes.Reader without its io.WriterTo: io.MultiReader
// would otherwise hand the whole head to a single Write.
type byteReader struct{ b []byte }

func (r *byteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

func (s *Server) queueLimits() store.QueueLimits {
	return store.QueueLimits{MaxCount: s.cfg.QueueMaxCount, MaxBytes: s.cfg.QueueMaxBytes, MaxTotalBytes: s.cfg.QueueMaxTotalBytes}
}

// spoolTurn waits, up to BodyTimeout, for one of the QueueSpoolers slots
// that bound the memory offline uploads take.
func (s *Server) spoolTurn(ctx context.Context) bool {
	select {
	case s.spoolers <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(s.cfg.BodyTimeout)
	defer t.Stop()
	select {
	case s.spoolers <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

func (s *Server) queueRefused(w http.ResponseWriter, name string, err error) {
	if !errors.Is(err, store.ErrQueueFull) {
		s.log.Error("check queue room", "name", name, "err", err)
		w.Header().Set("Retry-After", "30")
		writeError(w, http.StatusServiceUnavailable, "queue_unavailable", "the relay could not store this delivery; retry later")
		return
	}
	s.log.Warn("offline delivery refused", "name", name, "reason", err)
	w.Header().Set("Retry-After", "300")
	writeError(w, http.StatusServiceUnavailable, "queue_full",
		fmt.Sprintf("the agent for %q is offline and its queue is full; retry later", name))
}

// bodyFailed answers an offline delivery whose body could not be read.
func (s *Server) bodyFailed(w http.ResponseWriter, r *http.Request, name string, body *slowBodyGuard, err error) {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large",
			fmt.Sprintf("request body is over the %d-byte limit of this relay", s.cfg.MaxBody))
	case body.timedOut:
		s.log.Info("slow offline delivery cut", "name", name, "remote", r.RemoteAddr, "received", body.n)
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusRequestTimeout, "body_timeout",
			fmt.Sprintf("the request body arrived slower than this relay accepts (%d bytes in %s)", body.n, time.Since(body.start).Round(time.Millisecond)))
	default:
		// The sender's stream broke; nobody may be left to answer.
		s.log.Debug("offline delivery body failed", "name", name, "err", err)
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusBadRequest, "bad_body", "the request body could not be read: "+err.Error())
	}
}

// slowBodyGuard cuts a request body that arrives slower than allowed: it
// must be whole by start + timeout + received/rate seconds, the deadline
// moving on with every byte, so a fast sender of a large body is never cut
// and a silent or trickling one is, by the connection's read deadline.
type slowBodyGuard struct {
	r        io.Reader
	rc       *http.ResponseController
	start    time.Time
	timeout  time.Duration
	rate     int64
	n        int64
	err      error
	timedOut bool
}

func newSlowBodyGuard(w http.ResponseWriter, r io.Reader, timeout time.Duration, rate int64) *slowBodyGuard {
	return &slowBodyGuard{r: r, rc: http.NewResponseController(w), start: time.Now(), timeout: timeout, rate: rate}
}

func (g *slowBodyGuard) deadline() time.Time {
	return g.start.Add(g.timeout + time.Duration(float64(g.n)/float64(g.rate)*float64(time.Second)))
}

func (g *slowBodyGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	dl := g.deadline()
	g.rc.SetReadDeadline(dl)
	n, err := g.r.Read(p)
	g.n += int64(n)
	if err != nil && !errors.Is(err, io.EOF) {
		var ne net.Error
		if errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) || !time.Now().Before(dl) {
			g.timedOut = true
		}
		g.err = err
	}
	return n, err
}

// failed says the body, not the store, broke the upload.
func (g *slowBodyGuard) failed() bool { return g.err != nil }

// kickQueue wakes the tunnel's drainer, or starts one, without blocking.
func (t *tunnel) kickQueue() {
	t.drainMu.Lock()
	defer t.drainMu.Unlock()
	if t.queueCtx.Err() != nil {
		return // the session is over, replaced or revoked
	}
	if t.draining {
		select {
		case t.kick <- struct{}{}:
		default:
		}
		return
	}
	t.draining = true
	t.startDrain()
}

// drainerIdle ends the drainer that found the queue empty, unless a kick
// came while it looked. Nothing polls an idle name: a delivery queued
// here kicks it, and one queued by another node reaches it through the
// store's WatchQueued, which loses none (or says "look at every name").
func (t *tunnel) drainerIdle() bool {
	t.drainMu.Lock()
	defer t.drainMu.Unlock()
	select {
	case <-t.kick:
		return false
	default:
	}
	t.draining = false
	return true
}

// drainQueue hands t's queued deliveries to its agent, oldest first, one
// at a time (so live deliveries are never starved), until the queue is
// empty or the session is no longer the tunnel's (kickQueue starts it). A
// delivery leaves the queue only once the agent reports the local app's
// answer, or as a dead letter once the app failed on it QueueMaxAttempts
// times. One drainer per name holds a claim in the store while it hands
// over, so a replaced session here, or a session on another node, never
// hands over the same delivery at once.
func (s *Server) drainQueue(ctx context.Context, t *tunnel) {
	// A claim is short and renewed while a hand-over runs, so the claim
	// of a process that was killed holds its name's queue for seconds,
	// not for a response timeout.
	const claimTTL = 10 * time.Second
	var claimed time.Time // zero: not holding the claim
	release := func() {
		if claimed.IsZero() {
			return
		}
		claimed = time.Time{}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := s.store.ReleaseQueue(rctx, t.name, t.id); err != nil {
			s.log.Warn("release queue", "name", t.name, "err", err)
		}
	}
	defer release()
	failures := 0
	for ctx.Err() == nil {
		q, err := s.store.NextQueued(ctx, t.name)
		if errors.Is(err, store.ErrNotFound) {
			release()
			if t.drainerIdle() {
				return
			}
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("read queue", "name", t.name, "err", err)
			}
			failures++
			s.waitQueue(ctx, t, backoff(failures))
			continue
		}
		// Claim (or renew, half-way through the claim's time), then read
		// the head again: another drainer may have handed it over.
		if claimed.IsZero() || time.Since(claimed) > claimTTL/2 {
			ok, err := s.store.ClaimQueue(ctx, t.name, t.id, claimTTL)
			if err != nil || !ok {
				claimed = time.Time{}
				if err != nil && ctx.Err() == nil {
					s.log.Error("claim queue", "name", t.name, "err", err)
				}
				s.waitQueue(ctx, t, time.Second)
				continue
			}
			claimed = time.Now()
			continue
		}
		stopRenew := s.renewClaim(ctx, t, claimTTL)
		status, herr := s.handOver(ctx, t, q)
		stopRenew()
		claimed = time.Now()
		if herr == nil {
			failures = 0
			if err := s.store.Ack(context.WithoutCancel(ctx), q, store.OutcomeDelivered, status); err != nil {
				s.log.Error("ack queued delivery", "name", t.name, "id", q.DeliveryID, "err", err)
			}
			continue
		}
		if ctx.Err() != nil {
			return // the session ended: that is not the delivery's fault
		}
		s.attempted(ctx, t, q, status, herr)
		failures++
		s.waitQueue(ctx, t, backoff(failures))
	}
}

// renewClaim renews t's claim on its queue every third of ttl until the
// returned stop is called (a hand-over may outlast the claim).
func (s *Server) renewClaim(ctx context.Context, t *tunnel, ttl time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(ttl / 3)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if _, err := s.store.ClaimQueue(ctx, t.name, t.id, ttl); err != nil && ctx.Err() == nil {
					s.log.Warn("renew queue claim", "name", t.name, "err", err)
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

// attempted records a failed hand-over and dead-letters a delivery the
// app failed on too often.
func (s *Server) attempted(ctx context.Context, t *tunnel, q *store.Queued, status int, herr error) {
	ctx = context.WithoutCancel(ctx)
	strike := countsAgainst(herr)
	s.log.Info("queued delivery not handed over", "name", t.name, "id", q.DeliveryID, "err", herr, "counts", strike)
	if err := s.store.Attempted(ctx, q, strike, herr.Error()); err != nil {
		s.log.Error("count queued delivery attempt", "name", t.name, "id", q.DeliveryID, "err", err)
		return
	}
	if !strike || q.Failures < s.cfg.QueueMaxAttempts {
		return
	}
	if err := s.store.Ack(ctx, q, store.OutcomeDeadLettered, status); err != nil {
		s.log.Error("dead-letter queued delivery", "name", t.name, "id", q.DeliveryID, "err", err)
		return
	}
	s.metrics.dead.WithLabelValues(t.name).Inc()
	s.log.Warn("queued delivery dead-lettered: the local app failed on it every time; the queue moves on",
		"name", t.name, "id", q.DeliveryID, "method", q.Method, "uri", q.URI, "attempts", q.Attempts, "failures", q.Failures, "last_error", herr)
}

// countsAgainst says whether a failed hand-over may be the delivery's
// fault: the app timed out or failed on it, or the agent answered in its
// place (a rejected signature). An app that is not running, or a session
// that dropped, says nothing about the delivery.
func countsAgainst(err error) bool {
	var na *notAnswered
	switch {
	case errors.As(err, &na):
		return na.code != "local_app_unreachable"
	case errors.Is(err, protocol.ErrAgentGone):
		return false
	}
	return true
}

// waitQueue waits for a kick (a new delivery, a reconnect), for d when d
// is positive, or for ctx to end.
func (s *Server) waitQueue(ctx context.Context, t *tunnel, d time.Duration) {
	var timeout <-chan time.Time
	if d > 0 {
		timer := time.NewTimer(d)
		defer timer.Stop()
		timeout = timer.C
	}
	select {
	case <-t.kick:
	case <-timeout:
	case <-ctx.Done():
	}
}

// backoff between failed hand-overs: 0.5 s more per failure, at most 30 s.
func backoff(failures int) time.Duration {
	return min(time.Duration(failures)*500*time.Millisecond, 30*time.Second)
}

// notAnswered means the agent, not the local app, answered: the app
// could not be reached, timed out or failed, so the delivery stays queued.
type notAnswered struct {
	code   string // the agent's X-Relay-Error
	status int
}

func (e *notAnswered) Error() string {
	return fmt.Sprintf("local app did not answer: %s (%d)", e.code, e.status)
}

// handOver sends one queued delivery through t, its body streamed from the
// store, and returns the local app's status.
func (s *Server) handOver(ctx context.Context, t *tunnel, q *store.Queued) (int, error) {
	u, err := url.ParseRequestURI(q.URI)
	if err != nil {
		return 0, fmt.Errorf("stored URI %q: %w", q.URI, err)
	}
	u.Scheme, u.Host = "http", q.Host
	d := &delivery{t: t, hdr: protocol.Delivery{
		ID:         q.DeliveryID,
		ReceivedAt: q.ReceivedAt.UnixNano(),
		RemoteAddr: q.RemoteAddr,
		Queued:     true,
		Attempt:    q.Attempts + 1,
	}}
	var body io.ReadCloser = http.NoBody
	if q.BodySize > 0 {
		body = s.store.QueuedBody(ctx, q)
	}
	req, err := http.NewRequestWithContext(context.WithValue(ctx, deliveryKey{}, d), q.Method, u.String(), body)
	if err != nil {
		return 0, err
	}
	req.URL = u
	req.Host = q.Host
	req.ContentLength = q.BodySize
	req.Header = q.Header.Clone()
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header.Set("User-Agent", "") // no Go default added
	}
	t.flight.add()
	defer t.flight.done()
	resp, err := s.edge.transport.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if code := resp.Header.Get(protocol.HeaderError); code != "" {
		return resp.StatusCode, &notAnswered{code: code, status: resp.StatusCode}
	}
	return resp.StatusCode, nil
}
