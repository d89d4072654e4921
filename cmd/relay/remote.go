package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"text/tabwriter"
	"time"

	"github.com/relaytunnel/relay/internal/dialer"
)

// remoteFlags reach the relay server's delivery log: what arrived for the
// tunnel while the agent was offline, and what became of it.
type remoteFlags struct {
	on                  bool
	server, token, name string
	caFile              string
}

type remoteLog struct {
	Name    string `json:"name"`
	Queued  int    `json:"queued"`
	Entries []struct {
		ID         string    `json:"id"`
		ReceivedAt time.Time `json:"received_at"`
		Method     string    `json:"method"`
		URI        string    `json:"uri"`
		Queued     bool      `json:"queued"`
		Outcome    string    `json:"outcome"`
		Status     int       `json:"status,omitempty"`
		Attempts   int       `json:"attempts,omitempty"`
		Error      string    `json:"error,omitempty"`
		At         time.Time `json:"at"`
	} `json:"entries"`
}

func (f remoteFlags) fetch(ctx context.Context, limit int) (*remoteLog, []byte, error) {
	if f.server == "" || f.token == "" {
		return nil, nil, fmt.Errorf("--remote needs --server and --token (or RELAY_SERVER and RELAY_TOKEN), as for relay connect")
	}
	host := f.server
	if _, _, err := net.SplitHostPort(host); err != nil {
		host = net.JoinHostPort(host, "443")
	}
	name, _, _ := net.SplitHostPort(host)
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if f.caFile != "" {
		pem, err := os.ReadFile(f.caFile)
		if err != nil {
			return nil, nil, fmt.Errorf("--ca: %w", err)
		}
		roots.AppendCertsFromPEM(pem)
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		Proxy:           http.ProxyFromEnvironment,
		DialContext:     dialer.New().DialContext,
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: name},
	}}
	q := url.Values{"limit": {fmt.Sprint(limit)}}
	if f.name != "" {
		q.Set("name", f.name)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/api/log?"+q.Encode(), nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+f.token)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("relay server %s: %w", host, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("relay server %s: %w", host, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Message string }
		json.Unmarshal(body, &e)
		if e.Message == "" {
			e.Message = resp.Status
		}
		return nil, nil, fmt.Errorf("relay server %s refused the log: %s", host, e.Message)
	}
	var lg remoteLog
	if err := json.Unmarshal(body, &lg); err != nil {
		return nil, nil, fmt.Errorf("relay server %s: %w", host, err)
	}
	return &lg, body, nil
}

func printRemote(w io.Writer, lg *remoteLog) error {
	fmt.Fprintf(w, "tunnel %s: %d waiting in the relay's queue\n", lg.Name, lg.Queued)
	if len(lg.Entries) == 0 {
		fmt.Fprintln(w, "the relay's delivery log is empty")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RECEIVED\tID\tMETHOD\tURI\tQUEUED\tOUTCOME\tSTATUS\tTRIES")
	var dead []string
	for _, e := range lg.Entries {
		q := "-"
		if e.Queued {
			q = "yes"
		}
		st := "-"
		if e.Status != 0 {
			st = fmt.Sprint(e.Status)
		}
		tries := "-"
		if e.Attempts > 0 {
			tries = fmt.Sprint(e.Attempts)
		}
		outcome := e.Outcome
		if outcome == "dead_lettered" {
			outcome = "DEAD LETTER"
			dead = append(dead, fmt.Sprintf("%s %s %s was set aside after %d tries: %s", e.ID, e.Method, trunc(e.URI, 48), e.Attempts, e.Error))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.ReceivedAt.Local().Format("Jan 02 15:04:05"), e.ID, e.Method, trunc(e.URI, 48), q, outcome, st, tries)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, d := range dead {
		fmt.Fprintln(w, d)
	}
	if len(dead) > 0 {
		fmt.Fprintln(w, "the local app failed or timed out on every try, so the queue moved on; your agent recorded each try: find it with relay requests, send it again with relay replay ID")
	}
	return nil
}
