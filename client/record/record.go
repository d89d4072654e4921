// Package record is the agent's memory: every delivery it handled, with the
// request, the local app's answer, timings, provider recognition and the
// signature verdict, kept in an embedded SQLite database that `relay
// requests`, `relay replay` and the inspector read while the agent writes.
package record

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"time"
	"unicode/utf8"
)

// ErrNotFound is returned for a delivery id that is not (or no longer) kept.
var ErrNotFound = errors.New("delivery not found")

// Kinds of delivery: how it reached the agent.
const (
	KindLive   = "live"   // a provider's request, forwarded as it arrived
	KindQueued = "queued" // held by the relay while the agent was offline
	KindReplay = "replay" // sent again from a recording
)

// Outcomes: what the agent did with it.
const (
	OutcomeForwarded = "forwarded" // the local app answered (any status)
	OutcomeFailed    = "failed"    // the local app could not be reached or timed out
	OutcomeRejected  = "rejected"  // --verify reject: invalid signature, answered 401
	OutcomeDuplicate = "duplicate" // --dedup: event already forwarded, answered 200
	OutcomeRefused   = "refused"   // the relay or the agent answered it without forwarding (413, 408, 503, ...)
)

// Body is a recorded body: at most the store's cap, with the full size.
type Body struct {
	Data      []byte
	Size      int64 // bytes that passed, recorded or not
	Truncated bool  // Data holds only the first len(Data) bytes
}

// bodyJSON is Body on the wire: text when it is UTF-8, base64 otherwise, so
// the page can show JSON without decoding and binary survives.
type bodyJSON struct {
	Size      int64  `json:"size"`
	Truncated bool   `json:"truncated,omitempty"`
	Encoding  string `json:"encoding"` // "utf-8" or "base64"
	Data      string `json:"data"`
}

// MarshalJSON implements json.Marshaler.
func (b Body) MarshalJSON() ([]byte, error) {
	j := bodyJSON{Size: b.Size, Truncated: b.Truncated, Encoding: "utf-8", Data: string(b.Data)}
	if !utf8.Valid(b.Data) {
		j.Encoding, j.Data = "base64", base64.StdEncoding.EncodeToString(b.Data)
	}
	return json.Marshal(j)
}

// UnmarshalJSON implements json.Unmarshaler.
func (b *Body) UnmarshalJSON(p []byte) error {
	var j bodyJSON
	if err := json.Unmarshal(p, &j); err != nil {
		return err
	}
	b.Size, b.Truncated, b.Data = j.Size, j.Truncated, []byte(j.Data)
	if j.Encoding == "base64" {
		data, err := base64.StdEncoding.DecodeString(j.Data)
		if err != nil {
			return err
		}
		b.Data = data
	}
	return nil
}

// Attempt is one try at the local app when --retry is on.
type Attempt struct {
	At         time.Time `json:"at"`
	Status     int       `json:"status,omitempty"`
	Error      string    `json:"error,omitempty"`
	DurationMS float64   `json:"duration_ms"`
}

// Delivery is one recorded delivery, in full.
type Delivery struct {
	ID       int64  `json:"id"`
	RelayID  string `json:"relay_id,omitempty"`  // the relay server's delivery id
	ReplayOf int64  `json:"replay_of,omitempty"` // the recording this replays
	Kind     string `json:"kind"`
	Outcome  string `json:"outcome"`
	Tunnel   string `json:"tunnel,omitempty"`
	// Transport is how it reached the agent: quic, tcp, or replay.
	Transport string `json:"transport,omitempty"`
	// Target is the local app's URL the request was sent to.
	Target string `json:"target,omitempty"`

	Method        string      `json:"method"`
	Host          string      `json:"host"`
	Path          string      `json:"path"`
	Query         string      `json:"query,omitempty"`
	RemoteAddr    string      `json:"remote_addr,omitempty"`
	RequestHeader http.Header `json:"request_headers"`
	RequestBody   Body        `json:"request_body"`

	Status         int         `json:"status"`
	ResponseHeader http.Header `json:"response_headers,omitempty"`
	ResponseBody   Body        `json:"response_body"`
	Error          string      `json:"error,omitempty"`
	Attempts       []Attempt   `json:"attempts,omitempty"`

	// Timings: received by the relay, stream opened at the agent, local
	// app's response headers, last byte back to the relay.
	ReceivedAt time.Time `json:"received_at"`
	StartedAt  time.Time `json:"started_at"`
	AnsweredAt time.Time `json:"answered_at,omitzero"`
	FinishedAt time.Time `json:"finished_at"`

	Provider        string `json:"provider,omitempty"`
	Event           string `json:"event,omitempty"`
	EventID         string `json:"event_id,omitempty"`
	Signature       string `json:"signature,omitempty"` // valid, invalid, unsigned, unchecked
	SignatureReason string `json:"signature_reason,omitempty"`
	DuplicateOf     int64  `json:"duplicate_of,omitempty"`
}

// Summary is a Delivery without headers and bodies: a line of the list.
type Summary struct {
	ID          int64     `json:"id"`
	ReplayOf    int64     `json:"replay_of,omitempty"`
	Kind        string    `json:"kind"`
	Outcome     string    `json:"outcome"`
	Tunnel      string    `json:"tunnel,omitempty"`
	Transport   string    `json:"transport,omitempty"`
	Method      string    `json:"method"`
	Path        string    `json:"path"`
	Query       string    `json:"query,omitempty"`
	Status      int       `json:"status"`
	Error       string    `json:"error,omitempty"`
	ReceivedAt  time.Time `json:"received_at"`
	DurationMS  float64   `json:"duration_ms"`
	RequestSize int64     `json:"request_size"`
	Provider    string    `json:"provider,omitempty"`
	Event       string    `json:"event,omitempty"`
	EventID     string    `json:"event_id,omitempty"`
	Signature   string    `json:"signature,omitempty"`
	Attempts    int       `json:"attempts,omitempty"`
}

// Duration is the agent's part: stream opened to last byte answered.
func (d *Delivery) Duration() time.Duration {
	if d.FinishedAt.IsZero() || d.StartedAt.IsZero() {
		return 0
	}
	return d.FinishedAt.Sub(d.StartedAt)
}

// Summary is d's list line.
func (d *Delivery) Summary() Summary {
	return Summary{
		ID: d.ID, ReplayOf: d.ReplayOf, Kind: d.Kind, Outcome: d.Outcome, Tunnel: d.Tunnel, Transport: d.Transport,
		Method: d.Method, Path: d.Path, Query: d.Query, Status: d.Status, Error: d.Error,
		ReceivedAt: d.ReceivedAt, DurationMS: ms(d.Duration()), RequestSize: d.RequestBody.Size,
		Provider: d.Provider, Event: d.Event, EventID: d.EventID, Signature: d.Signature,
		Attempts: len(d.Attempts),
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Filter selects deliveries for List; zero fields select everything.
type Filter struct {
	Limit       int   // default 100
	BeforeID    int64 // only ids below (paging back)
	AfterID     int64 // only ids above (what is new)
	StatusClass int   // 2 for 2xx ...
	Status      int   // exactly this status code
	Provider    string
	Tunnel      string
	PathPrefix  string
	Since       time.Time
	// Search matches path, query, provider, event, event id, error, the
	// method, the status code and the recorded request and response
	// bodies (ASCII letters without regard to case).
	Search string
}
