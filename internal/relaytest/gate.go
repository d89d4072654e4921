package relaytest

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// UDPGate forwards UDP between agents and a QUIC listener while open, and
// silently drops every datagram while closed: a network that went away
// without telling anyone, as a sleeping laptop's does.
type UDPGate struct {
	conn   *net.UDPConn
	target *net.UDPAddr
	Open   atomic.Bool
	mu     sync.Mutex
	peers  map[string]*net.UDPConn // agent address -> socket towards target
}

// NewUDPGate forwards to target; open says whether it starts open.
func NewUDPGate(t testing.TB, target string, open bool) *UDPGate {
	t.Helper()
	ta, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	g := &UDPGate{conn: c, target: ta, peers: map[string]*net.UDPConn{}}
	g.Open.Store(open)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		c.Close()
		g.mu.Lock()
		for _, p := range g.peers {
			p.Close()
		}
		g.mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if !g.Open.Load() {
				continue
			}
			g.mu.Lock()
			up, ok := g.peers[from.String()]
			if !ok {
				up, err = net.DialUDP("udp", nil, ta)
				if err != nil {
					g.mu.Unlock()
					continue
				}
				g.peers[from.String()] = up
				wg.Add(1)
				go func() {
					defer wg.Done()
					b := make([]byte, 64<<10)
					for {
						n, err := up.Read(b)
						if err != nil {
							return
						}
						if g.Open.Load() {
							c.WriteToUDP(b[:n], from)
						}
					}
				}()
			}
			g.mu.Unlock()
			up.Write(buf[:n])
		}
	}()
	return g
}

// Addr is where agents send their QUIC packets instead of the server.
func (g *UDPGate) Addr() string { return g.conn.LocalAddr().String() }

// TCPGate forwards TCP connections to a target while open. Closing it
// (Open.Store(false)) cuts the network silently: nothing more passes
// either way on the connections it carries, but none is closed, as when a
// cable is pulled or a laptop sleeps. New connections are refused while it
// is closed, so a reconnect attempt fails at once rather than hanging in
// its TLS handshake.
type TCPGate struct {
	ln   net.Listener
	Open atomic.Bool
}

// NewTCPGate forwards to target and starts open.
func NewTCPGate(t testing.TB, target string) *TCPGate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &TCPGate{ln: ln}
	g.Open.Store(true)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if err != nil {
				// A pulled cable carries no FIN either: the far end
				// must notice the silence for itself.
				if g.Open.Load() {
					dst.Close()
				}
				return
			}
			if g.Open.Load() {
				if _, err := dst.Write(buf[:n]); err != nil {
					src.Close()
					return
				}
			}
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !g.Open.Load() {
				c.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			wg.Add(2)
			go pipe(up, c)
			go pipe(c, up)
		}
	}()
	return g
}

// Addr is where agents connect instead of the server.
func (g *TCPGate) Addr() string { return g.ln.Addr().String() }
