package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/relaytunnel/relay/internal/pgtest"
	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/server"
)

func TestTokenCommandsNeverCreateADatabaseByAccident(t *testing.T) {
	// An existing directory without relay's database is the wrong one: a
	// mistyped --data that lands on some directory, or the server's
	// directory before anything was put there. Listing or revoking needs a
	// database anywhere.
	existing := t.TempDir()
	missing := filepath.Join(t.TempDir(), "wrongdir")
	for _, tc := range []struct {
		dir  string
		args []string
	}{
		{existing, []string{"token", "create", "--name", "typo-dev", "--data", existing}},
		{existing, []string{"token", "list", "--data", existing}},
		{missing, []string{"token", "list", "--data", missing}},
		{missing, []string{"token", "revoke", "tok_abc", "--data", missing}},
	} {
		t.Run(strings.Join(tc.args[:2], " ")+" in "+filepath.Base(tc.dir), func(t *testing.T) {
			code, out, errs := runCLI(t, tc.args...)
			if code == 0 || strings.Contains(out, "relay_") || strings.Count(errs, "\n") != 1 ||
				!strings.Contains(errs, tc.dir) || !strings.Contains(errs, "--init") {
				t.Fatalf("%v: exit %d, stdout %q, stderr %q; want one line naming %s and --init", tc.args, code, out, errs, tc.dir)
			}
			if _, err := os.Stat(filepath.Join(tc.dir, "relay.db")); !os.IsNotExist(err) {
				t.Fatalf("a database was created in %s: %v", tc.dir, err)
			}
			if tc.dir == missing {
				if _, err := os.Stat(missing); !os.IsNotExist(err) {
					t.Fatalf("%s was created: %v", missing, err)
				}
			}
		})
	}
	t.Run("create in a directory that does not exist yet makes it, says so, and the server finds the token", func(t *testing.T) {
		fresh := filepath.Join(t.TempDir(), "new-server")
		code, out, errs := runCLI(t, "token", "create", "--name", "scripted", "--data", fresh)
		if code != 0 {
			t.Fatalf("create in a new directory: %d %s", code, errs)
		}
		if !strings.Contains(errs, fresh+" did not exist: created a new relay database there") {
			t.Fatalf("stderr does not say where the database was made: %q", errs)
		}
		secret := relaytest.FindToken(out)
		srv := devServer(t, fresh)
		if _, err := srv.Store().Authenticate(context.Background(), secret); err != nil {
			t.Fatalf("the server does not know the token: %v", err)
		}
	})
	t.Run("--init creates it in an existing directory, and then the server finds the token", func(t *testing.T) {
		dir := t.TempDir()
		code, out, errs := runCLI(t, "token", "create", "--init", "--name", "first", "--data", dir)
		if code != 0 {
			t.Fatalf("create --init: %s", errs)
		}
		secret := relaytest.FindToken(out)
		srv := devServer(t, dir)
		if _, err := srv.Store().Authenticate(context.Background(), secret); err != nil {
			t.Fatalf("the server does not know the token: %v", err)
		}
		if code, out, _ := runCLI(t, "token", "list", "--data", dir); code != 0 || !strings.Contains(out, "first") {
			t.Fatalf("list: %d %q", code, out)
		}
	})
}

func TestTokenCommandsUseADatabaseURLWithoutData(t *testing.T) {
	url := pgtest.URL(t)
	nodata := filepath.Join(t.TempDir(), "unused")
	code, _, errs := runCLI(t, "token", "list", "--database", url, "--data", nodata)
	if code == 0 || !strings.Contains(errs, "no relay database") || !strings.Contains(errs, "--init") || strings.Count(errs, "\n") != 1 {
		t.Fatalf("list on a database without relay's tables: %d %q", code, errs)
	}
	code, out, errs := runCLI(t, "token", "create", "--init", "--name", "pg-dev", "--database", url, "--data", nodata)
	if code != 0 {
		t.Fatalf("create: %s", errs)
	}
	id := regexp.MustCompile(`tok_[a-z2-7]+`).FindString(out)
	t.Setenv("RELAY_DATABASE", url)
	if code, out, errs := runCLI(t, "token", "list", "--data", nodata); code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "pg-dev") {
		t.Fatalf("list with RELAY_DATABASE: %d %q %q", code, out, errs)
	}
	if code, _, errs := runCLI(t, "token", "revoke", id, "--data", nodata); code != 0 {
		t.Fatalf("revoke: %s", errs)
	}
	if code, _, errs := runCLI(t, "token", "revoke", id, "--data", nodata); code == 0 || !strings.Contains(errs, "already revoked") {
		t.Fatalf("revoke again: %d %q", code, errs)
	}
	if _, err := os.Stat(nodata); !os.IsNotExist(err) {
		t.Fatalf("--data was used beside --database: %v", err)
	}
}

