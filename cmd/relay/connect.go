package main

import (
	"crypto/x509"
	"errors"
	"fmt"

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
	return explainAgentError(opts.run(cmd, cfg), cfg)
}

func explainAgentError(err error, cfg client.Config) error {
	if err == nil {
		return nil
	}
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	switch {
	case errors.Is(err, protocol.ErrBadToken):
		return fmt.Errorf("the relay server refused the token (%v)", err)
	case errors.Is(err, protocol.ErrNameTaken), errors.Is(err, protocol.ErrNameNotAllowed):
		return fmt.Errorf("the relay server refused the name (%v)", err)
	case errors.Is(err, protocol.ErrVersionMismatch):
		return fmt.Errorf("%v", err)
	case errors.As(err, &unknownCA):
		return fmt.Errorf("the relay server's certificate is not trusted (%v); for a --dev server pass --ca DATA/dev-ca.pem", err)
	case errors.As(err, &hostErr):
		return fmt.Errorf("the relay server's certificate does not match %s (%v); check --server", cfg.Server, err)
	case errors.Is(err, client.ErrUnreachable):
		return fmt.Errorf("%v; check --server, that `relay server` runs there, and that TCP and UDP 443 are open", err)
	}
	return err
}
