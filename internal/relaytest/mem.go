package relaytest

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// RSS is this process's resident set size in bytes (Linux; 0 elsewhere).
// Unlike the Go heap it counts memory outside Go's allocator, such as
// the SQLite driver's.
func RSS() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := bytes.CutPrefix(sc.Bytes(), []byte("VmRSS:")); ok {
			kb, _ := strconv.ParseUint(string(bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(rest), []byte("kB")))), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// WatchRSS samples RSS until the returned function is called, which
// reports the peak.
func WatchRSS(t testing.TB) func() uint64 { return watchPeak(t, 5*time.Millisecond, RSS) }

// WatchHeap samples the Go heap in use until the returned function is
// called, which reports the peak.
func WatchHeap(t testing.TB) func() uint64 {
	return watchPeak(t, 2*time.Millisecond, func() uint64 {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	})
}

// watchPeak samples f every interval, after a collection, until the
// returned function is called; it reports the largest sample.
func watchPeak(t testing.TB, every time.Duration, f func() uint64) func() uint64 {
	runtime.GC()
	stop := make(chan struct{})
	done := make(chan uint64)
	go func() {
		var peak uint64
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			peak = max(peak, f())
			select {
			case <-stop:
				done <- peak
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	var peak uint64
	report := func() uint64 {
		once.Do(func() { close(stop); peak = <-done })
		return peak
	}
	t.Cleanup(func() { report() })
	return report
}
