package protocol

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Both ends of a delivery stream live in this file. The server's end is
// RoundTrip: open a stream, write the Delivery frame and the request as
// HTTP/1.1, read the agent's response. The agent's end is ReadInbound,
// which reads the frame and the request, and Inbound.Respond, which writes
// the answer. SendNotice is the server's other kind of stream: deliveries
// the edge answered itself, for the agent's console.

// Headers relay itself sets on the HTTP messages it carries. Any header
// with HeaderPrefix that a provider sends is relay's, not the provider's,
// and the edge removes it before forwarding.
const (
	HeaderPrefix = "X-Relay-"
	// HeaderDelivery carries the relay's delivery id back to the provider.
	HeaderDelivery = "X-Relay-Delivery"
	// HeaderError is set on every answer relay gives on the local app's
	// behalf (an error it could not forward past); its value is the code
	// in the JSON body. The server's queue keeps a delivery whose answer
	// carries it.
	HeaderError = "X-Relay-Error"
	// HeaderReplayOf marks a replay with the recording it repeats.
	HeaderReplayOf = "X-Relay-Replay-Of"
	// HeaderDuplicate marks the agent's answer to a --dedup duplicate.
	HeaderDuplicate = "X-Relay-Duplicate"
	// HeaderVerdict carries the signature verdict of a refused delivery.
	HeaderVerdict = "X-Relay-Verdict"
)

// HopHeaders describe one connection, not the request: they are never
// stored, forwarded or replayed (RFC 9110 §7.6.1, plus the Proxy-
// headers and Expect, which the edge already answered).
var HopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Expect",
}

