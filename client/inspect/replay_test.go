package inspect_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client/inspect"
	"github.com/relaytunnel/relay/client/record"
)

func post(t *testing.T, url, contentType, body string, h http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestEditedReplayAPI sends the page's edits to a real local app and
// refuses the ones that are not a request for it: the API takes a path,
// never a URL, so an edit cannot point the agent anywhere else (no SSRF),
// and it keeps the guards every action has.
func TestEditedReplayAPI(t *testing.T) {
	st, err := record.Open(context.Background(), t.TempDir(), record.Options{BodyCap: 1024})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	app := newEchoApp(t)
	now := time.Now()
	orig, err := st.Add(context.Background(), &record.Delivery{Kind: record.KindLive, Outcome: record.OutcomeForwarded,
		Target: app.URL, Method: "POST", Path: "/hooks", RequestHeader: http.Header{"Content-Type": {"application/json"}},
		RequestBody: record.Body{Data: []byte(`{"a":1}`), Size: 7}, Status: 200, ReceivedAt: now, StartedAt: now, FinishedAt: now})
	if err != nil {
		t.Fatal(err)
	}
	var ins *inspect.Server
	ins, base := inspector(t, st, inspect.Options{Replay: replayer(st, &ins, nil)})
	page := http.Header{"X-Relay-Inspector": {"1"}, "Origin": {base}, "Sec-Fetch-Site": {"same-origin"}}
	appURL, _ := url.Parse(app.URL)

	edit := func(method, uri string, headers [][2]string, body string) string {
		b, _ := json.Marshal(map[string]any{"method": method, "uri": uri, "headers": headers, "body": body})
		return string(b)
	}
	tests := []struct {
		name     string
		ctype    string
		body     string
		header   http.Header
		want     int
		contains string
		// what the app must have received, or "" when nothing may reach it
		wantURI, wantMethod, wantBody string
	}{
		{name: "an edit reaches the local app", ctype: "application/json",
			body: edit("PATCH", "/edited?x=1&y=two", [][2]string{{"X-Edited", "yes"}, {"Content-Type", "text/plain"}}, "hello"),
			want: 200, contains: `"edited":true`, wantURI: "/edited?x=1&y=two", wantMethod: "PATCH", wantBody: "hello"},
		{name: "a path that looks like a host stays on the local app", ctype: "application/json",
			body: edit("GET", "//evil.example/steal", nil, ""), want: 200, wantURI: "//evil.example/steal", wantMethod: "GET"},
		{name: "a URL is refused", ctype: "application/json",
			body: edit("GET", "http://169.254.169.254/latest/meta-data/", nil, ""), want: 400, contains: "must start with /"},
		{name: "a URL field is unknown", ctype: "application/json",
			body: `{"method":"GET","uri":"/","url":"http://evil.example/"}`, want: 400, contains: `unknown field \"url\"`},
		{name: "a method that is not a token is refused", ctype: "application/json",
			body: edit("GET /other HTTP/1.1\r\nX:", "/", nil, ""), want: 400, contains: "not an HTTP method"},
		{name: "a header value with a newline is refused", ctype: "application/json",
			body: edit("POST", "/", [][2]string{{"X-A", "1\r\nX-Injected: 2"}}, ""), want: 400, contains: "control character"},
		{name: "a header without a name is refused", ctype: "application/json",
			body: edit("POST", "/", [][2]string{{"", "x"}}, ""), want: 400, contains: "no name"},
		{name: "a body over the recording cap is refused", ctype: "application/json",
			body: edit("POST", "/", nil, strings.Repeat("x", 1025)), want: 400, contains: "at most 1024"},
		{name: "a binary body comes as base64", ctype: "application/json",
			body: fmt.Sprintf(`{"method":"PUT","uri":"/bin","headers":[],"body":%q,"body_encoding":"base64"}`, base64.StdEncoding.EncodeToString([]byte{0, 1, 2, 255})),
			want: 200, wantURI: "/bin", wantMethod: "PUT", wantBody: "\x00\x01\x02\xff"},
		{name: "an edit that is not JSON is refused", ctype: "text/plain", body: "method=GET", want: 415, contains: "application/json"},
		{name: "an edit from another origin is refused", ctype: "application/json", body: edit("POST", "/", nil, ""),
			header: http.Header{"X-Relay-Inspector": {"1"}, "Origin": {"http://evil.example"}}, want: 403, contains: "origin"},
		{name: "an edit without the page's header is refused", ctype: "application/json", body: edit("POST", "/", nil, ""),
			header: http.Header{}, want: 403, contains: "X-Relay-Inspector"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(app.requests())
			h := tt.header
			if h == nil {
				h = page
			}
			code, body := post(t, fmt.Sprintf("%s/api/requests/%d/replay", base, orig), tt.ctype, tt.body, h)
			if code != tt.want || !strings.Contains(body, tt.contains) {
				t.Fatalf("%d %s; want %d containing %q", code, trunc(body), tt.want, tt.contains)
			}
			got := app.requests()[before:]
			if tt.wantURI == "" {
				if len(got) > 0 {
					t.Fatalf("a refused edit reached the app: %+v", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("the app got %d requests, want 1", len(got))
			}
			r := got[0]
			if r.URI != tt.wantURI || r.Method != tt.wantMethod || r.Body != tt.wantBody || r.Host != appURL.Host {
				t.Errorf("the app got %s %s (Host %s) body %q; want %s %s on %s body %q", r.Method, r.URI, r.Host, r.Body, tt.wantMethod, tt.wantURI, appURL.Host, tt.wantBody)
			}
			var res struct {
				ID       int64 `json:"id"`
				ReplayOf int64 `json:"replay_of"`
			}
			if err := json.Unmarshal([]byte(body), &res); err != nil || res.ReplayOf != orig {
				t.Errorf("answer %s: want the new recording, a replay of #%d", body, orig)
			}
			d, err := st.Get(context.Background(), res.ID)
			if err != nil {
				t.Fatal(err)
			}
			if d.ReplayOf != orig || d.Kind != record.KindReplay || d.Method != tt.wantMethod || string(d.RequestBody.Data) != tt.wantBody {
				t.Errorf("recorded as %s %s (%s of #%d) body %q", d.Method, d.Path, d.Kind, d.ReplayOf, d.RequestBody.Data)
			}
		})
	}
}

// TestTimingsAreMicrosecondsThatAddUp: the first-hour review found the
// inspector's timings rounded to whole milliseconds and not adding up.
func TestTimingsAreMicrosecondsThatAddUp(t *testing.T) {
	st := newStore(t)
	at := time.Date(2026, 11, 23, 8, 45, 58, 123456789, time.UTC)
	us := time.Microsecond
	tests := []struct {
		name string
		d    record.Delivery
		want map[string]any
	}{
		{"live: relay, app and body", record.Delivery{Kind: record.KindLive, ReceivedAt: at, StartedAt: at.Add(1890 * us),
			AnsweredAt: at.Add(2844 * us), FinishedAt: at.Add(3013 * us)},
			map[string]any{"relay_us": 1890.0, "app_us": 954.0, "body_us": 169.0, "agent_us": 1123.0, "total_us": 3013.0}},
		{"queued: the wait counts as the relay's part", record.Delivery{Kind: record.KindQueued, ReceivedAt: at, StartedAt: at.Add(90 * time.Second),
			AnsweredAt: at.Add(90*time.Second + 400*us), FinishedAt: at.Add(90*time.Second + 500*us)},
			map[string]any{"relay_us": 90e6, "app_us": 400.0, "body_us": 100.0, "agent_us": 500.0, "total_us": 90e6 + 500}},
		{"replay: no relay part", record.Delivery{Kind: record.KindReplay, ReceivedAt: at, StartedAt: at,
			AnsweredAt: at.Add(700 * us), FinishedAt: at.Add(750 * us)},
			map[string]any{"relay_us": 0.0, "app_us": 700.0, "body_us": 50.0, "agent_us": 750.0, "total_us": 750.0}},
		{"the app never answered", record.Delivery{Kind: record.KindLive, Outcome: record.OutcomeFailed, ReceivedAt: at, StartedAt: at.Add(100 * us),
			FinishedAt: at.Add(2100 * us)},
			map[string]any{"relay_us": 100.0, "app_us": 0.0, "body_us": 0.0, "agent_us": 2000.0, "total_us": 2100.0}},
		{"the relay's clock runs ahead", record.Delivery{Kind: record.KindLive, ReceivedAt: at.Add(5 * time.Millisecond), StartedAt: at,
			AnsweredAt: at.Add(300 * us), FinishedAt: at.Add(400 * us)},
			map[string]any{"relay_us": 0.0, "clock_skew": true, "agent_us": 400.0, "total_us": 400.0}},
	}
	_, base := inspector(t, st, inspect.Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.d.Method, tt.d.Path = "POST", "/t"
			if tt.d.Outcome == "" {
				tt.d.Outcome = record.OutcomeForwarded
			}
			id, err := st.Add(context.Background(), &tt.d)
			if err != nil {
				t.Fatal(err)
			}
			_, body := do(t, "GET", fmt.Sprintf("%s/api/requests/%d", base, id), "", nil)
			var got struct {
				Timing map[string]any `json:"timing"`
			}
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.want {
				if got.Timing[k] != v {
					t.Errorf("timing.%s = %v, want %v (all: %v)", k, got.Timing[k], v, got.Timing)
				}
			}
		})
	}
}

