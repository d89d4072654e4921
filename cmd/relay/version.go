package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"time"
)

// Set at link time by release builds (.goreleaser.yaml):
//
//	-X main.version=v1.2.3 -X main.commit=<sha> -X main.date=<RFC 3339>
//
// A build from a clone leaves them empty and the Go toolchain's VCS
// stamp (vcs.revision, vcs.time, vcs.modified) fills commit and date.
var (
	version = "dev"
	commit  = ""
	date    = ""
)

// versionInfo is what `relay version` prints; its JSON is stable.
type versionInfo struct {
	Version  string `json:"version"`
	Commit   string `json:"commit,omitempty"`
	Date     string `json:"date,omitempty"` // build date, or the commit's for a source build
	Modified bool   `json:"modified,omitempty"`
	Protocol int    `json:"protocol"`
	Go       string `json:"go"`
	Platform string `json:"platform"`
}

func buildVersion() versionInfo {
	bi, _ := debug.ReadBuildInfo()
	return resolveVersion(bi, version, commit, date)
}

// resolveVersion prefers what the linker was told and falls back to the
// build info's VCS stamp.
func resolveVersion(bi *debug.BuildInfo, ldVersion, ldCommit, ldDate string) versionInfo {
	v := versionInfo{Version: ldVersion, Commit: ldCommit, Date: ldDate, Protocol: protocolVersion(),
		Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if v.Version == "" {
		v.Version = "dev"
	}
	if bi == nil {
		return v
	}
	if bi.GoVersion != "" {
		v.Go = bi.GoVersion
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if v.Commit == "" {
				v.Commit = s.Value
			}
		case "vcs.time":
			if v.Date == "" {
				v.Date = s.Value
			}
		case "vcs.modified":
			v.Modified = ldCommit == "" && s.Value == "true"
		}
	}
	return v
}

// String is one line: relay v1.2.3 (commit 0123456789ab, 2026-11-23T10:12:00Z, protocol 1, go1.26.8 linux/amd64).
func (v versionInfo) String() string {
	var parts []string
	if v.Commit != "" {
		c := v.Commit
		if len(c) > 12 {
			c = c[:12]
		}
		if v.Modified {
			c += " with local changes"
		}
		parts = append(parts, "commit "+c)
	}
	if v.Date != "" {
		d := v.Date
		if t, err := time.Parse(time.RFC3339, d); err == nil {
			d = t.UTC().Format(time.RFC3339)
		}
		parts = append(parts, d)
	}
	parts = append(parts, fmt.Sprintf("protocol %d", v.Protocol), v.Go+" "+v.Platform)
	return fmt.Sprintf("relay %s (%s)", v.Version, strings.Join(parts, ", "))
}
