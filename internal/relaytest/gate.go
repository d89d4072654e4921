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
