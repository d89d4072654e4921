package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/relaytunnel/relay/protocol"
	"github.com/relaytunnel/relay/server"
)

func protocolVersion() int { return protocol.Version }

func newServerCmd() *cobra.Command {
	var cfg server.Config
	var drain time.Duration
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the relay server (on a VPS, or on loopback with --dev)",
		Long: `Run the relay server. Providers post to https://NAME.DOMAIN; agents connect to DOMAIN
over QUIC (UDP) or TLS (TCP) on the same port. Certificates come from Let's Encrypt
(automatic), from --tls-cert/--tls-key (a wildcard certificate), or from a dev CA (--dev).

Under systemd, deploy/relay.socket can hold the listening sockets and pass them (LISTEN_FDS):
relay takes each for the flag whose address it has, and restarts refuse no connection.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Logger = logger(cmd)
			cfg.Version = version
			limitMemory(cmd.Context())
			sockets, err := server.SocketsFromEnv()
			if err != nil {
				return err
			}
			cfg.Sockets = sockets
			inherited := sockets.Len()
			if cfg.Dev && !cmd.Flags().Changed("metrics-listen") {
				cfg.MetricsListen = "off" // a sandbox on a laptop; ask for it to get it
			}
			srv, err := server.New(cmd.Context(), cfg)
			if errors.Is(err, server.ErrConfig) {
				return usageError{err.Error()}
			}
			if err != nil {
				return err
			}
			srv.Start()
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "relay server for %s\n  https+agents (tcp): %s\n", srv.Domain(), srv.Addr())
			if a := srv.QUICAddr(); a != "" {
				fmt.Fprintf(out, "  agents (quic/udp):  %s\n", a)
			}
			if a := srv.HTTPAddr(); a != "" {
				fmt.Fprintf(out, "  http (acme, redirect): %s\n", a)
			}
			if a := srv.MetricsAddr(); a != "" {
				fmt.Fprintf(out, "  metrics: http://%s/metrics (and /healthz)\n", a)
			}
			if cfg.NodeName != "" {
				fmt.Fprintf(out, "  cluster node %s, agents dial it at %s\n", cfg.NodeName, cfg.Advertise)
			}
			if p := srv.DevCAPath(); p != "" {
				fmt.Fprintf(out, "  dev CA: %s (agents: --ca %s)\n", p, p)
			}
			if inherited > 0 {
				fmt.Fprintf(out, "  %d listening sockets from systemd (relay.socket): connections wait through a restart\n", inherited)
			}
			<-cmd.Context().Done()
			fmt.Fprintln(out, "shutting down: letting in-flight deliveries finish")
			ctx, cancel := context.WithTimeout(context.Background(), drain)
			defer cancel()
			return srv.Shutdown(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Domain, "domain", "", "apex domain; tunnels live at NAME.DOMAIN (dev: localhost)")
	f.StringVar(&cfg.Listen, "listen", "", "TCP address for HTTPS and agents (default :443, dev 127.0.0.1:8443)")
	f.StringVar(&cfg.QUICListen, "quic-listen", "", "UDP address for QUIC agents, or off (default: same as --listen)")
	f.StringVar(&cfg.HTTPListen, "http-listen", "", "TCP address for ACME HTTP-01 and the HTTPS redirect, or off (default :80, dev off)")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", server.DefaultMetricsListen, "TCP address for Prometheus /metrics and /healthz, or off (dev: off unless given)")
	f.IntVar(&cfg.PublicPort, "public-port", 0, "HTTPS port providers use, if not --listen's (for URLs)")
	f.StringVar(&cfg.DataDir, "data", defaultServerData(), "directory for the dev CA, and the database and ACME cache without --database")
	f.StringVar(&cfg.Database, "database", "", "PostgreSQL URL (postgres://USER@HOST/DB) for tokens, names, queue, log and ACME cache, shared by several nodes")
	f.StringVar(&cfg.NodeName, "node-name", "", "this node's name in a cluster of servers sharing --database (needs --advertise)")
	f.StringVar(&cfg.Advertise, "advertise", "", "HOST:PORT agents dial this node at, TCP and UDP (cluster mode, with --node-name)")
	f.DurationVar(&cfg.NodeLease, "node-lease", server.DefaultNodeLease, "how long a node's lease lasts unrenewed: a node that died is dropped by agents after this (cluster mode)")
	f.BoolVar(&cfg.Dev, "dev", false, "loopback only, domain localhost, certificates from a dev CA in --data")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "certificate file (a wildcard for *.DOMAIN and DOMAIN); disables ACME")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "key file for --tls-cert")
	f.StringVar(&cfg.ACMEEmail, "acme-email", "", "contact address for Let's Encrypt")
	f.StringVar(&cfg.ACMEDirectory, "acme-directory", "", "ACME directory URL (default Let's Encrypt production)")
	f.Int64Var(&cfg.MaxBody, "max-body", server.DefaultMaxBody, "largest request body forwarded, in bytes (413 beyond)")
	f.IntVar(&cfg.QueueMaxCount, "queue-max-count", server.DefaultQueueMaxCount, "deliveries kept per offline tunnel (503 beyond)")
	f.Int64Var(&cfg.QueueMaxBytes, "queue-max-bytes", server.DefaultQueueMaxBytes, "bytes of bodies kept per offline tunnel (503 beyond)")
	f.Int64Var(&cfg.QueueMaxTotalBytes, "queue-max-total-bytes", server.DefaultQueueMaxTotal, "bytes of bodies kept for all offline tunnels together (503 beyond)")
	f.IntVar(&cfg.QueueMaxAttempts, "queue-max-attempts", server.DefaultQueueMaxAttempts, "times the local app may fail or time out on a queued delivery before it is dead-lettered")
	f.DurationVar(&drain, "drain", 30*time.Second, "on SIGTERM, how long in-flight deliveries may take to finish")
	return cmd
}

func defaultServerData() string { return stateDir("server") }
