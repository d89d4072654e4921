package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/client/record"
)

// inspectorFile, in the recordings directory, holds the address of the
// running agent's inspector, so `relay requests` and `relay replay` go
// through its API while it runs (a replay then shows up live on the page).
const inspectorFile = "inspector.addr"

// recordings is how the CLI reaches the recordings: the running agent's
// API, or the database itself when no agent runs.
type recordings struct {
	api   string // http://127.0.0.1:4040, or ""
	dir   string
	store *record.Store
}

func openRecordings(ctx context.Context, dir string) (*recordings, error) {
	r := &recordings{dir: dir}
	if addr, err := os.ReadFile(filepath.Join(dir, inspectorFile)); err == nil {
		base := "http://" + strings.TrimSpace(string(addr))
		if req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/requests?limit=1", nil); err == nil {
			if resp, err := inspectorClient.Do(req); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					r.api = base
					return r, nil
				}
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, record.DBFile)); err != nil {
		return nil, fmt.Errorf("no recordings in %s yet: run `relay connect` (or `relay dev`) first, or pass --data", dir)
	}
	st, err := record.Open(ctx, dir, record.Options{})
	if err != nil {
		return nil, err
	}
	r.store = st
	return r, nil
}

var inspectorClient = &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{Proxy: nil}}

func (r *recordings) Close() {
	if r.store != nil {
		r.store.Close()
	}
}

func (r *recordings) list(ctx context.Context, f record.Filter) ([]record.Summary, error) {
	if r.store != nil {
		return r.store.List(ctx, f)
	}
	q := url.Values{}
	q.Set("limit", strconv.Itoa(f.Limit))
	if f.StatusClass > 0 {
		q.Set("status", fmt.Sprintf("%dxx", f.StatusClass))
	}
	if f.Provider != "" {
		q.Set("provider", f.Provider)
	}
	if f.PathPrefix != "" {
		q.Set("path", f.PathPrefix)
	}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.Format(time.RFC3339Nano))
	}
	if f.Search != "" {
		q.Set("q", f.Search)
	}
	var out []record.Summary
	err := r.call(ctx, http.MethodGet, "/api/requests?"+q.Encode(), &out)
	return out, err
}

