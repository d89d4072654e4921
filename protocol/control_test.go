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
	t.Run("a silent peer is declared gone after three intervals", func(t *testing.T) {
		a, _ := tcpPair(t)
		start := time.Now()
		err := NewControl(a, hb).Run(context.Background())
		if !errors.Is(err, ErrHeartbeatTimeout) {
			t.Fatalf("Run() = %v, want ErrHeartbeatTimeout", err)
		}
		if el := time.Since(start); el < 3*hb {
			t.Fatalf("gave up after %s, before three intervals", el)
		}
	})
	t.Run("two live peers keep the session up and measure the round trip", func(t *testing.T) {
		a, b := tcpPair(t)
		ca, cb := NewControl(a, hb), NewControl(b, hb)
		ctx, cancel := context.WithCancel(context.Background())
		errs := make(chan error, 2)
		go func() { errs <- ca.Run(ctx) }()
		go func() { errs <- cb.Run(ctx) }()
		// Ten intervals is more than three times the silence limit.
		select {
		case err := <-errs:
			t.Fatalf("a live session ended: %v", err)
		case <-time.After(10 * hb):
		}
		cancel()
		<-errs
		<-errs
		if ca.RTT() <= 0 || cb.RTT() <= 0 {
			t.Fatalf("RTT not measured: %s %s", ca.RTT(), cb.RTT())
		}
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

func (s tcpStream) CloseWrite() error { return s.TCPConn.CloseWrite() }
