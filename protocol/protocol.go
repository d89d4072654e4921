// Package protocol is the wire between a relay server and its agents.
//
// An agent dials the server over QUIC (UDP) or TLS over TCP carrying yamux,
// both negotiated with the ALPN protocol "relay/1". Everything above this
// package sees only a Session of Streams and does not know which transport
// it has.
//
// Login: the agent opens the first stream (the control stream) and writes a
// Hello frame; the server answers Welcome or Reject. The control stream then
// carries Ping/Pong both ways for the life of the session (the round-trip
// time; liveness is the transport's, from every byte received), and a
// GoAway from the server when it replaces or drains the session.
//
// Steady state: for every delivery the server writes one Delivery frame and
// then a plain HTTP/1.1 request on a stream, new or kept from an earlier
// delivery; the agent answers with a plain HTTP/1.1 response on the same
// stream and, once it has read the whole request, says Connection:
// keep-alive and waits there for the next one. HTTP's own framing
// (Content-Length or chunked) marks where each body ends, so a body cut off
// midway is detectable even on yamux, which cannot abort a stream. The
// server tells the agent about deliveries the edge answered itself on
// notice streams.
//
// See SPEC.md beside this file for the byte layout; TestSpecExamples keeps
// its examples true.
package protocol

import (
	"errors"
	"fmt"
)

// Version is the protocol version spoken by this build.
//
//	1: first version (Hello/Welcome/Reject, Ping/Pong, GoAway, Delivery).
const Version = 1

// ALPN is the TLS application protocol agents negotiate on both transports.
const ALPN = "relay/1"

// RejectCode says why the server refused a Hello; agents branch on it.
type RejectCode string

const (
	RejectBadToken        RejectCode = "bad_token"        // unknown or revoked token
	RejectNameTaken       RejectCode = "name_taken"       // the name belongs to another token
	RejectNameNotAllowed  RejectCode = "name_not_allowed" // the token may not use that name
	RejectVersionMismatch RejectCode = "version_mismatch" // Hello.Version differs from the server's
	RejectBadRequest      RejectCode = "bad_request"      // malformed Hello
	RejectUnavailable     RejectCode = "unavailable"      // server draining or failing; retry later
)

// Sentinel errors for each RejectCode, so callers can use errors.Is.
var (
	ErrBadToken        = errors.New("token refused")
	ErrNameTaken       = errors.New("name owned by another token")
	ErrNameNotAllowed  = errors.New("name not allowed for this token")
	ErrVersionMismatch = errors.New("protocol version mismatch")
	ErrBadRequest      = errors.New("bad request")
	ErrUnavailable     = errors.New("server unavailable")
)

var rejectErrors = map[RejectCode]error{
	RejectBadToken:        ErrBadToken,
	RejectNameTaken:       ErrNameTaken,
	RejectNameNotAllowed:  ErrNameNotAllowed,
	RejectVersionMismatch: ErrVersionMismatch,
	RejectBadRequest:      ErrBadRequest,
	RejectUnavailable:     ErrUnavailable,
}

// Hello is the agent's first message.
type Hello struct {
	Version int    `json:"version"`
	Token   string `json:"token"`
	Name    string `json:"name,omitempty"` // empty: the token's first name
	Agent   string `json:"agent,omitempty"`
	// NoQueue asks the server not to queue deliveries while this agent is
	// offline: they get 503 with Retry-After instead of 202.
	NoQueue bool `json:"no_queue,omitempty"`
}

// Welcome accepts a Hello.
type Welcome struct {
	Name      string `json:"name"`
	URL       string `json:"url"`
	SessionID string `json:"session_id"`
	Server    string `json:"server,omitempty"` // server build version
	// MaxBody is the largest request body the server forwards, in bytes.
	MaxBody int64 `json:"max_body"`
	// HeartbeatMillis is the server's keep-alive interval: each side pings
	// on the control stream this often, and a session that receives
	// nothing for three of them is closed.
	HeartbeatMillis int64 `json:"heartbeat_ms"`
	// Node names the server that sent this Welcome when it is one node of
	// a cluster; "" for a single server.
	Node string `json:"node,omitempty"`
	// Nodes are the cluster's live nodes, this one included: an agent
	// keeps one session to each. Empty for a single server; an agent that
	// knows nothing of clusters ignores it.
	Nodes []NodeAddr `json:"nodes,omitempty"`
}

// NodeAddr is one node of a cluster, as agents dial it.
type NodeAddr struct {
	Name string `json:"name"`
	Addr string `json:"addr"` // host:port, for both TCP and UDP (QUIC)
}

// Nodes tells a connected agent the cluster's live nodes, whenever they
// change (a node joined, or one's lease ran out): the whole list, not a
// difference, so one lost frame costs nothing once the next arrives.
type Nodes struct {
	Nodes []NodeAddr `json:"nodes"`
}

// Reject refuses a Hello. The agent prints Message and stops or retries
// according to Code.
type Reject struct {
	Code    RejectCode `json:"code"`
	Message string     `json:"message"`
	// Version is the server's protocol version, so a mismatch names both.
	Version int `json:"version"`
}

// Err turns a Reject into an error wrapping the sentinel for its code.
func (r Reject) Err() error {
	base, ok := rejectErrors[r.Code]
	if !ok {
		base = fmt.Errorf("rejected (%s)", r.Code)
	}
	if r.Message == "" {
		return base
	}
	return fmt.Errorf("%w: %s", base, r.Message)
}

// GoAway tells the agent the server is ending the session on purpose.
type GoAway struct {
	Reason  string `json:"reason"` // "replaced", "shutdown", "revoked"
	Message string `json:"message,omitempty"`
}

// Delivery is the first frame of every delivery stream.
type Delivery struct {
	ID         string `json:"id"`
	ReceivedAt int64  `json:"received_at"` // Unix nanoseconds at the edge
	RemoteAddr string `json:"remote_addr"`
	Queued     bool   `json:"queued,omitempty"` // true: from the offline queue, not live
	Attempt    int    `json:"attempt,omitempty"`
}