func (r *recordings) get(ctx context.Context, id int64) (*record.Delivery, error) {
	if r.store != nil {
		return r.store.Get(ctx, id)
	}
	var d record.Delivery
	if err := r.call(ctx, http.MethodGet, fmt.Sprintf("/api/requests/%d", id), &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// replay asks the running agent (or does it here) and returns the new
// recording's id.
func (r *recordings) replay(ctx context.Context, id int64, opt client.ReplayOptions) (int64, error) {
	if r.store != nil {
		d, err := client.Replay(ctx, r.store, id, opt)
		if err != nil {
			return 0, err
		}
		return d.ID, nil
	}
	if opt.To != "" || len(opt.Secrets) > 0 {
		// The inspector replays to the agent's own target with its own
		// secrets; anything else is done here, on the same database.
		st, err := record.Open(ctx, r.dir, record.Options{})
		if err != nil {
			return 0, err
		}
		defer st.Close()
		d, err := client.Replay(ctx, st, id, opt)
		if err != nil {
			return 0, err
		}
		return d.ID, nil
	}
	path := fmt.Sprintf("/api/requests/%d/replay", id)
	var out struct {
		ID int64 `json:"id"`
	}
	err := r.call(ctx, http.MethodPost, path, &out)
	return out.ID, err
}

func (r *recordings) call(ctx context.Context, method, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, method, r.api+path, nil)
	if err != nil {
		return err
	}
	if method != http.MethodGet {
		// What the inspector asks of anything that acts.
		req.Header.Set("X-Relay-Inspector", "1")
		req.Header.Set("Origin", r.api)
	}
	resp, err := inspectorClient.Do(req)
	if err != nil {
		return fmt.Errorf("agent's inspector at %s: %w", r.api, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("agent's inspector at %s: %w", r.api, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		json.Unmarshal(body, &e)
		if e.Error == "" {
			e.Error = resp.Status
		}
		if resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%s: %w", e.Error, record.ErrNotFound)
		}
		return errors.New(e.Error)
	}
	return json.Unmarshal(body, v)
}

func newRequestsCmd() *cobra.Command {
	var (
		dir                        string
		asJSON                     bool
		status, prov, path, search string
		since                      string
		limit                      int
		remote                     remoteFlags
	)
	cmd := &cobra.Command{
		Use:   "requests [list | show ID]",
		Short: "List the deliveries your agent recorded, or show one in full",
		Example: `  relay requests
  relay requests --status 5xx --provider stripe --since 1h
  relay requests show 42 --body
  relay requests --json | jq '.[0]'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 && args[0] != "list" {
				return fmt.Errorf("unknown subcommand %q: use `relay requests` or `relay requests show ID`", args[0])
			}
			if remote.on {
				lg, raw, err := remote.fetch(cmd.Context(), limit)
				if err != nil {
					return err
				}
				if asJSON {
					_, err := cmd.OutOrStdout().Write(raw)
					return err
				}
				return printRemote(cmd.OutOrStdout(), lg)
			}
			f := record.Filter{Limit: limit, Provider: prov, PathPrefix: path, Search: search}
			if status != "" {
				s := strings.ToLower(status)
				if len(s) != 3 || s[0] < '1' || s[0] > '5' || s[1:] != "xx" {
					return fmt.Errorf("--status %q: want 1xx, 2xx, 3xx, 4xx or 5xx", status)
				}
				f.StatusClass = int(s[0] - '0')
			}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				f.Since = t
			}
			recs, err := openRecordings(cmd.Context(), dir)
			if err != nil {
				return err
			}
			defer recs.Close()
			list, err := recs.list(cmd.Context(), f)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if list == nil {
					list = []record.Summary{}
				}
				return writeJSON(out, list)
			}
			if len(list) == 0 {
				fmt.Fprintln(out, "no deliveries recorded match")
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTIME\tMETHOD\tPATH\tSTATUS\tDURATION\tPROVIDER\tEVENT\tSIGNATURE\tNOTE")
			for _, s := range list {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.ReceivedAt.Local().Format("Jan 02 15:04:05"),
					s.Method, trunc(pathQuery(s.Path, s.Query), 48), statusText(s.Status), fmtMS(s.DurationMS),
					dash(s.Provider), dash(s.Event), dash(s.Signature), note(s))
			}
			return tw.Flush()
		},
	}
	f := cmd.PersistentFlags()
	f.StringVar(&dir, "data", stateDir(""), "the agent's recordings directory")
	f.BoolVar(&asJSON, "json", false, "print JSON (stable for scripts)")
	cmd.Flags().StringVar(&status, "status", "", "only this status class: 2xx, 4xx, 5xx ...")
	cmd.Flags().StringVar(&prov, "provider", "", "only this provider (stripe, github, ...)")
	cmd.Flags().StringVar(&path, "path", "", "only paths starting with this")
	cmd.Flags().StringVar(&since, "since", "", "only since this time (RFC 3339) or duration ago (1h)")
	cmd.Flags().StringVarP(&search, "search", "q", "", "free text in path, query, provider, event, event id or error")
	cmd.Flags().IntVarP(&limit, "limit", "n", 50, "at most this many, newest first")
	cmd.Flags().BoolVar(&remote.on, "remote", false, "show the relay server's delivery log for your tunnel instead (what arrived while offline)")
	cmd.Flags().StringVar(&remote.server, "server", "", "relay server HOST[:PORT], for --remote (env RELAY_SERVER)")
	cmd.Flags().StringVar(&remote.token, "token", "", "agent token, for --remote (env RELAY_TOKEN)")
	cmd.Flags().StringVar(&remote.name, "name", "", "tunnel name, for --remote (default: the token's first)")
	cmd.Flags().StringVar(&remote.caFile, "ca", "", "extra CA to trust, for --remote (a dev server's dev-ca.pem)")
	cmd.AddCommand(newRequestsShowCmd(&dir, &asJSON))
	return cmd
}

func newRequestsShowCmd(dir *string, asJSON *bool) *cobra.Command {
	var bodies bool
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show one recorded delivery: request, response, timings, signature",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			recs, err := openRecordings(cmd.Context(), *dir)
			if err != nil {
				return err
			}
			defer recs.Close()
			d, err := recs.get(cmd.Context(), id)
			if err != nil {
				return notFound(err, id)
			}
			if *asJSON {
				return writeJSON(cmd.OutOrStdout(), d)
			}
			printDelivery(cmd.OutOrStdout(), d, bodies)
			return nil
		},
	}
	cmd.Flags().BoolVar(&bodies, "body", false, "also print the request and response bodies")
	return cmd
}

func newReplayCmd() *cobra.Command {
	var (
		dir, to string
		secrets []string
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "replay ID",
		Short: "Send a recorded delivery to your local app again (recorded as a new delivery)",
		Example: `  relay replay 42
  relay replay 42 --to http://localhost:4000/webhooks/stripe`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			sec, err := parseSecrets(secrets)
			if err != nil {
				return err
			}
			recs, err := openRecordings(cmd.Context(), dir)
			if err != nil {
				return err
			}
			defer recs.Close()
			newID, err := recs.replay(cmd.Context(), id, client.ReplayOptions{To: to, Secrets: sec})
			if err != nil {
				return notFound(err, id)
			}
			d, err := recs.get(cmd.Context(), newID)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), d.Summary())
			}
			line := fmt.Sprintf("replayed %d as %d: %s %s -> %s in %s", id, newID, d.Method, d.Target, statusText(d.Status), fmtMS(d.Summary().DurationMS))
			if d.Error != "" {
				line += " - " + d.Error
			}
			fmt.Fprintln(cmd.OutOrStdout(), line)
			if d.Status >= 500 || d.Outcome == record.OutcomeFailed {
				return errSilent{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "data", stateDir(""), "the agent's recordings directory")
	cmd.Flags().StringVar(&to, "to", "", "send to this URL instead of the recorded local app")
	cmd.Flags().StringArrayVar(&secrets, "secret", nil, "PROVIDER=SECRET to restore a redacted header and check the signature (repeatable)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the new recording's summary as JSON")
	return cmd
}

// errSilent exits with code after the command printed its own result.
type errSilent struct{ code int }

func (e errSilent) Error() string { return "" }
func (e errSilent) ExitCode() int { return e.code }

func notFound(err error, id int64) error {
	if errors.Is(err, record.ErrNotFound) {
		return fmt.Errorf("delivery %d is not recorded (or was pruned); `relay requests` lists what is", id)
	}
	return err
}

func parseID(s string) (int64, error) {
	id, err := strconv.ParseInt(strings.TrimPrefix(s, "#"), 10, 64)
	if err != nil || id < 1 {
		return 0, fmt.Errorf("delivery id %q: want a number from `relay requests`", s)
	}
	return id, nil
}

func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("--since %q: want an RFC 3339 time or a duration such as 1h", s)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printDelivery(w io.Writer, d *record.Delivery, bodies bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s\t%s\n", k, v)
		}
	}
	row("id", strconv.FormatInt(d.ID, 10))
	if d.ReplayOf != 0 {
		row("replay of", strconv.FormatInt(d.ReplayOf, 10))
	}
	if d.DuplicateOf != 0 {
		row("duplicate of", strconv.FormatInt(d.DuplicateOf, 10))
	}
	row("request", d.Method+" "+pathQuery(d.Path, d.Query))
	row("host", d.Host)
	row("status", statusText(d.Status))
	row("outcome", d.Outcome)
	row("kind", d.Kind)
	row("transport", d.Transport)
	row("target", d.Target)
	row("relay id", d.RelayID)
	row("remote", d.RemoteAddr)
	if d.Provider != "" {
		row("provider", d.Provider)
		row("event", d.Event)
		row("event id", d.EventID)
		sig := d.Signature
		if d.SignatureReason != "" {
			sig += " (" + d.SignatureReason + ")"
		}
		row("signature", sig)
	}
	row("error", d.Error)
	row("received", d.ReceivedAt.Local().Format(time.RFC3339Nano))
	if !d.StartedAt.IsZero() && !d.ReceivedAt.IsZero() && d.Kind != record.KindReplay {
		row("relay -> agent", d.StartedAt.Sub(d.ReceivedAt).Round(time.Microsecond).String())
	}
	if !d.AnsweredAt.IsZero() {
		row("app answered", "+"+d.AnsweredAt.Sub(d.StartedAt).Round(time.Microsecond).String())
	}
	row("total (agent)", d.Duration().Round(time.Microsecond).String())
	for i, a := range d.Attempts {
		res := statusText(a.Status)
		if a.Error != "" {
			res = a.Error
		}
		row(fmt.Sprintf("attempt %d", i+1), fmt.Sprintf("%s %s (%s)", a.At.Local().Format("15:04:05.000"), res, fmtMS(a.DurationMS)))
	}
	tw.Flush()
	fmt.Fprintln(w, "\nrequest headers:")
	printHeaders(w, d.RequestHeader)
	if bodies {
		printBody(w, "request body", d.RequestBody)
	} else if d.RequestBody.Size > 0 {
		fmt.Fprintf(w, "\nrequest body: %d bytes (--body to print)\n", d.RequestBody.Size)
	}
	if len(d.ResponseHeader) > 0 {
		fmt.Fprintln(w, "\nresponse headers:")
		printHeaders(w, d.ResponseHeader)
	}
	if bodies {
		printBody(w, "response body", d.ResponseBody)
	} else if d.ResponseBody.Size > 0 {
		fmt.Fprintf(w, "\nresponse body: %d bytes (--body to print)\n", d.ResponseBody.Size)
	}
}

