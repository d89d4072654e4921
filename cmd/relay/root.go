package main

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "relay",
		Short:         "Self-hosted webhook tunnel: a public HTTPS URL for your local app, with nothing lost",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return applyEnvAndConfig(cmd)
		},
	}
	root.PersistentFlags().String("config", "", "config file of `flag = value` lines (default $XDG_CONFIG_HOME/relay/config if present)")
	root.PersistentFlags().String("log-level", "warn", "log level: debug, info, warn, error")
	root.AddCommand(newServerCmd(), newTokenCmd(), newConnectCmd(), newDevCmd(), newRequestsCmd(), newReplayCmd(), newTriggerCmd(), newBenchCmd(), newVersionCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print relay's version and protocol version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "relay %s (protocol %d)\n", version, protocolVersion())
		},
	}
}

// applyEnvAndConfig fills every flag the command line left unset, first
// from RELAY_<FLAG> in the environment, then from the config file.
func applyEnvAndConfig(cmd *cobra.Command) error {
	file, err := readConfig(cmd)
	if err != nil {
		return err
	}
	var ferr error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || ferr != nil || f.Name == "config" {
			return
		}
		env := "RELAY_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := os.LookupEnv(env)
		src := env
		if !ok {
			v, ok = file[f.Name]
			src = "config file key " + f.Name
		}
		if !ok {
			return
		}
		if err := cmd.Flags().Set(f.Name, v); err != nil {
			ferr = fmt.Errorf("%s: %w", src, err)
		}
	})
	return ferr
}

func readConfig(cmd *cobra.Command) (map[string]string, error) {
	path, _ := cmd.Flags().GetString("config")
	if path == "" {
		path = os.Getenv("RELAY_CONFIG")
	}
	explicit := path != ""
	if !explicit {
		dir, err := os.UserConfigDir()
		if err != nil {
			return nil, nil
		}
		path = filepath.Join(dir, "relay", "config")
	}
	f, err := os.Open(path)
	if err != nil {
		if !explicit && os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("config file %s:%d: want `flag = value`", path, n)
		}
		out[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"`)
	}
	return out, sc.Err()
}

// logger builds the process logger from --log-level: quiet by default.
func logger(cmd *cobra.Command) *slog.Logger {
	lv, _ := cmd.Flags().GetString("log-level")
	var level slog.Level
	if err := level.UnmarshalText([]byte(lv)); err != nil {
		level = slog.LevelWarn
	}
	return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
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
