package inspect_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client/inspect"
	"github.com/relaytunnel/relay/client/record"
)

// fakeCurl stands in for curl on PATH: it writes its arguments (each
// ending in NUL) and its standard input where CURL_OUT says, and does
// nothing else, so that running a copied command shows exactly what curl
// would have been asked to do.
const fakeCurl = `#!/bin/sh
for a in "$@"; do printf '%s\0' "$a"; done > "$CURL_OUT/args"
cat > "$CURL_OUT/stdin"
`

// TestCopyAsCurlIsInert pastes "Copy as curl" commands for deliveries that
// strangers crafted into sh and bash, with a fake curl on PATH: nothing may
// run but curl, and curl must get every part exactly as recorded.
func TestCopyAsCurlIsInert(t *testing.T) {
	binary := []byte{0x00, 0xff, 'a', '\'', 0x00, '\n', '$', '(', 0xfe}
	tests := []struct {
		name     string
		d        record.Delivery
		wantArgs []string
		stdin    []byte
	}{
		{
			name:     "a method with backticks and $IFS (security probe finding 1)",
			d:        record.Delivery{Method: "X`touch$IFS'PWNED'`", Path: "/hook", Target: "http://localhost:3000"},
			wantArgs: []string{"-X", "X`touch$IFS'PWNED'`", "http://localhost:3000/hook"},
		},
		{
			// The path as the agent records it: escaped, so only sub-delims survive.
			name: "command substitution in the path, query, header names and values",
			d: record.Delivery{Method: "POST", Path: "/a$(touch$IFS'PWNED')b", Query: "x=1&y=$(touch PWNED);z=`touch PWNED`",
				Target: "http://localhost:3000/base",
				RequestHeader: http.Header{
					"X-Evil":  {`it's "$(touch PWNED)" and ` + "`touch PWNED`" + ` & | ; > PWNED`},
					"X-Empty": {""},
					"Host":    {"skipped.example"},
				}},
			wantArgs: []string{"-X", "POST", "http://localhost:3000/base/a$(touch$IFS'PWNED')b?x=1&y=$(touch PWNED);z=`touch PWNED`",
				"-H", "X-Empty;", "-H", `X-Evil: it's "$(touch PWNED)" and ` + "`touch PWNED`" + ` & | ; > PWNED`},
		},
		{
			name: "a body that quotes itself out and names a file for curl to read",
			d: record.Delivery{Method: "POST", Path: "/", Target: "http://localhost:3000",
				RequestBody: record.Body{Data: []byte("@/etc/passwd'; touch PWNED; echo '\n$(touch PWNED)\n")}},
			wantArgs: []string{"-X", "POST", "http://localhost:3000/", "--data-raw", "@/etc/passwd'; touch PWNED; echo '\n$(touch PWNED)\n"},
		},
		{
			name:     "a binary body with NUL bytes travels as base64 on standard input",
			d:        record.Delivery{Method: "PUT", Path: "/bin", Target: "http://localhost:3000", RequestBody: record.Body{Data: binary}},
			wantArgs: []string{"-X", "PUT", "http://localhost:3000/bin", "--data-binary", "@-"},
			stdin:    binary,
		},
		{
			name: "a replay's command goes to the URL it was sent to",
			d: record.Delivery{Kind: record.KindReplay, Method: "POST", Path: "/base/x", Query: "q=1",
				Target: "http://localhost:3000/base/x?q=1"},
			wantArgs: []string{"-X", "POST", "http://localhost:3000/base/x?q=1"},
		},
	}
	shells := []string{"sh", "bash"}
	if _, err := exec.LookPath("zsh"); err == nil {
		shells = append(shells, "zsh") // expands =word and more; when it is there, it must agree
	}
	fake := t.TempDir()
	if err := os.WriteFile(filepath.Join(fake, "curl"), []byte(fakeCurl), 0o755); err != nil {
		t.Fatal(err)
	}
	st := newStore(t)
	_, base := inspector(t, st, inspect.Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Now()
			tt.d.Outcome, tt.d.ReceivedAt, tt.d.StartedAt, tt.d.FinishedAt = record.OutcomeForwarded, now, now, now
			if tt.d.Kind == "" {
				tt.d.Kind = record.KindLive
			}
			tt.d.RequestBody.Size = int64(len(tt.d.RequestBody.Data))
			id, err := st.Add(context.Background(), &tt.d)
			if err != nil {
				t.Fatal(err)
			}
			code, body := do(t, "GET", fmt.Sprintf("%s/api/requests/%d", base, id), "", nil)
			var got struct{ Curl string }
			if err := json.Unmarshal([]byte(body), &got); code != 200 || err != nil || got.Curl == "" {
				t.Fatalf("GET the delivery: %d %s (%v)", code, trunc(body), err)
			}
			t.Logf("command: %s", got.Curl)
			for _, shell := range shells {
				if err := exec.Command(shell, "-n", "-c", got.Curl).Run(); err != nil {
					t.Errorf("%s -n: the command does not parse: %v", shell, err)
				}
				work, out := t.TempDir(), t.TempDir()
				cmd := exec.Command(shell, "-c", got.Curl)
				cmd.Dir = work
				cmd.Env = append(os.Environ(), "PATH="+fake+string(os.PathListSeparator)+os.Getenv("PATH"), "CURL_OUT="+out)
				if msg, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("%s: %v\n%s", shell, err, msg)
				}
				if left, _ := os.ReadDir(work); len(left) > 0 {
					t.Errorf("%s: running the command created %v: it ran more than curl", shell, names(left))
				}
				raw, err := os.ReadFile(filepath.Join(out, "args"))
				if err != nil {
					t.Fatalf("%s: curl never ran: %v", shell, err)
				}
				args := strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00")
				want := append([]string(nil), tt.wantArgs...)
				if !slices.Equal(args, want) {
					t.Errorf("%s: curl got\n%q\nwant\n%q", shell, args, want)
				}
				if stdin, _ := os.ReadFile(filepath.Join(out, "stdin")); !bytes.Equal(stdin, tt.stdin) {
					t.Errorf("%s: curl read %q from its input, want %q", shell, stdin, tt.stdin)
				}
			}
		})
	}
}

func names(es []os.DirEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}
