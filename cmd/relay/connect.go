package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/protocol"
)

func newConnectCmd() *cobra.Command {
	var cfg client.Config
	var opts agentOptions
	cmd := &cobra.Command{
		Use:   "connect PORT|HOST:PORT|URL",
		Short: "Connect to a relay server and forward your tunnel's deliveries to a local app",
		Example: `  relay connect 3000 --server relay.example.com --token relay_... --name stripe-dev
  RELAY_SERVER=relay.example.com RELAY_TOKEN=relay_... relay connect http://localhost:8080/api`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg.Target = args[0]
			cfg.Console = cmd.OutOrStdout()
			cfg.Logger = logger(cmd)
			cfg.Version = version
			return runAgent(cmd, cfg, opts)
		},
	}
	f := cmd.Flags()
	opts.register(cmd, true)
	f.StringVar(&cfg.Server, "server", "", "relay server HOST[:PORT] (env RELAY_SERVER)")
	f.StringVar(&cfg.Token, "token", "", "agent token from relay token create on the server (env RELAY_TOKEN)")
	f.StringVar(&cfg.Name, "name", "", "tunnel name (default: the token's first name)")
	f.StringVar(&cfg.Transport, "transport", "auto", "auto (QUIC, falling back to TCP), quic or tcp")
	f.StringVar(&cfg.CAFile, "ca", "", "extra CA certificate to trust (a dev server's dev-ca.pem)")
	f.DurationVar(&cfg.Timeout, "timeout", client.DefaultTimeout, "how long the local app may take to answer (504 beyond)")
	f.StringVar(&cfg.HostHeader, "host-header", "rewrite", "Host the local app sees: rewrite (the target's) or preserve (the public one)")
	f.StringVar(&cfg.QUICServer, "quic-server", "", "UDP HOST:PORT for QUIC when it differs from --server")
	f.MarkHidden("quic-server")
	return cmd
}

// runAgent runs an agent, its recorder and its inspector until the
// command's context ends, turning its errors into one actionable line.
func runAgent(cmd *cobra.Command, cfg client.Config, opts agentOptions) error {
	limitMemory(cmd.Context())
	return explainAgentError(opts.run(cmd, cfg), cfg)
}

func explainAgentError(err error, cfg client.Config) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, protocol.ErrBadToken):
		return fmt.Errorf("the relay server refused the token (%w)", err)
	case errors.Is(err, protocol.ErrNameTaken), errors.Is(err, protocol.ErrNameNotAllowed):
		return fmt.Errorf("the relay server refused the name (%w)", err)
	case errors.Is(err, protocol.ErrVersionMismatch):
		return err
	case errors.Is(err, client.ErrCertificate):
		return explainCertificate(err, cfg)
	case errors.Is(err, client.ErrUnreachable):
		return fmt.Errorf("%w; check --server, that `relay server` runs there, and that TCP and UDP 443 are open", err)
	}
	return err
}

// certError is a certificate refusal said in one line a person can act
// on; the chain stays reachable with errors.Is/As.
type certError struct {
	msg string
	err error
}

func (e *certError) Error() string { return e.msg }
func (e *certError) Unwrap() error { return e.err }

func explainCertificate(err error, cfg client.Config) error {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
	)
	var msg string
	switch {
	case errors.As(err, &hostname):
		msg = fmt.Sprintf("the relay's certificate is not for %s (it names %s): check --server", hostname.Host, certNames(hostname.Certificate))
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		c := invalid.Cert
		if c != nil && time.Now().Before(c.NotBefore) {
			msg = fmt.Sprintf("the relay's certificate is not valid until %s: check this machine's clock", c.NotBefore.UTC().Format(time.RFC3339))
		} else if c != nil {
			msg = fmt.Sprintf("the relay's certificate expired on %s: renew it on the server (or check this machine's clock)", c.NotAfter.UTC().Format(time.RFC3339))
		} else {
			msg = "the relay's certificate has expired: renew it on the server (or check this machine's clock)"
		}
	case errors.As(err, &unknown), cfg.CAFile == "":
		msg = "the relay's certificate is not trusted by this machine: pass --ca FILE (a --dev server's is DATA/dev-ca.pem)"
	default:
		msg = fmt.Sprintf("the relay's certificate is not trusted even with --ca %s: is that the server's CA?", cfg.CAFile)
	}
	return &certError{msg: msg + " (" + rootCause(err).Error() + ")", err: err}
}

func certNames(c *x509.Certificate) string {
	if c == nil {
		return "no name"
	}
	names := append([]string(nil), c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		names = append(names, c.Subject.CommonName)
	}
	return strings.Join(names, ", ")
}

// rootCause is the innermost error of a chain (the last branch of a
// joined one): for a certificate, TLS's own words.
func rootCause(err error) error {
	for {
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			next := u.Unwrap()
			if next == nil {
				return err
			}
			err = next
		case interface{ Unwrap() []error }:
			errs := u.Unwrap()
			var next error
			for i := len(errs) - 1; i >= 0; i-- { // "%w: %w" puts the cause last
				if e := errs[i]; e != nil && e != net.ErrClosed {
					next = e
					break
				}
			}
			if next == nil {
				return err
			}
			err = next
		default:
			return err
		}
	}
}
