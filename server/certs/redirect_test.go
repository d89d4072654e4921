package certs_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/relaytunnel/relay/server/certs"
)

func TestRedirectHTTPS(t *testing.T) {
	tests := []struct {
		name     string
		port     int
		method   string
		host     string
		target   string
		wantCode int
		wantLoc  string
	}{
		{"path and query are kept", 443, http.MethodGet, "abc.relay.test", "/hook/x?a=1&b=2", http.StatusPermanentRedirect, "https://abc.relay.test/hook/x?a=1&b=2"},
		{"the plain-HTTP port is dropped for 443", 443, http.MethodGet, "abc.relay.test:8080", "/", http.StatusPermanentRedirect, "https://abc.relay.test/"},
		{"another HTTPS port is kept, as --dev has", 8443, http.MethodGet, "x.localhost:8080", "/hook?a=1", http.StatusPermanentRedirect, "https://x.localhost:8443/hook?a=1"},
		{"a host without a port gets the HTTPS port", 8443, http.MethodGet, "x.localhost", "/", http.StatusPermanentRedirect, "https://x.localhost:8443/"},
		{"IPv6 host keeps its brackets", 443, http.MethodGet, "[::1]:80", "/x", http.StatusPermanentRedirect, "https://[::1]/x"},
		{"IPv6 host with an HTTPS port", 8443, http.MethodGet, "[::1]:80", "/x", http.StatusPermanentRedirect, "https://[::1]:8443/x"},
		{"POST is redirected with 308 so the body is resent", 443, http.MethodPost, "abc.relay.test", "/hook", http.StatusPermanentRedirect, "https://abc.relay.test/hook"},
		{"missing Host is a bad request", 443, http.MethodGet, "", "/", http.StatusBadRequest, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, tt.target, nil)
			r.Host = tt.host
			w := httptest.NewRecorder()
			certs.RedirectHTTPS(tt.port).ServeHTTP(w, r)
			if w.Code != tt.wantCode || w.Header().Get("Location") != tt.wantLoc {
				t.Errorf("got %d %q, want %d %q", w.Code, w.Header().Get("Location"), tt.wantCode, tt.wantLoc)
			}
		})
	}
}
