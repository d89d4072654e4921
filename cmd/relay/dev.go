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

func newDevCmd() *cobra.Command {
	var (
		name, listen, dataDir, transport string
		timeout                          time.Duration
		opts                             agentOptions
	)
	cmd := &cobra.Command{
		Use:   "dev PORT|HOST:PORT|URL",
		Short: "One command, one machine: a relay server on loopback plus an agent for your local app",
		Example: `  relay dev 3000
  curl --cacert ~/.local/state/relay/dev/dev-ca.pem https://dev.localhost:8443/webhooks -d '{"id":"evt_1"}'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			log := logger(cmd)
			srv, err := server.New(ctx, server.Config{Dev: true, Listen: listen, DataDir: dataDir, Logger: log, Version: version})
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
			fmt.Fprintf(out, "try:       curl --cacert %s %s/webhooks -d '{\"id\":\"evt_1\"}'\n\n", srv.DevCAPath(), url)
			opts.dataDir = stateDir("")
			return explainAgentError(opts.run(cmd, client.Config{
				Server:     srv.Addr(),
				QUICServer: srv.QUICAddr(),
				ServerName: srv.Domain(),
				Token:      secret,
				Name:       name,
				Transport:  transport,
				CAFile:     srv.DevCAPath(),
				Target:     args[0],
				Timeout:    timeout,
				Console:    out,
				Logger:     log,
				Version:    version,
			}), client.Config{Server: srv.Addr()})
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "dev", "tunnel name: https://NAME.localhost:PORT")
	f.StringVar(&listen, "listen", "127.0.0.1:8443", "loopback address for HTTPS and agents (UDP on the same port)")
	f.StringVar(&dataDir, "data", filepath.Join(stateDir("dev")), "directory for the dev server's state and CA")
	f.StringVar(&transport, "transport", "auto", "auto, quic or tcp")
	f.DurationVar(&timeout, "timeout", client.DefaultTimeout, "how long the local app may take to answer (504 beyond)")
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
