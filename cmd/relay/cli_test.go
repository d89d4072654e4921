package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/relaytunnel/relay/protocol"
	"github.com/relaytunnel/relay/server"
	"github.com/relaytunnel/relay/server/certs"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code = run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func devServer(t *testing.T, dir string) *server.Server {
	t.Helper()
	srv, err := server.New(context.Background(), server.Config{Dev: true, Listen: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return srv
}

func TestTokenCommands(t *testing.T) {
	dir := t.TempDir()
	code, out, errs := runCLI(t, "token", "create", "--init", "--name", "stripe-dev", "--data", dir)
	if code != 0 {
		t.Fatalf("create: %d %s", code, errs)
	}
	secret := regexp.MustCompile(`relay_[a-z2-7]+`).FindString(out)
	id := regexp.MustCompile(`tok_[a-z2-7]+`).FindString(out)
	if secret == "" || id == "" {
		t.Fatalf("create printed %q", out)
	}
	code, out, _ = runCLI(t, "token", "list", "--data", dir)
	if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "stripe-dev") || strings.Contains(out, secret) {
		t.Fatalf("list: %d %q", code, out)
	}
	code, _, errs = runCLI(t, "token", "create", "--name", "stripe-dev", "--data", dir)
	if code == 0 || !strings.Contains(errs, "already reserved") || strings.Count(errs, "\n") != 1 {
		t.Fatalf("taken name: %d %q", code, errs)
	}
	code, _, errs = runCLI(t, "token", "create", "--name", "Bad.Name", "--data", dir)
	if code == 0 || !strings.Contains(errs, "invalid tunnel name") {
		t.Fatalf("bad name: %d %q", code, errs)
	}
	if code, _, errs = runCLI(t, "token", "revoke", id, "--data", dir); code != 0 {
		t.Fatalf("revoke: %s", errs)
	}
	code, _, errs = runCLI(t, "token", "revoke", "tok_nope", "--data", dir)
	if code == 0 || !strings.Contains(errs, "not found") {
		t.Fatalf("revoke unknown: %d %q", code, errs)
	}
}

func TestConnectErrorsAreOneActionableLine(t *testing.T) {
	dir := t.TempDir()
	srv := devServer(t, dir)
	_, other, _ := srv.Store().CreateToken(context.Background(), "mine")
	srv.Store().CreateToken(context.Background(), "theirs")
	closed := func() string {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		defer ln.Close()
		return ln.Addr().String()
	}()
	mismatch := fakeRelay(t, dir)
	notRelay := httptest.NewTLSServer(http.NotFoundHandler())
	t.Cleanup(notRelay.Close)
	ca := filepath.Join(dir, "dev-ca.pem")

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"a bad token says the server refused it and how to make one",
			[]string{"--server", srv.Addr(), "--token", "relay_bogus", "--name", "mine"}, "refused the token"},
		{"a name owned by another token says so",
			[]string{"--server", srv.Addr(), "--token", other, "--name", "theirs"}, "reserved by another token"},
		{"an unreachable server names both transports and what to check",
			[]string{"--server", closed, "--quic-server", closed, "--token", other, "--transport", "auto"}, "cannot reach relay server"},
		{"a version mismatch names both versions",
			[]string{"--server", mismatch, "--token", other, "--transport", "tcp"}, "agent speaks protocol 1, server speaks protocol 2"},
		{"a server that is not relay says so",
			[]string{"--server", notRelay.Listener.Addr().String(), "--token", other, "--transport", "tcp", "--quic-server", closed}, "is it a relay server"},
		{"a missing token says where to get one",
			[]string{"--server", srv.Addr()}, "relay token create"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"connect", "3000", "--ca", ca, "--quic-server", srv.QUICAddr()}, tt.args...)
			if tt.name == "a server that is not relay says so" {
				args = append([]string{"connect", "3000"}, tt.args...)
			}
			t.Setenv("RELAY_TOKEN", "")
			code, _, errs := runCLI(t, args...)
			if code == 0 {
				t.Fatal("exit status 0")
			}
			if !strings.Contains(errs, tt.want) || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "relay: ") {
				t.Fatalf("stderr = %q, want one line containing %q", errs, tt.want)
			}
		})
	}
}

// fakeRelay is a TLS+yamux server that speaks relay/1's framing but
// protocol version 2, answering every Hello with a version mismatch.
func fakeRelay(t *testing.T, dir string) string {
	t.Helper()
	ca, err := certs.NewDevCA(dir, certs.HostPolicy{Domain: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	conf := certs.TLSConfig(ca, []string{protocol.ALPN})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sess, err := protocol.ServerYamux(c)
				if err != nil {
					return
				}
				defer sess.Close()
				st, err := sess.AcceptStream(context.Background())
				if err != nil {
					return
				}
				var h protocol.Hello
				protocol.ReadMessage(st, protocol.FrameHello, &h)
				protocol.WriteMessage(st, protocol.FrameReject, protocol.Reject{Code: protocol.RejectVersionMismatch, Version: 2,
					Message: "agent speaks protocol 1, server speaks protocol 2: install the same relay release on both sides"})
				<-sess.Done()
			}()
		}
	}()
	return ln.Addr().String()
}