// RemoveHopHeaders deletes the hop-by-hop headers from h, including those
// the Connection header names.
func RemoveHopHeaders(h http.Header) {
	for _, v := range h["Connection"] {
		for _, name := range strings.Split(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range HopHeaders {
		delete(h, name) // the names above are canonical already
	}
}

// DefaultMaxDeliveries is how many deliveries one tunnel carries at once
// unless configured otherwise: the edge answers 503 beyond it and the
// agent refuses streams beyond its own cap. It stays well under the
// transports' stream limits (MaxConcurrentDeliveries), so a stream is
// always there for a delivery that was admitted.
const DefaultMaxDeliveries = 256

// Errors RoundTrip returns for the agent's side of a delivery.
var (
	// ErrAgentGone means the session or the stream broke before the
	// agent's answer arrived.
	ErrAgentGone = errors.New("agent disconnected")
	// ErrAgentTimeout means the agent did not answer within the timeout.
	ErrAgentTimeout = errors.New("agent did not answer in time")
	// ErrBadResponse means the agent's answer was not a final HTTP/1.1
	// response (a 1xx, or bytes that do not parse).
	ErrBadResponse = errors.New("agent sent an unusable response")
)

// inlineBody is the largest in-memory request body RoundTrip writes in
// the caller's goroutine. It is far below every transport's initial
// stream window, so the write cannot wait for the agent to read, and the
// common small delivery needs no writer goroutine.
const inlineBody = 64 << 10

// Buffers are pooled: a delivery borrows one reader and one writer for its
// life on the stream. Their size bounds what one stream buffers; bodies
// pass through them, never whole.
var (
	bufWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
	bufReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
)

func getWriter(w io.Writer) *bufio.Writer {
	bw := bufWriters.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

// bodyWrite is the most one write of a streamed body carries.
const bodyWrite = 64 << 10

var bodyBufs = sync.Pool{New: func() any { b := make([]byte, bodyWrite); return &b }}

// bodyStream is a stream as the destination of a body. net/http copies a
// body with a Content-Length into the message's bufio.Writer, which hands
// the copy to bodyStream.ReadFrom once its own buffer is empty: each read
// of the body (up to 64 KiB, borrowed for the copy) is then written at
// once. The bufio.Writer alone would hold a body until its buffer filled,
// so a body sent slowly waits for that, and its 4 KiB would cut a fast one
// into 4 KiB writes, each a yamux frame and system call or a wake-up of
// quic-go's sender (a 100 MB POST took twice as long).
type bodyStream struct{ w io.Writer }

func (b bodyStream) Write(p []byte) (int, error) { return b.w.Write(p) }

func (b bodyStream) ReadFrom(r io.Reader) (int64, error) {
	bp := bodyBufs.Get().(*[]byte)
	defer bodyBufs.Put(bp)
	// The wrapper hides a WriterTo, so every write is one read of at most
	// the buffer.
	return io.CopyBuffer(b.w, struct{ io.Reader }{r}, *bp)
}

func putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	bufWriters.Put(bw)
}

func getReader(r io.Reader) *bufio.Reader {
	br := bufReaders.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func putReader(br *bufio.Reader) {
	br.Reset(nil)
	bufReaders.Put(br)
}

// writeFrameTo puts one frame into a buffered writer, so it leaves in the
// same transport write as what follows it.
func writeFrameTo(bw *bufio.Writer, t FrameType, v any) error {
	payload, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", t, err)
	}
	if len(payload) > MaxFrameSize {
		return fmt.Errorf("write %s frame: %w (%d bytes)", t, ErrFrameTooLarge, len(payload))
	}
	var hdr [frameHeaderLen]byte
	hdr[0] = byte(t)
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	bw.Write(hdr[:])
	_, err = bw.Write(payload)
	return err
}

// RoundTrip is the server's end of one delivery on a stream of its own:
// it opens a stream on sess, carries the delivery (see
// Streams.RoundTrip) and closes the stream once the response is read.
// Streams does the same on streams it keeps open between deliveries.
func RoundTrip(ctx context.Context, sess Session, hdr Delivery, req *http.Request, timeout time.Duration) (*http.Response, error) {
	return (&Streams{sess: sess}).RoundTrip(ctx, hdr, req, timeout)
}

// Streams carries the deliveries of one session. A delivery is a request
// and its response on a stream; when the agent says it can take another
// (Connection: keep-alive on its answer) and both messages were small, the
// stream is kept for a later delivery instead of being closed. A delivery
// then costs two messages on a stream that already exists: no stream to
// open, accept or close on either side, and on the agent no new goroutine.
type Streams struct {
	sess    Session
	maxIdle int

	mu   sync.Mutex
	idle []idleStream // most recently used last
}

type idleStream struct {
	st    Stream
	since time.Time
}

// idleFor is how long an unused stream is kept; each holds a goroutine on
// the agent.
const idleFor = 30 * time.Second

// NewStreams carries deliveries on sess, keeping at most maxIdle streams
// open between them (0: none).
func NewStreams(sess Session, maxIdle int) *Streams {
	return &Streams{sess: sess, maxIdle: maxIdle}
}

// get is a kept stream (reused true), or a new one.
func (s *Streams) get(ctx context.Context) (st Stream, reused bool, err error) {
	now := time.Now()
	s.mu.Lock()
	// The oldest streams sit first; those idle too long go.
	var stale []Stream
	for len(s.idle) > 0 && now.Sub(s.idle[0].since) > idleFor {
		stale = append(stale, s.idle[0].st)
		s.idle = s.idle[1:]
	}
	if n := len(s.idle); n > 0 {
		st = s.idle[n-1].st
		s.idle = s.idle[:n-1]
	}
	s.mu.Unlock()
	for _, old := range stale {
		old.Close()
	}
	if st != nil {
		return st, true, nil
	}
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	st, err = s.sess.OpenStream(octx)
	cancel()
	if err != nil {
		return nil, false, fmt.Errorf("%w: open stream: %w", ErrAgentGone, err)
	}
	return st, false, nil
}

// put keeps st for a later delivery, or closes it when enough are kept.
func (s *Streams) put(st Stream) {
	s.mu.Lock()
	if len(s.idle) < s.maxIdle {
		s.idle = append(s.idle, idleStream{st: st, since: time.Now()})
		st = nil
	}
	s.mu.Unlock()
	if st != nil {
		st.Close()
	}
}

// RoundTrip carries one delivery: it writes the Delivery frame and req as
// HTTP/1.1 on a stream and reads the agent's response. The frame and the
// request head leave in one write; an in-memory body of up to 64 KiB goes
// with them from the caller's goroutine, a larger or streamed body is
// written by a goroutine of its own while the response is read, so an
// agent may answer before the body ends. The server never half-closes: on
// yamux a FIN is also how an abort looks, so the agent reads EOF after a
// request as "abandoned".
//
// Closing the response body ends the delivery, keeping the stream or
// closing it. ctx ending, or no response headers within timeout, aborts
// the stream; every blocked read and write then returns. A request body
// that fails to read (the provider's fault) cuts the stream, so the agent
// sees an unfinished body, never a short one that looks whole; RoundTrip
// then returns the body's error.
func (s *Streams) RoundTrip(ctx context.Context, hdr Delivery, req *http.Request, timeout time.Duration) (*http.Response, error) {
	inline := inMemory(req)
	for {
		st, reused, err := s.get(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := s.roundTrip(ctx, st, reused, hdr, req, inline, timeout)
		if errors.Is(err, errNothingSent) && reused {
			// The kept stream had been closed by the agent: nothing of
			// this delivery reached it, so a new stream may carry it.
			continue
		}
		return resp, err
	}
}

// errNothingSent means a kept stream refused the first write.
var errNothingSent = errors.New("stream closed before the delivery was sent")

func (s *Streams) roundTrip(ctx context.Context, st Stream, reused bool, hdr Delivery, req *http.Request, inline bool, timeout time.Duration) (*http.Response, error) {
	rt := &roundTrip{s: s, st: st, reusable: inline && s.maxIdle > 0}
	rt.timer = time.AfterFunc(timeout, func() {
		rt.timedOut.Store(true)
		st.Close()
	})
	rt.stop = context.AfterFunc(ctx, func() { st.Close() })

	bw := getWriter(bodyStream{st})
	if err := writeFrameTo(bw, FrameDelivery, hdr); err != nil {
		putWriter(bw)
		return nil, rt.fail(err)
	}
	if inline {
		err := writeRequest(bw, req)
		putWriter(bw)
		if err != nil && reused {
			// An agent reads a whole request or forwards none of it.
			err = errors.Join(errNothingSent, err)
		}
		if err != nil {
			return nil, rt.fail(fmt.Errorf("%w: write request: %w", ErrAgentGone, err))
		}
	} else {
		rt.werr = make(chan error, 1)
		// req.Write hides a body's read error behind a type that does
		// not unwrap; keep it to return as it was.
		body := &bodyError{r: req.Body}
		out := *req
		out.Body = body
		go func() {
			err := writeRequest(bw, &out)
			putWriter(bw)
			if err != nil {
				// Cut the stream so the agent sees an unfinished body
				// rather than a complete request.
				st.Close()
				if body.err != nil {
					err = body.err
				}
			}
			rt.werr <- err
		}()
	}

	rt.br = getReader(st)
	resp, err := http.ReadResponse(rt.br, req)
	rt.timer.Stop()
	if err == nil && resp.StatusCode < 200 {
		// 1xx answers are the agent's business with the local app; a
		// final answer is all that may cross the tunnel.
		resp.Body.Close()
		err = fmt.Errorf("%w: status %d", ErrBadResponse, resp.StatusCode)
	}
	if err != nil {
		st.Close()
		if rt.werr != nil {
			if we := <-rt.werr; we != nil && !IsClosed(we) {
				return nil, rt.fail(we) // the provider's body failed first
			}
		}
		if errors.Is(err, ErrBadResponse) {
			return nil, rt.fail(err)
		}
		return nil, rt.fail(fmt.Errorf("%w: read response: %w", ErrAgentGone, err))
	}
	rt.reusable = rt.reusable && !resp.Close && keepAlive(resp.Header)
	rt.body = resp.Body
	resp.Body = rt
	return resp, nil
}

// keepAlive reports an answer whose agent takes further deliveries on
// the same stream. Agents that predate keeping streams answer without it,
// and their streams carry one delivery each.
func keepAlive(h http.Header) bool {
	for _, v := range h["Connection"] {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "keep-alive") {
				return true
			}
		}
	}
	return false
}

// inMemory reports whether req's body is already held in memory and small
// (net/http sets GetBody for bodies it can replay from memory).
func inMemory(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody ||
		(req.GetBody != nil && req.ContentLength >= 0 && req.ContentLength <= inlineBody)
}

// writeRequest writes req as HTTP/1.1 and flushes. req.Write would add a
// Go User-Agent to a request that had none; an empty one keeps it out.
func writeRequest(bw *bufio.Writer, req *http.Request) error {
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header["User-Agent"] = emptyValue
	}
	err := req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	return err
}

