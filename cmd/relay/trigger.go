package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/relaytunnel/relay/internal/provider"
)

func newTriggerCmd() *cobra.Command {
	var (
		to, secret, caFile string
		headers            []string
		timeout            time.Duration
		asJSON, list       bool
	)
	cmd := &cobra.Command{
		Use:   "trigger PROVIDER EVENT --to URL [--secret S]",
		Short: "Send a realistic, correctly signed sample delivery from a provider to a URL",
		Long: `Send a realistic sample delivery (fresh ids and timestamps) for a provider's event,
signed with --secret the way the provider signs, to --to: usually your tunnel's public URL, so the
whole path (relay, agent, your handler's signature check) is exercised without the provider.

If --to has a path, the delivery goes there; if it is only an origin (https://name.example.com),
the sample's own path is used. With no EVENT, or --list, it lists what it can send.`,
		Example: `  relay trigger stripe payment_intent.succeeded --to https://stripe-dev.relay.example.com/webhooks --secret whsec_...
  relay trigger github push --to http://localhost:3000/hooks --secret s3cret
  relay trigger --list`,
		Args: cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			if list || len(args) < 2 {
				only := ""
				if len(args) == 1 {
					only = args[0]
					if provider.Events(only) == nil {
						return fmt.Errorf("%w %q (known: %s)", provider.ErrUnknownProvider, only, strings.Join(provider.Names(), ", "))
					}
				}
				tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "PROVIDER\tEVENTS")
				for _, p := range provider.Names() {
					if only == "" || p == strings.ToLower(only) {
						fmt.Fprintf(tw, "%s\t%s\n", p, strings.Join(provider.Events(p), ", "))
					}
				}
				return tw.Flush()
			}
			if to == "" {
				return errors.New("--to URL is required: your tunnel's public URL, or your local app's")
			}
			target, err := url.Parse(to)
			if err != nil || (target.Scheme != "http" && target.Scheme != "https") || target.Host == "" {
				return fmt.Errorf("--to %q: want an http:// or https:// URL", to)
			}
			now := time.Now()
			s, err := provider.NewSample(args[0], args[1], now)
			if err != nil {
				return err
			}
			signed := false
			switch {
			case secret == "":
				fmt.Fprintf(cmd.ErrOrStderr(), "note: no --secret, so this %s delivery is unsigned\n", s.Provider)
			default:
				err := s.Sign(secret, now)
				switch {
				case errors.Is(err, provider.ErrNeedsPrivateKey):
					fmt.Fprintln(cmd.ErrOrStderr(), "note: PayPal signs with its own private key, so this delivery goes out unsigned")
				case err != nil:
					return fmt.Errorf("sign the %s sample: %w", s.Provider, err)
				default:
					signed = true
				}
			}
			u := *target
			if u.Path == "" || u.Path == "/" {
				sp, err := url.Parse(s.Path)
				if err == nil {
					u.Path, u.RawQuery = sp.Path, sp.RawQuery
				}
			}
			req, err := http.NewRequestWithContext(cmd.Context(), s.Method, u.String(), bytes.NewReader(s.Body))
			if err != nil {
				return err
			}
			req.Header = s.Header.Clone()
			for _, h := range headers {
				k, v, ok := strings.Cut(h, ":")
				if !ok {
					return fmt.Errorf("--header %q: want NAME: VALUE", h)
				}
				req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
			}
			hc, err := triggerClient(caFile, timeout)
			if err != nil {
				return err
			}
			start := time.Now()
			resp, err := hc.Do(req)
			if err != nil {
				return fmt.Errorf("could not reach %s: %w", u.Redacted(), err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			dur := time.Since(start)
			rec := provider.Recognize(s.Method, req.URL, req.Header, s.Body)
			if asJSON {
				writeJSON(out, map[string]any{
					"provider": s.Provider, "event": s.Event, "event_id": rec.EventID, "url": u.String(),
					"status": resp.StatusCode, "duration_ms": float64(dur.Microseconds()) / 1000, "signed": signed,
				})
			} else {
				id := ""
				if rec.EventID != "" {
					id = " (" + rec.EventID + ")"
				}
				fmt.Fprintf(out, "sent %s %s%s to %s -> %s in %s\n", s.Provider, s.Event, id, u.Redacted(), resp.Status, dur.Round(time.Millisecond))
			}
			if resp.StatusCode/100 != 2 {
				if len(body) > 0 && !asJSON {
					fmt.Fprintf(out, "%s\n", bytes.TrimSpace(body))
				}
				return fmt.Errorf("%s answered %s", u.Host, resp.Status)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&to, "to", "", "where to send it: your tunnel's public URL (or your local app's)")
	f.StringVar(&secret, "secret", "", "the provider's signing secret (Stripe whsec_..., Braintree PUBLIC:PRIVATE, ...)")
	f.StringVar(&caFile, "ca", "", "extra CA certificate to trust (a dev relay's dev-ca.pem)")
	f.StringArrayVar(&headers, "header", nil, "extra header NAME: VALUE (repeatable)")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for the answer")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	f.BoolVar(&list, "list", false, "list providers and their sample events")
	return cmd
}

func triggerClient(caFile string, timeout time.Duration) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		roots, err := x509.SystemCertPool()
		if err != nil || roots == nil {
			roots = x509.NewCertPool()
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca: %s holds no PEM certificate", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: roots}
	}
	return &http.Client{Transport: tr, Timeout: timeout, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}, nil
}
