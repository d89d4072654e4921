package relaytest

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"testing"
)

// StressEnv names the environment variable that makes Stress load the
// machine: the number of busy processes to run beside the test ("1" or
// "on" means one per CPU).
const StressEnv = "RELAY_STRESS"

// Stress keeps every CPU busy with helper processes for the rest of the
// test when RELAY_STRESS is set, so a test that must hold on a busy
// machine (other builds, a slower laptop) is run the way it will be
// failed. Without the variable it does nothing. The helpers are shell
// loops, killed when the test ends.
func Stress(t testing.TB) {
	t.Helper()
	n := stressProcs()
	if n == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range n {
		cmd := exec.CommandContext(ctx, "sh", "-c", "while :; do :; done")
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatalf("start a busy helper: %v", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd.Wait()
		}()
	}
	t.Logf("%d busy helper processes keep the CPUs loaded (%s)", n, StressEnv)
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

func stressProcs() int {
	v := os.Getenv(StressEnv)
	switch v {
	case "", "0", "off":
		return 0
	case "1", "on":
		return runtime.NumCPU()
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return runtime.NumCPU()
	}
	return n
}