var (
	emptyValue = []string{""}
	chunked    = []string{"chunked"}
	keepValue  = []string{"keep-alive"}
	closeValue = []string{"close"}
)

// bodyError keeps the first error reading a request body.
type bodyError struct {
	r   io.ReadCloser
	err error
}

func (b *bodyError) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

func (b *bodyError) Close() error { return b.r.Close() }

// keptBody is the most response body a kept stream may have carried: a
// yamux stream keeps the buffer its largest message needed.
const keptBody = 64 << 10

// roundTrip is one delivery's stream on the server: it is also the
// response body, which ends the delivery when closed.
type roundTrip struct {
	s        *Streams
	st       Stream
	br       *bufio.Reader
	body     io.ReadCloser
	werr     chan error // the body writer's result, when there is one
	timer    *time.Timer
	timedOut atomic.Bool
	stop     func() bool
	once     sync.Once
	reusable bool  // the stream may carry another delivery once this one is read
	n        int64 // response body bytes read
	eof      bool
}

func (rt *roundTrip) fail(err error) error {
	rt.release(false)
	if rt.timedOut.Load() {
		return ErrAgentTimeout
	}
	return err
}

// release ends the delivery, keeping the stream when it is clean: the
// response read to its end, nothing more buffered, the request written
// whole, and neither the deadline nor the caller's context at work.
func (rt *roundTrip) release(keep bool) {
	rt.once.Do(func() {
		rt.timer.Stop()
		stopped := rt.stop()
		if keep && rt.werr != nil {
			keep = <-rt.werr == nil
		}
		keep = keep && stopped && !rt.timedOut.Load() && (rt.br == nil || rt.br.Buffered() == 0)
		if rt.br != nil {
			// Reads of the body happen in the goroutine that closes it,
			// so none can race with handing the reader back.
			putReader(rt.br)
		}
		if keep {
			rt.s.put(rt.st)
		} else {
			rt.st.Close()
		}
	})
}

