package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/relaytunnel/relay/internal/relaytest"
)

// TestTheInspectorKnowsItsAgent runs `relay connect` as a user would and
// checks the inspector's wiring: the page's header names the tunnel's public
// URL and local app, and replays — from `relay replay` through the running
// agent and from the page, edited — reach the app and each print a line on
// the agent's console.
func TestTheInspectorKnowsItsAgent(t *testing.T) {
	srvData := t.TempDir()
	srv := devServer(t, srvData)
	code, out, errs := runCLI(t, "token", "create", "--name", "insp", "--data", srvData)
	if code != 0 {
		t.Fatalf("token create: %s", errs)
	}
	token := relaytest.FindToken(out)
	app := relaytest.EchoApp(t)

	data := t.TempDir()
	console := &relaytest.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	agentDone := make(chan int, 1)
	go func() {
		agentDone <- run(ctx, []string{"connect", app.URL, "--server", srv.Addr(), "--token", token, "--name", "insp",
			"--ca", srv.DevCAPath(), "--data", data, "--inspect", "127.0.0.1:0", "--secret", "stripe=whsec_insp"}, console, console)
	}()
	t.Cleanup(func() {
		cancel()
		<-agentDone
		if t.Failed() {
			t.Logf("agent console:\n%s", console.String())
		}
	})
	waitUntil(t, "the agent to connect", func() bool { return strings.Contains(console.String(), "connected") })
	addr, err := os.ReadFile(filepath.Join(data, inspectorFile))
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + strings.TrimSpace(string(addr))

	var info map[string]string
	getJSON(t, base+"/api/info", &info)
	if info["public_url"] != srv.PublicURL("insp") || info["target"] != app.URL || info["tunnel"] != "insp" {
		t.Errorf("/api/info says %v; want tunnel insp at %s -> %s", info, srv.PublicURL("insp"), app.URL)
	}
	if !strings.Contains(info["try_curl"], "--cacert "+srv.DevCAPath()) || !strings.Contains(info["try_trigger"], "relay trigger stripe") ||
		!strings.Contains(info["try_trigger"], "--secret SECRET") || strings.Contains(info["try_trigger"], "whsec_insp") {
		t.Errorf("what to try: %q and %q", info["try_curl"], info["try_trigger"])
	}

	hc := relaytest.ProviderClient(t, srv)
	resp, err := hc.Post(srv.PublicURL("insp")+"/hooks", "application/json", strings.NewReader(`{"id":"evt_1"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	waitUntil(t, "the delivery's line", func() bool { return strings.Contains(console.String(), "POST /hooks 201") })
	// The line is printed before the recording is written (off the delivery path).
	waitUntil(t, "the delivery to be recorded", func() bool {
		resp, err := http.Get(base + "/api/requests/1")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	// `relay replay` goes through the running agent, which says so.
	code, out, errs = runCLI(t, "replay", "1", "--data", data)
	if code != 0 || !strings.Contains(out, "replayed 1 as 2") {
		t.Fatalf("relay replay: %d %q %q", code, out, errs)
	}
	if !regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d replay of #1 as #2: POST /hooks 201 \S+$`).MatchString(console.String()) {
		t.Errorf("no console line for the CLI's replay:\n%s", console.String())
	}

	// The page's edited replay, through the agent.
	req, _ := http.NewRequest(http.MethodPost, base+"/api/requests/1/replay",
		strings.NewReader(`{"method":"PUT","uri":"/edited?from=page","headers":[["X-Edited","yes"]],"body":"changed"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Relay-Inspector", "1")
	req.Header.Set("Origin", base)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"id":3`) {
		t.Fatalf("edited replay: %d %s", resp.StatusCode, body)
	}
	if !regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d replay of #1 as #3: PUT /edited\?from=page 201 \S+ \(edited\)$`).MatchString(console.String()) {
		t.Errorf("no console line for the page's edited replay:\n%s", console.String())
	}
	var got relaytest.Echoed
	var d struct {
		ResponseBody struct{ Data string } `json:"response_body"`
	}
	getJSON(t, base+"/api/requests/3", &d)
	if err := json.Unmarshal([]byte(d.ResponseBody.Data), &got); err != nil || got.Method != "PUT" || got.URI != "/edited?from=page" || got.Body != "changed" {
		t.Errorf("the app answered the edited replay with %q", d.ResponseBody.Data)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}
