package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

// Sockets are listening sockets handed down by systemd (socket
// activation, sd_listen_fds(3)): relay.socket holds TCP 443, UDP 443 and
// TCP 80 open across restarts of relay.service, so a provider connecting
// while relay restarts waits in the kernel's queue and is served by the
// next process instead of being refused.
//
// The protocol is three environment variables and file descriptors from
// 3 on; coreos/go-systemd's activation package would add a dependency for
// those few lines and still leave the part relay needs, telling which
// socket is --listen, --quic-listen and --http-listen, to be written here.
// Sockets are matched to those flags by type and address, so one
// relay.socket with three Listen lines needs no FileDescriptorName.
type Sockets struct {
	tcp []*net.TCPListener
	udp []*net.UDPConn
}

// listenFDsStart is the first descriptor systemd passes.
const listenFDsStart = 3

// ErrSockets wraps every problem with inherited sockets.
var ErrSockets = errors.New("sockets from systemd")

// SocketsFromEnv takes the sockets systemd passed to this process
// (LISTEN_PID is ours, LISTEN_FDS counts them) and unsets the variables
// so that no child takes them for its own. It returns nil, nil when there
// are none.
func SocketsFromEnv() (*Sockets, error) {
	pid, count := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	if count == "" {
		return nil, nil
	}
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(v)
	}
	if p, err := strconv.Atoi(pid); err != nil || p != os.Getpid() {
		return nil, nil // meant for another process (a shell between systemd and us)
	}
	n, err := strconv.Atoi(count)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("%w: LISTEN_FDS=%q is not a count", ErrSockets, count)
	}
	files := make([]*os.File, n)
	for i := range files {
		files[i] = os.NewFile(uintptr(listenFDsStart+i), "LISTEN_FD_"+strconv.Itoa(listenFDsStart+i))
	}
	return SocketsFromFiles(files)
}

// SocketsFromFiles adopts listening TCP and UDP sockets: each file is
// duplicated into a listener or connection and then closed.
func SocketsFromFiles(files []*os.File) (*Sockets, error) {
	s := &Sockets{}
	for _, f := range files {
		err := s.adopt(f)
		f.Close()
		if err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

func (s *Sockets) adopt(f *os.File) error {
	if ln, err := net.FileListener(f); err == nil {
		if tl, ok := ln.(*net.TCPListener); ok {
			s.tcp = append(s.tcp, tl)
			return nil
		}
		ln.Close()
	}
	if pc, err := net.FilePacketConn(f); err == nil {
		if uc, ok := pc.(*net.UDPConn); ok {
			s.udp = append(s.udp, uc)
			return nil
		}
		pc.Close()
	}
	return fmt.Errorf("%w: %s is neither a listening TCP socket nor a UDP socket (relay.socket wants ListenStream= and ListenDatagram= lines)", ErrSockets, f.Name())
}

// listenTCP is the inherited TCP socket for addr, or a new one.
func (s *Sockets) listenTCP(addr string) (net.Listener, error) {
	if s != nil {
		for i, ln := range s.tcp {
			if sameAddr(addr, ln.Addr().(*net.TCPAddr).IP, ln.Addr().(*net.TCPAddr).Port) {
				s.tcp = append(s.tcp[:i], s.tcp[i+1:]...)
				return ln, nil
			}
		}
	}
	return net.Listen("tcp", addr)
}

// listenUDP is the inherited UDP socket for addr, or a new one.
func (s *Sockets) listenUDP(addr string) (*net.UDPConn, error) {
	if s != nil {
		for i, c := range s.udp {
			la := c.LocalAddr().(*net.UDPAddr)
			if sameAddr(addr, la.IP, la.Port) {
				s.udp = append(s.udp[:i], s.udp[i+1:]...)
				return c, nil
			}
		}
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	return net.ListenUDP("udp", ua)
}

// sameAddr reports whether an inherited socket bound to ip:port is the
// one configured as addr: the same port, and the same address unless
// either side is the wildcard (":443" or "[::]:443").
func sameAddr(addr string, ip net.IP, port int) bool {
	host, p, err := net.SplitHostPort(addr)
	if err != nil || p != strconv.Itoa(port) || port == 0 {
		return false
	}
	want := net.ParseIP(host)
	if host == "" || ip.IsUnspecified() || (want != nil && want.IsUnspecified()) {
		return true
	}
	return want != nil && want.Equal(ip)
}

// unused names the inherited sockets no flag asked for, and closes them:
// a relay.socket that disagrees with the flags is a mistake to report,
// not a port to hold open with nobody answering.
func (s *Sockets) unused() error {
	if s == nil {
		return nil
	}
	var left []string
	for _, ln := range s.tcp {
		left = append(left, "tcp "+ln.Addr().String())
	}
	for _, c := range s.udp {
		left = append(left, "udp "+c.LocalAddr().String())
	}
	s.Close()
	if len(left) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s matches none of --listen, --quic-listen, --http-listen; make relay.socket and the flags agree", ErrSockets, strings.Join(left, ", "))
}

// Close closes the sockets not yet taken.
func (s *Sockets) Close() {
	if s == nil {
		return
	}
	for _, ln := range s.tcp {
		ln.Close()
	}
	for _, c := range s.udp {
		c.Close()
	}
	s.tcp, s.udp = nil, nil
}

// Len is how many sockets are not yet taken.
func (s *Sockets) Len() int {
	if s == nil {
		return 0
	}
	return len(s.tcp) + len(s.udp)
}
