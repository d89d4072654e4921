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

	"golang.org/x/net/http/httpguts"

	"github.com/relaytunnel/relay/client/record"
	"github.com/relaytunnel/relay/internal/provider"
	"github.com/relaytunnel/relay/protocol"
)

// ErrNotReplayable is returned for a recording that cannot be sent again
// as it was received (its body outgrew the recording cap).
var ErrNotReplayable = errors.New("cannot replay")

// ErrBadEdit is returned for a ReplayEdit that is not a request that could
// be sent: a method that is not a token, a path that is not a path, a
// header that would not survive the wire.
var ErrBadEdit = errors.New("edited request")

// ReplayOptions says where and how to send a recording again.
type ReplayOptions struct {
	// To overrides the recorded local app: a URL with a path is used as
	// is, a bare origin gets the recorded path.
	To string
	// Edit, when set, is sent instead of the recorded request (ngrok's
	// "replay with modifications"). With an edit, To may name an origin
	// only.
	Edit *ReplayEdit
	// Secrets restores headers redacted from the recording and checks
	// the signature of what is sent.
	Secrets map[string]string
	// Client sends the request; nil means a client without proxies and a
	// two-minute timeout.
	Client *http.Client
}

// ReplayEdit is a whole request to send in place of the recorded one. It
// carries a path, never a URL: it goes to the recorded local app (or
// ReplayOptions.To) and nowhere else, so whoever writes an edit cannot point
// the agent at another host.
type ReplayEdit struct {
	Method string
	// URI is the path and query, as on an HTTP request line: /hooks?x=1.
	URI    string
	Header http.Header
	Body   []byte
}

// check reports the first part of e that could not be sent, and returns
// the escaped path and raw query.
func (e *ReplayEdit) check() (path, query string, err error) {
	if e.Method == "" || strings.IndexFunc(e.Method, func(r rune) bool { return !httpguts.IsTokenRune(r) }) >= 0 {
		return "", "", fmt.Errorf("%w: method %q is not an HTTP method (letters, digits and !#$%%&'*+-.^_`|~ only)", ErrBadEdit, e.Method)
	}
	if !strings.HasPrefix(e.URI, "/") {
		return "", "", fmt.Errorf("%w: path %q must start with / (it is sent to the local app, not to a URL)", ErrBadEdit, e.URI)
	}
	u, err := url.ParseRequestURI(e.URI)
	if err != nil || u.Scheme != "" || u.Host != "" {
		return "", "", fmt.Errorf("%w: path %q is not /PATH[?QUERY]", ErrBadEdit, e.URI)
	}
	for k, vs := range e.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return "", "", fmt.Errorf("%w: header name %q is not a token", ErrBadEdit, k)
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return "", "", fmt.Errorf("%w: header %s has a control character (newline, NUL...) in its value", ErrBadEdit, k)
			}
		}
	}
	return u.EscapedPath(), u.RawQuery, nil
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
// secrets, to the agent's own local app: the inspector's replay, and
// `relay replay` while the agent runs. edit may be nil. Each replay gets
// one line on the console, as a delivery does, and its recording reaches
// OnRecorded like any other.
func (a *Agent) Replay(ctx context.Context, id int64, edit *ReplayEdit) (*record.Delivery, error) {
	if a.cfg.Store == nil {
		return nil, fmt.Errorf("%w: this agent records nothing", ErrNotReplayable)
	}
	rd, err := Replay(ctx, a.cfg.Store, id, ReplayOptions{
		Edit:    edit,
		Secrets: a.cfg.Secrets,
		Client:  &http.Client{Transport: a.fwd.transport, Timeout: a.cfg.Timeout, CheckRedirect: noRedirect},
	})
	a.metrics.replayed(err)
	if err != nil {
		if !errors.Is(err, ErrBadEdit) { // the page says what was wrong with its edit
			fmt.Fprintf(a.cfg.Console, "%s replay of #%d failed: %v\n", time.Now().Format("15:04:05"), id, err)
		}
		return nil, err
	}
	fmt.Fprintf(a.cfg.Console, "%s %s\n", rd.StartedAt.Format("15:04:05"), replayLine(rd, edit != nil, a.cfg.Secrets))
	if a.OnRecorded != nil {
		a.OnRecorded(rd.ID)
	}
	return rd, nil
}

