package inspect

import (
	"time"

	"github.com/relaytunnel/relay/client/record"
)

// timing is where a delivery's time went, in whole microseconds, so that
// the parts add up to the whole on the page: total = relay + agent, and
// agent = app + body when the app answered.
type timing struct {
	// RelayUS is from the relay receiving the request to the agent having
	// it: forwarding for a live delivery, waiting in the queue for a
	// queued one. Zero for replays, and when the two machines' clocks
	// disagree (ClockSkew).
	RelayUS   int64 `json:"relay_us"`
	ClockSkew bool  `json:"clock_skew,omitempty"`
	// AppUS is until the local app's response headers; BodyUS the rest of
	// its answer. Both zero when it never answered.
	AppUS  int64 `json:"app_us"`
	BodyUS int64 `json:"body_us"`
	// AgentUS is the agent's whole part: stream opened to last byte back.
	AgentUS int64 `json:"agent_us"`
	TotalUS int64 `json:"total_us"`
}

func timingOf(d *record.Delivery) *timing {
	if d.StartedAt.IsZero() || d.FinishedAt.IsZero() {
		return nil
	}
	// The agent's part is the list's duration to the microsecond; its
	// parts are cut from it, so that nothing is lost to rounding.
	t := timing{AgentUS: micros(d.FinishedAt.Sub(d.StartedAt))}
	if !d.AnsweredAt.IsZero() {
		t.AppUS = min(micros(d.AnsweredAt.Sub(d.StartedAt)), t.AgentUS)
		t.BodyUS = t.AgentUS - t.AppUS
	}
	if d.Kind != record.KindReplay && !d.ReceivedAt.IsZero() {
		// The relay's clock stamped ReceivedAt, this machine's StartedAt.
		if gap := d.StartedAt.Sub(d.ReceivedAt); gap >= 0 {
			t.RelayUS = micros(gap)
		} else {
			t.ClockSkew = true
		}
	}
	t.TotalUS = t.RelayUS + t.AgentUS
	return &t
}

func micros(d time.Duration) int64 { return max(d.Microseconds(), 0) }
