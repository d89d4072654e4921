package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/quic-go/quic-go"

	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/protocol"
)

// TestAgentsCannotMakeTheServerBufferStreams is the attack of the security
// probe (finding 2): one connection with ALPN relay/1 opens the control
// stream and then 1,023 more streams of 256 KiB each, before its Hello and
// after its Welcome. The server accepts only the control stream; the first
// other one ends the session, so the heap barely moves (it grew by 550 MiB
// when those streams sat in yamux's accept backlog).
func TestAgentsCannotMakeTheServerBufferStreams(t *testing.T) {
	srv := relaytest.StartServer(t)
	token := relaytest.CreateToken(t, srv, "greedy")
	pem, err := os.ReadFile(srv.DevCAPath())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tlsConf := &tls.Config{ServerName: "localhost", RootCAs: pool, NextProtos: []string{protocol.ALPN}}

	for _, tt := range []struct {
		name  string
		hello bool
	}{{"before the Hello", false}, {"after the Welcome", true}} {
		t.Run("tcp "+tt.name, func(t *testing.T) {
			c, err := tls.Dial("tcp", srv.Addr(), tlsConf)
			if err != nil {
				t.Fatal(err)
			}
			conf := yamux.DefaultConfig()
			conf.LogOutput = io.Discard
			conf.EnableKeepAlive = false
			conf.AcceptBacklog = 1024 // lets this side open 1,023 unacknowledged streams
			s, err := yamux.Client(c, conf)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ctrl, err := s.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			if tt.hello {
				ctrl.SetDeadline(time.Now().Add(15 * time.Second))
				if err := protocol.WriteMessage(ctrl, protocol.FrameHello, protocol.Hello{Version: protocol.Version, Token: token, Name: "greedy"}); err != nil {
					t.Fatal(err)
				}
				if _, err := protocol.ReadHelloReply(ctrl); err != nil {
					t.Fatalf("handshake: %v", err)
				}
			} else {
				ctrl.Write(nil) // the SYN, no Hello
			}

			peak := relaytest.WatchHeap(t)
			var base runtimeHeap
			base.read()
			buf := make([]byte, 256<<10)
			var wg sync.WaitGroup
			for range 1023 {
				wg.Go(func() {
					st, err := s.OpenStream()
					if err != nil {
						return
					}
					st.SetWriteDeadline(time.Now().Add(20 * time.Second))
					st.Write(buf)
				})
			}
			wg.Wait()
			select {
			case <-s.CloseChan():
			case <-time.After(15 * time.Second):
				t.Fatal("the server kept a session whose agent opened streams of its own")
			}
			grew := int64(peak()) - int64(base.inuse)
			t.Logf("server heap grew by %.1f MiB at most", float64(grew)/(1<<20))
			if grew > 50<<20 {
				t.Fatalf("the server's heap grew by %d MiB: it buffers streams a stranger opened", grew>>20)
			}
		})
	}

	t.Run("quic", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		conf := tlsConf.Clone()
		c, err := quic.DialAddr(ctx, srv.QUICAddr(), conf, &quic.Config{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseWithError(0, "")
		ctrl, err := c.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		ctrl.Write([]byte{0})
		// The server grants one stream: this side may not open a second.
		if st, err := c.OpenStream(); err == nil {
			st.Write(make([]byte, 256<<10))
			t.Fatal("the server let an agent open a second stream")
		}
	})
}

type runtimeHeap struct{ inuse uint64 }

func (h *runtimeHeap) read() {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	h.inuse = m.HeapInuse
}
