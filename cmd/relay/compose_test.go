package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
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

	"github.com/relaytunnel/relay/internal/relaytest"
)

// TestTheClusterComposeFileRuns runs deploy/compose.cluster.yaml, as it
// is, with podman-compose: PostgreSQL and three relay nodes with a
// wildcard certificate from a test CA. An agent on the host connects to
// all three nodes, a delivery through each node's port reaches the app,
// and with the agent stopped each node answers 202 and the deliveries
// arrive when it is back. No registry is needed: the relay image is built
// from deploy/Dockerfile with stand-in base images, and postgres:16 (when
// absent) is a stand-in made of this machine's PostgreSQL 15 server.
//
// Like TestTheImageBuildsAndWritesItsVolume it runs only with
// RELAY_TEST_IMAGE=podman. podman-compose takes no podman flags: in a
// gVisor sandbox give them in a containers.conf named by CONTAINERS_CONF
// (runtime = "runc"; default_ulimits = ["nofile=1024:1024",
// "nproc=1024:1024"]). It needs root: the agent resolves
// relay.example.com to loopback through an /etc/hosts of its own,
// bind-mounted in a mount namespace of its own (unshare), so that the
// machine's stays untouched.
func TestTheClusterComposeFileRuns(t *testing.T) {
	podman := podmanFor(t)
	for _, tool := range []string{"podman-compose", "unshare", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	if os.Getuid() != 0 {
		t.Skip("the agent's own /etc/hosts needs root (unshare --mount)")
	}
	// The compose file names its images: never replace someone's.
	if exec.Command("podman", "image", "exists", "localhost/relay:latest").Run() == nil {
		t.Skip("an image localhost/relay exists: this test would replace it")
	}
	tag := fmt.Sprintf("localhost/relay-compose-test-%d", time.Now().UnixNano())
	buildRelayImage(t, podman, tag, "localhost/relay:latest")
	if exec.Command("podman", "image", "exists", "docker.io/library/postgres:16").Run() != nil {
		postgresStandIn(t, podman, "docker.io/library/postgres:16")
	}

	// The compose file, byte for byte, with a ./certs beside it.
	dir := filepath.Join(t.TempDir(), "deploy")
	os.MkdirAll(filepath.Join(dir, "certs"), 0o755)
	file, err := os.ReadFile("../../deploy/compose.cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	composeFile := filepath.Join(dir, "compose.cluster.yaml")
	os.WriteFile(composeFile, file, 0o644)
	caPEM := wildcardPair(t, filepath.Join(dir, "certs"), "relay.example.com")
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, caPEM, 0o644)

	project := strings.TrimPrefix(tag, "localhost/")
	// Every podman-compose command interpolates the password: one for all.
	password := fmt.Sprintf("composetest%d", time.Now().UnixNano())
	compose := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("podman-compose", append([]string{"-p", project, "-f", composeFile}, args...)...)
		cmd.Env = append(os.Environ(), "RELAY_DB_PASSWORD="+password)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("podman-compose %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range []string{"db", "n1", "n2", "n3"} {
				out, _ := exec.Command("podman", "logs", "--tail", "30", project+"_"+n+"_1").CombinedOutput()
				t.Logf("%s:\n%s", n, out)
			}
		}
		compose("down", "-v")
		for _, v := range []string{"relay-pg", "relay-n1", "relay-n2", "relay-n3"} {
			if exec.Command("podman", "volume", "exists", project+"_"+v).Run() == nil {
				t.Errorf("podman-compose down -v left the volume %s_%s", project, v)
				exec.Command("podman", "volume", "rm", "-f", project+"_"+v).Run()
			}
		}
		// podman-compose 1.0.3 leaves the network behind.
		exec.Command("podman", "network", "rm", "-f", project+"_default").Run()
	})
	compose("up", "-d")
	nodes := []string{"n1", "n2", "n3"}
	logs := func(node string) string {
		out, _ := exec.Command("podman", "logs", project+"_"+node+"_1").CombinedOutput()
		return string(out)
	}
	for _, n := range nodes {
		relaytest.WaitForWithin(t, waitLong, n+" listening", func() bool { return strings.Contains(logs(n), "relay server listening") })
	}
	created := compose("exec", "-T", "n1", "/relay", "token", "create", "--name", "demo")
	token := relaytest.FindToken(created)
	if token == "" {
		t.Fatalf("relay token create in n1 printed no token:\n%s", created)
	}

	var mu sync.Mutex
	var seen []string
	app := relaytest.App(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.Path)
		mu.Unlock()
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "app saw %s", r.URL.Path)
	})
	appSaw := func(path string) bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(seen, path)
	}

	// The agent dials relay.example.com:8441, then every node's
	// --advertise (relay.example.com:844N): all loopback here.
	hosts := filepath.Join(dir, "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 localhost\n::1 localhost\n127.0.0.1 relay.example.com\n"), 0o644)
	relay := relaytest.BuildRelay(t)
	agentData := t.TempDir()
	connect := func() (*exec.Cmd, *relaytest.Buffer) {
		t.Helper()
		console := &relaytest.Buffer{}
		cmd := exec.Command("unshare", "--mount", "sh", "-c", `mount --bind "$0" /etc/hosts && exec "$@"`, hosts,
			relay, "connect", app, "--server", "relay.example.com:8441", "--ca", caFile, "--token", token, "--name", "demo",
			"--inspect", "", "--data", agentData)
		cmd.Stdout, cmd.Stderr = console, console
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd, console
	}
	agent, console := connect()
	relaytest.WaitForWithin(t, waitLong, "the agent connected to the three nodes", func() bool {
		return strings.Contains(console.String(), "to 3 relay nodes (n1, n2, n3)") || strings.Contains(console.String(), "(3 of 3 relay nodes")
	})
	t.Logf("agent: %s", firstLine(console.String()))

	provider := providerVia(caPEM)
	post := func(port int, path string) (int, string) {
		t.Helper()
		url := fmt.Sprintf("https://demo.relay.example.com:%d%s", port, path)
		resp, err := provider.Post(url, "text/plain", strings.NewReader("hello "+path))
		if err != nil {
			t.Fatalf("POST %s: %v", url, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for i, n := range nodes {
		path := "/live/" + n
		if code, body := post(8441+i, path); code != http.StatusCreated || body != "app saw "+path {
			t.Errorf("through %s (:%d): %d %q, want 201 from the app", n, 8441+i, code, body)
		}
	}

	// A node may have logged an agent session ending before (a dial
	// that lost a race): wait for one more on each.
	gone := map[string]int{}
	for _, n := range nodes {
		gone[n] = strings.Count(logs(n), "agent disconnected")
	}
	agent.Process.Signal(syscall.SIGTERM)
	if err := agent.Wait(); err != nil {
		t.Errorf("the agent stopped with SIGTERM: %v\n%s", err, console.String())
	}
	for _, n := range nodes {
		relaytest.WaitForWithin(t, waitLong, n+" seeing the agent go", func() bool { return strings.Count(logs(n), "agent disconnected") > gone[n] })
	}
	for i, n := range nodes {
		if code, body := post(8441+i, "/queued/"+n); code != http.StatusAccepted {
			t.Errorf("through %s (:%d) with the agent away: %d %q, want 202", n, 8441+i, code, body)
		}
	}
	_, console = connect()
	for _, n := range nodes {
		relaytest.WaitForWithin(t, waitLong, "the delivery queued through "+n, func() bool { return appSaw("/queued/" + n) })
	}
	mu.Lock()
	t.Logf("the app saw %v", seen)
	mu.Unlock()
}

// providerVia is curl --resolve NAME:PORT:127.0.0.1 --cacert: an HTTPS
// client that sends every name to loopback and trusts caPEM.
func providerVia(caPEM []byte) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	var d net.Dialer
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return d.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
		},
	}}
}

