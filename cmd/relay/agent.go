package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/client/inspect"
	"github.com/relaytunnel/relay/client/record"
)

// defaultInspect is where the inspector listens unless told otherwise; when
// it is taken (another agent runs), the next few ports are tried.
const defaultInspect = "127.0.0.1:4040"

// agentOptions are the agent's flags beyond client.Config's own: where it
// records, the inspector, and the checks that fill Config.
type agentOptions struct {
	dataDir  string
	inspect  string
	secrets  []string
	verify   string
	keep     int
	keepFor  time.Duration
	dedup    bool
	dedupFor time.Duration
	retry    time.Duration
	noQueue  bool
}

func (o *agentOptions) register(cmd *cobra.Command, withData bool) {
	f := cmd.Flags()
	if withData {
		f.StringVar(&o.dataDir, "data", stateDir(""), "directory of the agent's recordings (read by relay requests --data)")
	}
	f.StringVar(&o.inspect, "inspect", defaultInspect, `inspector address (loopback only); "" disables it`)
	f.StringArrayVar(&o.secrets, "secret", nil, "PROVIDER=SECRET to check signatures, e.g. stripe=whsec_... (repeatable)")
	f.StringVar(&o.verify, "verify", "record", "record (note each signature verdict) or reject (answer 401 to invalid signatures)")
	f.IntVar(&o.keep, "keep", record.DefaultMaxCount, "recordings kept (older ones are pruned)")
	f.DurationVar(&o.keepFor, "keep-for", record.DefaultMaxAge, "how long recordings are kept")
	f.BoolVar(&o.dedup, "dedup", false, "forward each provider event id once; answer copies 200 without forwarding")
	f.DurationVar(&o.dedupFor, "dedup-window", client.DefaultDedupWindow, "how long --dedup remembers an event")
	f.DurationVar(&o.retry, "retry", 0, "keep retrying a delivery the local app refuses or answers 5xx, for this long (--retry alone: 1m)")
	f.Lookup("retry").NoOptDefVal = "1m"
	f.BoolVar(&o.noQueue, "no-queue", false, "while this agent is offline the relay answers 503 instead of queueing")
}

// run opens the recordings, starts the inspector and runs the agent until
// the command's context ends.
func (o *agentOptions) run(cmd *cobra.Command, cfg client.Config) error {
	ctx := cmd.Context()
	agentProcs()
	secrets, err := parseSecrets(o.secrets)
	if err != nil {
		return err
	}
	switch o.verify {
	case "record", "":
	case "reject":
		cfg.VerifyReject = true
	default:
		return fmt.Errorf("--verify %q: want record or reject", o.verify)
	}
	cfg.Secrets, cfg.Dedup, cfg.DedupWindow, cfg.Retry, cfg.NoQueue = secrets, o.dedup, o.dedupFor, o.retry, o.noQueue

	store, err := record.Open(ctx, o.dataDir, record.Options{MaxCount: o.keep, MaxAge: o.keepFor})
	if err != nil {
		return err
	}
	defer store.Close()
	cfg.Store = store
	a, err := client.New(cfg)
	if err != nil {
		return err
	}
	if o.inspect != "" {
		ln, err := listenInspector(o.inspect)
		if err != nil {
			return err
		}
		target := cfg.Target
		if u, err := client.ParseTarget(cfg.Target); err == nil { // client.New has checked it
			target = u.String()
		}
		ins := inspect.New(store, inspect.Options{
			Replay: a.Replay,
			Info: func() inspect.Info {
				w := a.Welcome()
				return inspect.Info{Tunnel: w.Name, PublicURL: w.URL, Target: target, CAFile: cfg.CAFile, Signing: slices.Collect(maps.Keys(secrets))}
			},
			Connected: a.Ready(),
			Logger:    cfg.Logger,
			Metrics:   a.MetricsHandler(),
			Health:    a.HealthHandler(),
		})
		a.OnRecorded = ins.Notify
		addrFile := filepath.Join(o.dataDir, inspectorFile)
		os.WriteFile(addrFile, []byte(ln.Addr().String()+"\n"), 0o600)
		ictx, stop := context.WithCancel(context.WithoutCancel(ctx))
		served := make(chan error, 1)
		go func() { served <- ins.Serve(ictx, ln) }()
		defer func() {
			stop()
			<-served
			// Only ours: a second agent may have written its own since.
			if b, err := os.ReadFile(addrFile); err == nil && string(b) == ln.Addr().String()+"\n" {
				os.Remove(addrFile)
			}
		}()
		fmt.Fprintf(cfg.Console, "inspector: http://%s\n", ln.Addr())
	}
	return a.Run(ctx)
}

// listenInspector binds addr; when the default is taken it tries the next
// nine ports, as a second agent on the same machine would want. Only
// loopback is allowed: the inspector shows every delivery and replays them.
func listenInspector(addr string) (net.Listener, error) {
	if err := checkInspectAddr(addr); err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(addr)
	ln, err := net.Listen("tcp", addr)
	if err == nil || addr != defaultInspect || !errors.Is(err, syscall.EADDRINUSE) {
		if err != nil {
			return nil, fmt.Errorf("inspector on %s: %w (pick another with --inspect 127.0.0.1:PORT or disable it with --inspect \"\")", addr, err)
		}
		return ln, nil
	}
	p, _ := strconv.Atoi(port)
	for i := 1; i < 10; i++ {
		if ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p+i))); err == nil {
			return ln, nil
		}
	}
	return nil, fmt.Errorf("inspector: ports %d-%d on %s are taken; pass --inspect 127.0.0.1:PORT or --inspect \"\"", p, p+9, host)
}

// checkInspectAddr refuses an --inspect address that is not loopback.
func checkInspectAddr(addr string) error {
	if addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--inspect %q: want HOST:PORT on loopback, e.g. %s", addr, defaultInspect)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--inspect %s: the inspector answers on loopback only (it shows and replays every delivery); use --inspect 127.0.0.1:%s", addr, port)
	}
	return nil
}

// agentProcs runs the agent on one P unless GOMAXPROCS says otherwise.
// Its work per delivery is small and mostly waiting; with a P per core,
// idle Ps spin and wake threads for every hand-off between goroutines.
// Measured on 2 cores beside the relay server and the local app: 10-20%
// less CPU per delivery, and the same throughput at 16 and 128 at once.
func agentProcs() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
}
