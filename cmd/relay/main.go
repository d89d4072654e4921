// Command relay is the whole of relay in one binary: the server on a VPS,
// the agent on a laptop, and the local tools around them.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
)

func main() {
	// Nothing reads heap profiles, and sampling them keeps a 1.4 MB table
	// in every process from its first sampled allocation on.
	runtime.MemProfileRate = 0
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// RELAY_CPUPROFILE=FILE profiles the whole run (used with `relay bench`).
	if path := os.Getenv("RELAY_CPUPROFILE"); path != "" {
		if f, err := os.Create(fmt.Sprintf("%s.%d", path, os.Getpid())); err == nil {
			pprof.StartCPUProfile(f)
			defer f.Close()
		}
	}
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	pprof.StopCPUProfile()
	os.Exit(code)
}

// run executes one command line and returns the exit status; errors are
// printed as one line on stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := newRootCmd()
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	if err := cmd.ExecuteContext(ctx); err != nil {
		if msg := oneLine(err); msg != "" {
			fmt.Fprintln(stderr, "relay: "+msg)
		}
		var ec exitCoder
		if errors.As(err, &ec) {
			return ec.ExitCode()
		}
		return 1
	}
	return 0
}

type exitCoder interface{ ExitCode() int }

// routeStdLog sends what libraries print with the log package to l, at
// debug level: net/http's Transport writes "Unsolicited response received
// on idle HTTP channel" there when a local app answers twice, and it used
// to land raw on the agent's console; net/http servers without an
// ErrorLog write TLS handshake errors there.
func routeStdLog(l *slog.Logger) {
	log.SetFlags(0)
	log.SetOutput(slog.NewLogLogger(l.Handler(), slog.LevelDebug).Writer())
}
