package main

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// A relay process's own memory is mostly transient: bodies in flight,
// TLS and stream buffers, one goroutine per delivery. With the runtime's
// defaults, what it held beyond the live heap at a peak (garbage not yet
// collected, freed pages not yet returned) put the server and the agent
// at 42-50 MB of RSS at 128 deliveries at once, about 19 MB of which is
// the binary's code mapped from its file.
//
// A soft memory limit trims that: near the limit the collector runs
// sooner and freed pages go back at once. A fixed limit would be wrong,
// though: a server's live heap grows with its tunnels and an agent's with
// large bodies in flight, and a limit under the live heap keeps the
// collector running without pause. So the limit follows the live heap:
// the larger of memoryFloor and liveFactor times the live heap. Twice the
// live heap is about what GOGC=100 asks for anyway (its goal, less the
// stacks and metadata the limit also counts), so the collector always
// has about a live heap's worth of room to allocate into, and a large
// body's buffers (a 1 MiB recording prefix, a yamux stream's receive
// buffer) do not buy three times their size in garbage, as a factor of
// 3 did: the tcp agent's peak during 100 MB POSTs was 38-45 MB with it,
// 38-39 MB with 2.
const (
	memoryFloor = 20 << 20
	liveFactor  = 2
	// limitEvery is how often the limit follows the live heap; for at
	// most that long after a sudden growth the collector works harder
	// (capped by the runtime at half the CPU).
	limitEvery = time.Second
)

// limitMemory keeps the soft memory limit at memoryLimit(live heap) until
// ctx ends, unless GOMEMLIMIT chose a limit.
func limitMemory(ctx context.Context) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	follow := func() {
		metrics.Read(live)
		debug.SetMemoryLimit(memoryLimit(live[0].Value.Uint64()))
	}
	follow()
	go func() {
		t := time.NewTicker(limitEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				follow()
			}
		}
	}()
}

// memoryLimit is the soft limit for a live heap of live bytes.
func memoryLimit(live uint64) int64 {
	return max(memoryFloor, liveFactor*int64(min(live, 1<<60)))
}