// replayLine is a replay's console line, shaped like a delivery's:
// "replay of #12 as #13: POST /hooks 200 3.1ms (edited, signature valid)".
func replayLine(rd *record.Delivery, edited bool, secrets map[string]string) string {
	uri := rd.Path
	if rd.Query != "" {
		uri += "?" + rd.Query
	}
	status := strconv.Itoa(rd.Status)
	if rd.Status == 0 {
		status = "---"
	}
	line := fmt.Sprintf("replay of #%d as #%d: %s %s %s %s", rd.ReplayOf, rd.ID, rd.Method, uri, status, rd.Duration().Round(100*time.Microsecond))
	var tags []string
	if edited {
		tags = append(tags, "edited")
	}
	if rd.Event != "" {
		tags = append(tags, rd.Provider+" "+rd.Event)
	}
	if v := provider.Status(rd.Signature); v == provider.StatusValid || v == provider.StatusInvalid || (v == provider.StatusUnsigned && secrets[rd.Provider] != "") {
		tags = append(tags, "signature "+string(v))
	}
	if len(tags) > 0 {
		line += " (" + strings.Join(tags, ", ") + ")"
	}
	if rd.Error != "" {
		line += " - " + rd.Error
	}
	return line
}

func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

func replay(ctx context.Context, orig *record.Delivery, opt ReplayOptions, bodyCap int64) (*record.Delivery, error) {
	method, header, body := orig.Method, orig.RequestHeader, orig.RequestBody.Data
	path, query := orig.Path, orig.Query
	if e := opt.Edit; e != nil {
		var err error
		if path, query, err = e.check(); err != nil {
			return nil, err
		}
		method, header, body = e.Method, e.Header, e.Body
	} else if orig.RequestBody.Truncated {
		return nil, fmt.Errorf("%w delivery %d: its %d-byte body was recorded only in part", ErrNotReplayable, orig.ID, orig.RequestBody.Size)
	}
	u, err := replayURL(orig, opt.To, opt.Edit != nil, path, query)
	if err != nil {
		return nil, err
	}
	h := header.Clone()
	if h == nil {
		h = http.Header{}
	}
	protocol.RemoveHopHeaders(h)
	// The request written below sets its own framing; an edit may name
	// the Host the app sees, never the host it is sent to.
	h.Del("Content-Length")
	host := h.Get("Host")
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

	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("replay delivery %d: %w", orig.ID, err)
	}
	req.Header = h
	if opt.Edit != nil && host != "" {
		req.Host = host
	}
	if len(body) == 0 {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	client := opt.Client
	if client == nil {
		client = &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 2 * time.Minute, CheckRedirect: noRedirect}
	}
	verdict := (&provider.Verifier{Secrets: opt.Secrets}).Verify(ctx, orig.Provider, req.Method, req.URL, h, body)
	rd := &record.Delivery{
		ReplayOf:        orig.ID,
		Kind:            record.KindReplay,
		Outcome:         record.OutcomeForwarded,
		Tunnel:          orig.Tunnel,
		Transport:       "replay",
		Target:          u.String(),
		Method:          method,
		Host:            req.Host,
		Path:            u.EscapedPath(),
		Query:           u.RawQuery,
		RemoteAddr:      "local",
		RequestHeader:   redact(h, opt.Secrets),
		RequestBody:     record.Body{Data: body, Size: int64(len(body))},
		Provider:        orig.Provider,
		Event:           orig.Event,
		EventID:         orig.EventID,
		Signature:       string(verdict.Status),
		SignatureReason: verdict.Reason,
	}
	if rd.Host == "" {
		rd.Host = u.Host
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

// replayURL is where a replay goes: to as given when it has a path, or
// the origin it names (else the recorded target) with path and query
// appended the way the agent forwards. An edited path always keeps the
// recorded (or to's) origin.
func replayURL(orig *record.Delivery, to string, edited bool, path, query string) (*url.URL, error) {
	var base string
	switch {
	case to != "":
		u, err := ParseTarget(to)
		if err != nil {
			return nil, fmt.Errorf("--to: %w", err)
		}
		if u.Path != "" && u.Path != "/" {
			if edited {
				return nil, fmt.Errorf("%w: --to %s has a path of its own; give an origin with an edit", ErrBadEdit, to)
			}
			return u, nil
		}
		base = u.String()
	case orig.Target == "":
		return nil, fmt.Errorf("%w delivery %d: no local app recorded; pass --to URL", ErrNotReplayable, orig.ID)
	case !edited:
		return orig.LocalURL()
	case orig.Kind == record.KindReplay:
		// A replay's target is a full URL and its path the whole local path.
		u, err := url.Parse(orig.Target)
		if err != nil {
			return nil, fmt.Errorf("recorded target %q: %w", orig.Target, err)
		}
		base = record.Origin(u).String()
	default:
		base = orig.Target
	}
	return record.JoinPath(base, path, query)
}