// wildcardPair writes fullchain.pem and privkey.pem for domain and
// *.domain into dir, from a new test CA whose PEM it returns. The key is
// chowned to the image's nonroot user, as deploy/CLUSTER.md says to.
func wildcardPair(t *testing.T, dir, domain string) []byte {
	t.Helper()
	caPEM, ca, caKey := testCA(t)
	leaf := leafCert(t, ca, caKey, []string{domain, "*." + domain}, time.Now().Add(-time.Hour), time.Now().Add(48*time.Hour))
	keyDER, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]})
	os.WriteFile(filepath.Join(dir, "fullchain.pem"), chain, 0o644)
	key := filepath.Join(dir, "privkey.pem")
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	if err := os.Chown(key, 65532, 65532); err != nil {
		t.Fatal(err)
	}
	return caPEM
}

// postgresStandIn imports as image what the official postgres image does
// for the compose file, made of this machine's PostgreSQL 15 server
// (Debian's package) and busybox: see postgresEntrypoint.
func postgresStandIn(t *testing.T, podman func(...string) string, image string) {
	t.Helper()
	const lib, share = "/usr/lib/postgresql/15", "/usr/share/postgresql/15"
	if _, err := os.Stat(filepath.Join(lib, "bin", "postgres")); err != nil {
		t.Skipf("the postgres:16 stand-in needs Debian's PostgreSQL 15 server: %v", err)
	}
	busybox, _ := exec.LookPath("busybox")
	etc := t.TempDir()
	os.WriteFile(filepath.Join(etc, "passwd"), []byte("root:x:0:0::/root:/bin/sh\npostgres:x:999:999::/var/lib/postgresql:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "group"), []byte("root:x:0:\npostgres:x:999:\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "entrypoint"), []byte(postgresEntrypoint), 0o755)
	files := map[string]string{
		"etc/passwd": filepath.Join(etc, "passwd"), "etc/group": filepath.Join(etc, "group"),
		"docker-entrypoint.sh":      filepath.Join(etc, "entrypoint"),
		"usr/lib/postgresql/15/bin": filepath.Join(lib, "bin"), "usr/share/postgresql/15": share,
		"usr/share/zoneinfo/UTC": "/usr/share/zoneinfo/UTC",
	}
	for _, a := range []string{"sh", "su", "mkdir", "chown", "chmod", "rm", "printf"} {
		files["bin/"+a] = busybox
	}
	// All the server's modules but LLVM's JIT (postgres runs without it),
	// and the libraries ldd lists for them and the programs, where ldd
	// found them.
	mods, _ := filepath.Glob(filepath.Join(lib, "lib", "*.so"))
	bins, _ := filepath.Glob(filepath.Join(lib, "bin", "*"))
	for _, m := range mods {
		if !strings.Contains(m, "llvmjit") {
			files[strings.TrimPrefix(m, "/")] = m
		}
	}
	out, err := exec.Command("ldd", append(bins, mods...)...).CombinedOutput()
	if err != nil && len(out) == 0 {
		t.Fatalf("ldd: %v", err)
	}
	for _, m := range regexp.MustCompile(`(?m)(?:=> )?(/\S+\.so[.\d]*) \(0x`).FindAllStringSubmatch(string(out), -1) {
		files[strings.TrimPrefix(m[1], "/")] = m[1]
	}
	standInImage(t, podman, image, files, map[string]os.FileMode{"tmp": 0o1777, "var/run/postgresql": 0o775, "var/lib/postgresql": 0o755},
		"ENV PATH=/usr/lib/postgresql/15/bin:/bin", "ENV LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu",
		"ENV PGDATA=/var/lib/postgresql/data", `ENTRYPOINT ["/docker-entrypoint.sh"]`, "STOPSIGNAL SIGINT")
}

