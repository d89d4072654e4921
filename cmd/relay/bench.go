package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// benchOptions drive `relay bench`: one run that measures the local app
// directly and through the relay over each transport, on loopback.
type benchOptions struct {
	duration    time.Duration
	concurrency []int
	bodyMB      int
	relayBin    string
	asJSON      bool
}

// benchCell is one load measurement.
type benchCell struct {
	Path        string  `json:"path"` // direct, quic, tcp
	Concurrency int     `json:"concurrency"`
	Requests    int     `json:"requests"`
	Errors      int     `json:"errors"`
	RPS         float64 `json:"rps"`
	P50us       float64 `json:"p50_us"`
	P99us       float64 `json:"p99_us"`
	// CPU the relay's server and agent processes spent per 1,000
	// deliveries of the cell (0 for the direct path, or where /proc is
	// not there to read).
	ServerCPUms float64 `json:"server_cpu_ms_per_1k,omitempty"`
	AgentCPUms  float64 `json:"agent_cpu_ms_per_1k,omitempty"`
}

// benchBig is one 100 MB upload.
type benchBig struct {
	Path      string  `json:"path"`
	Bytes     int64   `json:"bytes"`
	Seconds   float64 `json:"seconds"`
	MBps      float64 `json:"mb_per_s"`
	ServerMB  float64 `json:"server_peak_rss_mb,omitempty"`
	AgentMB   float64 `json:"agent_peak_rss_mb,omitempty"`
	StatusErr string  `json:"error,omitempty"`
}

type benchReport struct {
	Cells []benchCell `json:"cells"`
	Big   []benchBig  `json:"big"`
}

func newBenchCmd() *cobra.Command {
	var o benchOptions
	var conc string
	cmd := &cobra.Command{
		Use:    "bench",
		Short:  "Measure throughput, latency and memory of the relay against the local app directly (loopback)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, s := range strings.Split(conc, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(s))
				if err != nil || n < 1 {
					return fmt.Errorf("--concurrency %q: want numbers like 1,16,128", conc)
				}
				o.concurrency = append(o.concurrency, n)
			}
			if o.relayBin == "" {
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				o.relayBin = exe
			}
			rep, err := runBench(cmd.Context(), o, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if o.asJSON {
				return writeJSON(cmd.OutOrStdout(), rep)
			}
			printBench(cmd.OutOrStdout(), rep, o)
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.duration, "duration", 5*time.Second, "how long each load cell runs")
	f.StringVar(&conc, "concurrency", "1,16,128", "concurrent senders per cell")
	f.IntVar(&o.bodyMB, "body-mb", 100, "size of the large-body upload, in MB")
	f.StringVar(&o.relayBin, "relay-bin", "", "relay binary for the server and agent processes (default: this one)")
	f.BoolVar(&o.asJSON, "json", false, "print JSON")
	return cmd
}

