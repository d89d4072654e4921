package protocol

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// FrameType is the first byte of every frame.
type FrameType byte

// Frame layout: 1 byte type, 4 bytes big-endian payload length, payload.
const (
	FrameHello    FrameType = 0x01 // agent->server, JSON Hello
	FrameWelcome  FrameType = 0x02 // server->agent, JSON Welcome
	FrameReject   FrameType = 0x03 // server->agent, JSON Reject
	FramePing     FrameType = 0x04 // either way, opaque payload (clock + padding) echoed in Pong
	FramePong     FrameType = 0x05 // either way, the Ping's payload
	FrameGoAway   FrameType = 0x06 // server->agent, JSON GoAway
	FrameDelivery FrameType = 0x07 // server->agent, JSON Delivery; HTTP/1.1 follows on the stream
	FrameNotice   FrameType = 0x08 // server->agent on a stream of its own, JSON Notice
	FrameNodes    FrameType = 0x09 // server->agent on the control stream, JSON Nodes
)

func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "hello"
	case FrameWelcome:
		return "welcome"
	case FrameReject:
		return "reject"
	case FramePing:
		return "ping"
	case FramePong:
		return "pong"
	case FrameGoAway:
		return "goaway"
	case FrameDelivery:
		return "delivery"
	case FrameNotice:
		return "notice"
	case FrameNodes:
		return "nodes"
	}
	return fmt.Sprintf("frame(0x%02x)", byte(t))
}

const frameHeaderLen = 5

// MaxFrameSize bounds every frame's payload. Frames carry small JSON
// messages only; bodies travel as HTTP after a Delivery frame.
const MaxFrameSize = 16 << 10

var (
	// ErrFrameTooLarge is returned before any payload byte is read.
	ErrFrameTooLarge = errors.New("frame too large")
	// ErrUnexpectedFrame is returned when a frame of another type arrives.
	ErrUnexpectedFrame = errors.New("unexpected frame")
)

// WriteFrame writes one frame in a single Write call, so a frame is never
// interleaved with another writer's bytes on a stream guarded by a mutex.
func WriteFrame(w io.Writer, t FrameType, payload []byte) error {
	if len(payload) > MaxFrameSize {
		return fmt.Errorf("write %s frame: %w (%d bytes)", t, ErrFrameTooLarge, len(payload))
	}
	buf := make([]byte, frameHeaderLen+len(payload))
	buf[0] = byte(t)
	binary.BigEndian.PutUint32(buf[1:], uint32(len(payload)))
	copy(buf[frameHeaderLen:], payload)
	_, err := w.Write(buf)
	return err
}

// ReadFrame reads one frame. It reads exactly the frame's bytes and nothing
// more, so whatever follows on the stream (HTTP after a Delivery) is left for
// the next reader.
func ReadFrame(r io.Reader) (FrameType, []byte, error) {
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	t := FrameType(hdr[0])
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxFrameSize {
		return t, nil, fmt.Errorf("read %s frame: %w (%d bytes, limit %d)", t, ErrFrameTooLarge, n, MaxFrameSize)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return t, nil, fmt.Errorf("read %s frame payload: %w", t, noEOF(err))
	}
	return t, payload, nil
}

// WriteMessage writes v as the JSON payload of a frame of type t.
func WriteMessage(w io.Writer, t FrameType, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", t, err)
	}
	return WriteFrame(w, t, b)
}

// ReadMessage reads one frame, checks that it is of type want and decodes
// its JSON payload into v.
func ReadMessage(r io.Reader, want FrameType, v any) error {
	t, payload, err := ReadFrame(r)
	if err != nil {
		return err
	}
	if t != want {
		return fmt.Errorf("%w: got %s, want %s", ErrUnexpectedFrame, t, want)
	}
	return DecodeMessage(t, payload, v)
}

// DecodeMessage decodes a JSON frame payload strictly enough to refuse
// garbage, loosely enough that a newer peer may add fields.
func DecodeMessage(t FrameType, payload []byte, v any) error {
	if err := json.Unmarshal(payload, v); err != nil {
		return fmt.Errorf("decode %s: %w", t, err)
	}
	return nil
}

// ReadHelloReply reads the server's answer to a Hello: a Welcome, or the
// Reject turned into an error wrapping its sentinel.
func ReadHelloReply(r io.Reader) (Welcome, error) {
	t, payload, err := ReadFrame(r)
	if err != nil {
		return Welcome{}, fmt.Errorf("read welcome: %w", err)
	}
	switch t {
	case FrameWelcome:
		var w Welcome
		if err := DecodeMessage(t, payload, &w); err != nil {
			return Welcome{}, err
		}
		return w, nil
	case FrameReject:
		var rj Reject
		if err := DecodeMessage(t, payload, &rj); err != nil {
			return Welcome{}, err
		}
		return Welcome{}, rj.Err()
	}
	return Welcome{}, fmt.Errorf("%w: got %s, want welcome or reject", ErrUnexpectedFrame, t)
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
