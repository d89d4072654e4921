package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/relaytunnel/relay/client/record"
	"github.com/relaytunnel/relay/internal/provider"
)

// registerCompletions teaches cobra's completion scripts (relay completion
// bash|zsh|fish|powershell) relay's own words: providers and their sample
// events, transports and the other enumerated flags, and delivery ids
// from the recordings, each with what it is.
func registerCompletions(root *cobra.Command) {
	fixed := func(words ...string) cobra.CompletionFunc {
		return cobra.FixedCompletions(words, cobra.ShellCompDirectiveNoFileComp)
	}
	flags := map[string]cobra.CompletionFunc{
		"transport":   fixed("auto\tQUIC, falling back to TCP", "quic\tQUIC over UDP only", "tcp\tTLS+yamux over TCP only"),
		"host-header": fixed("rewrite\tthe local target's Host", "preserve\tthe public Host"),
		"verify":      fixed("record\tnote each signature verdict", "reject\tanswer 401 to invalid signatures"),
		"log-level":   fixed(logLevels...),
		"provider":    completeProviders(""),
		"secret":      completeProviders("="),
		"status":      fixed("2xx", "3xx", "4xx", "5xx", "200", "202", "400", "401", "404", "413", "500", "502", "503", "504"),
		"inspect":     fixed(defaultInspect, "127.0.0.1:0\tany free port"),
	}
	forEachCommand(root, func(c *cobra.Command) {
		for name, fn := range flags {
			if c.LocalFlags().Lookup(name) != nil {
				c.RegisterFlagCompletionFunc(name, fn)
			}
		}
		switch c.CommandPath() {
		case "relay trigger":
			c.ValidArgsFunction = completeTrigger
		case "relay replay", "relay requests show":
			c.ValidArgsFunction = completeDeliveryIDs
		}
	})
	// The persistent --log-level is registered once, on the root.
	root.RegisterFlagCompletionFunc("log-level", flags["log-level"])
}

// completeProviders offers provider names, with suffix appended (the
// "=" of --secret PROVIDER=SECRET, where the shell must not add a space).
func completeProviders(suffix string) cobra.CompletionFunc {
	return func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var out []cobra.Completion
		for _, p := range provider.Names() {
			out = append(out, p+suffix)
		}
		d := cobra.ShellCompDirectiveNoFileComp
		if suffix != "" {
			d |= cobra.ShellCompDirectiveNoSpace
		}
		return out, d
	}
}

func completeTrigger(_ *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
	switch len(args) {
	case 0:
		return completeProviders("")(nil, nil, "")
	case 1:
		return provider.Events(strings.ToLower(args[0])), cobra.ShellCompDirectiveNoFileComp
	}
	return nil, cobra.ShellCompDirectiveNoFileComp
}

// completeDeliveryIDs offers the newest recorded deliveries' ids, each
// described as the list shows it.
func completeDeliveryIDs(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	// Completion runs no PersistentPreRun: apply RELAY_DATA and the file.
	if err := applyEnvAndConfig(cmd); err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	dir, _ := cmd.Flags().GetString("data")
	recs, err := openRecordings(cmd.Context(), dir)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer recs.Close()
	list, err := recs.list(cmd.Context(), record.Filter{Limit: 50})
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	out := make([]cobra.Completion, 0, len(list))
	for _, s := range list {
		desc := fmt.Sprintf("%s %s %s", s.Method, pathQuery(s.Path, s.Query), statusCode(s.Status))
		if s.Provider != "" {
			desc += " " + s.Provider + " " + s.Event
		}
		out = append(out, cobra.CompletionWithDesc(itoa64(s.ID), safeText(desc)))
	}
	return out, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveKeepOrder
}
