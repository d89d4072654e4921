package main

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Recordings hold what strangers sent: a body, a header or a path can
// carry terminal escape sequences (ESC [ ... or the 8-bit CSI, U+009B)
// that would recolour, retitle or rewrite the user's terminal when printed.
// Everything relay prints from a recording goes through safeLine or
// safeText, which show such characters as visible escapes instead.

// safeLine escapes every control character, newlines and tabs included:
// for table cells, header values and other one-line fields.
func safeLine(s string) string { return escapeControls(s, false) }

// safeText keeps newlines and tabs (a pretty-printed body has them) and
// escapes the other controls.
func safeText(s string) string { return escapeControls(s, true) }

func escapeControls(s string, keepLayout bool) string {
	if !needsEscape(s, keepLayout) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case keepLayout && (r == '\n' || r == '\t'):
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case unsafeRune(r):
			if r < 0x80 {
				fmt.Fprintf(&b, `\x%02x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteRune(r)
		}
		i += size
	}
	return b.String()
}

func needsEscape(s string, keepLayout bool) bool {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || unsafeRune(r) || (!keepLayout && (r == '\n' || r == '\t')) {
			return true
		}
		i += size
	}
	return false
}

// unsafeRune: C0 controls but newline and tab, DEL, C1 controls, and the
// bidirectional overrides that make text read other than it is.
func unsafeRune(r rune) bool {
	switch {
	case r == '\n' || r == '\t':
		return false
	case r < 0x20 || r == 0x7f:
		return true
	case r >= 0x80 && r <= 0x9f:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
		return true
	}
	return false
}
