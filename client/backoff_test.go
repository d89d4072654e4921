package client

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/relaytunnel/relay/protocol"
)

func TestRetryPolicy(t *testing.T) {
	t.Run("the first retry is at once, then waits grow and stay within max", func(t *testing.T) {
		p := retryPolicy{max: 30 * time.Second, rand: func() float64 { return 0.5 }}
		start := time.Unix(1000, 0)
		now := start
		var waits []time.Duration
		for range 12 {
			d := p.next(now)
			waits = append(waits, d)
			now = now.Add(d + time.Second) // each attempt takes a second
		}
		if waits[0] != 0 {
			t.Fatalf("first wait %s, want 0", waits[0])
		}
		for i := 2; i < len(waits); i++ {
			if waits[i] < waits[i-1] {
				t.Fatalf("waits shrink: %v", waits)
			}
		}
		if last := waits[len(waits)-1]; last > 30*time.Second || last < 10*time.Second {
			t.Fatalf("after 12 failures the wait is %s: %v", last, waits)
		}
	})
	t.Run("jitter is small at first and widens with failures", func(t *testing.T) {
		spread := func(failures int) time.Duration {
			lo := retryPolicy{max: time.Hour, rand: func() float64 { return 0 }, failures: failures - 1, since: time.Unix(0, 0)}
			hi := retryPolicy{max: time.Hour, rand: func() float64 { return 1 }, failures: failures - 1, since: time.Unix(0, 0)}
			now := time.Unix(1e6, 0)
			a, b := lo.next(now), hi.next(now)
			return b - a
		}
		second, tenth := spread(2), spread(10)
		if second > 2*firstBackoff/10+time.Millisecond {
			t.Errorf("jitter on the second attempt spans %s, want at most ±10%% of %s", second, firstBackoff)
		}
		if tenth < time.Duration(float64(firstBackoff<<8)*0.9) {
			t.Errorf("jitter on the tenth attempt spans only %s", tenth)
		}
	})
	t.Run("a healthy session resets the backoff, a short one does not", func(t *testing.T) {
		p := retryPolicy{max: 30 * time.Second, rand: func() float64 { return 0.5 }}
		now := time.Unix(1000, 0)
		for range 6 {
			now = now.Add(p.next(now))
		}
		p.sessionEnded(time.Second, now)
		if d := p.next(now); d == 0 {
			t.Fatal("a session of one second reset the backoff: a flapping link would be retried in a tight loop")
		}
		p.sessionEnded(time.Minute, now)
		if d := p.next(now); d != 0 {
			t.Fatalf("after a healthy session the first retry waits %s", d)
		}
	})
	t.Run("a server back after an outage of T is retried within 3T/4 (1.5s for a 2s restart)", func(t *testing.T) {
		for _, outage := range []time.Duration{300 * time.Millisecond, 2 * time.Second, 2500 * time.Millisecond, 4 * time.Second, 30 * time.Second} {
			for _, r := range []float64{0, 0.5, 0.999} {
				synctest.Test(t, func(t *testing.T) {
					p := retryPolicy{max: 30 * time.Second, rand: func() float64 { return r }}
					lost := time.Now()
					p.sessionEnded(time.Hour, lost)
					for {
						// An attempt against a server that is down fails at once
						// (TCP: connection refused).
						if time.Since(lost) >= outage {
							break
						}
						time.Sleep(p.next(time.Now()))
					}
					if late := time.Since(lost) - outage; late > max(outage*3/4, 2*firstBackoff) {
						t.Errorf("outage %s, jitter %.1f: first attempt after the server is back came %s later", outage, r, late)
					}
				})
			}
		}
	})
}

// TestAgentControlPingInterval: over QUIC the agent pings every second even
// while its pings are answered, because the ping is the only packet it sends
// that is long enough for a restarted server to answer with a stateless
// reset; over TCP its keep-alive frame meets the new server's RST anyway.
func TestAgentControlPingInterval(t *testing.T) {
	tests := []struct {
		name      string
		transport string
		heartbeat time.Duration
		want      time.Duration
	}{
		{"a QUIC agent with the default heartbeat pings every second", protocol.TransportQUIC, 0, protocol.AgentKeepAlive},
		{"a QUIC agent with a shorter heartbeat keeps the shorter interval", protocol.TransportQUIC, 300 * time.Millisecond, 300 * time.Millisecond},
		{"a TCP agent pings every third of the idle timeout", protocol.TransportTCP, 0, protocol.DefaultIdleTimeout / 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := controlPingInterval(tt.transport, protocol.LivenessFor(tt.heartbeat)); got != tt.want {
				t.Errorf("controlPingInterval = %s, want %s", got, tt.want)
			}
		})
	}
}
