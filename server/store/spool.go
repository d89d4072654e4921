package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// ChunkSize is how much of a queued body is held in memory and written at
// once. Bodies are stored as rows of at most this many bytes, so memory per
// upload or hand-over stays near one chunk whatever the body's size, and
// one layout serves SQLite and PostgreSQL alike (a file per body would not
// be shared between the nodes of a cluster).
const ChunkSize = 256 << 10

// Spooler is a backend's half of Spool: where chunks go and when a
// delivery becomes visible. Every method is one short transaction, so a
// slow sender never holds a database lock while its body trickles in.
type Spooler interface {
	// Room fails with ErrQueueFull when name's queue cannot take one more
	// delivery of size bytes (size < 0: not known yet), counting bodies
	// that are still arriving.
	Room(ctx context.Context, name string, size int64, lim QueueLimits) error
	// Whole stores q with its entire body in one transaction and makes it
	// visible at the tail of its queue, if the limits allow.
	Whole(ctx context.Context, q *Queued, body []byte, lim QueueLimits) error
	// Begin reserves room for a body that arrives in chunks: it counts
	// towards the limits but is not in the queue.
	Begin(ctx context.Context, q *Queued) error
	// Chunk stores the idx-th chunk; stored is the body's length so far,
	// this chunk included. It fails with ErrQueueFull once the body no
	// longer fits.
	Chunk(ctx context.Context, q *Queued, idx int, data []byte, stored int64, lim QueueLimits) error
	// Commit puts the delivery, whose q.BodySize bytes are all stored, at
	// the tail of its queue if the limits still allow.
	Commit(ctx context.Context, q *Queued, lim QueueLimits) error
	// Abort removes what Begin and Chunk stored.
	Abort(ctx context.Context, q *Queued) error
}

var chunkBufs = sync.Pool{New: func() any { b := make([]byte, ChunkSize); return &b }}

// Spool stores a queued delivery whose body is read from body, chunk by
// chunk, after checking the limits against the declared size
// (q.BodySize). A body of one chunk or less is stored in one transaction.
// The delivery is visible only once whole; on any failure nothing of it
// stays. A body that ends early (the sender's error) is an error, never a
// shorter delivery.
func Spool(ctx context.Context, sp Spooler, q *Queued, body io.Reader, lim QueueLimits) error {
	if err := sp.Room(ctx, q.Name, q.BodySize, lim); err != nil {
		return err
	}
	bp := chunkBufs.Get().(*[]byte)
	defer chunkBufs.Put(bp)
	buf := *bp
	n, err := Fill(body, buf)
	if errors.Is(err, io.EOF) {
		q.BodySize = int64(n)
		return sp.Whole(ctx, q, buf[:n], lim)
	}
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if err := sp.Begin(ctx, q); err != nil {
		return err
	}
	var stored int64
	last := false
	for idx := 0; err == nil; idx++ {
		stored += int64(n)
		if err = sp.Chunk(ctx, q, idx, buf[:n], stored, lim); err != nil || last {
			break
		}
		n, err = Fill(body, buf)
		switch {
		case errors.Is(err, io.EOF):
			last, err = true, nil // store this last chunk, if any, then commit
		case err != nil:
			err = fmt.Errorf("read body: %w", err)
		}
		if last && n == 0 {
			break
		}
	}
	if err == nil {
		q.BodySize = stored
		err = sp.Commit(ctx, q, lim)
	}
	if err != nil {
		// The request may be gone; the clean-up must still happen.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if aerr := sp.Abort(actx, q); aerr != nil {
			return errors.Join(err, fmt.Errorf("remove partial body: %w", aerr))
		}
	}
	return err
}

// Fill reads into buf until it is full (nil error) or the reader ends:
// io.EOF only for a clean end, so a body cut short by its sender
// (io.ErrUnexpectedEOF from net/http) stays an error. io.ReadFull cannot
// tell the two apart.
func Fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// ChunkFetcher reads the idx-th stored chunk of a queued body.
type ChunkFetcher func(ctx context.Context, idx int) ([]byte, error)

// NewBodyReader reads a queued body of size bytes back, one chunk at a
// time. A missing chunk is an error, never a short body.
func NewBodyReader(ctx context.Context, size int64, fetch ChunkFetcher) io.ReadCloser {
	return &bodyReader{ctx: ctx, left: size, fetch: fetch}
}

type bodyReader struct {
	ctx   context.Context
	left  int64
	idx   int
	cur   []byte
	fetch ChunkFetcher
}

func (b *bodyReader) Read(p []byte) (int, error) {
	for len(b.cur) == 0 {
		if b.left <= 0 {
			return 0, io.EOF
		}
		c, err := b.fetch(b.ctx, b.idx)
		if err != nil {
			return 0, fmt.Errorf("queued body chunk %d: %w", b.idx, err)
		}
		if len(c) == 0 || int64(len(c)) > b.left {
			return 0, fmt.Errorf("queued body chunk %d has %d bytes, %d expected at most: %w", b.idx, len(c), b.left, io.ErrUnexpectedEOF)
		}
		b.idx++
		b.cur = c
	}
	n := copy(p, b.cur)
	b.cur = b.cur[n:]
	b.left -= int64(n)
	return n, nil
}

func (b *bodyReader) Close() error { b.cur = nil; return nil }
