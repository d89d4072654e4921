package protocol

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// tcpStream makes a loopback TCP connection look like a Stream: kernel
// buffers let one side write while the other reads nothing, as a peer
// that went silent does.
type tcpStream struct{ *net.TCPConn }

func (s tcpStream) CloseWrite() error { return s.TCPConn.CloseWrite() }

func tcpPair(t *testing.T) (Stream, Stream) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-acc
	t.Cleanup(func() { a.Close(); b.Close() })
	return tcpStream{a.(*net.TCPConn)}, tcpStream{b.(*net.TCPConn)}
}

func TestControl(t *testing.T) {
	const hb = 20 * time.Millisecond
	t.Run("a peer that never answers is not declared gone: the session decides that", func(t *testing.T) {
		a, b := tcpPair(t)
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- NewControl(a, hb).Run(ctx) }()
		// Ten pings unanswered: far more than any heartbeat limit.
		for range 10 {
			typ, _, err := ReadFrame(b)
			if err != nil || typ != FramePing {
				t.Fatalf("read %v, %v; want a ping", typ, err)
			}
		}
		select {
		case err := <-errc:
			t.Fatalf("Run ended by itself: %v", err)
		default:
		}
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("Run() = %v after cancel", err)
		}
	})
	t.Run("two live peers measure the round trip", func(t *testing.T) {
		a, b := tcpPair(t)
		ca, cb := NewControl(a, hb), NewControl(b, hb)
		ctx, cancel := context.WithCancel(context.Background())
		errs := make(chan error, 2)
		go func() { errs <- ca.Run(ctx) }()
		go func() { errs <- cb.Run(ctx) }()
		deadline := time.Now().Add(15 * time.Second)
		for ca.RTT() <= 0 || cb.RTT() <= 0 {
			if time.Now().After(deadline) {
				t.Fatalf("RTT not measured: %s %s", ca.RTT(), cb.RTT())
			}
			select {
			case err := <-errs:
				t.Fatalf("a live session ended: %v", err)
			case <-time.After(hb):
			}
		}
		cancel()
		<-errs
		<-errs
	})
	t.Run("a GoAway ends the agent's side with its reason", func(t *testing.T) {
		a, b := tcpPair(t)
		agent, srv := NewControl(a, time.Hour), NewControl(b, time.Hour)
		if err := srv.SendGoAway(GoAway{Reason: "replaced", Message: "newer session"}); err != nil {
			t.Fatal(err)
		}
		err := agent.Run(context.Background())
		var ga *GoAwayError
		if !errors.As(err, &ga) || ga.GoAway.Reason != "replaced" {
			t.Fatalf("Run() = %v, want a GoAwayError for replaced", err)
		}
	})
}

// pipeStream is one end of net.Pipe as a Stream, for synctest's clock.
type pipeStream struct{ net.Conn }

func (pipeStream) CloseWrite() error { return nil }

// TestControlPingTimer runs the ping timer on synctest's clock: a ping
// every interval while the peer answers, one every probe while it does
// not.
func TestControlPingTimer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval = 5 * time.Second // probe: AgentKeepAlive, 1 s
		a, b := net.Pipe()
		var (
			mu     sync.Mutex
			pings  []time.Time
			answer atomic.Bool
		)
		answer.Store(true)
		go func() {
			for {
				typ, p, err := ReadFrame(b)
				if err != nil {
					return
				}
				if typ != FramePing {
					continue
				}
				mu.Lock()
				pings = append(pings, time.Now())
				mu.Unlock()
				if answer.Load() {
					WriteFrame(b, FramePong, p)
				}
			}
		}()
		count := func() int {
			synctest.Wait()
			mu.Lock()
			defer mu.Unlock()
			return len(pings)
		}
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- NewControl(pipeStream{a}, interval).Run(ctx) }()

		time.Sleep(30*time.Second + time.Millisecond)
		if n := count(); n != 6 {
			t.Fatalf("%d pings in 30 s answered at once, want one per %s: 6", n, interval)
		}
		answer.Store(false)
		time.Sleep(10 * time.Second)
		if n := count(); n != 12 {
			t.Fatalf("%d pings at 40 s, the last 10 s unanswered, want 12 (the 7th at 35 s, then one a second)", n)
		}
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("Run() = %v after cancel", err)
		}
		b.Close()
	})
}
