package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/relaytunnel/relay/internal/provider"
	"github.com/relaytunnel/relay/protocol"
	"github.com/relaytunnel/relay/server/store"
)

// serveOffline answers a delivery for a reserved name whose agent is not
// connected: stored durably and 202, or 503 when it must not or cannot be.
func (e *edge) serveOffline(w http.ResponseWriter, r *http.Request, name string) {
	s := e.s
	ctx := r.Context()
	offline := func(code, msg string) {
		w.Header().Set("Retry-After", "30")
		writeError(w, http.StatusServiceUnavailable, code, msg)
	}
	if on, err := s.db.Queueing(ctx, name); err != nil || !on {
		offline("tunnel_offline", fmt.Sprintf("the agent for %q is not connected; retry later or start `relay connect` for it", name))
		return
	}
	if r.ContentLength > s.cfg.MaxBody {
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large",
			fmt.Sprintf("request body is %d bytes; this relay forwards at most %d", r.ContentLength, s.cfg.MaxBody))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "body_too_large",
				fmt.Sprintf("request body is over the %d-byte limit of this relay", s.cfg.MaxBody))
		}
		return
	}
	if provider.IsHandshake(r.Method, r.URL, r.Header, body) {
		offline("tunnel_offline", "this is a verification handshake that needs the live app; the agent for "+name+" is not connected")
		return
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
		Body:       body,
	}
	if err := s.db.Enqueue(ctx, q, store.QueueLimits{MaxCount: s.cfg.QueueMaxCount, MaxBytes: s.cfg.QueueMaxBytes}); err != nil {
		if errors.Is(err, store.ErrQueueFull) {
			w.Header().Set("Retry-After", "300")
			writeError(w, http.StatusServiceUnavailable, "queue_full",
				fmt.Sprintf("the agent for %q is offline and its queue is full; retry later", name))
			return
		}
		s.log.Error("enqueue delivery", "name", name, "err", err)
		offline("queue_unavailable", "the relay could not store this delivery; retry later")
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

// kickQueue wakes the tunnel's drainer without blocking.
func (t *tunnel) kickQueue() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// drainQueue hands t's queued deliveries to its agent, oldest first, one
// at a time (so live deliveries are never starved), for as long as the
// session lives. A delivery leaves the queue only once the agent reports
// the local app's answer.
func (s *Server) drainQueue(ctx context.Context, t *tunnel) {
	failures := 0
	for {
		q, err := s.db.NextQueued(ctx, t.name)
		if errors.Is(err, store.ErrNotFound) {
			select {
			case <-t.kick:
				continue
			case <-ctx.Done():
				return
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Error("read queue", "name", t.name, "err", err)
		} else if status, herr := s.handOver(ctx, t, q); herr == nil {
			failures = 0
			if err := s.db.Ack(context.WithoutCancel(ctx), q, status, "delivered"); err != nil {
				s.log.Error("ack queued delivery", "name", t.name, "id", q.DeliveryID, "err", err)
			}
			continue
		} else {
			s.log.Info("queued delivery not handed over", "name", t.name, "id", q.DeliveryID, "err", herr)
			s.db.Attempted(context.WithoutCancel(ctx), q.Seq)
		}
		failures++
		wait := min(time.Duration(failures)*500*time.Millisecond, 30*time.Second)
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-t.kick:
			timer.Stop()
		case <-ctx.Done():
			timer.Stop()
			return
		}
	}
}

// errNotAnswered means the agent could not reach the local app: the
// answer came from the agent, not the app, so the delivery stays queued.
var errNotAnswered = errors.New("local app did not answer")

// handOver sends one queued delivery through t and returns the local
// app's status.
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
	req, err := http.NewRequestWithContext(context.WithValue(ctx, deliveryKey{}, d), q.Method, u.String(), bytes.NewReader(q.Body))
	if err != nil {
		return 0, err
	}
	req.URL = u
	req.Host = q.Host
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
		return resp.StatusCode, fmt.Errorf("%w: %s (%d)", errNotAnswered, code, resp.StatusCode)
	}
	return resp.StatusCode, nil
}