func (rt *roundTrip) Read(p []byte) (int, error) {
	n, err := rt.body.Read(p)
	rt.n += int64(n)
	if err == io.EOF {
		rt.eof = true
	} else if err != nil && rt.timedOut.Load() {
		err = ErrAgentTimeout
	}
	return n, err
}

func (rt *roundTrip) Close() error {
	err := rt.body.Close()
	rt.release(rt.reusable && rt.eof && rt.n <= keptBody)
	return err
}

// Notice tells an agent about deliveries for its tunnel that the edge
// answered itself, so they show on the agent's console although the agent
// never saw them. It travels on a stream of its own.
type Notice struct {
	Refused []Refusal `json:"refused,omitempty"`
	// Dropped counts refusals left out because too many came at once.
	Dropped int `json:"dropped,omitempty"`
}

// Refusal is one delivery the edge answered itself.
type Refusal struct {
	ID         string `json:"id"`
	ReceivedAt int64  `json:"received_at"` // Unix nanoseconds at the edge
	RemoteAddr string `json:"remote_addr,omitempty"`
	Method     string `json:"method"`
	Host       string `json:"host,omitempty"`
	URI        string `json:"uri"`
	Status     int    `json:"status"`
	Code       string `json:"code"` // the X-Relay-Error code the provider got
	Message    string `json:"message,omitempty"`
}

// SendNotice writes n on a new stream of sess and closes it.
func SendNotice(ctx context.Context, sess Session, n Notice) error {
	st, err := sess.OpenStream(ctx)
	if err != nil {
		return fmt.Errorf("%w: open stream: %w", ErrAgentGone, err)
	}
	defer st.Close()
	if d, ok := ctx.Deadline(); ok {
		st.SetWriteDeadline(d)
	}
	bw := getWriter(st)
	defer putWriter(bw)
	if err := writeFrameTo(bw, FrameNotice, n); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("%w: write notice: %w", ErrAgentGone, err)
	}
	// A FIN, not an abort, which could drop what is still unsent; the
	// agent answers with its own FIN once it has read the notice.
	if err := st.CloseWrite(); err != nil {
		return fmt.Errorf("%w: write notice: %w", ErrAgentGone, err)
	}
	if d, ok := ctx.Deadline(); ok {
		st.SetReadDeadline(d)
	}
	io.Copy(io.Discard, st)
	return nil
}

