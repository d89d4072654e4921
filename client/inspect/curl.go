package inspect

import (
	"bytes"
	"encoding/base64"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/relaytunnel/relay/client/record"
)

// curlSkips are headers curl sets itself from what it sends.
var curlSkips = map[string]bool{
	"Content-Length": true, "Host": true, "Connection": true, "Accept-Encoding": true, "Transfer-Encoding": true,
}

// curlCommand is a shell command that sends d to the local app again.
// Every part of it came from a stranger on the internet (even the method: a
// server accepts any token, and ` $ ' | & are token characters), so every
// part is quoted; a body is passed with --data-raw, which never reads a
// file the way -d @FILE does.
func curlCommand(d *record.Delivery) string {
	u, err := d.LocalURL()
	if err != nil {
		if u, err = record.JoinPath("http://localhost", d.Path, d.Query); err != nil {
			return ""
		}
	}
	parts := []string{"curl", "-X", shellQuote(d.Method), shellQuote(u.String())}
	keys := make([]string, 0, len(d.RequestHeader))
	for k := range d.RequestHeader {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if curlSkips[k] {
			continue
		}
		for _, v := range d.RequestHeader[k] {
			if v == "" {
				parts = append(parts, "-H", shellQuote(k+";")) // "Name:" would remove the header
			} else {
				parts = append(parts, "-H", shellQuote(k+": "+v))
			}
		}
	}
	body := d.RequestBody.Data
	switch {
	case len(body) == 0:
	case utf8.Valid(body) && bytes.IndexByte(body, 0) < 0:
		parts = append(parts, "--data-raw", shellQuote(string(body)))
	default:
		// A shell argument cannot carry a NUL byte, nor survive a paste
		// as arbitrary bytes: binary travels as base64.
		return "printf %s " + shellQuote(base64.StdEncoding.EncodeToString(body)) + " | base64 -d | " +
			strings.Join(parts, " ") + " --data-binary @-"
	}
	return strings.Join(parts, " ")
}

// shellQuote makes s one shell word that stands for exactly s in sh, bash
// and zsh: left bare when it has only characters no shell treats specially
// (not even "=", which zsh expands at the start of a word), else in single
// quotes, inside which nothing is special but the quote.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool { return !shellSafe(r) }) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func shellSafe(r rune) bool {
	return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("_@%+:,./-", r)
}
