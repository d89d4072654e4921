package certs

import (
	"net"
	"net/http"
)

// RedirectHTTPS answers plain HTTP with a permanent redirect to the same
// host and path over HTTPS. 308 keeps the method and body, so a provider
// configured with http:// re-POSTs its delivery instead of turning it into
// a GET. The port is dropped: HTTPS is on 443 wherever port 80 is served.
func RedirectHTTPS() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
			if ip := net.ParseIP(h); ip != nil && ip.To4() == nil {
				host = "[" + h + "]"
			}
		}
		if host == "" {
			http.Error(w, "missing Host header", http.StatusBadRequest)
			return
		}
		http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), http.StatusPermanentRedirect)
	})
}
