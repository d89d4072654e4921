package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/client/record"
	"github.com/relaytunnel/relay/internal/provider"
	"github.com/relaytunnel/relay/internal/relaytest"
)

// TestAgentReplaysShowOnTheConsole: a replay (the inspector's button, or
// `relay replay` through the running agent's API) prints one line on the
// agent's console, as a delivery does (issue 12 item 9, first-hour F12).
func TestAgentReplaysShowOnTheConsole(t *testing.T) {
	const secret = "whsec_console"
	st := openRecords(t, record.Options{})
	app := relaytest.EchoApp(t)
	gone := httptest.NewServer(http.NotFoundHandler())
	goneURL := gone.URL
	gone.Close() // a local app that is not running

	now := time.Now()
	s, err := provider.NewSample(provider.Stripe, "payment_intent.succeeded", now)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Sign(secret, now); err != nil {
		t.Fatal(err)
	}
	add := func(target string) int64 {
		id, err := st.Add(context.Background(), &record.Delivery{Kind: record.KindLive, Outcome: record.OutcomeForwarded,
			Target: target, Method: s.Method, Path: "/webhooks/stripe", Query: "x=1", RequestHeader: s.Header,
			RequestBody: record.Body{Data: s.Body, Size: int64(len(s.Body))}, Status: 200,
			Provider: provider.Stripe, Event: "payment_intent.succeeded", Signature: "valid",
			ReceivedAt: now, StartedAt: now, FinishedAt: now})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	live := add(app.URL)
	dead := add(goneURL)

	console := &relaytest.Buffer{}
	// Replay needs no session: the agent is built, never connected.
	a, err := client.New(client.Config{Server: "relay.invalid", Token: "unused", Target: app.URL,
		Store: st, Console: console, Secrets: map[string]string{provider.Stripe: secret}})
	if err != nil {
		t.Fatal(err)
	}
	var recorded []int64
	a.OnRecorded = func(id int64) { recorded = append(recorded, id) }

	tests := []struct {
		name    string
		id      int64
		edit    *client.ReplayEdit
		wantErr error
		line    string // a regexp for the console's new line; "" for none
	}{
		{"a replay as recorded", live, nil, nil,
			`^\d\d:\d\d:\d\d replay of #1 as #3: POST /webhooks/stripe\?x=1 201 [0-9.]+[µm]?s \(stripe payment_intent.succeeded, signature valid\)$`},
		{"an edited replay says so, with the verdict on what was sent", live,
			&client.ReplayEdit{Method: "PUT", URI: "/edited?y=2", Header: s.Header, Body: []byte(`{"tampered":true}`)}, nil,
			`^\d\d:\d\d:\d\d replay of #1 as #4: PUT /edited\?y=2 201 [0-9.]+[µm]?s \(edited, stripe payment_intent.succeeded, signature invalid\)$`},
		{"a replay the local app does not answer", dead, nil, nil,
			`^\d\d:\d\d:\d\d replay of #2 as #5: POST /webhooks/stripe\?x=1 502 [0-9.]+[µm]?s \(stripe payment_intent.succeeded, signature valid\) - replay to http://127.0.0.1:\d+/webhooks/stripe\?x=1 failed: .*connection refused$`},
		{"a replay of a delivery that is gone", 99, nil, record.ErrNotFound,
			`^\d\d:\d\d:\d\d replay of #99 failed: .*not found$`},
		{"an edit the page got wrong is the page's to say", live, &client.ReplayEdit{Method: "BAD METHOD", URI: "/"}, client.ErrBadEdit, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := console.String()
			d, err := a.Replay(context.Background(), tt.id, tt.edit)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Replay: %v, want %v", err, tt.wantErr)
			}
			added := strings.TrimPrefix(console.String(), before)
			if tt.line == "" {
				if added != "" {
					t.Errorf("console printed %q, want nothing", added)
				}
				return
			}
			if !strings.HasSuffix(added, "\n") || strings.Count(added, "\n") != 1 || !regexp.MustCompile(tt.line).MatchString(strings.TrimSuffix(added, "\n")) {
				t.Errorf("console printed %q\nwant one line matching %s", added, tt.line)
			}
			if d != nil && (len(recorded) == 0 || recorded[len(recorded)-1] != d.ID) {
				t.Errorf("OnRecorded saw %v, not the new recording #%d", recorded, d.ID)
			}
		})
	}
}

// TestEditedReplayNeverLeavesTheLocalApp: an edit carries a path; whatever
// it says, the request goes to the recorded local app (or --to's origin).
func TestEditedReplayNeverLeavesTheLocalApp(t *testing.T) {
	st := openRecords(t, record.Options{})
	app := relaytest.EchoApp(t)
	now := time.Now()
	add := func(d record.Delivery) int64 {
		d.Outcome, d.Method, d.ReceivedAt, d.StartedAt, d.FinishedAt = record.OutcomeForwarded, "POST", now, now, now
		id, err := st.Add(context.Background(), &d)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	base := add(record.Delivery{Kind: record.KindLive, Target: app.URL + "/base", Path: "/hooks"})
	replayed := add(record.Delivery{Kind: record.KindReplay, Target: app.URL + "/base/hooks?a=1", Path: "/base/hooks", Query: "a=1"})
	tests := []struct {
		name    string
		id      int64
		uri, to string
		wantURI string
		wantErr error
	}{
		{"a path joins the target's own path, as forwarding does", base, "/other?x=1", "", "/base/other?x=1", nil},
		{"a replay's edit keeps its origin and takes the whole path", replayed, "/elsewhere", "", "/elsewhere", nil},
		{"a path that looks like a host is a path", base, "//evil.example/x", "", "/base//evil.example/x", nil},
		{"--to gives the origin", base, "/p", app.URL, "/p", nil},
		{"an absolute URL is refused", base, "http://evil.example/x", "", "", client.ErrBadEdit},
		{"a path without its slash is refused", base, "evil.example/x", "", "", client.ErrBadEdit},
		{"--to with a path of its own and an edit is refused", base, "/p", app.URL + "/q", "", client.ErrBadEdit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := client.Replay(context.Background(), st, tt.id, client.ReplayOptions{To: tt.to, Edit: &client.ReplayEdit{Method: "GET", URI: tt.uri}})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Replay: %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if !strings.HasPrefix(d.Target, app.URL+"/") || d.Status != http.StatusCreated {
				t.Fatalf("sent to %s (status %d), want the local app %s", d.Target, d.Status, app.URL)
			}
			var got relaytest.Echoed
			if err := json.Unmarshal(d.ResponseBody.Data, &got); err != nil {
				t.Fatal(err)
			}
			if got.URI != tt.wantURI {
				t.Errorf("the app got %q, want %q", got.URI, tt.wantURI)
			}
		})
	}
}