func printHeaders(w io.Writer, h http.Header) {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range h[k] {
			fmt.Fprintf(w, "  %s: %s\n", k, v)
		}
	}
}

func printBody(w io.Writer, what string, b record.Body) {
	if b.Size == 0 {
		return
	}
	note := ""
	if b.Truncated {
		note = fmt.Sprintf(", first %d recorded", len(b.Data))
	}
	fmt.Fprintf(w, "\n%s (%d bytes%s):\n", what, b.Size, note)
	var pretty bytes.Buffer
	if json.Indent(&pretty, b.Data, "  ", "  ") == nil {
		fmt.Fprintf(w, "  %s\n", pretty.String())
		return
	}
	if form, err := url.ParseQuery(string(b.Data)); err == nil && strings.Contains(string(b.Data), "=") && !strings.ContainsAny(string(b.Data), "\n ") {
		keys := make([]string, 0, len(form))
		for k := range form {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			for _, v := range form[k] {
				fmt.Fprintf(w, "  %s = %s\n", k, v)
			}
		}
		return
	}
	w.Write(b.Data)
	fmt.Fprintln(w)
}

func pathQuery(p, q string) string {
	if q == "" {
		return p
	}
	return p + "?" + q
}

func statusText(code int) string {
	if code == 0 {
		return "-"
	}
	return fmt.Sprintf("%d %s", code, http.StatusText(code))
}