// postgresEntrypoint does what the official image's docker-entrypoint.sh
// does for the compose file: the first start creates the cluster with
// POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB; every start runs
// postgres as the user postgres, listening on all addresses, with
// password authentication for connections over the network.
const postgresEntrypoint = `#!/bin/sh
set -e
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
	printf '%s\n' "$POSTGRES_PASSWORD" >/tmp/pwfile
	chown postgres /tmp/pwfile
	su postgres -s /bin/sh -c "initdb -D '$PGDATA' -U '$POSTGRES_USER' --pwfile=/tmp/pwfile --auth-local=trust --auth-host=scram-sha-256 --locale=C --encoding=UTF8"
	rm -f /tmp/pwfile
	printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
	if [ "$POSTGRES_DB" != postgres ]; then
		printf 'CREATE DATABASE "%s" OWNER "%s"\n' "$POSTGRES_DB" "$POSTGRES_USER" |
			su postgres -s /bin/sh -c "postgres --single -D '$PGDATA' postgres" >/dev/null
	fi
fi
exec su postgres -s /bin/sh -c "exec postgres -D '$PGDATA' -c listen_addresses='*'"
`

// waitLong is how long the compose test waits: two minutes (nodes wait
// for PostgreSQL through restarts), which WaitForWithin polls 200 ms
// apart, as suits conditions that run podman.
const waitLong = 2 * time.Minute

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
