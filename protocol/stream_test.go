package protocol

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// streamTransports are the session pairs every stream test runs over: the
// two real transports and yamux over an in-memory pipe (no kernel, no
// TLS), the way hashicorp/yamux runs its own tests over several
// connection types. open returns the server's and the agent's session,
// with liveness generous enough for a loaded machine.
var streamTransports = []struct {
	name string
	open func(testing.TB) (server, agent Session)
}{
	{"quic", withLiveness(quicPair)},
	{"yamux-tls", withLiveness(yamuxTLSPair)},
	{"yamux-pipe", withLiveness(yamuxPipePair)},
}

func withLiveness(pair sessionPair) func(testing.TB) (Session, Session) {
	return func(t testing.TB) (Session, Session) { return pair(t, LivenessFor(time.Minute)) }
}

// serveAgent runs handle for every delivery the server opens on sess, as
// the agent does, until the session ends. Notices go to notices.
func serveAgent(t testing.TB, sess Session, handle func(*Inbound), notices chan<- *Notice) {
	var wg sync.WaitGroup
	t.Cleanup(func() { sess.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			st, err := sess.AcceptStream(context.Background())
			if err != nil {
				return
			}
			wg.Go(func() {
				for {
					in, err := ReadInbound(st)
					if err != nil {
						return
					}
					if in.Notice != nil {
						notices <- in.Notice
						return
					}
					handle(in)
					if !in.Kept() {
						return
					}
				}
			})
		}
	})
}

// echo answers 200 with the request body.
func echo(in *Inbound) {
	body, err := io.ReadAll(in.Request.Body)
	if err != nil {
		in.Abort()
		return
	}
	in.Respond(&http.Response{
		StatusCode: http.StatusOK, ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"X-Delivery": {in.Delivery.ID}},
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
	})
}

