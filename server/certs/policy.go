package certs

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/relaytunnel/relay/protocol"
)

// ErrNotAllowed is returned for names the server must neither serve nor
// request a certificate for.
var ErrNotAllowed = errors.New("host not allowed")

// Reserved reports whether some token has reserved label (the server's
// store answers it).
type Reserved func(ctx context.Context, label string) (bool, error)

// HostPolicy allows the apex Domain and LABEL.Domain for reserved labels
// only. It is the one gate before any certificate is issued, so nobody can
// make the server ask an ACME CA for names of their choosing.
type HostPolicy struct {
	Domain   string
	Reserved Reserved
}

// Allow reports nil when host may have a certificate. It has
// autocert.HostPolicy's signature. Case and a trailing dot do not matter;
// a port does (Host headers on port 80 carry none).
func (p HostPolicy) Allow(ctx context.Context, host string) error {
	label, err := p.label(host)
	if err != nil || label == "" {
		return err
	}
	if p.Reserved == nil {
		return fmt.Errorf("%w: %s is not reserved", ErrNotAllowed, host)
	}
	ok, err := p.Reserved(ctx, label)
	if err != nil {
		return fmt.Errorf("check reservation of %s: %w", label, err)
	}
	if !ok {
		return fmt.Errorf("%w: %s is not reserved", ErrNotAllowed, host)
	}
	return nil
}

// label checks host's shape without asking the store: "" for the apex,
// the label for LABEL.apex, ErrNotAllowed for anything else.
func (p HostPolicy) label(host string) (string, error) {
	apex := normalizeHost(p.Domain)
	name := normalizeHost(host)
	switch {
	case apex == "":
		return "", fmt.Errorf("%w: no domain configured", ErrNotAllowed)
	case strings.Contains(name, ":"):
		return "", fmt.Errorf("%w: %q has a port", ErrNotAllowed, host)
	case name == apex:
		return "", nil
	}
	label, ok := strings.CutSuffix(name, "."+apex)
	if !ok || !protocol.ValidName(label) {
		return "", fmt.Errorf("%w: %q is not %s or NAME.%s", ErrNotAllowed, host, apex, apex)
	}
	return label, nil
}
