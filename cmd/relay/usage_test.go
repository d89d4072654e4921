package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/relaytunnel/relay/internal/relaytest"
)

// TestUsageErrorsSayWhatIsWrongAndHowToCallTheCommand covers cobra's
// stock messages ("accepts 1 arg(s), received 0", "unknown flag: --sever")
// replaced by what is missing, a suggestion and the usage line, with exit
// status 2.
func TestUsageErrorsSayWhatIsWrongAndHowToCallTheCommand(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"connect without a target names it", []string{"connect"},
			[]string{"missing PORT|HOST:PORT|URL", "usage: relay connect PORT|HOST:PORT|URL [flags]"}},
		{"dev without a target names it", []string{"dev"},
			[]string{"missing PORT|HOST:PORT|URL", "usage: relay dev PORT|HOST:PORT|URL [flags]"}},
		{"replay without an id names it", []string{"replay"},
			[]string{"missing ID", "usage: relay replay ID [flags]"}},
		{"requests show without an id names it", []string{"requests", "show"},
			[]string{"missing ID", "usage: relay requests show ID [flags]"}},
		{"token revoke without an id names it", []string{"token", "revoke"},
			[]string{"missing ID", "usage: relay token revoke ID [flags]"}},
		{"an extra argument is named", []string{"connect", "3000", "4000"},
			[]string{`unexpected ["4000"] after PORT|HOST:PORT|URL`}},
		{"a command without arguments says so", []string{"version", "now"},
			[]string{`relay version takes no arguments, got ["now"]`}},
		{"a command with optional arguments names the extra ones", []string{"requests", "list", "all"},
			[]string{`unexpected ["list" "all"] (usage: relay requests [list | show ID] [flags]`}},
		{"a misspelt command gets a suggestion", []string{"conect", "3000"},
			[]string{`unknown command "conect" for "relay"; did you mean connect?`}},
		{"a misspelt subcommand gets a suggestion, not help and exit 0", []string{"token", "crate"},
			[]string{`unknown command "crate" for "relay token"; did you mean create?`}},
		{"a misspelt flag gets a suggestion", []string{"connect", "3000", "--sever", "x"},
			[]string{"unknown flag --sever; did you mean --server?", "usage: relay connect"}},
		{"an unknown flag without a near one still shows the usage", []string{"trigger", "--zzzz"},
			[]string{"unknown flag --zzzz (usage: relay trigger"}},
		{"a bad log level is named", []string{"version", "--log-level", "loud"},
			[]string{`--log-level "loud": want debug, info, warn, error`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runCLI(t, tt.args...)
			if code != 2 {
				t.Errorf("exit status %d, want 2 (a usage error); stdout %q", code, out)
			}
			if strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "relay: ") {
				t.Errorf("stderr %q: want one line", errs)
			}
			for _, w := range tt.want {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr %q lacks %q", errs, w)
				}
			}
		})
	}
}

// TestFlagHelpHasNoBackticks: pflag reads a `quoted` word in a usage
// string as the value's placeholder, which garbles the help ("--data relay
// requests  directory ...").
func TestFlagHelpHasNoBackticks(t *testing.T) {
	forEachCommand(newRootCmd(), func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if strings.Contains(f.Usage, "`") {
				t.Errorf("%s --%s: usage %q has a backtick", c.CommandPath(), f.Name, f.Usage)
			}
		})
	})
	code, out, _ := runCLI(t, "connect", "--help")
	for _, garbled := range []string{"--data relay requests", "--token relay token create", "--config flag = value"} {
		if code != 0 || strings.Contains(out, garbled) {
			t.Errorf("relay connect --help shows %q", garbled)
		}
	}
}

func TestTheLogLevelIsInfoForTheServerAndWarnForTheAgent(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"server"}, "INFO"},
		{[]string{"connect", "3000"}, "WARN"},
		{[]string{"dev", "3000"}, "WARN"},
		{[]string{"server", "--log-level", "debug"}, "DEBUG"},
	} {
		root := newRootCmd()
		cmd, _, err := root.Find(tt.args)
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.ParseFlags(tt.args[1:]); err != nil {
			t.Fatal(err)
		}
		level, err := logLevel(cmd)
		if err != nil || level.String() != tt.want {
			t.Errorf("relay %v: level %v (%v), want %s", tt.args, level, err, tt.want)
		}
	}
}

func TestRelayDevRefusesANonLoopbackInspectorBeforeListening(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	data := t.TempDir()
	for _, addr := range []string{"0.0.0.0:4050", ":4050", "[::]:4050", "example.com:4050", "192.0.2.1:4050"} {
		code, out, errs := runCLI(t, "dev", "3000", "--listen", "127.0.0.1:0", "--data", data, "--inspect", addr)
		if code == 0 || !strings.Contains(errs, "loopback only") || strings.Contains(out, "relay dev:") {
			t.Errorf("--inspect %s: exit %d, stdout %q, stderr %q; want a refusal before anything starts", addr, code, out, errs)
		}
	}
	if _, err := os.Stat(filepath.Join(data, devServerSubdir)); !os.IsNotExist(err) {
		t.Errorf("the refused relay dev created its state anyway (%v)", err)
	}
	code, out, errs := runCLI(t, "connect", "3000", "--server", "127.0.0.1:1", "--token", "relay_x", "--data", t.TempDir(), "--inspect", "0.0.0.0:4050")
	if code == 0 || !strings.Contains(errs, "loopback only") || strings.Contains(out, "inspector:") {
		t.Errorf("relay connect --inspect 0.0.0.0:4050: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	for _, addr := range []string{"127.0.0.1:0", "localhost:0", "[::1]:0", ""} {
		if err := checkInspectAddr(addr); err != nil {
			t.Errorf("--inspect %q refused: %v", addr, err)
		}
	}
}

func TestTokenCreatePrintsTheConnectLineToRunNext(t *testing.T) {
	dir := t.TempDir()
	devServer(t, dir) // a server's database, as token commands expect
	code, out, errs := runCLI(t, "token", "create", "--name", "stripe-dev", "--data", dir)
	secret := relaytest.FindToken(out)
	if code != 0 || secret == "" {
		t.Fatalf("exit %d: %q %q", code, out, errs)
	}
	if want := "relay connect PORT --server DOMAIN --token " + secret + " --name stripe-dev"; !strings.Contains(out, want) {
		t.Errorf("token create printed %q; want %q", out, want)
	}
}
