package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/relaytunnel/relay/internal/dialer"
	"github.com/relaytunnel/relay/internal/relaytest"
)

// TestQUICListensWhereTCPDoesOutsideDev: --quic-listen's default is
// --listen's address, not :443, as its help says.
func TestQUICListensWhereTCPDoesOutsideDev(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	console := &relaytest.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"server", "--domain", "relay.example.com", "--listen", "127.0.0.1:0",
			"--http-listen", "off", "--metrics-listen", "off", "--data", t.TempDir(), "--acme-directory", "https://127.0.0.1:1/directory"}, console, console)
	}()
	defer func() { cancel(); <-done }()
	tcp := regexp.MustCompile(`https\+agents \(tcp\): (\S+)`)
	udp := regexp.MustCompile(`agents \(quic/udp\):\s+(\S+)`)
	relaytest.WaitFor(t, "the server's banner", func() bool { return udp.MatchString(console.String()) })
	out := console.String()
	if a, b := tcp.FindStringSubmatch(out)[1], udp.FindStringSubmatch(out)[1]; a != b || !strings.HasPrefix(a, "127.0.0.1:") {
		t.Errorf("TCP on %s, QUIC on %s; want the same address:\n%s", a, b, out)
	}
	if !strings.Contains(out, `level=INFO msg="relay server listening"`) {
		t.Errorf("relay server logs nothing at its default level:\n%s", out)
	}
}

// TestRestartWithSocketsFromSystemdRefusesNoProvider hands pre-bound
// sockets to the real binary the way systemd's relay.socket does
// (LISTEN_FDS, LISTEN_PID = the process's own pid, descriptors from 3),
// stops it as systemctl restart does (SIGTERM: relay drains and closes its
// copies of the sockets), connects as a provider while no relay runs, then
// starts a
// second relay on the same sockets: the provider is served, not refused,
// and the agent comes back over QUIC on the inherited UDP socket.
func TestRestartWithSocketsFromSystemdRefusesNoProvider(t *testing.T) {
	bin := builtRelay(t)
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())

	// What relay.socket holds: TCP (HTTPS and agents), UDP (QUIC) on the
	// same port, and TCP for plain HTTP.
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	addr := tcp.Addr().String()
	udp, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	var files []*os.File
	for _, s := range []interface{ File() (*os.File, error) }{tcp.(*net.TCPListener), udp.(*net.UDPConn), plain.(*net.TCPListener)} {
		f, err := s.File()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
	}

	data := t.TempDir()
	start := func(name string) (*exec.Cmd, *relaytest.Buffer) {
		out := &relaytest.Buffer{}
		cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=3 exec "$0" "$@"`, bin, "server", "--dev",
			"--data", data, "--listen", addr, "--http-listen", plain.Addr().String())
		cmd.ExtraFiles = files
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			if t.Failed() {
				t.Logf("%s:\n%s", name, out.String())
			}
		})
		relaytest.WaitFor(t, name+"'s banner", func() bool { return strings.Contains(out.String(), "3 listening sockets from systemd") })
		return cmd, out
	}
	first, _ := start("relay #1")

	code, out, errs := runCLI(t, "token", "create", "--name", "hook", "--data", data)
	token := relaytest.FindToken(out)
	if code != 0 || token == "" {
		t.Fatalf("token create: %d %q %q", code, out, errs)
	}
	var mu sync.Mutex
	var got []string
	app := relaytest.App(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.URL.Path)
		mu.Unlock()
	})
	_, port, _ := net.SplitHostPort(addr)
	console := &relaytest.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	agentDone := make(chan int, 1)
	go func() {
		agentDone <- run(ctx, []string{"connect", app, "--server", "localhost:" + port, "--token", token, "--name", "hook",
			"--ca", filepath.Join(data, devCAFile), "--transport", "quic", "--inspect", "", "--data", t.TempDir()}, console, console)
	}()
	t.Cleanup(func() {
		cancel()
		<-agentDone
		if t.Failed() {
			t.Logf("agent:\n%s", console.String())
		}
	})
	relaytest.WaitFor(t, "the agent to connect", func() bool { return strings.Contains(console.String(), "connected via QUIC") })

	pem, err := os.ReadFile(filepath.Join(data, devCAFile))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	post := func(conn net.Conn, path string) (int, error) {
		tr := &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots},
			DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
				if conn != nil {
					c := conn
					conn = nil
					return c, nil
				}
				return (&net.Dialer{}).DialContext(ctx, network, addr)
			},
		}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 60 * time.Second}).Post("https://hook.localhost:"+port+path, "application/json", strings.NewReader(`{}`))
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	if code, err := post(nil, "/before"); err != nil || code != http.StatusOK {
		t.Fatalf("before the restart: %d %v", code, err)
	}

	// The relay stops; the sockets live on in this process, as in systemd.
	first.Process.Signal(syscall.SIGTERM)
	if err := first.Wait(); err != nil {
		t.Fatalf("relay #1 on SIGTERM: %v", err)
	}

	// A provider connects while no relay runs: the kernel queues it.
	gap, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("connecting while relay is down: %v (refused: the sockets did not survive)", err)
	}
	type result struct {
		code int
		err  error
	}
	served := make(chan result, 1)
	go func() {
		code, err := post(gap, "/gap")
		served <- result{code, err}
	}()
	start("relay #2")
	r := <-served
	if r.err != nil || (r.code != http.StatusOK && r.code != http.StatusAccepted) {
		t.Fatalf("the provider that connected in the gap got %d %v; want it served (200, or 202 queued)", r.code, r.err)
	}
	// The agent is back over QUIC (the inherited UDP socket), and the
	// gap's delivery reaches the app, queued or live.
	// The agent reconnects on relay #1's goodbye; a minute is the
	// generous bound.
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		arrived := slices.Contains(got, "/gap")
		mu.Unlock()
		if arrived {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the delivery from the gap never reached the app")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(console.String(), "connected again via QUIC") {
		t.Errorf("the agent did not reconnect over QUIC:\n%s", console.String())
	}

	// The plain-HTTP socket came along too, and its redirect keeps the
	// HTTPS port (--dev is not on 443).
	hc := &http.Client{Transport: dialer.Transport(), CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	_, plainPort, _ := net.SplitHostPort(plain.Addr().String())
	resp, err := hc.Get("http://hook.localhost:" + plainPort + "/x?y=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusPermanentRedirect || loc != "https://hook.localhost:"+port+"/x?y=1" {
		t.Errorf("plain HTTP answered %d, Location %q", resp.StatusCode, loc)
	}
}
