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
		method   string
		host     string
		target   string
		wantCode int
		wantLoc  string
	}{
		{"path and query are kept", http.MethodGet, "abc.relay.test", "/hook/x?a=1&b=2", http.StatusPermanentRedirect, "https://abc.relay.test/hook/x?a=1&b=2"},
		{"port is dropped", http.MethodGet, "abc.relay.test:8080", "/", http.StatusPermanentRedirect, "https://abc.relay.test/"},
		{"IPv6 host keeps its brackets", http.MethodGet, "[::1]:80", "/x", http.StatusPermanentRedirect, "https://[::1]/x"},
		{"POST is redirected with 308 so the body is resent", http.MethodPost, "abc.relay.test", "/hook", http.StatusPermanentRedirect, "https://abc.relay.test/hook"},
		{"missing Host is a bad request", http.MethodGet, "", "/", http.StatusBadRequest, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, tt.target, nil)
			r.Host = tt.host
			w := httptest.NewRecorder()
			certs.RedirectHTTPS().ServeHTTP(w, r)
			if w.Code != tt.wantCode || w.Header().Get("Location") != tt.wantLoc {
				t.Errorf("got %d %q, want %d %q", w.Code, w.Header().Get("Location"), tt.wantCode, tt.wantLoc)
			}
		})
	}
}
