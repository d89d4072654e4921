package protocol

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/quic-go/quic-go"
)

// sessionPair makes a connected server and agent session. Every test of
// the Session contract runs over each, as hashicorp/yamux runs its tests
// over several connection types.
type sessionPair func(t testing.TB, l Liveness) (srv, agent Session)

var sessionPairs = []struct {
	name string
	pair sessionPair
}{
	{"quic", quicPair},
	{"yamux over tls", yamuxTLSPair},
	{"yamux over net.Pipe", yamuxPipePair},
}

// forEachPair runs f over every transport with generous liveness, so no
// session ends for silence while a test runs on a loaded machine.
func forEachPair(t *testing.T, f func(t *testing.T, srv, agent Session)) {
	for _, p := range sessionPairs {
		t.Run(p.name, func(t *testing.T) {
			srv, agent := p.pair(t, LivenessFor(time.Minute))
			f(t, srv, agent)
		})
	}
}

var testCert = sync.OnceValues(func() (tls.Certificate, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
})

func serverTLS() *tls.Config {
	cert, _ := testCert()
	return &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{ALPN}}
}

func agentTLS() *tls.Config {
	_, pool := testCert()
	return &tls.Config{ServerName: "localhost", RootCAs: pool}
}

func quicPair(t testing.TB, l Liveness) (Session, Session) {
	t.Helper()
	ln, err := quic.ListenAddr("127.0.0.1:0", serverTLS(), ServerQUICConfig(l))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan *quic.Conn, 1)
	go func() {
		c, err := ln.Accept(context.Background())
		if err == nil {
			accepted <- c
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	agent, err := DialQUIC(ctx, ln.Addr().String(), agentTLS(), l)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewQUICSession(<-accepted)
	t.Cleanup(func() { agent.Close(); srv.Close() })
	return srv, agent
}

func yamuxTLSPair(t testing.TB, l Liveness) (Session, Session) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverTLS())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan Session, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if err := c.(*tls.Conn).Handshake(); err != nil {
			return
		}
		s, err := ServerYamux(c, l)
		if err == nil {
			accepted <- s
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	agent, err := DialTCP(ctx, ln.Addr().String(), agentTLS(), l)
	if err != nil {
		t.Fatal(err)
	}
	srv := <-accepted
	t.Cleanup(func() { agent.Close(); srv.Close() })
	return srv, agent
}

func yamuxPipePair(t testing.TB, l Liveness) (Session, Session) {
	t.Helper()
	a, b := net.Pipe()
	srv, err := ServerYamux(a, l)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := ClientYamux(b, l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close(); srv.Close() })
	return srv, agent
}

// openAccepted opens a stream from the server (as a delivery is), writes
// hello (a QUIC stream is invisible to the peer until written to) and
// returns both ends.
func openAccepted(t *testing.T, srv, agent Session) (Stream, Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	st, err := srv.OpenStream(ctx)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if _, err := st.Write([]byte("hello")); err != nil {
		t.Fatalf("write: %v", err)
	}
	ast, err := agent.AcceptStream(ctx)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(ast, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v", buf, err)
	}
	t.Cleanup(func() { st.Close(); ast.Close() })
	return st, ast
}

// within waits for a result that must come; the deadline only bounds a
// hang, it is not a timing assertion.
func within[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(15 * time.Second):
		t.Fatalf("%s: still blocked after 15s", what)
		panic("unreachable")
	}
}

// writeForever writes until the stream fails and returns the error.
func writeForever(st Stream) error {
	buf := make([]byte, 64<<10)
	for {
		if _, err := st.Write(buf); err != nil {
			return err
		}
	}
}

// readToEnd reads until the stream ends and returns how it ended.
func readToEnd(st Stream) (int64, error) {
	return io.Copy(io.Discard, st)
}

