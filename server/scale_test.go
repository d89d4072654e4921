package server_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/protocol"
)

// BenchmarkIdleTunnels measures what an idle tunnel costs a relay server:
// the server runs in this process, and N agents' sessions (Hello, Welcome,
// then nothing but the transport's keep-alives) come from a child process,
// so that only the server's memory and goroutines are counted. It reports
// the Go heap and stacks per tunnel, the process's RSS growth per tunnel,
// and goroutines per tunnel. b.N is not used: one round per size.
//
//	go test -run '^$' -bench BenchmarkIdleTunnels -benchtime 1x ./server/
func BenchmarkIdleTunnels(b *testing.B) {
	for _, tr := range relaytest.Transports {
		for _, n := range []int{1000, 10000} {
			b.Run(fmt.Sprintf("%s/%d", tr, n), func(b *testing.B) { idleTunnels(b, tr, n) })
		}
	}
}

func memInUse() (heap, stacks uint64, goroutines int) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse, m.StackInuse, runtime.NumGoroutine()
}

func idleTunnels(b *testing.B, transport string, n int) {
	if os.Getenv("RELAY_IDLE_PROFILE") != "" {
		// A finer sample than the default 512 KiB: the profile is read
		// per tunnel, a few KiB each.
		defer func(r int) { runtime.MemProfileRate = r }(runtime.MemProfileRate)
		runtime.MemProfileRate = 4096
	}
	srv := relaytest.StartServer(b)
	names := make([]string, n)
	for i := range names {
		names[i] = "idle-" + strconv.Itoa(i)
	}
	_, token, err := srv.Store().CreateToken(context.Background(), names...)
	if err != nil {
		b.Fatal(err)
	}
	addr := srv.Addr()
	if transport == "quic" {
		addr = srv.QUICAddr()
	}
	heap0, stacks0, g0 := memInUse()
	rss0 := relaytest.RSS()

	child := exec.Command(os.Args[0], "-test.run=^TestIdleTunnelClients$")
	child.Env = append(os.Environ(), "RELAY_IDLE_CLIENTS="+strings.Join([]string{transport, strconv.Itoa(n), addr, token, srv.DevCAPath()}, ","))
	stdin, _ := child.StdinPipe()
	stdout, _ := child.StdoutPipe()
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close()
		child.Wait()
	}()
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && !strings.HasPrefix(sc.Text(), "connected") {
	}
	go io.Copy(io.Discard, stdout)
	deadline := time.Now().Add(6 * time.Minute)
	for srv.Tunnels() < n && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond) // polling a count, in a benchmark
	}
	if got := srv.Tunnels(); got < n {
		b.Fatalf("%d of %d tunnels up", got, n)
	}
	heap1, stacks1, g1 := memInUse()
	rss1 := relaytest.RSS()
	if dir := os.Getenv("RELAY_IDLE_PROFILE"); dir != "" {
		// go tool pprof -sample_index=inuse_space DIR/idle-quic-1000.heap
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("idle-%s-%d.heap", transport, n)))
		if err != nil {
			b.Fatal(err)
		}
		pprof.Lookup("heap").WriteTo(f, 0)
		f.Close()
		// go tool pprof -top DIR/idle-quic-1000.goroutine
		g, err := os.Create(filepath.Join(dir, fmt.Sprintf("idle-%s-%d.goroutine", transport, n)))
		if err != nil {
			b.Fatal(err)
		}
		pprof.Lookup("goroutine").WriteTo(g, 0)
		g.Close()
	}
	perTunnel := func(after, before uint64) float64 { return float64(int64(after)-int64(before)) / float64(n) / 1024 }
	b.ReportMetric(perTunnel(heap1+stacks1, heap0+stacks0), "heapKB/tunnel") // heap and stacks, the name kept for comparisons
	b.ReportMetric(perTunnel(stacks1, stacks0), "stackKB/tunnel")
	b.ReportMetric(float64(int64(rss1)-int64(rss0))/float64(n)/1024, "rssKB/tunnel")
	b.ReportMetric(float64(g1-g0)/float64(n), "goroutines/tunnel")
}

// TestIdleTunnelClients is BenchmarkIdleTunnels' child process: it opens
// the sessions, says "connected", and holds them until stdin closes.
func TestIdleTunnelClients(t *testing.T) {
	spec := os.Getenv("RELAY_IDLE_CLIENTS")
	if spec == "" {
		t.Skip("run by BenchmarkIdleTunnels")
	}
	f := strings.Split(spec, ",")
	transport, addr, token, caPath := f[0], f[2], f[3], f[4]
	n, _ := strconv.Atoi(f[1])
	pem, err := os.ReadFile(caPath)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tlsConf := &tls.Config{ServerName: "localhost", RootCAs: pool}
	var mu sync.Mutex
	var sessions []protocol.Session
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var s protocol.Session
			var err error
			if transport == "quic" {
				s, err = protocol.DialQUIC(ctx, addr, tlsConf, protocol.LivenessFor(0))
			} else {
				s, err = protocol.DialTCP(ctx, addr, tlsConf, protocol.LivenessFor(0))
			}
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			ctrl, err := s.OpenStream(ctx)
			if err == nil {
				err = protocol.WriteMessage(ctrl, protocol.FrameHello, protocol.Hello{Version: protocol.Version, Token: token, Name: "idle-" + strconv.Itoa(i)})
			}
			if err == nil {
				_, err = protocol.ReadHelloReply(ctrl)
			}
			if err != nil {
				t.Errorf("handshake: %v", err)
				s.Close()
				return
			}
			// Pings on the control stream are read and dropped, as an
			// idle agent's would be answered: nothing piles up.
			go io.Copy(io.Discard, ctrl)
			mu.Lock()
			sessions = append(sessions, s)
			mu.Unlock()
		})
	}
	wg.Wait()
	fmt.Println("connected", len(sessions))
	io.Copy(io.Discard, os.Stdin)
	for _, s := range sessions {
		s.Close()
	}
}
