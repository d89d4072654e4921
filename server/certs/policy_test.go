package certs_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/relaytunnel/relay/server/certs"
)

func TestHostPolicyAllow(t *testing.T) {
	errStore := errors.New("database is locked")
	var asked []string
	policy := certs.HostPolicy{
		Domain: "relay.test",
		Reserved: func(_ context.Context, label string) (bool, error) {
			asked = append(asked, label)
			switch label {
			case "abc":
				return true, nil
			case "broken":
				return false, errStore
			}
			return false, nil
		},
	}
	tests := []struct {
		name     string
		host     string
		wantErr  error // nil: allowed
		askStore bool
	}{
		{"apex is allowed", "relay.test", nil, false},
		{"reserved name is allowed", "abc.relay.test", nil, true},
		{"unreserved name is refused", "zzz.relay.test", certs.ErrNotAllowed, true},
		{"other domain is refused", "abc.example.com", certs.ErrNotAllowed, false},
		{"domain as a suffix without a dot is refused", "evilrelay.test", certs.ErrNotAllowed, false},
		{"name two levels deep is refused", "x.abc.relay.test", certs.ErrNotAllowed, false},
		{"empty label is refused", ".relay.test", certs.ErrNotAllowed, false},
		{"label with an underscore is refused", "a_b.relay.test", certs.ErrNotAllowed, false},
		{"empty host is refused", "", certs.ErrNotAllowed, false},
		{"uppercase is tolerated", "ABC.Relay.TEST", nil, true},
		{"trailing dot is tolerated", "abc.relay.test.", nil, true},
		{"apex with trailing dot is allowed", "relay.test.", nil, false},
		{"name with a port is refused", "abc.relay.test:443", certs.ErrNotAllowed, false},
		{"apex with a port is refused", "relay.test:80", certs.ErrNotAllowed, false},
		{"store failure is an error, not a refusal", "broken.relay.test", errStore, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			asked = nil
			err := policy.Allow(context.Background(), tt.host)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("Allow(%q) = %v, want %v", tt.host, err, tt.wantErr)
			}
			if tt.wantErr == errStore && errors.Is(err, certs.ErrNotAllowed) {
				t.Errorf("store failure reported as a refusal: %v", err)
			}
			if (len(asked) > 0) != tt.askStore {
				t.Errorf("store asked %q, want asked=%v", asked, tt.askStore)
			}
		})
	}
}

func TestHostPolicyWithoutStoreAllowsOnlyApex(t *testing.T) {
	policy := certs.HostPolicy{Domain: "Relay.Test."}
	if err := policy.Allow(context.Background(), "relay.test"); err != nil {
		t.Errorf("apex refused: %v", err)
	}
	if err := policy.Allow(context.Background(), "abc.relay.test"); !errors.Is(err, certs.ErrNotAllowed) {
		t.Errorf("name allowed without a store: %v", err)
	}
	if err := (certs.HostPolicy{}).Allow(context.Background(), ""); !errors.Is(err, certs.ErrNotAllowed) {
		t.Errorf("empty host allowed with no domain configured: %v", err)
	}
}

// FuzzHostPolicyAllow feeds SNI and Host values, which come from anyone,
// and checks that only the apex and one reserved label under it pass.
func FuzzHostPolicyAllow(f *testing.F) {
	for _, s := range []string{"relay.test", "abc.relay.test", "ABC.relay.test.", "a.b.relay.test", "relay.test:443", "", ".", "-.relay.test", "xn--bcher-kva.relay.test"} {
		f.Add(s)
	}
	policy := certs.HostPolicy{Domain: "relay.test", Reserved: func(context.Context, string) (bool, error) { return true, nil }}
	f.Fuzz(func(t *testing.T, host string) {
		err := policy.Allow(context.Background(), host)
		if err != nil {
			return
		}
		name := strings.TrimSuffix(strings.ToLower(host), ".")
		if name == "relay.test" {
			return
		}
		label, ok := strings.CutSuffix(name, ".relay.test")
		if !ok || label == "" || strings.ContainsAny(label, ".:_ /") || strings.HasPrefix(label, "-") || len(label) > 63 {
			t.Fatalf("Allow(%q) allowed a name outside NAME.relay.test", host)
		}
	})
}
