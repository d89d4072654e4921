package client

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/relaytunnel/relay/client/record"
)

// Backoff between attempts: doubling from retryFirst, capped at retryMax.
const (
	retryFirst = 250 * time.Millisecond
	retryMax   = 5 * time.Second
)

// forward sends out to the local app. With --retry, a delivery whose body
// is held whole is sent again while the app refuses the connection or
// answers 5xx, with backoff, for at most the budget; each try is returned
// as an attempt. orig is the request as it arrived, for the console.
func (a *Agent) forward(ctx context.Context, out *http.Request, whole bool, orig *http.Request) (*http.Response, []record.Attempt, error) {
	budget := a.cfg.Retry
	if budget <= 0 || !whole {
		resp, err := a.fwd.transport.RoundTrip(out)
		return resp, nil, err
	}
	var attempts []record.Attempt
	deadline := time.Now().Add(budget)
	wait := retryFirst
	for n := 1; ; n++ {
		if n > 1 {
			body, err := out.GetBody()
			if err != nil {
				return nil, attempts, err
			}
			out = out.Clone(ctx)
			out.Body = body
		}
		start := time.Now()
		resp, err := a.fwd.transport.RoundTrip(out)
		at := record.Attempt{At: start, DurationMS: float64(time.Since(start).Microseconds()) / 1000}
		if err != nil {
			_, _, at.Error = classify(err, a.cfg)
		} else {
			at.Status = resp.StatusCode
		}
		attempts = append(attempts, at)
		retryable := (err != nil && errors.Is(err, syscall.ECONNREFUSED)) || (err == nil && resp.StatusCode >= 500)
		wait = min(wait, retryMax)
		sleep := wait/2 + rand.N(wait/2+1)
		if !retryable || time.Now().Add(sleep).After(deadline) {
			return resp, attempts, err
		}
		if resp != nil {
			// Drain a little so the connection can be reused, then let go.
			io.CopyN(io.Discard, resp.Body, 64<<10)
			resp.Body.Close()
		}
		what := at.Error
		if what == "" {
			what = strconv.Itoa(at.Status) + " " + http.StatusText(at.Status)
		}
		a.say("retrying %s %s in %s (attempt %d: %s)", orig.Method, orig.URL.RequestURI(), sleep.Round(10*time.Millisecond), n, what)
		if !sleepCtx(ctx, sleep) {
			return nil, attempts, context.Cause(ctx)
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
