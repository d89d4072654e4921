// Package dialer dials the way curl does for RFC 6761's special name:
// "localhost" and every name under it (dev.localhost, stripe-dev.localhost)
// are loopback, answered without asking any resolver. Go asks the system
// resolver, which on many machines (Debian 12 without nss-myhostname or
// systemd-resolved) does not know *.localhost, so `relay dev`'s tunnel URLs
// would work in curl and fail in relay's own clients.
package dialer

import (
	"context"
	"net"
	"net/http"
	"strings"
	"time"
)

// Dialer is a net.Dialer that sends *.localhost to loopback.
type Dialer struct {
	net.Dialer
}

// New is a Dialer with the timeouts of http.DefaultTransport's.
func New() *Dialer {
	return &Dialer{Dialer: net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}}
}

// IsLocalhost reports whether host (without a port) is "localhost" or a
// name under it, which RFC 6761 reserves for loopback.
func IsLocalhost(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}

// loopback is tried in this order: relay's dev listeners bind 127.0.0.1,
// and a refused connection on loopback costs nothing before the next.
var loopback = []string{"127.0.0.1", "::1"}

// DialContext dials addr, resolving a *.localhost host to loopback itself
// and every other name as net.Dialer does.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || !IsLocalhost(host) {
		return d.Dialer.DialContext(ctx, network, addr)
	}
	var first error
	for _, ip := range loopback {
		c, err := d.Dialer.DialContext(ctx, network, net.JoinHostPort(ip, port))
		if err == nil {
			return c, nil
		}
		if first == nil {
			// 127.0.0.1's refusal is the one that names relay's port.
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

// Transport is a clone of http.DefaultTransport that dials with a Dialer.
func Transport() *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = New().DialContext
	return tr
}
