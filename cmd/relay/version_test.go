package main

import (
	"debug/elf"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionPrefersLinkerValuesAndFallsBackToTheVCSStamp(t *testing.T) {
	stamped := &debug.BuildInfo{GoVersion: "go1.26.8", Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
		{Key: "vcs.time", Value: "2026-11-23T10:12:00Z"},
		{Key: "vcs.modified", Value: "true"},
	}}
	tests := []struct {
		name                 string
		bi                   *debug.BuildInfo
		ldVer, ldCommit, ldD string
		want                 string
	}{
		{"a source build shows the commit, its time and local changes", stamped, "dev", "", "",
			"relay dev (commit 0123456789ab with local changes, 2026-11-23T10:12:00Z, protocol 1, go1.26.8 "},
		{"a release build shows what goreleaser linked in", stamped, "v1.2.3", "fedcba9876543210", "2026-12-01T08:00:00Z",
			"relay v1.2.3 (commit fedcba987654, 2026-12-01T08:00:00Z, protocol 1, go1.26.8 "},
		{"a build without VCS or linker values still names itself", &debug.BuildInfo{GoVersion: "go1.26.8"}, "dev", "", "",
			"relay dev (protocol 1, go1.26.8 "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := resolveVersion(tt.bi, tt.ldVer, tt.ldCommit, tt.ldD).String()
			if !strings.HasPrefix(got, tt.want) || !strings.HasSuffix(got, runtime.GOOS+"/"+runtime.GOARCH+")") {
				t.Errorf("got  %q\nwant %q...", got, tt.want)
			}
		})
	}
}

// TestTheDocumentedBuildIsStatic builds relay as README says and checks
// the ELF file: no interpreter (PT_INTERP) and no shared libraries, so it
// starts on any Linux of its architecture, old glibc or none.
func TestTheDocumentedBuildIsStatic(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("checks an ELF binary")
	}
	f, err := elf.Open(builtRelay(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has an ELF interpreter: it is dynamically linked")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v", libs)
	}
}

// TestVersionCommandsAgreeAndNameTheCommit runs the real binary: relay
// version, --version and -v print the same line, with the commit of the
// checkout it was built from when the build could see it.
func TestVersionCommandsAgreeAndNameTheCommit(t *testing.T) {
	bin := builtRelay(t)
	var lines []string
	for _, args := range [][]string{{"version"}, {"--version"}, {"-v"}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("relay %v: %v\n%s", args, err, out)
		}
		lines = append(lines, strings.TrimSpace(string(out)))
	}
	if lines[0] != lines[1] || lines[0] != lines[2] || !strings.HasPrefix(lines[0], "relay ") {
		t.Fatalf("relay version / --version / -v printed %q", lines)
	}
	out, err := exec.Command(bin, "version", "--json").Output()
	var v versionInfo
	if err != nil || json.Unmarshal(out, &v) != nil || v.Protocol != protocolVersion() || v.Go == "" {
		t.Fatalf("relay version --json: %v %q", err, out)
	}
	head, err := exec.Command("git", "-C", filepath.Join("..", ".."), "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("no git checkout to compare with: %v", err)
	}
	if v.Commit == "" {
		// Go stamps VCS information only in a repository's main working
		// tree (not a git worktree) and when -buildvcs allows it.
		t.Skipf("this build carries no VCS stamp (a git worktree?): %s", lines[0])
	}
	if want := strings.TrimSpace(string(head)); v.Commit != want || !strings.Contains(lines[0], want[:12]) {
		t.Errorf("relay version says commit %q (%s); the checkout is at %s", v.Commit, lines[0], want)
	}
}
