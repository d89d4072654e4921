package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/relaytunnel/relay/internal/relaytest"
)

// dockerStage is one FROM ... stage of a Dockerfile: its instructions,
// continuation lines joined.
type dockerStage struct {
	from  string
	lines []string
}

func readDockerfile(t *testing.T, path string) []dockerStage {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stages []dockerStage
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			cur.WriteString(strings.TrimSuffix(line, `\`) + " ")
			continue
		}
		cur.WriteString(line)
		ins := cur.String()
		cur.Reset()
		if strings.HasPrefix(strings.ToUpper(ins), "FROM ") {
			stages = append(stages, dockerStage{from: ins})
			continue
		}
		if len(stages) > 0 {
			stages[len(stages)-1].lines = append(stages[len(stages)-1].lines, ins)
		}
	}
	return stages
}

// TestTheImagesDataVolumeBelongsToNonroot reads deploy/Dockerfile as
// Docker would run it: the final stage runs as nonroot (65532) and must
// ship /data owned by it before declaring VOLUME /data, since Docker fills
// a new named volume from the image's directory; a /data that does not
// exist becomes root's and relay cannot create its database. (Podman
// chowns such a volume to the container's user, so running the image under
// podman, as TestTheImageBuildsAndWritesItsVolume does, cannot show this.)
func TestTheImagesDataVolumeBelongsToNonroot(t *testing.T) {
	stages := readDockerfile(t, "../../deploy/Dockerfile")
	if len(stages) != 2 {
		t.Fatalf("%d stages, want build and final", len(stages))
	}
	build, final := stages[0], stages[1]
	has := func(s dockerStage, re string) int {
		for i, l := range s.lines {
			if regexp.MustCompile(re).MatchString(l) {
				return i
			}
		}
		return -1
	}
	if has(build, `CGO_ENABLED=0 go build`) < 0 {
		t.Error("the build stage does not build with CGO_ENABLED=0 (a static binary for a static base)")
	}
	made := regexp.MustCompile(`^RUN mkdir -p (\S+)`)
	var dataDir string
	for _, l := range build.lines {
		if m := made.FindStringSubmatch(l); m != nil {
			dataDir = m[1]
		}
	}
	copyData := has(final, `^COPY --from=build --chown=(65532:65532|nonroot:nonroot) `+regexp.QuoteMeta(dataDir)+` /data$`)
	volume := has(final, `^VOLUME /data$`)
	user := has(final, `^USER (65532:65532|nonroot:nonroot)$`)
	switch {
	case dataDir == "":
		t.Error("the build stage makes no directory for /data")
	case copyData < 0:
		t.Errorf("the final stage does not copy %s to /data owned by nonroot:\n%s", dataDir, strings.Join(final.lines, "\n"))
	case volume < 0 || volume < copyData:
		t.Error("VOLUME /data must come after /data is in place (later changes to a volume path are discarded)")
	case user < 0:
		t.Error("the image does not run as nonroot")
	case has(final, `^ENV RELAY_DATA=/data$`) < 0:
		t.Error("relay's --data is not /data (ENV RELAY_DATA=/data)")
	}
}

// TestTheImageBuildsAndWritesItsVolume builds deploy/Dockerfile with
// podman and runs it with a named volume: relay server starts as nonroot,
// writes its database and CA into /data, and relay token create works
// through podman exec. No registry is needed: the two base images are
// stand-ins made from this machine (busybox and its Go; a passwd with
// nonroot), passed as the Dockerfile's GO_IMAGE and BASE_IMAGE. It takes
// minutes, so it runs only with RELAY_TEST_IMAGE=podman;
// RELAY_TEST_IMAGE_FLAGS adds podman flags (in a gVisor sandbox:
// "--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024").
func TestTheImageBuildsAndWritesItsVolume(t *testing.T) {
	podman := podmanFor(t)
	tag := fmt.Sprintf("localhost/relay-test-%d", time.Now().UnixNano())
	image := buildRelayImage(t, podman, tag, tag+":test")
	volume := strings.TrimPrefix(tag, "localhost/")
	podman("volume", "create", volume)
	t.Cleanup(func() { exec.Command("podman", "volume", "rm", "-f", volume).Run() })
	name := volume + "-c"
	port := relaytestFreePort(t)
	podman("run", "-d", "--name", name, "--network", "host", "-v", volume+":/data", image, "server", "--dev", "--listen", port)
	t.Cleanup(func() { exec.Command("podman", "rm", "-f", name).Run() })

	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(podman("logs", name), "dev CA: /data/dev-ca.pem") {
		if time.Now().After(deadline) {
			t.Fatalf("relay server in the container:\n%s", podman("logs", name))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out := podman("exec", name, "/relay", "token", "create", "--name", "docker-dev"); !strings.Contains(out, "relay_") {
		t.Errorf("relay token create in the container: %s", out)
	}
	mount := podman("volume", "inspect", volume, "--format", "{{.Mountpoint}}")
	for _, f := range []string{"relay.db", "dev-ca.pem"} {
		if _, err := os.Stat(filepath.Join(mount, f)); err != nil {
			t.Errorf("the volume lacks %s: %v", f, err)
		}
	}
	if out := podman("exec", name, "/relay", "version"); !strings.HasPrefix(out, "relay dev") {
		t.Errorf("relay version in the container: %s", out)
	}
}

// podmanFor skips t unless RELAY_TEST_IMAGE=podman, and returns a runner
// of podman commands that fails t on error and passes
// RELAY_TEST_IMAGE_FLAGS to build and run.
func podmanFor(t *testing.T) func(args ...string) string {
	t.Helper()
	if os.Getenv("RELAY_TEST_IMAGE") != "podman" {
		t.Skip("RELAY_TEST_IMAGE=podman builds and runs the image")
	}
	if _, err := exec.LookPath("busybox"); err != nil || runtime.GOOS != "linux" {
		t.Skip("the stand-in base images need busybox on linux")
	}
	extra := strings.Fields(os.Getenv("RELAY_TEST_IMAGE_FLAGS"))
	return func(args ...string) string {
		t.Helper()
		if args[0] == "build" || args[0] == "run" {
			args = append(args[:1:1], append(extra, args[1:]...)...)
		}
		out, err := exec.Command("podman", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
}

// standInImage imports a root file system made of files (destination:
// source, copied with links followed) and dirs as image, removed when the
// test ends.
func standInImage(t *testing.T, podman func(...string) string, image string, files map[string]string, dirs map[string]os.FileMode, changes ...string) string {
	t.Helper()
	root := t.TempDir()
	for dst, src := range files {
		os.MkdirAll(filepath.Join(root, filepath.Dir(dst)), 0o755)
		if out, err := exec.Command("cp", "-aL", src, filepath.Join(root, dst)).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v %s", src, err, out)
		}
	}
	for d, mode := range dirs {
		os.MkdirAll(filepath.Join(root, d), mode)
		os.Chmod(filepath.Join(root, d), mode)
	}
	tar := filepath.Join(t.TempDir(), "base.tar")
	if out, err := exec.Command("tar", "-C", root, "-cf", tar, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	args := []string{"import"}
	for _, c := range changes {
		args = append(args, "--change", c)
	}
	podman(append(args, tar, image)...)
	t.Cleanup(func() { exec.Command("podman", "rmi", "-f", image).Run() })
	return image
}

// buildRelayImage builds deploy/Dockerfile as image from stand-ins for
// its base images (named tag-go and tag-base); all three are removed when
// the test ends.
func buildRelayImage(t *testing.T, podman func(...string) string, tag, image string) string {
	t.Helper()
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	etc := t.TempDir()
	os.WriteFile(filepath.Join(etc, "passwd"), []byte("root:x:0:0::/root:/sbin/nologin\nnonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "group"), []byte("root:x:0:\nnonroot:x:65532:\n"), 0o644)
	goImage := standInImage(t, podman, tag+"-go", map[string]string{"bin/sh": busybox, "bin/mkdir": busybox, "usr/local/go": runtime.GOROOT(), "etc/ssl/certs": "/etc/ssl/certs"},
		map[string]os.FileMode{"tmp": 0o1777}, "ENV PATH=/usr/local/go/bin:/bin", "ENV HOME=/tmp", "ENV GOFLAGS=-buildvcs=false")
	baseImage := standInImage(t, podman, tag+"-base", map[string]string{"etc/passwd": filepath.Join(etc, "passwd"), "etc/group": filepath.Join(etc, "group"), "etc/ssl/certs": "/etc/ssl/certs"},
		map[string]os.FileMode{"tmp": 0o1777})
	podman("build", "--network", "host", "--build-arg", "GO_IMAGE="+goImage, "--build-arg", "BASE_IMAGE="+baseImage,
		"-f", "deploy/Dockerfile", "-t", image, filepath.Join("..", ".."))
	t.Cleanup(func() { exec.Command("podman", "rmi", "-f", image).Run() })
	return image
}

func relaytestFreePort(t *testing.T) string {
	return fmt.Sprintf("127.0.0.1:%d", relaytest.FreePort(t))
}

// TestTheSystemdUnitsVerify runs systemd-analyze verify on relay.socket
// and relay.service (ExecStart pointed at an existing binary) and checks
// that relay.socket holds relay's default addresses.
func TestTheSystemdUnitsVerify(t *testing.T) {
	sock, err := os.ReadFile("../../deploy/relay.socket")
	if err != nil {
		t.Fatal(err)
	}
	var listens []string
	for _, l := range strings.Split(string(sock), "\n") {
		if strings.HasPrefix(l, "Listen") {
			listens = append(listens, strings.TrimSpace(l))
		}
	}
	if want := []string{"ListenStream=443", "ListenDatagram=443", "ListenStream=80"}; strings.Join(listens, " ") != strings.Join(want, " ") {
		t.Errorf("relay.socket listens on %v; relay's defaults (--listen :443, --quic-listen its address, --http-listen :80) want %v", listens, want)
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("no systemd-analyze")
	}
	dir := t.TempDir()
	svc, err := os.ReadFile("../../deploy/relay.service")
	if err != nil {
		t.Fatal(err)
	}
	self, _ := os.Executable()
	os.WriteFile(filepath.Join(dir, "relay.service"), []byte(strings.ReplaceAll(string(svc), "/usr/local/bin/relay", self)), 0o644)
	os.WriteFile(filepath.Join(dir, "relay.socket"), sock, 0o644)
	out, err := exec.Command("systemd-analyze", "verify", "--man=no", filepath.Join(dir, "relay.socket"), filepath.Join(dir, "relay.service")).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