func TestRevokingATokenStopsItsRunningAgentWithOneLine(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			dir := t.TempDir()
			srv := devServer(t, dir)
			tok, secret, err := srv.Store().CreateToken(context.Background(), "leaked")
			if err != nil {
				t.Fatal(err)
			}
			app := relaytest.EchoApp(t)
			console, errs := &relaytest.Buffer{}, &relaytest.Buffer{}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			done := make(chan int, 1)
			go func() {
				done <- run(ctx, []string{"connect", app.URL, "--server", srv.Addr(), "--token", secret, "--transport", tr,
					"--ca", srv.DevCAPath(), "--data", t.TempDir(), "--inspect", ""}, console, errs)
			}()
			waitUntil(t, "the agent to connect", func() bool { return strings.Contains(console.String(), "connected via") })
			if code, _, e := runCLI(t, "token", "revoke", tok.ID, "--data", dir); code != 0 {
				t.Fatalf("revoke: %s", e)
			}
			select {
			case code := <-done:
				line := errs.String()
				if code == 0 || strings.Count(line, "\n") != 1 || !strings.Contains(line, "revoked") || !strings.Contains(line, tok.ID) {
					t.Fatalf("the agent exited %d with %q; want one line saying its token was revoked\nconsole:\n%s", code, line, console)
				}
			case <-ctx.Done():
				t.Fatalf("the agent of a revoked token kept running\nconsole:\n%s", console)
			}
		})
	}
}

func TestRemoteRequestsShowADeadLetter(t *testing.T) {
	srv, err := server.New(context.Background(), server.Config{Dev: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), QueueMaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	_, secret, err := srv.Store().CreateToken(context.Background(), "flaky")
	if err != nil {
		t.Fatal(err)
	}
	hc := relaytest.ProviderClient(t, srv)
	if resp, _ := relaytest.Post(t, hc, relaytest.TunnelURL(srv, "flaky", "/hang"), `{}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("offline delivery: %d", resp.StatusCode)
	}
	release := make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		<-release
	}))
	t.Cleanup(app.Close)
	t.Cleanup(func() { close(release) })
	cfg := relaytest.AgentConfig(srv, "tcp", secret, "flaky", app.URL)
	cfg.Timeout = 100 * time.Millisecond
	relaytest.RunAgent(t, cfg)
	remote := []string{"requests", "--remote", "--server", srv.Domain() + ":" + portOf(srv.Addr()), "--token", secret, "--ca", srv.DevCAPath()}
	var out string
	waitUntil(t, "the dead letter in the relay's log", func() bool {
		var code int
		code, out, _ = runCLI(t, remote...)
		return code == 0 && strings.Contains(out, "DEAD LETTER")
	})
	if !strings.Contains(out, "/hang") || !strings.Contains(out, "local_app_timeout") || !strings.Contains(out, "relay replay") {
		t.Fatalf("requests --remote:\n%s", out)
	}
	code, js, _ := runCLI(t, append(remote, "--json")...)
	if code != 0 || !strings.Contains(js, `"outcome":"dead_lettered"`) || !strings.Contains(js, `"attempts":1`) {
		t.Fatalf("requests --remote --json: %s", js)
	}
}

func portOf(addr string) string { return addr[strings.LastIndex(addr, ":")+1:] }