// Inbound is one delivery (Request set) or notice (Notice set) as the
// agent reads it from a stream the server opened. After a delivery's
// answer the stream may carry the next one: see Respond and Kept.
type Inbound struct {
	Delivery Delivery
	Request  *http.Request // its Body streams from the stream
	Notice   *Notice
	Started  time.Time // when the delivery's first byte was read

	st    Stream
	br    *bufio.Reader
	eof   chan struct{} // closed once the request body was read to its end
	eofed sync.Once
	quit  chan struct{} // closed when the agent answers or ends the stream
	quitd sync.Once
	ended sync.Once // the stream is ended or kept, once
	kept  bool

	watch     *time.Timer // starts the watch for an abandoned delivery
	watchMu   sync.Mutex
	answering bool          // no watch may start any more
	watchDone chan struct{} // closed when a started watch has ended
}

// ReadInbound reads the next message from st: a Delivery frame and the
// HTTP request after it, or a Notice. It waits for as long as the stream
// is idle between deliveries. The request body is left on the stream and
// streams as the caller reads Request.Body; closing that body does not
// drain it. A notice stream is read whole and ended.
func ReadInbound(st Stream) (*Inbound, error) {
	// The frame header is read straight from the stream, so an idle
	// stream holds no buffer.
	var fh [frameHeaderLen]byte
	if _, err := io.ReadFull(st, fh[:]); err != nil {
		if err == io.EOF {
			st.Close()
			return nil, io.EOF // the server closed an idle stream
		}
		st.Close()
		return nil, fmt.Errorf("read stream header: %w", err)
	}
	in := &Inbound{st: st, Started: time.Now(), br: getReader(st), eof: make(chan struct{}), quit: make(chan struct{})}
	t, n := FrameType(fh[0]), binary.BigEndian.Uint32(fh[1:])
	if n > MaxFrameSize {
		in.Abort()
		return nil, fmt.Errorf("read %s frame: %w (%d bytes, limit %d)", t, ErrFrameTooLarge, n, MaxFrameSize)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(in.br, payload); err != nil {
		in.Abort()
		return nil, fmt.Errorf("read %s frame payload: %w", t, noEOF(err))
	}
	switch t {
	case FrameNotice:
		n := new(Notice)
		err := DecodeMessage(t, payload, n)
		in.reachedEOF()
		in.End()
		if err != nil {
			return nil, err
		}
		in.Notice = n
		return in, nil
	case FrameDelivery:
	default:
		in.Abort()
		return nil, fmt.Errorf("%w: got %s, want delivery or notice", ErrUnexpectedFrame, t)
	}
	if err := DecodeMessage(t, payload, &in.Delivery); err != nil {
		in.Abort()
		return nil, err
	}
	req, err := http.ReadRequest(in.br)
	if err != nil {
		in.Abort()
		return nil, fmt.Errorf("read request: %w", err)
	}
	if req.Body == http.NoBody || req.Body == nil {
		in.reachedEOF()
	} else {
		req.Body = &inboundBody{r: req.Body, in: in}
	}
	in.Request = req
	return in, nil
}

func (in *Inbound) reachedEOF() { in.eofed.Do(func() { close(in.eof) }) }

// inboundBody notes when the request body has been read to its end: from
// then on the stream carries nothing until the answer, so anything read
// from it means the server gave the delivery up.
type inboundBody struct {
	r      io.ReadCloser
	in     *Inbound
	closed atomic.Bool
}

func (b *inboundBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, http.ErrBodyReadAfterClose
	}
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.in.reachedEOF()
	}
	return n, err
}

// Close does not drain what is left: net/http's request body would read a
// cut-short delivery to its end, from a provider that may be slow.
func (b *inboundBody) Close() error {
	b.closed.Store(true)
	return nil
}

// watchAfter is how long a delivery runs before the agent starts watching
// for the server giving it up: most local apps answer sooner, and those
// deliveries need no watch at all.
const watchAfter = 20 * time.Millisecond