func fmtMS(ms float64) string {
	if ms < 10 {
		return strconv.FormatFloat(ms, 'f', 1, 64) + "ms"
	}
	return strconv.FormatFloat(ms, 'f', 0, 64) + "ms"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func trunc(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func note(s record.Summary) string {
	var parts []string
	if s.Kind != record.KindLive {
		parts = append(parts, s.Kind)
	}
	if s.ReplayOf != 0 {
		parts = append(parts, fmt.Sprintf("of %d", s.ReplayOf))
	}
	if s.Outcome != record.OutcomeForwarded {
		parts = append(parts, s.Outcome)
	}
	if s.Attempts > 1 {
		parts = append(parts, fmt.Sprintf("%d attempts", s.Attempts))
	}
	return strings.Join(parts, " ")
}

// parseSecrets reads repeated PROVIDER=SECRET flags.
func parseSecrets(flags []string) (map[string]string, error) {
	if len(flags) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, f := range flags {
		p, s, ok := strings.Cut(f, "=")
		if !ok || p == "" || s == "" {
			return nil, fmt.Errorf("--secret %q: want PROVIDER=SECRET, e.g. stripe=whsec_...", redactFlag(f))
		}
		out[strings.ToLower(strings.TrimSpace(p))] = strings.TrimSpace(s)
	}
	return out, nil
}

// redactFlag keeps a malformed --secret out of the error line.
func redactFlag(f string) string {
	if len(f) <= 8 {
		return strings.Repeat("*", len(f))
	}
	return f[:4] + "…"
}