// benchApp is the local app: it reads the body and answers a small JSON.
func benchApp() (*http.Server, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"ok":true}`)
	})}
	go srv.Serve(ln)
	return srv, ln.Addr().String(), nil
}

// child is a relay process the bench started.
type child struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startChild(bin string, log io.Writer, args ...string) (*child, error) {
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start relay %s: %w", args[0], err)
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(c.done) }()
	return c, nil
}

func (c *child) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}

// cpu is the CPU time the process has used so far (user + system), from
// /proc/PID/stat; 0 where there is none.
func (c *child) cpu() time.Duration {
	if c == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may
	// hold spaces: utime and stime are the 12th and 13th.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on every
// Linux that relay runs on.
const clockTicks = 100

// peakRSS is the process's high-water resident set (VmHWM), in MB.
func (c *child) peakRSS() float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

func runBench(ctx context.Context, o benchOptions, logw io.Writer) (*benchReport, error) {
	dir, err := os.MkdirTemp("", "relay-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	app, appAddr, err := benchApp()
	if err != nil {
		return nil, err
	}
	defer app.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	data := filepath.Join(dir, "server")
	out, err := exec.Command(o.relayBin, "token", "create", "--init", "--name", "bench", "--data", data).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("token create: %w: %s", err, out)
	}
	token := regexp.MustCompile(`relay_[a-z2-7]+`).FindString(string(out))
	logs := &lockedLog{}
	srv, err := startChild(o.relayBin, logs, "server", "--dev", "--listen", listen, "--data", data,
		"--max-body", strconv.FormatInt(int64(o.bodyMB+1)<<20, 10))
	if err != nil {
		return nil, err
	}
	defer srv.stop()

	rep := &benchReport{}
	direct := &http.Client{Transport: benchTransport(nil, "")}
	if err := benchPath(ctx, o, rep, "direct", direct, "http://"+appAddr+"/hook", nil, nil); err != nil {
		return nil, err
	}
	pem, err := waitFile(ctx, filepath.Join(data, "dev-ca.pem"))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	public := fmt.Sprintf("https://bench.localhost:%d/hook", port)
	for _, tr := range []string{"quic", "tcp"} {
		agent, err := startChild(o.relayBin, logs, "connect", "http://"+appAddr, "--server", fmt.Sprintf("localhost:%d", port),
			"--token", token, "--name", "bench", "--ca", filepath.Join(data, "dev-ca.pem"), "--transport", tr,
			"--data", filepath.Join(dir, "agent-"+tr), "--inspect", "")
		if err != nil {
			return nil, err
		}
		hc := &http.Client{Transport: benchTransport(roots, listen)}
		err = waitTunnel(ctx, hc, public)
		if err == nil {
			err = benchPath(ctx, o, rep, tr, hc, public, srv, agent)
		}
		agent.stop()
		if err != nil {
			return nil, fmt.Errorf("%s: %w\n%s", tr, err, logs.String())
		}
	}
	fmt.Fprintln(logw) // end the progress line
	return rep, nil
}

type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// benchTransport speaks HTTP/1.1 with keep-alive, as providers do; through
// the tunnel it dials the relay and trusts the dev CA.
func benchTransport(roots *x509.CertPool, relay string) *http.Transport {
	tr := &http.Transport{
		Proxy:               nil,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
	if relay != "" {
		tr.TLSClientConfig = &tls.Config{RootCAs: roots}
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, relay)
		}
	}
	return tr
}

func waitFile(ctx context.Context, path string) ([]byte, error) {
	for i := 0; ; i++ {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
			return b, nil
		}
		if i > 200 || ctx.Err() != nil {
			return nil, fmt.Errorf("the dev server wrote no %s", path)
		}
		time.Sleep(50 * time.Millisecond) // polling another process's file
	}
}

// waitTunnel polls until a delivery goes through (the agent connected).
func waitTunnel(ctx context.Context, hc *http.Client, url string) error {
	var last string
	for i := 0; i < 300 && ctx.Err() == nil; i++ {
		resp, err := hc.Post(url, "application/json", strings.NewReader(`{}`))
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond) // polling another process
	}
	return fmt.Errorf("tunnel never answered: %s", last)
}

var benchBody = `{"id":"evt_bench","object":"event","type":"payment_intent.succeeded","data":{"object":{"id":"pi_1","amount":2000,"currency":"usd","metadata":{"order":"` + strings.Repeat("x", 830) + `"}}}}`

func benchPath(ctx context.Context, o benchOptions, rep *benchReport, path string, hc *http.Client, url string, srv, agent *child) error {
	for _, c := range o.concurrency {
		fmt.Fprintf(os.Stderr, "\rbench: %-6s c=%-4d", path, c)
		cell, err := loadCell(ctx, hc, url, c, o.duration, srv, agent)
		if err != nil {
			return err
		}
		cell.Path = path
		rep.Cells = append(rep.Cells, cell)
	}
	fmt.Fprintf(os.Stderr, "\rbench: %-6s %d MB   ", path, o.bodyMB)
	size := int64(o.bodyMB) << 20
	start := time.Now()
	resp, err := hc.Post(url, "application/octet-stream", io.LimitReader(zeros{}, size))
	b := benchBig{Path: path, Bytes: size}
	if err != nil {
		b.StatusErr = err.Error()
	} else {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.StatusErr = resp.Status
		}
	}
	b.Seconds = time.Since(start).Seconds()
	b.MBps = float64(size) / (1 << 20) / b.Seconds
	if srv != nil {
		b.ServerMB, b.AgentMB = srv.peakRSS(), agent.peakRSS()
	}
	rep.Big = append(rep.Big, b)
	return nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// loadCell runs c senders posting the 1 KB body for d (after a short
// warm-up) and collects every latency, and the CPU srv and agent spent.
func loadCell(ctx context.Context, hc *http.Client, url string, c int, d time.Duration, srv, agent *child) (benchCell, error) {
	send := func() (time.Duration, error) {
		start := time.Now()
		resp, err := hc.Post(url, "application/json", strings.NewReader(benchBody))
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, errors.New(resp.Status)
		}
		return time.Since(start), nil
	}
	// Warm-up: open the connections.
	var wg sync.WaitGroup
	for range c {
		wg.Go(func() { send() })
	}
	wg.Wait()

	lat := make([][]time.Duration, c)
	errs := make([]int, c)
	srvCPU, agentCPU := srv.cpu(), agent.cpu()
	stop := time.Now().Add(d)
	begin := time.Now()
	for i := range c {
		wg.Go(func() {
			for time.Now().Before(stop) && ctx.Err() == nil {
				l, err := send()
				if err != nil {
					errs[i]++
					continue
				}
				lat[i] = append(lat[i], l)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(begin)
	srvCPU, agentCPU = srv.cpu()-srvCPU, agent.cpu()-agentCPU
	all := slices.Concat(lat...)
	slices.Sort(all)
	cell := benchCell{Concurrency: c, Requests: len(all)}
	for _, e := range errs {
		cell.Errors += e
	}
	if len(all) == 0 {
		return cell, fmt.Errorf("no request succeeded at concurrency %d", c)
	}
	cell.RPS = float64(len(all)) / elapsed.Seconds()
	perK := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(len(all)) }
	cell.ServerCPUms, cell.AgentCPUms = perK(srvCPU), perK(agentCPU)
	cell.P50us = float64(all[len(all)/2].Nanoseconds()) / 1000
	cell.P99us = float64(all[len(all)*99/100].Nanoseconds()) / 1000
	return cell, nil
}

func printBench(w io.Writer, rep *benchReport, o benchOptions) {
	direct := map[int]benchCell{}
	for _, c := range rep.Cells {
		if c.Path == "direct" {
			direct[c.Concurrency] = c
		}
	}
	mark := func(ok bool) string {
		if ok {
			return "PASS"
		}
		return "MISS"
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "1 KB JSON POST, %s per cell, HTTP/1.1 keep-alive, loopback\t\t\t\t\t\t\t\t\n", o.duration)
	fmt.Fprintln(tw, "path\tconc\treq/s\t% of direct\tp50 µs\tp99 µs\terrors\tCPU ms/1k srv+agent\ttarget\t")
	for _, c := range rep.Cells {
		d := direct[c.Concurrency]
		pct, target := "", ""
		if c.Path != "direct" && d.RPS > 0 {
			pct = fmt.Sprintf("%.0f%%", 100*c.RPS/d.RPS)
			if c.Concurrency >= 16 {
				target = "≥25%: " + mark(c.RPS >= 0.25*d.RPS)
			} else if c.Concurrency == 1 {
				added := c.P50us - d.P50us
				target = fmt.Sprintf("+%.0f µs p50 (≤80): %s", added, mark(added <= 80))
			}
		}
		cpu := "-"
		if c.ServerCPUms+c.AgentCPUms > 0 {
			cpu = fmt.Sprintf("%.0f+%.0f=%.0f", c.ServerCPUms, c.AgentCPUms, c.ServerCPUms+c.AgentCPUms)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%.0f\t%.0f\t%d\t%s\t%s\t\n", c.Path, c.Concurrency, c.RPS, pct, c.P50us, c.P99us, c.Errors, cpu, target)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	var directSec float64
	for _, b := range rep.Big {
		if b.Path == "direct" {
			directSec = b.Seconds
		}
	}
	fmt.Fprintf(tw, "%d MB upload\t\t\t\t\t\t\t\n", o.bodyMB)
	fmt.Fprintln(tw, "path\tseconds\tMB/s\tx direct\tserver peak RSS MB\tagent peak RSS MB\ttarget\t")
	for _, b := range rep.Big {
		x, target := "", ""
		if b.Path != "direct" && directSec > 0 {
			x = fmt.Sprintf("%.1f", b.Seconds/directSec)
			target = fmt.Sprintf("≤3x: %s, RSS<40: %s", mark(b.Seconds <= 3*directSec), mark(b.ServerMB < 40 && b.AgentMB < 40))
		}
		if b.StatusErr != "" {
			target = "error: " + b.StatusErr
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%.0f\t%s\t%s\t%s\t%s\t\n", b.Path, b.Seconds, b.MBps, x, mbOrDash(b.ServerMB), mbOrDash(b.AgentMB), target)
	}
	tw.Flush()
	fmt.Fprintln(w, "(server RSS is the process's high-water mark so far: the tcp row includes the quic run)")
}

func mbOrDash(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", v)
}
