package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/relaytunnel/relay/server"
	"github.com/relaytunnel/relay/server/store"
)

// tokenStore is what the token commands need of the server's database.
type tokenStore interface {
	CreateToken(ctx context.Context, names ...string) (store.Token, string, error)
	ListTokens(ctx context.Context) ([]store.Token, error)
	RevokeToken(ctx context.Context, id string) error
	Close() error
}

func newTokenCmd() *cobra.Command {
	var dataDir, database string
	var initDB bool
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke agent tokens (on the server: same --data or --database)",
	}
	cmd.PersistentFlags().StringVar(&dataDir, "data", defaultServerData(), "the server's --data directory")
	cmd.PersistentFlags().StringVar(&database, "database", "", "the server's PostgreSQL URL (postgres://...), instead of --data")
	// A token written where the server does not look is never seen by it:
	// only --init (or the server's first start) makes a new database.
	open := func(ctx context.Context, create bool) (tokenStore, error) {
		st, err := server.OpenStore(ctx, server.StoreConfig{Database: database, DataDir: dataDir, Create: create})
		if errors.Is(err, server.ErrNoDatabase) {
			flag := "--data"
			if database != "" {
				flag = "--database"
			}
			return nil, fmt.Errorf("%w: pass the relay server's %s, or --init to create a new database there", err, flag)
		}
		if err != nil {
			return nil, err
		}
		return st, nil
	}

	var names []string
	create := &cobra.Command{
		Use:   "create --name NAME",
		Short: "Create a token that may serve NAME; prints the token once",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(names) == 0 {
				return fmt.Errorf("--name is required: the tunnel name this token may serve (NAME.DOMAIN)")
			}
			// A --data directory that does not exist yet is a new
			// server's: scripts (the side-by-side bench among them) create
			// tokens and then start the server there. It is created, and
			// stderr says where, so a mistyped path is seen at once. An
			// existing directory without a database is refused: that is
			// the wrong one.
			create, fresh := initDB, false
			if !create && database == "" {
				if _, err := os.Stat(dataDir); errors.Is(err, fs.ErrNotExist) {
					create, fresh = true, true
				}
			}
			st, err := open(cmd.Context(), create)
			if err != nil {
				return err
			}
			defer st.Close()
			if fresh {
				fmt.Fprintf(cmd.ErrOrStderr(), "relay: %s did not exist: created a new relay database there; start the server with --data %s\n", dataDir, dataDir)
			}
			tok, secret, err := st.CreateToken(cmd.Context(), names...)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "token %s for %s (shown once, keep it secret):\n%s\n", tok.ID, strings.Join(tok.Names, ", "), secret)
			fmt.Fprintf(out, "\nnext, where your app runs (PORT is its port, DOMAIN this server's --domain):\n  relay connect PORT --server DOMAIN --token %s --name %s\n", secret, tok.Names[0])
			return nil
		},
	}
	create.Flags().StringSliceVar(&names, "name", nil, "tunnel name this token may serve (repeatable)")
	create.Flags().BoolVar(&initDB, "init", false, "create the database in an existing --data directory that has none yet (a new directory is created without it)")

	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := open(cmd.Context(), false)
			if err != nil {
				return err
			}
			defer st.Close()
			toks, err := st.ListTokens(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				type row struct {
					ID        string     `json:"id"`
					Names     []string   `json:"names"`
					CreatedAt time.Time  `json:"created_at"`
					LastUsed  *time.Time `json:"last_used_at,omitempty"`
					Revoked   bool       `json:"revoked"`
				}
				rows := make([]row, 0, len(toks))
				for _, t := range toks {
					r := row{ID: t.ID, Names: t.Names, CreatedAt: t.CreatedAt, Revoked: t.Revoked}
					if !t.LastUsedAt.IsZero() {
						lu := t.LastUsedAt
						r.LastUsed = &lu
					}
					rows = append(rows, r)
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAMES\tCREATED\tLAST USED\tSTATE")
			for _, t := range toks {
				state, last := "active", "never"
				if t.Revoked {
					state = "revoked"
				}
				if !t.LastUsedAt.IsZero() {
					last = t.LastUsedAt.Local().Format(time.DateTime)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.ID, strings.Join(t.Names, ","), t.CreatedAt.Local().Format(time.DateTime), last, state)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token: its names become free and a running server ends its sessions within seconds",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := open(cmd.Context(), false)
			if err != nil {
				return err
			}
			defer st.Close()
			if err := st.RevokeToken(cmd.Context(), args[0]); err != nil {
				return fmt.Errorf("revoke %s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
