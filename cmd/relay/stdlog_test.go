package main

import (
	"bytes"
	"log"
	"log/slog"
	"os"
	"strings"
	"testing"
)

// TestLibraryLogLinesGoThroughSlog: what net/http prints with the log
// package (the Transport's "Unsolicited response", when a local app
// answers twice) reaches the process's structured log, not raw stderr.
func TestLibraryLogLinesGoThroughSlog(t *testing.T) {
	var buf bytes.Buffer
	routeStdLog(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() { log.SetOutput(os.Stderr); log.SetFlags(log.LstdFlags) })
	log.Printf("Unsolicited response received on idle HTTP channel starting with %q; err=%v", "HTTP/1.0 200 OK", nil)
	got := buf.String()
	if !strings.Contains(got, "level=DEBUG") || !strings.Contains(got, `msg="Unsolicited response received on idle HTTP channel`) {
		t.Errorf("the log line reached slog as %q", got)
	}
}
