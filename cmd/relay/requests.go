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
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/client/record"
	"github.com/relaytunnel/relay/internal/dialer"
)

// inspectorFile, in the recordings directory, holds the address of the
// running agent's inspector, so `relay requests` and `relay replay` go
// through its API while it runs (a replay then shows up live on the page).
const inspectorFile = "inspector.addr"

// recordings is how the CLI reaches the recordings: the database, read
// while the agent writes (SQLite's WAL allows it), and the running agent's
// inspector API for replays, so a replay shows up live on its page.
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
				}
			}
		}
	}
	st, err := record.OpenExisting(ctx, dir)
	if errors.Is(err, record.ErrNoRecordings) {
		return nil, fmt.Errorf("no recordings in %s yet: run relay connect (or relay dev) first, or pass the --data they use", dir)
	}
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
	return r.store.List(ctx, f)
}

func (r *recordings) get(ctx context.Context, id int64) (*record.Delivery, error) {
	return r.store.Get(ctx, id)
}

// replay asks the running agent (or does it here) and returns the new
// recording's id.
func (r *recordings) replay(ctx context.Context, id int64, opt client.ReplayOptions) (int64, error) {
	if r.api == "" || opt.To != "" || len(opt.Secrets) > 0 {
		// The inspector replays to the agent's own target with its own
		// secrets; anything else is done here, on the same database.
		if opt.Client == nil {
			opt.Client = &http.Client{Transport: replayTransport(), Timeout: 2 * time.Minute,
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		}
		d, err := client.Replay(ctx, r.store, id, opt)
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

// replayTransport is how a replay reaches --to: like the agent reaches the
// local app (no proxy), with *.localhost on loopback.
func replayTransport() *http.Transport {
	tr := dialer.Transport()
	tr.Proxy = nil
	return tr
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
		dir                                string
		asJSON                             bool
		status, prov, tunnel, path, search string
		since                              string
		limit                              int
		remote                             remoteFlags
	)
	cmd := &cobra.Command{
		Use:   "requests [list | show ID]",
		Short: "List the deliveries your agent recorded, or show one in full",
		Example: `  relay requests
  relay requests --status 5xx --provider stripe --since 1h
  relay requests --status 502 -q cus_123
  relay requests show 42 --body
  relay requests --json | jq '.[0]'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 && args[0] != "list" {
				return usagef(cmd, "unknown subcommand %q: use relay requests or relay requests show ID", args[0])
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
			f := record.Filter{Limit: limit, Provider: prov, Tunnel: tunnel, PathPrefix: path, Search: search}
			if status != "" {
				var err error
				if f.StatusClass, f.Status, err = parseStatus(status); err != nil {
					return usagef(cmd, "%v", err)
				}
			}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return usagef(cmd, "%v", err)
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
			printList(out, list, time.Now())
			return nil
		},
	}
	f := cmd.PersistentFlags()
	f.StringVar(&dir, "data", stateDir(""), "the recordings directory (the --data of relay connect or relay dev)")
	f.BoolVar(&asJSON, "json", false, "print JSON (stable for scripts)")
	cmd.Flags().StringVar(&status, "status", "", "only this status: a class (2xx, 5xx ...) or a code (502)")
	cmd.Flags().StringVar(&prov, "provider", "", "only this provider (stripe, github, ...)")
	cmd.Flags().StringVar(&tunnel, "tunnel", "", "only this tunnel name, where several agents share the recordings")
	cmd.Flags().StringVar(&path, "path", "", "only paths starting with this")
	cmd.Flags().StringVar(&since, "since", "", "only since this time (RFC 3339) or duration ago (1h)")
	cmd.Flags().StringVarP(&search, "search", "q", "", "free text in the path, query, provider, event, event id, error or the bodies")
	cmd.Flags().IntVarP(&limit, "limit", "n", 50, "at most this many, newest first")
	cmd.Flags().BoolVar(&remote.on, "remote", false, "show the relay server's delivery log for your tunnel instead (what arrived while offline)")
	cmd.Flags().StringVar(&remote.server, "server", "", "relay server HOST[:PORT], for --remote (env RELAY_SERVER)")
	cmd.Flags().StringVar(&remote.token, "token", "", "agent token, for --remote (env RELAY_TOKEN)")
	cmd.Flags().StringVar(&remote.name, "name", "", "tunnel name, for --remote (default: the token's first)")
	cmd.Flags().StringVar(&remote.caFile, "ca", "", "extra CA to trust, for --remote (a dev server's dev-ca.pem)")
	cmd.AddCommand(newRequestsShowCmd(&dir, &asJSON))
	return cmd
}

// parseStatus reads --status: a class ("5xx") or an exact code ("502").
func parseStatus(s string) (class, code int, err error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if len(s) == 3 && s[0] >= '1' && s[0] <= '5' && s[1:] == "xx" {
		return int(s[0] - '0'), 0, nil
	}
	if n, err := strconv.Atoi(s); err == nil && n >= 100 && n <= 599 {
		return 0, n, nil
	}
	return 0, 0, fmt.Errorf("--status %q: want a class (1xx to 5xx) or a code from 100 to 599", s)
}

// listWidth is the width the list fits: an 80-column terminal wraps the
// odd long row, a 100-column one none.
const listWidth = 100

// printList prints the table, fitted to listWidth: the long columns
// (path, event, tunnel) give way, never the id, time or status. A tunnel
// column appears when the rows come from more than one tunnel (agents
// share the recordings directory by default), a method column when not
// every row is a POST, as webhooks nearly always are.
func printList(w io.Writer, list []record.Summary, now time.Time) {
	tunnels, methods := map[string]bool{}, map[string]bool{}
	for _, s := range list {
		tunnels[s.Tunnel] = true
		methods[s.Method] = true
	}
	withTunnel, withMethod := len(tunnels) > 1, len(methods) > 1 || !methods[http.MethodPost]
	cols := []column{{title: "ID"}, {title: "TIME"}}
	if withTunnel {
		cols = append(cols, column{title: "TUNNEL", flex: 10})
	}
	if withMethod {
		cols = append(cols, column{title: "METHOD"})
	}
	cols = append(cols, column{title: "PATH", flex: 12}, column{title: "STATUS"}, column{title: "TOOK"},
		column{title: "EVENT", flex: 12}, column{title: "SIGNATURE"}, column{title: "NOTE", flex: 18})
	rows := make([][]string, 0, len(list))
	for _, s := range list {
		row := []string{itoa64(s.ID), listTime(s.ReceivedAt, now)}
		if withTunnel {
			row = append(row, dash(s.Tunnel))
		}
		if withMethod {
			row = append(row, s.Method)
		}
		event := "-"
		if s.Provider != "" {
			event = strings.TrimSpace(s.Provider + " " + s.Event)
		}
		sig := "-"
		if s.Provider != "" && s.Signature != "" {
			sig = s.Signature
		}
		row = append(row, pathQuery(s.Path, s.Query), statusCode(s.Status), fmtMS(s.DurationMS), event, sig, note(s))
		for i := range row {
			row[i] = safeLine(row[i])
		}
		rows = append(rows, row)
	}
	writeTable(w, listWidth, cols, rows)
}

// listTime is the time of day for today's deliveries, with the date before.
func listTime(t, now time.Time) string {
	t, now = t.Local(), now.Local()
	if y, m, d := t.Date(); y == now.Year() && m == now.Month() && d == now.Day() {
		return t.Format("15:04:05")
	}
	return t.Format("Jan 02 15:04")
}

// column is one column of a fitted table; flex > 0 lets it give way down
// to flex characters, cutting values with "…".
type column struct {
	title string
	flex  int
}

// writeTable writes rows under cols, two spaces apart. When the table is
// wider than width, the flexible columns are capped at one common width
// (each keeping its flex floor), the largest cap that fits, so no single
// column is cut to nothing while another stays whole.
func writeTable(w io.Writer, width int, cols []column, rows [][]string) {
	natural := make([]int, len(cols))
	for i, c := range cols {
		natural[i] = utf8.RuneCountInString(c.title)
		for _, r := range rows {
			natural[i] = max(natural[i], utf8.RuneCountInString(r[i]))
		}
	}
	capped := func(limit int) ([]int, int) {
		ws, total := make([]int, len(cols)), 2*(len(cols)-1)
		for i, c := range cols {
			ws[i] = natural[i]
			if c.flex > 0 {
				ws[i] = min(natural[i], max(c.flex, limit))
			}
			total += ws[i]
		}
		return ws, total
	}
	widths, total := capped(slices.Max(natural))
	for limit := slices.Max(natural) - 1; total > width && limit > 0; limit-- {
		widths, total = capped(limit)
	}
	line := func(cells []string) {
		var b strings.Builder
		for i, c := range cells {
			c = truncRunes(c, widths[i])
			b.WriteString(c)
			if i < len(cells)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c)+2))
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	titles := make([]string, len(cols))
	for i, c := range cols {
		titles[i] = c.title
	}
	line(titles)
	for _, r := range rows {
		line(r)
	}
}

// trunc cuts s to n characters, the last being "…".
func trunc(s string, n int) string { return truncRunes(s, n) }

func truncRunes(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
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
				return usagef(cmd, "%v", err)
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
				return usagef(cmd, "%v", err)
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
			fmt.Fprintln(cmd.OutOrStdout(), safeLine(line))
			if d.Status >= 500 || d.Outcome == record.OutcomeFailed {
				return errSilent{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "data", stateDir(""), "the recordings directory (the --data of relay connect or relay dev)")
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
		return fmt.Errorf("delivery %d is not recorded (or was pruned); relay requests lists what is", id)
	}
	return err
}

func parseID(s string) (int64, error) {
	id, err := strconv.ParseInt(strings.TrimPrefix(s, "#"), 10, 64)
	if err != nil || id < 1 {
		return 0, fmt.Errorf("delivery id %q: want a number from relay requests", s)
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

// writeJSON writes v indented. encoding/json escapes the C0 controls but
// leaves the C1 controls (U+0080 to U+009F, which some terminals obey as
// escape sequences) and the bidirectional overrides raw: they are written
// as \u escapes too, which decode the same.
func writeJSON(w io.Writer, v any) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	out := b.Bytes()
	if bytes.ContainsFunc(out, jsonUnsafe) {
		var esc bytes.Buffer
		for _, r := range string(out) {
			if jsonUnsafe(r) {
				fmt.Fprintf(&esc, `\u%04x`, r)
			} else {
				esc.WriteRune(r)
			}
		}
		out = esc.Bytes()
	}
	_, err := w.Write(out)
	return err
}

func jsonUnsafe(r rune) bool { return r >= 0x80 && unsafeRune(r) }

func printDelivery(w io.Writer, d *record.Delivery, bodies bool) {
	var rows [][2]string
	row := func(k, v string) {
		if v != "" {
			rows = append(rows, [2]string{k, safeLine(v)})
		}
	}
	row("id", itoa64(d.ID))
	if d.ReplayOf != 0 {
		row("replay of", itoa64(d.ReplayOf))
	}
	if d.DuplicateOf != 0 {
		row("duplicate of", itoa64(d.DuplicateOf))
	}
	row("request", d.Method+" "+pathQuery(d.Path, d.Query))
	row("host", d.Host)
	row("tunnel", d.Tunnel)
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
	// The timings are consecutive spans, so they add up to the total.
	start := d.ReceivedAt
	if d.Kind == record.KindReplay || start.IsZero() {
		start = d.StartedAt
	} else if !d.StartedAt.IsZero() {
		row("relay -> agent", fmtDur(d.StartedAt.Sub(d.ReceivedAt)))
	}
	if !d.AnsweredAt.IsZero() && !d.StartedAt.IsZero() {
		row("app answered", "after "+fmtDur(d.AnsweredAt.Sub(d.StartedAt)))
		if !d.FinishedAt.IsZero() {
			row("response sent", "after "+fmtDur(d.FinishedAt.Sub(d.AnsweredAt)))
		}
	}
	if !d.FinishedAt.IsZero() && !start.IsZero() {
		what := "received by the relay to last byte back"
		if start.Equal(d.StartedAt) {
			what = "sent to last byte back"
		}
		row("total", fmtDur(d.FinishedAt.Sub(start))+" ("+what+")")
	}
	for i, a := range d.Attempts {
		res := statusText(a.Status)
		if a.Error != "" {
			res = a.Error
		}
		row(fmt.Sprintf("attempt %d", i+1), fmt.Sprintf("%s %s (%s)", a.At.Local().Format("15:04:05.000"), res, fmtMS(a.DurationMS)))
	}
	keyWidth := 0
	for _, r := range rows {
		keyWidth = max(keyWidth, len(r[0]))
	}
	for _, r := range rows {
		fmt.Fprintf(w, "%-*s  %s\n", keyWidth, r[0], r[1])
	}
	fmt.Fprintln(w, "\nrequest headers:")
	printHeaders(w, d.RequestHeader)
	if bodies {
		printBody(w, "request body", d.ID, d.RequestBody)
	} else if d.RequestBody.Size > 0 {
		fmt.Fprintf(w, "\nrequest body: %d bytes (--body to print)\n", d.RequestBody.Size)
	}
	if len(d.ResponseHeader) > 0 {
		fmt.Fprintln(w, "\nresponse headers:")
		printHeaders(w, d.ResponseHeader)
	}
	if bodies {
		printBody(w, "response body", d.ID, d.ResponseBody)
	} else if d.ResponseBody.Size > 0 {
		fmt.Fprintf(w, "\nresponse body: %d bytes (--body to print)\n", d.ResponseBody.Size)
	}
}

// fmtDur rounds to the microsecond, below which nothing is measured.
func fmtDur(d time.Duration) string { return d.Round(time.Microsecond).String() }

func printHeaders(w io.Writer, h http.Header) {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range h[k] {
			fmt.Fprintf(w, "  %s: %s\n", safeLine(k), safeLine(v))
		}
	}
}

// bodyPrintCap is how much of a body --body prints: a recorded megabyte
// on one line helps nobody; --json has all of it.
const bodyPrintCap = 64 << 10

func printBody(w io.Writer, what string, id int64, b record.Body) {
	if b.Size == 0 {
		return
	}
	note := ""
	if b.Truncated {
		note = fmt.Sprintf(", first %d recorded", len(b.Data))
	}
	fmt.Fprintf(w, "\n%s (%d bytes%s):\n", what, b.Size, note)
	data := b.Data
	if !utf8.Valid(data) {
		fmt.Fprintf(w, "  binary: relay requests show %d --json has it in base64\n", id)
		return
	}
	var pretty bytes.Buffer
	if len(data) <= bodyPrintCap && json.Indent(&pretty, data, "  ", "  ") == nil {
		fmt.Fprintf(w, "  %s\n", safeText(pretty.String()))
		return
	}
	if fields, ok := formFields(data); ok && len(data) <= bodyPrintCap {
		for _, f := range fields {
			fmt.Fprintf(w, "  %s = %s\n", safeLine(f[0]), safeLine(f[1]))
		}
		return
	}
	cut := len(data) > bodyPrintCap
	if cut {
		data = data[:bodyPrintCap]
		for !utf8.Valid(data) {
			data = data[:len(data)-1] // not inside a character
		}
	}
	fmt.Fprintln(w, safeText(string(data)))
	if cut {
		fmt.Fprintf(w, "… %d more bytes recorded: relay requests show %d --json has them\n", len(b.Data)-len(data), id)
	}
}

// formFields decodes an application/x-www-form-urlencoded body in the
// order it was sent (url.ParseQuery would sort it), or reports false.
func formFields(data []byte) ([][2]string, bool) {
	s := string(data)
	if !strings.Contains(s, "=") || strings.ContainsAny(s, "\n\r\t {}\"") {
		return nil, false
	}
	var out [][2]string
	for _, pair := range strings.Split(s, "&") {
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		dk, err1 := url.QueryUnescape(k)
		dv, err2 := url.QueryUnescape(v)
		if err1 != nil || err2 != nil {
			return nil, false
		}
		out = append(out, [2]string{dk, dv})
	}
	return out, len(out) > 0
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

func statusCode(code int) string {
	if code == 0 {
		return "-"
	}
	return strconv.Itoa(code)
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

func itoa64(n int64) string { return strconv.FormatInt(n, 10) }

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