func TestSessionContract(t *testing.T) {
	t.Run("the agent's first stream reaches the server", func(t *testing.T) {
		forEachPair(t, func(t *testing.T, srv, agent Session) {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			ctrl, err := agent.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer ctrl.Close()
			ctrl.Write([]byte("hi"))
			st, err := srv.AcceptStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			buf := make([]byte, 2)
			if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "hi" {
				t.Fatalf("read %q, %v", buf, err)
			}
		})
	})

	t.Run("data flows both ways on a stream the server opens", func(t *testing.T) {
		forEachPair(t, func(t *testing.T, srv, agent Session) {
			st, ast := openAccepted(t, srv, agent)
			if _, err := ast.Write([]byte("world")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 5)
			if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "world" {
				t.Fatalf("read %q, %v", buf, err)
			}
		})
	})

	t.Run("CloseWrite gives the peer EOF after the last byte, and the peer may still answer", func(t *testing.T) {
		forEachPair(t, func(t *testing.T, srv, agent Session) {
			st, ast := openAccepted(t, srv, agent)
			body := bytes.Repeat([]byte("b"), 3<<20) // more than one window
			go func() {
				st.Write(body)
				st.CloseWrite()
			}()
			got, err := io.ReadAll(ast)
			if err != nil || !bytes.Equal(got, body) {
				t.Fatalf("peer read %d bytes, %v; want %d and a clean EOF", len(got), err, len(body))
			}
			if _, err := ast.Write([]byte("answer")); err != nil {
				t.Fatalf("answer after the peer's CloseWrite: %v", err)
			}
			ast.CloseWrite()
			ans, err := io.ReadAll(st)
			if err != nil || string(ans) != "answer" {
				t.Fatalf("read answer %q, %v", ans, err)
			}
		})
	})

	t.Run("Close releases a blocked writer and the peer sees an abort, never a clean EOF", func(t *testing.T) {
		forEachPair(t, func(t *testing.T, srv, agent Session) {
			st, ast := openAccepted(t, srv, agent)
			werr := make(chan error, 1)
			go func() { werr <- writeForever(st) }()
			// Once the peer has bytes, the writer fills the window and
			// blocks: the peer reads nothing more until after Close.
			one := make([]byte, 1)
			if _, err := io.ReadFull(ast, one); err != nil {
				t.Fatal(err)
			}
			st.Close()
			if err := within(t, "the blocked writer", werr); !errors.Is(err, ErrStreamAborted) {
				t.Fatalf("writer got %v, want ErrStreamAborted", err)
			}
			rerr := make(chan error, 1)
			go func() { _, err := readToEnd(ast); rerr <- err }()
			if err := within(t, "the peer's read", rerr); err == nil || !errors.Is(err, ErrStreamAborted) {
				t.Fatalf("peer's read ended with %v, want ErrStreamAborted (a clean EOF would pass a cut body as whole)", err)
			}
		})
	})

	t.Run("Close stops a peer that is still writing", func(t *testing.T) {
		forEachPair(t, func(t *testing.T, srv, agent Session) {
			st, ast := openAccepted(t, srv, agent)
			werr := make(chan error, 1)
			go func() { werr <- writeForever(ast) }()
			one := make([]byte, 1)
			if _, err := io.ReadFull(st, one); err != nil {
				t.Fatal(err)
			}
			st.Close()
			if err := within(t, "the peer's writer", werr); !errors.Is(err, ErrStreamAborted) {
				t.Fatalf("peer's writer got %v, want ErrStreamAborted", err)
			}
		})
	})

	t.Run("Close releases a blocked reader", func(t *testing.T) {
		forEachPair(t, func(t *testing.T, srv, agent Session) {
			st, _ := openAccepted(t, srv, agent)
			rerr := make(chan error, 1)
			go func() { _, err := st.Read(make([]byte, 1)); rerr <- err }()
			st.Close()
			if err := within(t, "the blocked reader", rerr); !errors.Is(err, ErrStreamAborted) {
				t.Fatalf("reader got %v, want ErrStreamAborted", err)
			}
		})
	})

	t.Run("many concurrent streams each carry their own bytes", func(t *testing.T) {
		forEachPair(t, func(t *testing.T, srv, agent Session) {
			const n = 300
			go func() { // the agent echoes every stream
				for {
					st, err := agent.AcceptStream(context.Background())
					if err != nil {
						return
					}
					go func() {
						defer st.Close()
						io.Copy(st, st)
						st.CloseWrite()
					}()
				}
			}()
			errs := make(chan error, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					st, err := srv.OpenStream(ctx)
					if err != nil {
						errs <- err
						return
					}
					defer st.Close()
					want := bytes.Repeat(fmt.Appendf(nil, "%d,", i), 1000+i)
					go func() {
						st.Write(want)
						st.CloseWrite()
					}()
					got, err := io.ReadAll(st)
					if err != nil || !bytes.Equal(got, want) {
						errs <- fmt.Errorf("stream %d: %d bytes back of %d, %v", i, len(got), len(want), err)
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	})

	t.Run("Close of the session ends every stream on both sides and Done fires", func(t *testing.T) {
		forEachPair(t, func(t *testing.T, srv, agent Session) {
			const n = 5
			ends := make(chan error, 2*n)
			for range n {
				st, ast := openAccepted(t, srv, agent)
				go func() { _, err := readToEnd(st); ends <- err }()
				go func() { ends <- writeForever(ast) }()
			}
			srv.Close()
			for range 2 * n {
				if err := within(t, "a stream of the closed session", ends); err == nil {
					t.Fatal("a stream ended without an error")
				}
			}
			within(t, "the server's Done", srv.Done())
			within(t, "the agent's Done", agent.Done())
			if !errors.Is(srv.Err(), ErrSessionClosed) {
				t.Errorf("server Err() = %v, want ErrSessionClosed", srv.Err())
			}
			if agent.Err() == nil {
				t.Error("agent Err() is nil after its session ended")
			}
		})
	})
}

func isDone(s Session) bool {
	select {
	case <-s.Done():
		return true
	default:
		return false
	}
}

// TestWatchdog runs the yamux watchdog's timer logic on synctest's clock
// with byte counters the test moves.
func TestWatchdog(t *testing.T) {
	l := Liveness{KeepAlive: 5 * time.Second, IdleTimeout: 15 * time.Second}
	type dog struct {
		in, out    atomic.Int64 // bytes received, sent
		keepalives atomic.Int64
		result     chan error
		w          *watchdog
	}
	start := func(l Liveness) *dog {
		d := &dog{result: make(chan error, 1)}
		d.w = newWatchdog(l, d.in.Load, d.out.Load, func() { d.keepalives.Add(1); d.out.Add(12) })
		d.w.start(nil, func(err error) { d.result <- err })
		return d
	}
	ended := func(d *dog) (error, bool) {
		select {
		case err := <-d.result:
			return err, true
		default:
			return nil, false
		}
	}
	t.Run("a session that receives nothing is dead after the idle timeout, not before", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			d := start(l)
			time.Sleep(l.IdleTimeout - time.Second)
			synctest.Wait()
			if err, ok := ended(d); ok {
				t.Fatalf("ended before the idle timeout: %v", err)
			}
			if n := d.keepalives.Load(); n < 2 {
				t.Errorf("%d keep-alives in %s of quiet, want one per %s", n, l.IdleTimeout-time.Second, l.KeepAlive)
			}
			time.Sleep(2 * time.Second)
			synctest.Wait()
			if err, ok := ended(d); !ok || !errors.Is(err, ErrPeerSilent) {
				t.Fatalf("after the idle timeout: ended %v with %v, want ErrPeerSilent", ok, err)
			}
		})
	})
	t.Run("bytes arriving keep the session alive; bytes leaving need no keep-alive", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			d := start(l)
			for range 100 { // ten idle timeouts
				d.in.Add(1)
				d.out.Add(1)
				time.Sleep(1500 * time.Millisecond)
			}
			synctest.Wait()
			if err, ok := ended(d); ok {
				t.Fatalf("a session receiving bytes ended: %v", err)
			}
			if n := d.keepalives.Load(); n != 0 {
				t.Errorf("%d keep-alives on a session that kept sending", n)
			}
			d.w.stop()
			time.Sleep(l.IdleTimeout * 2)
			synctest.Wait()
			if err, ok := ended(d); ok {
				t.Fatalf("a stopped watchdog ended the session: %v", err)
			}
		})
	})
	t.Run("a side that only receives still sends keep-alives", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			d := start(l)
			for range 20 {
				d.in.Add(1)
				time.Sleep(time.Second)
			}
			if n := d.keepalives.Load(); n < 3 {
				t.Errorf("%d keep-alives in 20s of receiving only: the peer would hear nothing", n)
			}
			d.w.stop()
		})
	})
	t.Run("a stall of this process counts as two checks of silence, not the whole stall", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var in atomic.Int64
			var stall atomic.Bool
			result := make(chan error, 1)
			// received is read inside the check: sleeping there is a
			// check that ran, then a process that got no CPU for 20s.
			w := newWatchdog(l, func() int64 {
				if stall.CompareAndSwap(true, false) {
					time.Sleep(20 * time.Second)
				}
				return in.Load()
			}, func() int64 { return 0 }, func() {})
			w.start(nil, func(err error) { result <- err })
			defer w.stop()
			for range 5 {
				in.Add(1)
				time.Sleep(time.Second)
			}
			stall.Store(true)
			time.Sleep(25 * time.Second) // the stall, then five seconds of running silence
			synctest.Wait()
			select {
			case err := <-result:
				t.Fatalf("ended after a 20s stall of its own and 5s of silence: %v", err)
			default:
			}
			time.Sleep(l.IdleTimeout)
			synctest.Wait()
			select {
			case err := <-result:
				if !errors.Is(err, ErrPeerSilent) {
					t.Fatalf("ended with %v, want ErrPeerSilent", err)
				}
			default:
				t.Fatal("still alive after a whole idle timeout of running silence")
			}
		})
	})
	t.Run("a keep-alive interval set after the handshake applies", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			d := start(l)
			d.w.set(LivenessFor(100 * time.Millisecond))
			time.Sleep(time.Second)
			synctest.Wait()
			if err, ok := ended(d); !ok || !errors.Is(err, ErrPeerSilent) {
				t.Fatalf("one second after a 300ms idle timeout was set: ended %v with %v", ok, err)
			}
		})
	})
}

