// Package store holds what the relay server's two storage backends share:
// the records they keep (tokens, queued deliveries, delivery log lines),
// the errors callers branch on, and the body spooling both use to keep
// large queued bodies out of memory. The backends live in store/sqlite
// (embedded, one node) and store/postgres (several nodes); store/storetest
// holds the one conformance suite both pass.
package store

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/relaytunnel/relay/protocol"
)

// Sentinel errors callers branch on.
var (
	ErrNotFound    = errors.New("not found")
	ErrBadToken    = errors.New("unknown or revoked token")
	ErrNameTaken   = errors.New("name already reserved by another token")
	ErrInvalidName = errors.New("invalid tunnel name")
	ErrRevoked     = errors.New("already revoked")
	// ErrQueueFull means a name's queue, or the relay's whole queue, is at
	// a limit; the provider is told to retry later.
	ErrQueueFull = errors.New("queue full")
	// ErrSchemaTooNew means the database was written by a newer relay.
	ErrSchemaTooNew = errors.New("database schema is newer than this relay")
	// ErrNoDatabase means there is no relay database where one was
	// expected and creating one was not asked for.
	ErrNoDatabase = errors.New("no relay database")
)

// Token is an agent credential as stored: never its secret.
type Token struct {
	ID         string // public, printable: tok_xxxxxxxx
	Names      []string
	CreatedAt  time.Time
	LastUsedAt time.Time
	Revoked    bool
}

// ValidName checks that name can be a tunnel name: one lowercase DNS label.
func ValidName(name string) error {
	if !protocol.ValidName(name) {
		return fmt.Errorf("%w %q: use 1-63 of a-z, 0-9 and '-', not starting or ending with '-'", ErrInvalidName, name)
	}
	return nil
}

// ValidNames checks a new token's names.
func ValidNames(names []string) error {
	if len(names) == 0 {
		return fmt.Errorf("%w: a token needs at least one name", ErrInvalidName)
	}
	for _, n := range names {
		if err := ValidName(n); err != nil {
			return err
		}
	}
	return nil
}

// HashSecret is how a token's secret is stored and looked up.
func HashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return strings.ToLower(b32.EncodeToString(b))
}

// NewToken is a fresh token for names (not yet stored) and its secret,
// which is shown once and stored only as HashSecret.
func NewToken(names []string) (Token, string) {
	secret := "relay_" + randomString(25) // 200 bits
	tok := Token{ID: "tok_" + randomString(5), Names: names, CreatedAt: time.Now().UTC().Truncate(time.Millisecond)}
	return tok, secret
}

// Queued is one delivery kept for a tunnel whose agent is offline. Its
// body is stored apart, in chunks (see Spool), and read back with the
// backend's QueuedBody.
type Queued struct {
	Seq        int64 // the queue's order: the tail is the largest
	Name       string
	DeliveryID string
	ReceivedAt time.Time
	RemoteAddr string
	Method     string
	URI        string // path and query as the provider sent them
	Host       string
	Header     http.Header
	// BodySize is the body's length once stored; on Enqueue it is the
	// declared Content-Length, or -1 when the sender did not declare one.
	BodySize int64
	// Attempts counts every hand-over that did not end with the local
	// app's answer; Failures only those the delivery itself may be to
	// blame for (the app timed out or failed on it), which is what
	// dead-lettering counts.
	Attempts int
	Failures int
}

// QueueLimits bound the offline queue. Zero means no limit.
type QueueLimits struct {
	MaxCount      int   // deliveries per name
	MaxBytes      int64 // body bytes per name
	MaxTotalBytes int64 // body bytes over every name, spooling included
}

// QueueStat is one name's queue as a metrics scrape sees it: deliveries
// stored whole and not yet acked (what QueueLen counts; bodies still
// arriving are not among them), and the earliest ReceivedAt among them.
type QueueStat struct {
	Count  int
	Oldest time.Time
}

// Delivery log outcomes.
const (
	OutcomeQueued       = "queued"
	OutcomeDelivered    = "delivered"
	OutcomeDeadLettered = "dead_lettered"
)

// LogEntry is one delivery in a name's delivery log, with what became of
// it so far.
type LogEntry struct {
	DeliveryID string    `json:"id"`
	ReceivedAt time.Time `json:"received_at"`
	Method     string    `json:"method"`
	URI        string    `json:"uri"`
	Queued     bool      `json:"queued"`
	Outcome    string    `json:"outcome"` // queued, delivered, dead_lettered
	Status     int       `json:"status,omitempty"`
	Attempts   int       `json:"attempts,omitempty"`
	Error      string    `json:"error,omitempty"` // why the last attempt failed
	At         time.Time `json:"at"`
}

// MaxLogPerName bounds each name's delivery log; the oldest lines go.
const MaxLogPerName = 1000

// Usage is how much of the queue's limits is taken.
type Usage struct {
	Count      int   // deliveries for the name
	Bytes      int64 // their body bytes
	TotalBytes int64 // body bytes over every name
}

// Fits fails with ErrQueueFull, naming the limit, when adding more
// deliveries and size bytes to name's usage u would go over lim.
func (lim QueueLimits) Fits(name string, u Usage, more int, size int64) error {
	size = max(size, 0)
	switch {
	case lim.MaxCount > 0 && u.Count+more > lim.MaxCount:
		return fmt.Errorf("%w: %q holds %d deliveries (limit %d)", ErrQueueFull, name, u.Count, lim.MaxCount)
	case lim.MaxBytes > 0 && u.Bytes+size > lim.MaxBytes:
		return fmt.Errorf("%w: %q holds %d bytes, %d more would pass its limit of %d", ErrQueueFull, name, u.Bytes, size, lim.MaxBytes)
	case lim.MaxTotalBytes > 0 && u.TotalBytes+size > lim.MaxTotalBytes:
		return fmt.Errorf("%w: the relay's queue holds %d bytes, %d more would pass its limit of %d", ErrQueueFull, u.TotalBytes, size, lim.MaxTotalBytes)
	}
	return nil
}

// Node is a relay server of a cluster as the registry holds it: a lease
// it renews, and the address agents dial it at.
type Node struct {
	Name string
	Addr string // host:port, the node's --advertise
}
