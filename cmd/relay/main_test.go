package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/relaytunnel/relay/internal/pgtest"
)

var built struct {
	once sync.Once
	dir  string
	bin  string
	err  error
	out  []byte
}

// TestMain removes the built binary and stops the PostgreSQL server that
// --database tests start.
func TestMain(m *testing.M) {
	code := pgtest.Run(m)
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// documentedBuild is README's build command, run from the module root.
var documentedBuild = []string{"go", "build", "-o", "relay", "./cmd/relay"}

// builtRelay is the relay binary built once per test run exactly as README
// says (CGO_ENABLED=0 go build -o relay ./cmd/relay), for the tests that
// run the real binary: static linking, version stamps, socket activation.
func builtRelay(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds relay")
	}
	built.once.Do(func() {
		built.dir, built.err = os.MkdirTemp("", "relay-bin-")
		if built.err != nil {
			return
		}
		args := append([]string{}, documentedBuild[1:]...)
		args[2] = filepath.Join(built.dir, "relay")
		cmd := exec.Command(documentedBuild[0], args...)
		cmd.Dir = "../.."
		// -buildvcs=auto: a clone's build carries its commit (this
		// machine's GOFLAGS may say otherwise).
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS="+strings.TrimSpace(os.Getenv("GOFLAGS")+" -buildvcs=auto"))
		built.out, built.err = cmd.CombinedOutput()
		built.bin = args[2]
	})
	if built.err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", built.err, built.out)
	}
	return built.bin
}