// TestInfoNamesTheTunnelAndWhatToTry: the header's tunnel and the empty
// state's commands, quoted for pasting, with no secret written out.
func TestInfoNamesTheTunnelAndWhatToTry(t *testing.T) {
	tests := []struct {
		name string
		in   inspect.Info
		want map[string]string // field: substring ("" means absent)
	}{
		{"before the agent connects there is nothing to try",
			inspect.Info{Tunnel: "dev", Target: "http://localhost:3000"},
			map[string]string{"tunnel": "dev", "target": "http://localhost:3000", "public_url": "", "try_curl": "", "try_trigger": ""}},
		{"a public relay needs no CA",
			inspect.Info{Tunnel: "shop", PublicURL: "https://shop.relay.example.com", Target: "http://localhost:8080"},
			map[string]string{
				"public_url":  "https://shop.relay.example.com",
				"try_curl":    `curl https://shop.relay.example.com/webhooks -H 'Content-Type: application/json' -d '{"id":"evt_1","type":"test.event"}'`,
				"try_trigger": "relay trigger stripe payment_intent.succeeded --to https://shop.relay.example.com",
				"try_secret":  ""}},
		{"a dev relay's CA is passed to curl and trigger, quoted",
			inspect.Info{PublicURL: "https://dev.localhost:8443", CAFile: "/home/a b/dev-ca.pem", Signing: []string{"github"}},
			map[string]string{
				"try_curl":    "curl --cacert '/home/a b/dev-ca.pem' https://dev.localhost:8443/webhooks",
				"try_trigger": "--to https://dev.localhost:8443 --ca '/home/a b/dev-ca.pem' --secret SECRET",
				"try_secret":  "github secret"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, base := inspector(t, newStore(t), inspect.Options{Info: func() inspect.Info { return tt.in }})
			code, body := do(t, "GET", base+"/api/info", "", nil)
			var got map[string]string
			if err := json.Unmarshal([]byte(body), &got); code != 200 || err != nil {
				t.Fatalf("GET /api/info: %d %s", code, body)
			}
			for k, want := range tt.want {
				if want == "" && got[k] != "" || !strings.Contains(got[k], want) {
					t.Errorf("%s = %q, want %q in it", k, got[k], want)
				}
			}
			if len(tt.in.Signing) > 0 && !strings.HasPrefix(got["try_trigger"], "relay trigger "+tt.in.Signing[0]+" ") {
				t.Errorf("try_trigger %q: the provider the agent has a secret for should be the one to try", got["try_trigger"])
			}
		})
	}
}
