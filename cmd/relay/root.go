package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "relay",
		Short:         "Self-hosted webhook tunnel: a public HTTPS URL for your local app, with nothing lost",
		Version:       buildVersion().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnvAndConfig(cmd); err != nil {
				return err
			}
			_, err := logLevel(cmd)
			return err
		},
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.PersistentFlags().String("config", "", `config file of "flag = value" lines, with [command] sections (default $XDG_CONFIG_HOME/relay/config if present)`)
	root.PersistentFlags().String("log-level", "", "debug, info, warn or error (default info for relay server; warn elsewhere, where the console already says what happens)")
	root.AddCommand(newServerCmd(), newTokenCmd(), newConnectCmd(), newDevCmd(), newRequestsCmd(), newReplayCmd(), newTriggerCmd(), newBenchCmd(), newVersionCmd())
	registerCompletions(root)
	root.SetFlagErrorFunc(explainFlagError)
	forEachCommand(root, explainArgs)
	return root
}

// forEachCommand calls fn on c and every command below it.
func forEachCommand(c *cobra.Command, fn func(*cobra.Command)) {
	fn(c)
	for _, sub := range c.Commands() {
		forEachCommand(sub, fn)
	}
}

// usageError is a command line relay cannot run: exit status 2, as for
// every Unix tool, so scripts can tell it from a failure of the work.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }
func (e usageError) ExitCode() int { return 2 }

// usagef is a usageError that ends with how to call cmd.
func usagef(cmd *cobra.Command, format string, a ...any) error {
	return usageError{fmt.Sprintf(format, a...) + fmt.Sprintf(" (usage: %s; %s --help for more)", cmd.UseLine(), cmd.CommandPath())}
}

// explainArgs replaces cobra's "accepts 1 arg(s), received 0" with what is
// missing or extra, named as the command's usage line names it. A command
// that only groups others (relay token) gets an error for an unknown
// subcommand instead of its help and exit status 0.
func explainArgs(c *cobra.Command) {
	c.SuggestionsMinimumDistance = 2
	if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
		c.Args = cobra.ArbitraryArgs
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			hint := ""
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				hint = "; did you mean " + strings.Join(s, " or ") + "?"
			}
			return usageError{fmt.Sprintf("unknown command %q for %q%s (%s --help lists the commands)", args[0], cmd.CommandPath(), hint, cmd.CommandPath())}
		}
		return
	}
	check := c.Args
	if check == nil {
		return
	}
	c.Args = func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			names := positionals(cmd.Use)
			switch {
			case len(args) < len(names):
				return usagef(cmd, "missing %s", strings.Join(names[len(args):], " "))
			case len(args) > len(names) && len(names) == 0 && !strings.Contains(cmd.Use, "["):
				return usagef(cmd, "%s takes no arguments, got %q", cmd.CommandPath(), args)
			case len(args) > len(names) && len(names) == 0:
				return usagef(cmd, "unexpected %q", args)
			case len(args) > len(names):
				return usagef(cmd, "unexpected %q after %s", args[len(names):], strings.Join(names, " "))
			}
			return usagef(cmd, "%v", err)
		}
		return nil
	}
}

// positionals are the required arguments in a Use line: "connect
// PORT|HOST:PORT|URL" has one; optional ("[ID]") and flag words are not.
func positionals(use string) []string {
	var out []string
	for _, w := range strings.Fields(use)[1:] {
		if strings.HasPrefix(w, "[") || strings.HasPrefix(w, "-") {
			break
		}
		out = append(out, w)
	}
	return out
}

// explainFlagError adds a suggestion to an unknown flag and the usage line
// to every flag error.
func explainFlagError(cmd *cobra.Command, err error) error {
	var unknown *pflag.NotExistError
	if !errors.As(err, &unknown) || unknown.GetSpecifiedShortnames() != "" {
		return usagef(cmd, "%v", err)
	}
	name := unknown.GetSpecifiedName()
	var near []string
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if !f.Hidden && (levenshtein(name, f.Name) <= 2 || (len(name) >= 3 && strings.HasPrefix(f.Name, name))) {
			near = append(near, "--"+f.Name)
		}
	})
	if len(near) > 0 {
		return usagef(cmd, "unknown flag --%s; did you mean %s?", name, strings.Join(near, " or "))
	}
	return usagef(cmd, "unknown flag --%s", name)
}

// levenshtein is the edit distance between a and b, for suggestions.
func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

func newVersionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print relay's version, commit, build date and protocol version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := buildVersion()
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), v)
			}
			_, err := fmt.Fprintln(cmd.OutOrStdout(), v.String())
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (stable for scripts)")
	return cmd
}

// logLevels are --log-level's values.
var logLevels = []string{"debug", "info", "warn", "error"}

// logLevel is --log-level, or the command's default: a server's journal
// should show agents and deliveries; an agent's console already does.
func logLevel(cmd *cobra.Command) (slog.Level, error) {
	lv, _ := cmd.Flags().GetString("log-level")
	if lv == "" {
		lv = "warn"
		if cmd.Name() == "server" {
			lv = "info"
		}
	}
	var level slog.Level
	if !slices.Contains(logLevels, strings.ToLower(lv)) || level.UnmarshalText([]byte(lv)) != nil {
		return 0, usagef(cmd, "--log-level %q: want %s", lv, strings.Join(logLevels, ", "))
	}
	return level, nil
}

// logger builds the process logger from --log-level.
func logger(cmd *cobra.Command) *slog.Logger {
	level, err := logLevel(cmd)
	if err != nil {
		level = slog.LevelWarn
	}
	l := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
	routeStdLog(l)
	return l
}

// oneLine keeps an error to the single line the CLI promises.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

func stateDir(sub string) string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "relay", sub)
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "relay", sub)
	}
	return filepath.Join(home, ".local", "state", "relay", sub)
}
