package main

import (
	"context"
	"math"
	"runtime/debug"
	"testing"
)

func TestTheMemoryLimitFollowsTheLiveHeap(t *testing.T) {
	for _, c := range []struct {
		name string
		live uint64
		want int64
	}{
		{"a small heap gets the floor", 2 << 20, memoryFloor},
		{"a large heap gets twice itself, never a limit under it", 100 << 20, 200 << 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := memoryLimit(c.live); got != c.want {
				t.Errorf("memoryLimit(%d) = %d, want %d", c.live, got, c.want)
			}
		})
	}
}

func TestGOMEMLIMITWinsOverTheDefault(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	for _, c := range []struct {
		name, env string
		want      int64
	}{
		{"without GOMEMLIMIT the limit follows the heap", "", memoryFloor},
		{"with GOMEMLIMIT relay leaves the runtime's limit alone", "1GiB", math.MaxInt64},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("GOMEMLIMIT", c.env)
			debug.SetMemoryLimit(math.MaxInt64) // the runtime reads GOMEMLIMIT at start only
			limitMemory(ctx)
			if got := debug.SetMemoryLimit(-1); got < c.want {
				t.Errorf("memory limit %d, want at least %d", got, c.want)
			} else if c.env != "" && got != c.want {
				t.Errorf("memory limit %d, want %d (untouched)", got, c.want)
			}
		})
	}
}
