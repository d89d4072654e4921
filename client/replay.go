package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/relaytunnel/relay/client/record"
	"github.com/relaytunnel/relay/internal/provider"
	"github.com/relaytunnel/relay/protocol"
)

// ErrNotReplayable is returned for a recording that cannot be sent again
// as it was received (its body outgrew the recording cap).
var ErrNotReplayable = errors.New("cannot replay")

// ReplayOptions says where and how to send a recording again.
type ReplayOptions struct {
	// To overrides the recorded local app: a URL with a path is used as
	// is, a bare origin gets the recorded path.
	To string
	// Secrets restores headers redacted from the recording and checks
	// the signature of what is sent.
	Secrets map[string]string
	// Client sends the request; nil means a client without proxies and a
	// two-minute timeout.
	Client *http.Client
}

// Replay sends recording id to the local app (or opt.To) again, records
// the result as a new delivery linked to the original and returns it.
func Replay(ctx context.Context, store *record.Store, id int64, opt ReplayOptions) (*record.Delivery, error) {
	orig, err := store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	rd, err := replay(ctx, orig, opt, store.BodyCap())
	if err != nil {
		return nil, err
	}
	if _, err := store.Add(ctx, rd); err != nil {
		return nil, err
	}
	return rd, nil
}

// Replay is the package Replay through the agent's connection pool and
// secrets; the new recording reaches OnRecorded like any other.
func (a *Agent) Replay(ctx context.Context, id int64, to string) (int64, error) {
	if a.cfg.Store == nil {
		return 0, fmt.Errorf("%w: this agent records nothing", ErrNotReplayable)
	}
	rd, err := Replay(ctx, a.cfg.Store, id, ReplayOptions{
		To:      to,
		Secrets: a.cfg.Secrets,
		Client:  &http.Client{Transport: a.fwd.transport, Timeout: a.cfg.Timeout, CheckRedirect: noRedirect},
	})
	if err != nil {
		return 0, err
	}
	if a.OnRecorded != nil {
		a.OnRecorded(rd.ID)
	}
	return rd.ID, nil
}

func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

func replay(ctx context.Context, orig *record.Delivery, opt ReplayOptions, bodyCap int64) (*record.Delivery, error) {
	if orig.RequestBody.Truncated {
		return nil, fmt.Errorf("%w delivery %d: its %d-byte body was recorded only in part", ErrNotReplayable, orig.ID, orig.RequestBody.Size)
	}
	u, err := replayURL(orig, opt.To)
	if err != nil {
		return nil, err
	}
	h := orig.RequestHeader.Clone()
	protocol.RemoveHopHeaders(h)
	// The request written below sets its own framing and Host.
	h.Del("Content-Length")
	h.Del("Host")
	for k, vs := range h {
		for i, v := range vs {
			if v != Redacted {
				continue
			}
			secret := opt.Secrets[orig.Provider]
			if secret == "" {
				return nil, fmt.Errorf("%w delivery %d: header %s held a secret and was not recorded; pass --secret %s=...", ErrNotReplayable, orig.ID, k, orParen(orig.Provider))
			}
			vs[i] = secret
		}
	}
	h.Set(protocol.HeaderReplayOf, strconv.FormatInt(orig.ID, 10))

	req, err := http.NewRequestWithContext(ctx, orig.Method, u.String(), bytes.NewReader(orig.RequestBody.Data))
	if err != nil {
		return nil, fmt.Errorf("replay delivery %d: %w", orig.ID, err)
	}
	req.Header = h
	if len(orig.RequestBody.Data) == 0 {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	client := opt.Client
	if client == nil {
		client = &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 2 * time.Minute, CheckRedirect: noRedirect}
	}
	verdict := (&provider.Verifier{Secrets: opt.Secrets}).Verify(ctx, orig.Provider, req.Method, req.URL, h, orig.RequestBody.Data)
	rd := &record.Delivery{
		ReplayOf:        orig.ID,
		Kind:            record.KindReplay,
		Outcome:         record.OutcomeForwarded,
		Tunnel:          orig.Tunnel,
		Transport:       "replay",
		Target:          u.String(),
		Method:          orig.Method,
		Host:            u.Host,
		Path:            u.EscapedPath(),
		Query:           u.RawQuery,
		RemoteAddr:      "local",
		RequestHeader:   redact(h, opt.Secrets),
		RequestBody:     orig.RequestBody,
		Provider:        orig.Provider,
		Event:           orig.Event,
		EventID:         orig.EventID,
		Signature:       string(verdict.Status),
		SignatureReason: verdict.Reason,
	}
	if orig.Provider == "" {
		rd.Signature, rd.SignatureReason = "", ""
	}
	rd.StartedAt = time.Now()
	rd.ReceivedAt = rd.StartedAt
	resp, err := client.Do(req)
	if err != nil {
		rd.FinishedAt = time.Now()
		rd.Outcome, rd.Status = record.OutcomeFailed, http.StatusBadGateway
		rd.Error = fmt.Sprintf("replay to %s failed: %v", u.Redacted(), err)
		return rd, nil
	}
	defer resp.Body.Close()
	rd.AnsweredAt = time.Now()
	rd.Status, rd.ResponseHeader = resp.StatusCode, resp.Header
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(resp.Body, bodyCap))
	rest, _ := io.Copy(io.Discard, resp.Body)
	rd.ResponseBody = record.Body{Data: buf.Bytes(), Size: n + rest, Truncated: rest > 0}
	if err != nil {
		rd.Error = "reading the answer: " + err.Error()
	}
	rd.FinishedAt = time.Now()
	return rd, nil
}

func orParen(p string) string {
	if p == "" {
		return "PROVIDER"
	}
	return p
}

// replayURL is where a replay goes: opt.To as given when it has a path, or
// the origin it names (else the recorded target's) with the recorded path
// appended the way the agent forwards.
func replayURL(orig *record.Delivery, to string) (*url.URL, error) {
	base := orig.Target
	if to != "" {
		u, err := ParseTarget(to)
		if err != nil {
			return nil, fmt.Errorf("--to: %w", err)
		}
		if u.Path != "" && u.Path != "/" {
			return u, nil
		}
		base = u.String()
	}
	if orig.Kind == record.KindReplay && to == "" {
		// A replay's target is already a full URL.
		return url.Parse(orig.Target)
	}
	if base == "" {
		return nil, fmt.Errorf("%w delivery %d: no local app recorded; pass --to URL", ErrNotReplayable, orig.ID)
	}
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("recorded target %q: %w", base, err)
	}
	escaped := strings.TrimSuffix(u.EscapedPath(), "/") + "/" + strings.TrimPrefix(orig.Path, "/")
	if u.Path, err = url.PathUnescape(escaped); err != nil {
		return nil, fmt.Errorf("recorded path %q: %w", orig.Path, err)
	}
	u.RawPath = escaped
	u.RawQuery = orig.Query
	return u, nil
}
