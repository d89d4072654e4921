package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/server"
)

// relay dev keeps everything under one --data directory: the recordings
// where `relay connect` keeps its own (so `relay requests --data DIR` reads
// them), and the dev relay's database and CA in DIR/dev. By default that
// is the agents' state directory, so `relay requests` needs no flag, and
// the CA stays at ~/.local/state/relay/dev/dev-ca.pem where `relay trigger`
// looks for it.
const (
	devServerSubdir = "dev"
	devCAFile       = "dev-ca.pem"
)

func devDataDir() string { return stateDir("") }

func newDevCmd() *cobra.Command {
	var (
		cfg    client.Config
		name   string
		listen string
		opts   agentOptions
	)
	cmd := &cobra.Command{
		Use:   "dev PORT|HOST:PORT|URL",
		Short: "One command, one machine: a relay server on loopback plus an agent for your local app",
		Long: `Start a relay server on loopback (domain localhost, certificates from a dev CA) and an agent
for your local app, in one process. Providers' requests are simulated with curl or relay trigger.

--data is the one directory relay dev keeps: the recordings (read by relay requests --data DIR)
and, in DIR/dev, the dev relay's database and CA. The config file's top-level keys do not apply
to relay dev; put its settings under a [dev] line.`,
		Example: `  relay dev 3000
  curl --cacert ~/.local/state/relay/dev/dev-ca.pem https://dev.localhost:8443/webhooks -H 'Content-Type: application/json' -d '{"id":"evt_1"}'
  relay trigger stripe payment_intent.succeeded --to https://dev.localhost:8443`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			log := logger(cmd)
			if err := checkInspectAddr(opts.inspect); err != nil {
				return err // before anything listens
			}
			srv, err := server.New(ctx, server.Config{Dev: true, Listen: listen, DataDir: filepath.Join(opts.dataDir, devServerSubdir), Logger: log, Version: version})
			if err != nil {
				return err
			}
			secret, err := devToken(ctx, srv, name)
			if err != nil {
				srv.Shutdown(context.Background())
				return err
			}
			srv.Start()
			defer func() {
				sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				srv.Shutdown(sctx)
			}()

			out := cmd.OutOrStdout()
			url := srv.PublicURL(name)
			fmt.Fprintf(out, "relay dev: %s -> %s\n", url, args[0])
			fmt.Fprintf(out, "dev CA:    %s\n", srv.DevCAPath())
			fmt.Fprintf(out, "try:       curl --cacert %s %s/webhooks -H 'Content-Type: application/json' -d '{\"id\":\"evt_1\"}'\n", srv.DevCAPath(), url)
			fmt.Fprintf(out, "           relay trigger stripe payment_intent.succeeded --to %s\n\n", url)
			cfg.Server, cfg.QUICServer, cfg.ServerName = srv.Addr(), srv.QUICAddr(), srv.Domain()
			cfg.Token, cfg.Name, cfg.CAFile, cfg.Target = secret, name, srv.DevCAPath(), args[0]
			cfg.Console, cfg.Logger, cfg.Version = out, log, version
			return explainAgentError(opts.run(cmd, cfg), client.Config{Server: srv.Addr()})
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "dev", "tunnel name: https://NAME.localhost:PORT")
	f.StringVar(&listen, "listen", "127.0.0.1:8443", "loopback address for HTTPS and agents (UDP on the same port)")
	f.StringVar(&opts.dataDir, "data", devDataDir(), "directory for the recordings (read by relay requests --data) and, in DIR/dev, the dev relay's state and CA")
	f.StringVar(&cfg.Transport, "transport", "auto", "auto, quic or tcp")
	f.DurationVar(&cfg.Timeout, "timeout", client.DefaultTimeout, "how long the local app may take to answer (504 beyond)")
	f.StringVar(&cfg.HostHeader, "host-header", "rewrite", "Host the local app sees: rewrite (the target's) or preserve (the public one)")
	opts.register(cmd, false)
	return cmd
}

// devToken gives the dev agent a fresh token for name: secrets are stored
// hashed, so the previous run's cannot be read back; its tokens for the
// name are revoked so the name stays free.
func devToken(ctx context.Context, srv *server.Server, name string) (string, error) {
	st := srv.Store()
	toks, err := st.ListTokens(ctx)
	if err != nil {
		return "", err
	}
	for _, t := range toks {
		if !t.Revoked && slices.Contains(t.Names, name) {
			if err := st.RevokeToken(ctx, t.ID); err != nil {
				return "", err
			}
		}
	}
	_, secret, err := st.CreateToken(ctx, name)
	return secret, err
}
