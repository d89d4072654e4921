package server

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
)

func TestInheritedSocketsMatchTheFlagsByAddress(t *testing.T) {
	tests := []struct {
		flag string
		ip   string
		port int
		want bool
	}{
		{":443", "::", 443, true},
		{":443", "0.0.0.0", 443, true},
		{"[::]:443", "0.0.0.0", 443, true},
		{"0.0.0.0:443", "203.0.113.7", 443, true},
		{"203.0.113.7:443", "203.0.113.7", 443, true},
		{"203.0.113.7:443", "203.0.113.8", 443, false},
		{"127.0.0.1:8443", "127.0.0.1", 443, false},
		{":80", "::", 443, false},
		{"127.0.0.1:0", "127.0.0.1", 0, false},
		{"relay.example.com:443", "203.0.113.7", 443, false},
	}
	for _, tt := range tests {
		if got := sameAddr(tt.flag, net.ParseIP(tt.ip), tt.port); got != tt.want {
			t.Errorf("flag %s, socket %s:%d: match %v, want %v", tt.flag, tt.ip, tt.port, got, tt.want)
		}
	}
}

// inherit binds what a relay.socket would and hands it over as files.
func inherit(t *testing.T, tcpAddrs []string, udpAddrs []string) *Sockets {
	t.Helper()
	var files []*os.File
	for _, a := range tcpAddrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		f, _ := ln.(*net.TCPListener).File()
		files = append(files, f)
	}
	for _, a := range udpAddrs {
		c, err := net.ListenPacket("udp", a)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		f, _ := c.(*net.UDPConn).File()
		files = append(files, f)
	}
	s, err := SocketsFromFiles(files)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAServerTakesItsInheritedSockets(t *testing.T) {
	s := inherit(t, []string{"127.0.0.1:0"}, nil)
	addr := s.tcp[0].Addr().String()
	srv, err := New(context.Background(), Config{Dev: true, Listen: addr, QUICListen: "off", DataDir: t.TempDir(), Sockets: s})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	if srv.Addr() != addr || s.Len() != 0 {
		t.Errorf("server on %s with %d sockets left; want %s taken", srv.Addr(), s.Len(), addr)
	}
}

func TestASocketNoFlagAsksForIsAnError(t *testing.T) {
	s := inherit(t, []string{"127.0.0.1:0"}, []string{"127.0.0.1:0"})
	udp := s.udp[0].LocalAddr().String()
	_, err := New(context.Background(), Config{Dev: true, Listen: s.tcp[0].Addr().String(), QUICListen: "off", DataDir: t.TempDir(), Sockets: s})
	if !errors.Is(err, ErrSockets) || !strings.Contains(err.Error(), "udp "+udp) {
		t.Errorf("err = %v; want the unused UDP socket named", err)
	}
}

func TestSocketsFromEnvIgnoresAnotherProcesssSockets(t *testing.T) {
	t.Setenv("LISTEN_PID", "1")
	t.Setenv("LISTEN_FDS", "3")
	s, err := SocketsFromEnv()
	if s != nil || err != nil {
		t.Errorf("sockets for pid 1 taken: %v %v", s, err)
	}
	if os.Getenv("LISTEN_FDS") != "" {
		t.Error("LISTEN_FDS left for children to misread")
	}
}