func newRequest(t testing.TB, body io.Reader) *http.Request {
	req, err := http.NewRequest(http.MethodPost, "http://x.localhost/hook", body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestRoundTripCarriesTheDeliveryBothWays(t *testing.T) {
	for _, tr := range streamTransports {
		t.Run(tr.name, func(t *testing.T) {
			server, agent := tr.open(t)
			serveAgent(t, agent, echo, nil)
			for _, size := range []int{0, 1000, inlineBody, inlineBody + 1, 3 << 20} {
				body := bytes.Repeat([]byte("z"), size)
				var rd io.Reader = bytes.NewReader(body)
				if size > inlineBody {
					rd = io.MultiReader(rd) // streamed, no GetBody: written by a goroutine
				}
				id := fmt.Sprintf("dlv_%d", size)
				resp, err := RoundTrip(context.Background(), server, Delivery{ID: id}, newRequest(t, rd), 10*time.Second)
				if err != nil {
					t.Fatalf("%d bytes: %v", size, err)
				}
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || !bytes.Equal(got, body) || resp.Header.Get("X-Delivery") != id {
					t.Fatalf("%d bytes: got %d bytes back (err %v), delivery %q", size, len(got), err, resp.Header.Get("X-Delivery"))
				}
			}
		})
	}
}

// TestAProviderBodyThatFailsCutsTheStream: the agent must see an
// unfinished body, never a short one that looks whole, and RoundTrip
// returns the body's own error.
func TestAProviderBodyThatFailsCutsTheStream(t *testing.T) {
	errBody := errors.New("provider hung up")
	for _, tr := range streamTransports {
		t.Run(tr.name, func(t *testing.T) {
			server, agent := tr.open(t)
			// The agent sees the delivery cut midway, or (when the abort
			// overtakes the bytes, as a yamux RST may) not at all: never
			// a complete request.
			seen := make(chan error, 1)
			go func() {
				st, err := agent.AcceptStream(context.Background())
				if err != nil {
					seen <- err
					return
				}
				in, err := ReadInbound(st)
				if err != nil {
					seen <- err
					return
				}
				_, err = io.ReadAll(in.Request.Body)
				seen <- err
				in.Abort()
			}()
			body := io.MultiReader(strings.NewReader(strings.Repeat("a", 100<<10)), &failing{errBody})
			req := newRequest(t, body)
			req.ContentLength = 200 << 10
			_, err := RoundTrip(context.Background(), server, Delivery{ID: "d"}, req, 10*time.Second)
			if !errors.Is(err, errBody) {
				t.Errorf("RoundTrip: %v, want the body's error", err)
			}
			select {
			case err := <-seen:
				if err == nil {
					t.Error("the agent read a complete body")
				}
			case <-time.After(time.Minute):
				t.Fatal("the agent never learnt of the cut")
			}
		})
	}
}

type failing struct{ err error }

func (f *failing) Read([]byte) (int, error) { return 0, f.err }

// TestAnAgentThatAbortsMidAnswerIsSeenAsCut: a response cut by the agent
// fails on the server's side, on every transport.
func TestAnAgentThatAbortsMidAnswerIsSeenAsCut(t *testing.T) {
	for _, tr := range streamTransports {
		for _, contentLength := range []int64{-1, 1 << 20} { // chunked, and a declared length
			t.Run(fmt.Sprintf("%s/length=%d", tr.name, contentLength), func(t *testing.T) {
				server, agent := tr.open(t)
				serveAgent(t, agent, func(in *Inbound) {
					io.Copy(io.Discard, in.Request.Body)
					in.Respond(&http.Response{
						StatusCode: http.StatusOK, ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{},
						Body:          io.NopCloser(io.MultiReader(strings.NewReader(strings.Repeat("h", 100<<10)), &failing{errors.New("app died")})),
						ContentLength: contentLength,
					})
				}, nil)
				resp, err := RoundTrip(context.Background(), server, Delivery{ID: "d"}, newRequest(t, strings.NewReader("x")), 10*time.Second)
				if err != nil {
					// The head and 100 KiB leave before the cut, but an
					// abort may overtake what the server has not read yet
					// (a yamux RST or a QUIC RESET_STREAM drops it): that
					// is a cut seen too, never a whole answer.
					if !errors.Is(err, ErrStreamAborted) && !errors.Is(err, ErrAgentGone) {
						t.Fatalf("RoundTrip: %v, want the answer or an abort", err)
					}
					return
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil {
					t.Fatalf("a cut answer read as complete (%d bytes)", n)
				}
			})
		}
	}
}

// TestTheServerGivingUpReachesTheAgent: when the provider goes away (the
// request's context ends), the agent learns the delivery was abandoned
// and can stop waiting for its local app.
func TestTheServerGivingUpReachesTheAgent(t *testing.T) {
	for _, tr := range streamTransports {
		t.Run(tr.name, func(t *testing.T) {
			server, agent := tr.open(t)
			arrived, abandoned := make(chan struct{}), make(chan struct{})
			serveAgent(t, agent, func(in *Inbound) {
				io.Copy(io.Discard, in.Request.Body)
				in.Abandoned(func() { close(abandoned) })
				close(arrived)
				<-abandoned
				in.Abort()
			}, nil)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				_, err := RoundTrip(ctx, server, Delivery{ID: "d"}, newRequest(t, strings.NewReader("x")), time.Minute)
				done <- err
			}()
			select {
			case <-arrived:
			case <-time.After(10 * time.Second):
				t.Fatal("the delivery never reached the agent")
			}
			cancel()
			select {
			case <-abandoned:
			case <-time.After(10 * time.Second):
				t.Fatal("the agent never learned the delivery was abandoned")
			}
			if err := <-done; err == nil {
				t.Error("RoundTrip succeeded after its context ended")
			}
		})
	}
}

func TestNoResponseWithinTheTimeoutIsErrAgentTimeout(t *testing.T) {
	for _, tr := range streamTransports {
		t.Run(tr.name, func(t *testing.T) {
			server, agent := tr.open(t)
			release := make(chan struct{})
			serveAgent(t, agent, func(in *Inbound) { <-release; in.Abort() }, nil)
			t.Cleanup(func() { close(release) }) // before serveAgent's, which waits for the handler
			_, err := RoundTrip(context.Background(), server, Delivery{ID: "d"}, newRequest(t, strings.NewReader("x")), 50*time.Millisecond)
			if !errors.Is(err, ErrAgentTimeout) {
				t.Fatalf("got %v, want ErrAgentTimeout", err)
			}
		})
	}
}

func TestANoticeReachesTheAgentWhole(t *testing.T) {
	for _, tr := range streamTransports {
		t.Run(tr.name, func(t *testing.T) {
			server, agent := tr.open(t)
			notices := make(chan *Notice, 1)
			serveAgent(t, agent, echo, notices)
			want := Notice{Refused: []Refusal{{ID: "dlv_1", Method: "POST", URI: "/big?x=1", Status: 413, Code: "body_too_large"}}, Dropped: 3}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := SendNotice(ctx, server, want); err != nil {
				t.Fatal(err)
			}
			select {
			case got := <-notices:
				if len(got.Refused) != 1 || got.Refused[0] != want.Refused[0] || got.Dropped != 3 {
					t.Errorf("agent got %+v, want %+v", got, want)
				}
			case <-ctx.Done():
				t.Fatal("no notice arrived")
			}
		})
	}
}

// BenchmarkRoundTrip is one small delivery through a stream (1 KB JSON
// POST, small answer), server and agent ends in this process: the time,
// CPU and allocations both ends of the protocol cost per delivery,
// without HTTPS at the edge or a local app.
func BenchmarkRoundTrip(b *testing.B) {
	body := []byte(`{"id":"evt_bench","type":"payment_intent.succeeded","data":{"pad":"` + strings.Repeat("x", 900) + `"}}`)
	answer := []byte(`{"ok":true}`)
	for _, tr := range streamTransports {
		for _, kept := range []bool{true, false} {
			for _, c := range []int{1, 16} {
				name := fmt.Sprintf("%s/one-off/c=%d", tr.name, c)
				if kept {
					name = fmt.Sprintf("%s/kept/c=%d", tr.name, c)
				}
				b.Run(name, func(b *testing.B) {
					server, agent := tr.open(b)
					serveAgent(b, agent, func(in *Inbound) {
						io.Copy(io.Discard, in.Request.Body)
						in.Respond(&http.Response{
							StatusCode: http.StatusOK, ProtoMajor: 1, ProtoMinor: 1,
							Header:        http.Header{"Content-Type": {"application/json"}},
							Body:          io.NopCloser(bytes.NewReader(answer)),
							ContentLength: int64(len(answer)),
						})
					}, nil)
					streams := NewStreams(server, 0)
					if kept {
						streams = NewStreams(server, DefaultMaxDeliveries/2)
					}
					cpu := startCPU()
					b.ReportAllocs()
					b.ResetTimer()
					var wg sync.WaitGroup
					for w := range c {
						n := b.N / c
						if w < b.N%c {
							n++
						}
						wg.Go(func() {
							for range n {
								req, _ := http.NewRequest(http.MethodPost, "http://bench.localhost/hook", bytes.NewReader(body))
								req.Header.Set("Content-Type", "application/json")
								resp, err := streams.RoundTrip(context.Background(), Delivery{ID: "dlv_bench", ReceivedAt: 1}, req, time.Minute)
								if err != nil {
									b.Error(err)
									return
								}
								io.Copy(io.Discard, resp.Body)
								resp.Body.Close()
							}
						})
					}
					wg.Wait()
					b.StopTimer()
					cpu.report(b)
				})
			}
		}
	}
}

// cpuClock reads this process's CPU time (user + system), which a
// benchmark reports per delivery: on a shared machine it varies far less
// than wall-clock time.
type cpuClock struct{ start time.Duration }

func startCPU() cpuClock { return cpuClock{processCPU()} }

func (c cpuClock) report(b *testing.B) {
	b.ReportMetric(float64((processCPU()-c.start).Microseconds())/float64(b.N), "cpu-µs/op")
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// countStreams counts the streams the agent accepts on sess while
// handling each delivery with handle.
func countStreams(t testing.TB, sess Session, handle func(*Inbound)) *atomic.Int64 {
	var n atomic.Int64
	counted := &countingSession{Session: sess, n: &n}
	serveAgent(t, counted, handle, nil)
	return &n
}

type countingSession struct {
	Session
	n *atomic.Int64
}

func (s *countingSession) AcceptStream(ctx context.Context) (Stream, error) {
	st, err := s.Session.AcceptStream(ctx)
	if err == nil {
		s.n.Add(1)
	}
	return st, err
}

func roundTrips(t *testing.T, rt func(context.Context, Delivery, *http.Request, time.Duration) (*http.Response, error), n int, body string) {
	t.Helper()
	for i := range n {
		resp, err := rt(context.Background(), Delivery{ID: fmt.Sprint(i)}, newRequest(t, strings.NewReader(body)), 10*time.Second)
		if err != nil {
			t.Fatalf("delivery %d: %v", i, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("delivery %d: status %d, %q, %v", i, resp.StatusCode, got, err)
		}
	}
}

// TestSmallDeliveriesShareAKeptStream: one stream carries delivery after
// delivery; one-off RoundTrip (and agents that do not say keep-alive) use
// a stream each, and ending them returns the session's stream credit, so
// more deliveries than the stream limit pass one after another.
func TestSmallDeliveriesShareAKeptStream(t *testing.T) {
	for _, tr := range streamTransports {
		t.Run(tr.name, func(t *testing.T) {
			t.Run("kept", func(t *testing.T) {
				server, agent := tr.open(t)
				n := countStreams(t, agent, echo)
				roundTrips(t, NewStreams(server, 4).RoundTrip, 50, "small")
				if got := n.Load(); got != 1 {
					t.Errorf("50 deliveries one after another used %d streams, want 1", got)
				}
			})
			t.Run("one-off", func(t *testing.T) {
				server, agent := tr.open(t)
				n := countStreams(t, agent, echo)
				oneOff := func(ctx context.Context, hdr Delivery, req *http.Request, d time.Duration) (*http.Response, error) {
					return RoundTrip(ctx, server, hdr, req, d)
				}
				roundTrips(t, oneOff, MaxConcurrentDeliveries+50, "small")
				if got := n.Load(); got != MaxConcurrentDeliveries+50 {
					t.Errorf("%d one-off deliveries used %d streams", MaxConcurrentDeliveries+50, got)
				}
			})
			t.Run("an agent that does not keep streams", func(t *testing.T) {
				server, agent := tr.open(t)
				n := countStreams(t, agent, func(in *Inbound) {
					io.Copy(io.Discard, in.Request.Body)
					// What an agent from before kept streams answers.
					io.WriteString(in.st, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					in.stopWatch()
					in.ended.Do(func() { in.kept = true; in.closeQuit() })
				})
				roundTrips(t, NewStreams(server, 4).RoundTrip, 5, "small")
				if got := n.Load(); got != 5 {
					t.Errorf("5 deliveries to an agent without keep-alive used %d streams, want 5", got)
				}
			})
		})
	}
}

// TestAnAnswerBeforeTheBodyEndsClosesTheStream: an agent that answers
// before reading the whole request says so (Connection: close) and the
// next delivery takes a new stream.
func TestAnAnswerBeforeTheBodyEndsClosesTheStream(t *testing.T) {
	for _, tr := range streamTransports {
		t.Run(tr.name, func(t *testing.T) {
			server, agent := tr.open(t)
			n := countStreams(t, agent, func(in *Inbound) {
				in.Respond(&http.Response{StatusCode: http.StatusOK, ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{},
					Body: io.NopCloser(strings.NewReader("early")), ContentLength: 5})
			})
			roundTrips(t, NewStreams(server, 4).RoundTrip, 3, strings.Repeat("b", 1000))
			if got := n.Load(); got != 3 {
				t.Errorf("3 early answers used %d streams, want 3", got)
			}
		})
	}
}

// BenchmarkLargeBody streams a 100 MB request body through the tunnel to
// an agent that reads and discards it: the tunnel's own throughput (MB/s),
// without HTTPS at the edge or a local app.
func BenchmarkLargeBody(b *testing.B) {
	const size = 100 << 20
	for _, tr := range streamTransports {
		b.Run(tr.name, func(b *testing.B) {
			server, agent := tr.open(b)
			serveAgent(b, agent, func(in *Inbound) {
				n, _ := io.Copy(io.Discard, in.Request.Body)
				in.Respond(&http.Response{StatusCode: http.StatusOK, ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{},
					Body: io.NopCloser(strings.NewReader(fmt.Sprint(n))), ContentLength: int64(len(fmt.Sprint(n)))})
			}, nil)
			streams := NewStreams(server, 4)
			cpu := startCPU()
			b.SetBytes(size)
			b.ResetTimer()
			for range b.N {
				req := newRequest(b, io.LimitReader(zeros{}, size))
				req.ContentLength = size
				resp, err := streams.RoundTrip(context.Background(), Delivery{ID: "big"}, req, time.Minute)
				if err != nil {
					b.Fatal(err)
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(got) != fmt.Sprint(size) {
					b.Fatalf("agent read %s bytes", got)
				}
			}
			b.StopTimer()
			cpu.report(b)
		})
	}
}

// byteStream is a Stream that reads from fixed bytes and swallows writes.
type byteStream struct {
	*bytes.Reader
}

func (byteStream) Write(p []byte) (int, error)      { return len(p), nil }
func (byteStream) Close() error                     { return nil }
func (byteStream) CloseWrite() error                { return nil }
func (byteStream) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (byteStream) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (byteStream) SetDeadline(time.Time) error      { return nil }
func (byteStream) SetReadDeadline(time.Time) error  { return nil }
func (byteStream) SetWriteDeadline(time.Time) error { return nil }

// FuzzReadInbound feeds the agent's stream decoder (frame, then request or
// notice) whatever a server could send: it must fail cleanly, never panic
// or read past its input, and a delivery's body must end.
func FuzzReadInbound(f *testing.F) {
	var seed bytes.Buffer
	bw := bufio.NewWriter(&seed)
	writeFrameTo(bw, FrameDelivery, Delivery{ID: "dlv_1", ReceivedAt: 1})
	req, _ := http.NewRequest(http.MethodPost, "http://x.localhost/hook?a=1", strings.NewReader(`{"id":"evt_1"}`))
	req.Write(bw)
	bw.Flush()
	f.Add(seed.Bytes())
	var chunked bytes.Buffer
	bw = bufio.NewWriter(&chunked)
	writeFrameTo(bw, FrameDelivery, Delivery{ID: "dlv_2"})
	io.WriteString(bw, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
	bw.Flush()
	f.Add(chunked.Bytes())
	var notice bytes.Buffer
	bw = bufio.NewWriter(&notice)
	writeFrameTo(bw, FrameNotice, Notice{Refused: []Refusal{{ID: "d", Method: "POST", URI: "/", Status: 413}}})
	bw.Flush()
	f.Add(notice.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := ReadInbound(byteStream{bytes.NewReader(b)})
		if err != nil {
			return
		}
		if in.Request != nil {
			n, _ := io.Copy(io.Discard, in.Request.Body)
			if n > int64(len(b)) {
				t.Fatalf("read a %d-byte body from %d bytes", n, len(b))
			}
			in.Abort()
		}
	})
}

// TestALargeBodyCrossesInLargeWrites: a body too large to go inline
// leaves in writes of tens of KiB, each one transport write (a yamux frame,
// a run of QUIC packets), not one per 4 KiB; both ways, and byte for byte.
func TestALargeBodyCrossesInLargeWrites(t *testing.T) {
	const size = 4 << 20
	for _, tr := range streamTransports {
		t.Run(tr.name, func(t *testing.T) {
			server, agent := tr.open(t)
			var agentWrites writeCount
			answered := make(chan struct{})
			serveAgent(t, &writeCountingSession{Session: agent, n: &agentWrites}, func(in *Inbound) {
				defer close(answered)
				n, err := io.Copy(io.Discard, in.Request.Body)
				if err != nil || n != size {
					in.Abort()
					return
				}
				in.Respond(&http.Response{StatusCode: http.StatusOK, ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{},
					Body: io.NopCloser(io.LimitReader(zeros{}, size)), ContentLength: size})
			}, nil)
			var serverWrites writeCount
			streams := NewStreams(&writeCountingSession{Session: server, n: &serverWrites}, 4)
			req := newRequest(t, io.LimitReader(zeros{}, size)) // streamed: no GetBody
			req.ContentLength = size
			resp, err := streams.RoundTrip(context.Background(), Delivery{ID: "big"}, req, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || n != size {
				t.Fatalf("answer: %d bytes, %v; want %d", n, err, size)
			}
			// The last bytes of a write can reach the other side before
			// that Write returns and is counted: wait for both writers.
			select {
			case <-answered:
			case <-time.After(time.Minute):
				t.Fatal("the agent's handler never returned")
			}
			for deadline := time.Now().Add(time.Minute); serverWrites.bytes.Load() < size && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			for _, c := range []struct {
				who string
				n   *writeCount
			}{{"server", &serverWrites}, {"agent", &agentWrites}} {
				writes, bytes := c.n.writes.Load(), c.n.bytes.Load()
				if bytes < size {
					t.Errorf("the %s wrote %d bytes, want at least %d", c.who, bytes, size)
				}
				if avg := bytes / max(writes, 1); avg < 32<<10 {
					t.Errorf("the %s wrote %d bytes in %d writes (%d bytes each), want at least 32 KiB each", c.who, bytes, writes, avg)
				}
			}
		})
	}
}

type writeCount struct{ writes, bytes atomic.Int64 }

// writeCountingSession counts what is written on the streams it opens
// and accepts.
type writeCountingSession struct {
	Session
	n *writeCount
}

func (s *writeCountingSession) OpenStream(ctx context.Context) (Stream, error) {
	st, err := s.Session.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	return &writeCountingStream{Stream: st, n: s.n}, nil
}

func (s *writeCountingSession) AcceptStream(ctx context.Context) (Stream, error) {
	st, err := s.Session.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return &writeCountingStream{Stream: st, n: s.n}, nil
}

type writeCountingStream struct {
	Stream
	n *writeCount
}

func (s *writeCountingStream) Write(p []byte) (int, error) {
	s.n.writes.Add(1)
	n, err := s.Stream.Write(p)
	s.n.bytes.Add(int64(n))
	return n, err
}
