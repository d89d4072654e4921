package protocol

import (
	"context"
	"errors"
	"net"
	"testing"
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
