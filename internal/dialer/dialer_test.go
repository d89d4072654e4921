package dialer_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/relaytunnel/relay/internal/dialer"
)

// noDNS is a resolver that fails every lookup: a dial that reaches it
// asked DNS.
var errAskedDNS = errors.New("asked DNS")

func noDNS() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		return nil, errAskedDNS
	}}
}

func TestLocalhostNamesAreLoopbackWithoutAskingDNS(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "host="+r.Host)
	}))
	defer app.Close()
	_, port, _ := net.SplitHostPort(app.Listener.Addr().String())

	d := dialer.New()
	d.Resolver = noDNS()
	tr := &http.Transport{DialContext: d.DialContext}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	for _, host := range []string{"localhost", "dev.localhost", "Stripe-Dev.LOCALHOST", "a.b.localhost."} {
		t.Run(host, func(t *testing.T) {
			resp, err := hc.Get("http://" + net.JoinHostPort(host, port) + "/")
			if err != nil {
				t.Fatalf("GET: %v", err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if !strings.Contains(string(body), host) {
				t.Errorf("the app saw %q; want the Host %s kept", body, host)
			}
		})
	}
}

func TestOtherNamesStillGoToTheResolver(t *testing.T) {
	d := dialer.New()
	d.Resolver = noDNS()
	for _, host := range []string{"localhost.example.com", "notlocalhost", "example.invalid"} {
		_, err := d.DialContext(context.Background(), "tcp", net.JoinHostPort(host, "80"))
		if err == nil || !strings.Contains(err.Error(), errAskedDNS.Error()) {
			t.Errorf("%s: err = %v; want the resolver asked", host, err)
		}
	}
}

func TestARefusedLocalhostPortSaysConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	_, err = dialer.New().DialContext(context.Background(), "tcp", "dev.localhost:"+port)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:"+port) {
		t.Errorf("err = %v; want 127.0.0.1's refusal", err)
	}
}