// Abandoned calls f if the server gives the delivery up (the provider
// went away, or its response timeout passed) before the answer. The
// server does so by closing the stream, which the agent reads as EOF or a
// reset after the request's end; while the body is still arriving the
// body's own read fails instead.
func (in *Inbound) Abandoned(f func()) {
	in.watch = time.AfterFunc(watchAfter, func() {
		in.watchMu.Lock()
		defer in.watchMu.Unlock()
		if in.answering {
			return
		}
		done := make(chan struct{})
		in.watchDone = done
		go func() {
			defer close(done)
			select {
			case <-in.eof:
			case <-in.quit:
				return
			}
			var b [1]byte
			// Returns on the server's close, or when the agent stops
			// the watch (a past deadline) or ends the stream.
			in.st.Read(b[:])
			select {
			case <-in.quit:
			default:
				f()
			}
		}()
	})
}

// stopWatch ends the watch before anything else reads the stream.
func (in *Inbound) stopWatch() {
	if in.watch == nil {
		return
	}
	in.watch.Stop()
	in.watchMu.Lock()
	in.answering = true
	done := in.watchDone
	in.watchMu.Unlock()
	if done != nil {
		in.closeQuit()
		in.st.SetReadDeadline(time.Unix(1, 0))
		<-done
		in.st.SetReadDeadline(time.Time{})
	}
}

// Respond writes resp as the answer, its body streamed. The answer is
// always framed (Content-Length or chunked) and carries no hop-by-hop
// headers of the local app's, so a cut shows as one. When the request
// body had been read to its end, the answer says Connection: keep-alive
// and the stream stays open for the next delivery (Kept); otherwise it
// says Connection: close and the stream ends after it. resp.Body is read
// to its end; the caller closes it.
func (in *Inbound) Respond(resp *http.Response) error {
	in.stopWatch()
	RemoveHopHeaders(resp.Header)
	resp.ProtoMajor, resp.ProtoMinor = 1, 1
	resp.TransferEncoding = nil
	if resp.ContentLength < 0 {
		resp.TransferEncoding = chunked
	}
	select {
	case <-in.eof:
		resp.Close = false
		resp.Header["Connection"] = keepValue
	default:
		// The rest of the request is still on the stream.
		resp.Close = true
		resp.Header["Connection"] = closeValue
	}
	bw := getWriter(bodyStream{in.st})
	err := resp.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	putWriter(bw)
	delete(resp.Header, "Connection")
	switch {
	case err != nil:
		in.Abort()
		return fmt.Errorf("write response: %w", err)
	case resp.Close || in.br.Buffered() > 0:
		in.End()
	default:
		in.ended.Do(func() {
			in.kept = true
			in.closeQuit()
			putReader(in.br)
		})
	}
	return nil
}

// Kept reports that the stream stays open for another delivery after
// Respond: read it with ReadInbound.
func (in *Inbound) Kept() bool { return in.kept }

// End ends the agent's side after a complete answer with a FIN. The
// server closes the stream once it has read the answer.
func (in *Inbound) End() { in.finish(false) }

// Abort cuts the stream in both directions: the server sees an
// unfinished message, never a short one that looks whole.
func (in *Inbound) Abort() { in.finish(true) }

func (in *Inbound) finish(abort bool) {
	if in.watch != nil {
		in.watch.Stop()
		in.watchMu.Lock()
		in.answering = true
		in.watchMu.Unlock()
	}
	in.ended.Do(func() {
		in.closeQuit()
		in.close(abort)
	})
}

func (in *Inbound) closeQuit() { in.quitd.Do(func() { close(in.quit) }) }

func (in *Inbound) close(abort bool) {
	if abort {
		in.st.Close()
	} else {
		in.st.CloseWrite()
		// Nothing more is read: a Close after CloseWrite ends only the
		// receive side (a QUIC stream counts against the session's stream
		// limit until its receive side is done too).
		in.st.Close()
	}
	select {
	case <-in.eof:
		// Nobody reads the buffer again: the body returns EOF from now
		// on without touching it.
		putReader(in.br)
	default:
		// A reader of the body may still be inside it.
	}
}
