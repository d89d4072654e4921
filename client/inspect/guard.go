package inspect

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
)

// actionHeader must accompany every request that acts. A cross-site HTML form
// cannot set it, and a cross-site fetch that sets it needs a CORS preflight,
// which the inspector never grants.
const actionHeader = "X-Relay-Inspector"

// contentSecurityPolicy allows only the inspector's own script, style and
// API: delivery data is written by strangers, so even if some of it were
// ever mistaken for markup, nothing inline would run.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; " +
	"img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func setSecurityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
}

// loopbackHost reports whether a Host header names this machine: localhost
// or a loopback IP literal, with or without a port. Any other name could be
// an attacker's domain whose DNS now points at 127.0.0.1 (DNS rebinding).
func loopbackHost(host string) bool {
	name := host
	if h, port, err := net.SplitHostPort(host); err == nil {
		if !validPort(port) {
			return false
		}
		name = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		name = host[1 : len(host)-1]
	}
	if strings.EqualFold(strings.TrimSuffix(name, "."), "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(name)
	return err == nil && ip.Zone() == "" && ip.Unmap().IsLoopback()
}

func validPort(p string) bool {
	if p == "" || len(p) > 5 {
		return false
	}
	for _, c := range p {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// sameOrigin checks that a request that acts comes from the inspector's own
// page: it carries the action header, its Origin (browsers send one with
// every POST) is this very host, and the browser does not call it cross-site.
func sameOrigin(r *http.Request) error {
	if r.Header.Get(actionHeader) != "1" {
		return fmt.Errorf("missing %s: 1 header; actions come from the inspector page only", actionHeader)
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return fmt.Errorf("refusing a %s request; actions come from the inspector page only", site)
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil // not a browser, or a same-origin GET-like request: the header above suffices
	}
	u, err := url.Parse(origin)
	if err != nil || u.Scheme != "http" || !strings.EqualFold(u.Host, r.Host) {
		return fmt.Errorf("origin %q is not this inspector (http://%s)", origin, r.Host)
	}
	return nil
}

// notCrossSite refuses API reads that another site's page makes: it could
// not read the answers (no CORS), but how long they take could still tell
// it whether a filter matched.
func notCrossSite(r *http.Request) error {
	if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" || site == "same-site" {
		return fmt.Errorf("refusing a %s request; the inspector's API answers its own page only", site)
	}
	return nil
}

// checkLoopbackAddr refuses a listener address that other machines can reach.
func checkLoopbackAddr(a net.Addr) error {
	var ip netip.Addr
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			ip = ap.Addr()
		}
	}
	if !ip.IsValid() || !ip.Unmap().IsLoopback() {
		return fmt.Errorf("inspector address %s: %w (use 127.0.0.1:PORT)", a, ErrNotLoopback)
	}
	return nil
}
