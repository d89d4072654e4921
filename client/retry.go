package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/relaytunnel/relay/client/record"
)

// retryTransport resends a delivery the local app refused or answered
// with a 5xx, with backoff, for at most budget (--retry; 0 means once).
// Only a body read whole before forwarding (GetBody set) can be resent.
type retryTransport struct {
	base   http.RoundTripper
	budget time.Duration
	cfg    *resolved
}

// Backoff between attempts: doubling from retryFirst, capped at retryMax.
const (
	retryFirst = 250 * time.Millisecond
	retryMax   = 5 * time.Second
)

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	d, _ := req.Context().Value(deliveryReport{}).(*Delivery)
	if t.budget <= 0 || req.GetBody == nil || d == nil {
		return t.base.RoundTrip(req)
	}
	deadline := time.Now().Add(t.budget)
	wait := retryFirst
	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			req = req.Clone(req.Context())
			req.Body = body
		}
		start := time.Now()
		resp, err := t.base.RoundTrip(req)
		a := record.Attempt{At: start, DurationMS: float64(time.Since(start).Microseconds()) / 1000}
		if err != nil {
			_, _, a.Error = classify(err, t.cfg)
		} else {
			a.Status = resp.StatusCode
		}
		d.Attempts = append(d.Attempts, a)
		retryable := (err != nil && errors.Is(err, syscall.ECONNREFUSED)) || (err == nil && resp.StatusCode >= 500)
		wait = min(wait, retryMax)
		sleep := wait/2 + rand.N(wait/2+1)
		if !retryable || time.Now().Add(sleep).After(deadline) {
			return resp, err
		}
		if resp != nil {
			// Drain a little so the connection can be reused, then let go.
			io.CopyN(io.Discard, resp.Body, 64<<10)
			resp.Body.Close()
		}
		what := a.Error
		if what == "" {
			what = http.StatusText(a.Status)
			what = strconv.Itoa(a.Status) + " " + what
		}
		fmt.Fprintf(t.cfg.Console, "%s retrying %s %s in %s (attempt %d: %s)\n", time.Now().Format("15:04:05"),
			req.Method, d.Request.URL.RequestURI(), sleep.Round(10*time.Millisecond), attempt, what)
		if !sleepCtx(req.Context(), sleep) {
			return nil, context.Cause(req.Context())
		}
		wait *= 2
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
