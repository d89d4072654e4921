package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// flagsAfterConfig runs relay's flag filling for args with the given
// config file and returns the command, as its RunE would see it.
func flagsAfterConfig(t *testing.T, file string, args ...string) (*cobra.Command, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	root := newRootCmd()
	cmd, rest, err := root.Find(args)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.ParseFlags(append(rest, "--config", path)); err != nil {
		t.Fatal(err)
	}
	return cmd, applyEnvAndConfig(cmd)
}

func TestConfigFileErrorsNameTheFileAndLine(t *testing.T) {
	tests := []struct {
		name, file string
		want       []string
	}{
		{"a misspelt key gets a suggestion", "# mine\nserver = localhost:8443\nsever = localhost:8443\n",
			[]string{"config:3: unknown key \"sever\"", "did you mean server?"}},
		{"a key no command has is refused even where it would not apply", "[server]\ndomain = relay.example.com\nfoo = 1\n",
			[]string{"config:3: unknown key \"foo\" (relay server has no such flag)"}},
		{"a key of another command in a section is refused", "[dev]\ntoken = relay_x\n",
			[]string{"config:2: unknown key \"token\" (relay dev has no such flag)"}},
		{"an unknown section gets a suggestion", "[connnect]\nname = x\n",
			[]string{"config:1: unknown section [connnect]; did you mean connect?"}},
		{"a line without = says what it wants", "server localhost\n",
			[]string{"config:1: want `flag = value`"}},
		{"a bad value names its line", "[connect]\ntimeout = soon\n",
			[]string{"config:2: timeout: invalid argument \"soon\""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("RELAY_SERVER", "")
			os.Unsetenv("RELAY_SERVER")
			_, err := flagsAfterConfig(t, tt.file, "connect", "3000")
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestOneConfigFileServesEveryCommandButDev: a laptop's agent settings at
// the top of the file must not change relay dev, which reads only [dev].
func TestOneConfigFileServesEveryCommandButDev(t *testing.T) {
	file := `name = stripe-dev
inspect = 127.0.0.1:4141
timeout = 5s
secret = stripe=whsec_top

[connect]
timeout = 7s
secret = github=gh_one
secret = gitlab=gl_two

[dev]
name = sandbox
`
	get := func(cmd *cobra.Command, name string) string {
		f := cmd.Flags().Lookup(name)
		if f == nil {
			t.Fatalf("%s has no --%s", cmd.CommandPath(), name)
		}
		return f.Value.String()
	}
	connect, err := flagsAfterConfig(t, file, "connect", "3000")
	if err != nil {
		t.Fatal(err)
	}
	for flag, want := range map[string]string{"name": "stripe-dev", "inspect": "127.0.0.1:4141", "timeout": "7s", "secret": "[github=gh_one,gitlab=gl_two]"} {
		if got := get(connect, flag); got != want {
			t.Errorf("relay connect --%s = %q from the file, want %q", flag, got, want)
		}
	}
	dev, err := flagsAfterConfig(t, file, "dev", "3000")
	if err != nil {
		t.Fatal(err)
	}
	for flag, want := range map[string]string{"name": "sandbox", "inspect": defaultInspect, "timeout": "30s", "secret": "[]"} {
		if got := get(dev, flag); got != want {
			t.Errorf("relay dev --%s = %q, want %q: top-level keys must not reach relay dev", flag, got, want)
		}
	}

	// The environment beats the file, and the command line beats both.
	t.Setenv("RELAY_NAME", "from-env")
	connect, _ = flagsAfterConfig(t, file, "connect", "3000")
	if got := get(connect, "name"); got != "from-env" {
		t.Errorf("with RELAY_NAME, --name = %q", got)
	}
	connect, _ = flagsAfterConfig(t, file, "connect", "3000", "--name", "from-flag")
	if got := get(connect, "name"); got != "from-flag" {
		t.Errorf("with --name, --name = %q", got)
	}
}

// TestTheExampleConfigIsValid keeps deploy/config.example loadable.
func TestTheExampleConfigIsValid(t *testing.T) {
	b, err := os.ReadFile("../../deploy/config.example")
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{{"server"}, {"token", "list"}} {
		if _, err := flagsAfterConfig(t, string(b), cmd...); err != nil {
			t.Errorf("relay %v with deploy/config.example: %v", cmd, err)
		}
	}
}
