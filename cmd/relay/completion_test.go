package main

import (
	"strings"
	"testing"
)

// complete asks cobra's hidden __complete command, as the shell scripts
// of relay completion bash|zsh|fish do, and returns the candidates and the
// directive line.
func complete(t *testing.T, args ...string) ([]string, string) {
	t.Helper()
	code, out, errs := runCLI(t, append([]string{"__complete"}, args...)...)
	if code != 0 {
		t.Fatalf("__complete %v: %d %s", args, code, errs)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	return lines[:len(lines)-1], lines[len(lines)-1]
}

func TestCompletionKnowsRelaysWords(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	d := delivery("dev", "/webhooks/stripe", 200, `{}`)
	d.Provider, d.Event = "stripe", "payment_intent.succeeded"
	dir := recordingsDir(t, delivery("dev", "/first", 502, `{}`), d)
	t.Setenv("RELAY_DATA", dir)

	tests := []struct {
		name      string
		args      []string
		want      []string
		noSpace   bool
		notInList string
	}{
		{"trigger's first argument is a provider", []string{"trigger", ""}, []string{"stripe", "github", "shopify", "standardwebhooks"}, false, ""},
		{"trigger's second is one of the provider's events", []string{"trigger", "shopify", ""}, []string{"orders/create", "events:products/update"}, false, "stripe"},
		{"transports", []string{"connect", "3000", "--transport", ""}, []string{"auto\t", "quic\t", "tcp\t"}, false, ""},
		{"relay dev's transports too", []string{"dev", "3000", "--transport", ""}, []string{"quic\t"}, false, ""},
		{"--secret offers PROVIDER= and no space", []string{"connect", "3000", "--secret", ""}, []string{"stripe=", "github="}, true, ""},
		{"status classes and codes", []string{"requests", "--status", ""}, []string{"5xx", "502"}, false, ""},
		{"providers for --provider", []string{"requests", "--provider", ""}, []string{"paypal"}, false, ""},
		{"log levels", []string{"server", "--log-level", ""}, []string{"debug", "info"}, false, ""},
		{"replay ids come from the recordings, newest first, described", []string{"replay", ""},
			[]string{"2\tPOST /webhooks/stripe 200 stripe payment_intent.succeeded", "1\tPOST /first 502"}, false, ""},
		{"so do requests show's", []string{"requests", "show", ""}, []string{"2\t", "1\t"}, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, directive := complete(t, tt.args...)
			joined := strings.Join(got, "\n")
			for _, w := range tt.want {
				if !strings.Contains(joined, w) {
					t.Errorf("candidates %q lack %q", got, w)
				}
			}
			if tt.notInList != "" && strings.Contains(joined, tt.notInList) {
				t.Errorf("candidates %q include %q", got, tt.notInList)
			}
			// :4 is NoFileComp; :6 adds NoSpace; :36 KeepOrder+NoFileComp.
			if directive == ":0" {
				t.Errorf("directive %s: the shell would fall back to file names", directive)
			}
			if tt.noSpace != strings.Contains(directive, ":6") {
				t.Errorf("directive %s, no space wanted: %v", directive, tt.noSpace)
			}
		})
	}
	if got, _ := complete(t, "replay", ""); got[0] != "2\tPOST /webhooks/stripe 200 stripe payment_intent.succeeded" {
		t.Errorf("newest delivery first: %q", got)
	}
}