// silentPeer is the far end of a yamux session that reads and drops
// everything and writes nothing: a peer whose process stopped.
func silentPeer(t *testing.T, l Liveness) Session {
	a, b := net.Pipe()
	go io.Copy(io.Discard, b)
	s, err := ClientYamux(a, l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); b.Close() })
	return s
}

func TestYamuxSilentPeerIsNoticed(t *testing.T) {
	s := silentPeer(t, LivenessFor(50*time.Millisecond))
	within(t, "the session to end", s.Done())
	if !errors.Is(s.Err(), ErrPeerSilent) {
		t.Fatalf("Err() = %v, want ErrPeerSilent", s.Err())
	}
}

// slowConn passes writes through at about rate bytes per second: a
// saturated link.
type slowConn struct {
	net.Conn
	rate int
}

func (c slowConn) Write(p []byte) (int, error) {
	const chunk = 4 << 10
	n := 0
	for len(p) > 0 {
		k := min(len(p), chunk)
		time.Sleep(time.Duration(k) * time.Second / time.Duration(c.rate)) // the link's pace, not synchronisation
		w, err := c.Conn.Write(p[:k])
		n += w
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}

// TestYamuxBusySessionOutlivesPingsStuckBehindData saturates a slow link
// so that every ping (yamux's and the control stream's) waits behind
// hundreds of kilobytes of data frames, far longer than the idle timeout:
// the session must stay up because bytes keep arriving.
func TestYamuxBusySessionOutlivesPingsStuckBehindData(t *testing.T) {
	l := LivenessFor(100 * time.Millisecond) // idle timeout 300ms
	a, b := net.Pipe()
	srv, err := ServerYamux(slowConn{a, 512 << 10}, l)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := ClientYamux(slowConn{b, 512 << 10}, l)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	defer agent.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The control stream, with pings both ways.
	ast, _ := agent.OpenStream(ctx)
	ast.Write([]byte{0})
	sst, err := srv.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sst.Read(make([]byte, 1))
	ctrlErr := make(chan error, 2)
	sc, ac := NewControl(sst, l.KeepAlive), NewControl(ast, l.KeepAlive)
	go func() { ctrlErr <- sc.Run(ctx) }()
	go func() { ctrlErr <- ac.Run(ctx) }()

	go func() {
		for {
			st, err := agent.AcceptStream(ctx)
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, st); st.Close() }()
		}
	}()
	// 2 MiB on eight streams: four seconds on this link, each frame up to
	// 256 KiB, so a ping queued behind them waits seconds.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			st, err := srv.OpenStream(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := io.Copy(st, io.LimitReader(zeros{}, 256<<10)); err != nil {
				t.Errorf("transfer: %v (session: %v)", err, srv.Err())
			}
			st.CloseWrite()
		})
	}
	wg.Wait()
	select {
	case err := <-ctrlErr:
		t.Fatalf("control ended under load: %v", err)
	default:
	}
	if isDone(srv) || isDone(agent) {
		t.Fatalf("a busy session was taken for dead: server %v, agent %v", srv.Err(), agent.Err())
	}
	t.Logf("round trip of the last answered ping: server %s, agent %s (idle timeout %s)", sc.RTT(), ac.RTT(), l.IdleTimeout)
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
