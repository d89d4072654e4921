package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The config file holds `flag = value` lines. Keys at the top apply to
// every command that has such a flag, except `relay dev`; keys under a
// `[command]` line apply to that command only and win over the top. relay
// dev reads only its own [dev] section: it is the one-machine sandbox, and
// a laptop's agent settings (name, inspect, data) must not change it.
type configFile struct {
	path     string
	top      []configLine
	sections map[string][]configLine
}

type configLine struct {
	key, value string
	n          int // line number, for errors
}

// devSection is the command that ignores the file's top-level keys.
const devSection = "dev"

// applyEnvAndConfig fills every flag the command line left unset, first
// from RELAY_<FLAG> in the environment, then from the config file.
func applyEnvAndConfig(cmd *cobra.Command) error {
	file, err := readConfig(cmd)
	if err != nil {
		return err
	}
	section := topCommand(cmd).Name()
	fromFile := map[string][]configLine{}
	if file != nil {
		if section != devSection {
			for _, l := range file.top {
				fromFile[l.key] = append(fromFile[l.key], l)
			}
		}
		overridden := map[string]bool{}
		for _, l := range file.sections[section] {
			if !overridden[l.key] {
				fromFile[l.key], overridden[l.key] = nil, true
			}
			fromFile[l.key] = append(fromFile[l.key], l)
		}
	}
	var ferr error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || ferr != nil || f.Name == "config" {
			return
		}
		env := "RELAY_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := cmd.Flags().Set(f.Name, v); err != nil {
				ferr = usagef(cmd, "%s: %v", env, err)
			}
			return
		}
		for _, l := range fromFile[f.Name] {
			if err := cmd.Flags().Set(f.Name, l.value); err != nil {
				ferr = usageError{fmt.Sprintf("config file %s:%d: %s: %v", file.path, l.n, l.key, err)}
				return
			}
		}
	})
	return ferr
}

// topCommand is cmd's ancestor just below the root (cmd itself when it
// is one): the name of its config section.
func topCommand(cmd *cobra.Command) *cobra.Command {
	for cmd.HasParent() && cmd.Parent().HasParent() {
		cmd = cmd.Parent()
	}
	return cmd
}

func configPath(cmd *cobra.Command) (path string, explicit bool) {
	path, _ = cmd.Flags().GetString("config")
	if path == "" {
		path = os.Getenv("RELAY_CONFIG")
	}
	if path != "" {
		return path, true
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", false
	}
	return filepath.Join(dir, "relay", "config"), false
}

// readConfig reads and checks the config file: nil when there is none.
// Every key is checked against every command's flags, whichever command
// runs, so a typo is caught at once rather than when it matters.
func readConfig(cmd *cobra.Command) (*configFile, error) {
	path, explicit := configPath(cmd)
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		if !explicit && os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	known := flagsBySection(cmd.Root())
	cf := &configFile{path: path, sections: map[string][]configLine{}}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		bad := func(format string, a ...any) error {
			return usageError{fmt.Sprintf("config file %s:%d: ", path, n) + fmt.Sprintf(format, a...)}
		}
		if strings.HasPrefix(line, "[") {
			name, ok := strings.CutSuffix(line[1:], "]")
			name = strings.TrimSpace(name)
			if !ok {
				return nil, bad("want [command], got %s", line)
			}
			if _, ok := known[name]; !ok || name == "" {
				return nil, bad("unknown section [%s]%s; sections are commands: %s", name, suggest(name, sectionNames(known)), strings.Join(sectionNames(known), ", "))
			}
			section = name
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, bad("want `flag = value`")
		}
		k = strings.TrimSpace(k)
		if !slices.Contains(known[section], k) {
			where := "no relay command has such a flag"
			if section != "" {
				where = "relay " + section + " has no such flag"
			}
			return nil, bad("unknown key %q (%s)%s", k, where, suggest(k, known[section]))
		}
		l := configLine{key: k, value: strings.Trim(strings.TrimSpace(v), `"`), n: n}
		if section == "" {
			cf.top = append(cf.top, l)
		} else {
			cf.sections[section] = append(cf.sections[section], l)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return cf, nil
}

// flagsBySection maps each top-level command's name to the flags it and
// its subcommands take, and "" to the flags of any command.
func flagsBySection(root *cobra.Command) map[string][]string {
	out := map[string][]string{}
	skip := map[string]bool{"config": true, "help": true, "version": true}
	for _, top := range root.Commands() {
		if top.Name() == "help" || top.Name() == "completion" {
			continue
		}
		forEachCommand(top, func(c *cobra.Command) {
			add := func(f *pflag.Flag) {
				if skip[f.Name] {
					return
				}
				if !slices.Contains(out[top.Name()], f.Name) {
					out[top.Name()] = append(out[top.Name()], f.Name)
				}
				if !slices.Contains(out[""], f.Name) {
					out[""] = append(out[""], f.Name)
				}
			}
			c.LocalFlags().VisitAll(add)
			c.InheritedFlags().VisitAll(add)
		})
	}
	return out
}

func sectionNames(known map[string][]string) []string {
	var out []string
	for k := range known {
		if k != "" {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// suggest is "; did you mean X?" for the nearest of candidates, or "".
func suggest(typed string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := levenshtein(typed, c); d < bestD {
			best, bestD = c, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf("; did you mean %s?", best)
}
