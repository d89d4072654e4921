package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestBenchMeasuresEveryPath runs a short `relay bench` (server and agent
// as child processes of a freshly built relay) and checks that every path
// carried load without errors and the large body went through.
func TestBenchMeasuresEveryPath(t *testing.T) {
	if testing.Short() {
		t.Skip("builds relay and runs processes")
	}
	bin := filepath.Join(t.TempDir(), "relay")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build relay: %v\n%s", err, out)
	}
	code, out, errs := runCLI(t, "bench", "--relay-bin", bin, "--duration", "200ms", "--concurrency", "1,4", "--body-mb", "4", "--json")
	if code != 0 {
		t.Fatalf("bench exit %d: %s", code, errs)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("bench --json printed %q: %v", out, err)
	}
	if len(rep.Cells) != 6 || len(rep.Big) != 3 {
		t.Fatalf("%d cells and %d uploads, want 6 (3 paths x 2 concurrencies) and 3", len(rep.Cells), len(rep.Big))
	}
	var relayCPU float64
	for _, c := range rep.Cells {
		if c.Requests == 0 || c.Errors != 0 || c.RPS <= 0 || c.P50us <= 0 {
			t.Errorf("%s c=%d: %+v", c.Path, c.Concurrency, c)
		}
		if c.Path == "direct" && c.ServerCPUms+c.AgentCPUms != 0 {
			t.Errorf("direct c=%d has relay CPU: %+v", c.Concurrency, c)
		}
		relayCPU += c.ServerCPUms + c.AgentCPUms
	}
	if relayCPU <= 0 {
		t.Error("no CPU per delivery reported for the relay's processes")
	}
	for _, b := range rep.Big {
		if b.StatusErr != "" || b.Bytes != 4<<20 {
			t.Errorf("%s upload: %+v", b.Path, b)
		}
		if b.Path != "direct" && (b.ServerMB <= 0 || b.AgentMB <= 0) {
			t.Errorf("%s upload: no peak RSS read for the server or agent: %+v", b.Path, b)
		}
	}
}
