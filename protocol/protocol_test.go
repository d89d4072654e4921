package protocol

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
)

func TestSpecExamples(t *testing.T) {
	b, err := os.ReadFile("SPEC.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(b), "```example\n")[1:]
	if len(blocks) < 4 {
		t.Fatalf("SPEC.md has %d examples, want at least 4", len(blocks))
	}
	for _, blk := range blocks {
		blk = blk[:strings.Index(blk, "```")]
		fields := map[string]string{}
		sc := bufio.NewScanner(strings.NewReader(blk))
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ": ")
			fields[k] = v
		}
		t.Run(fields["name"], func(t *testing.T) {
			var typ FrameType
			switch fields["type"] {
			case "0x01":
				typ = FrameHello
			case "0x03":
				typ = FrameReject
			case "0x04":
				typ = FramePing
			case "0x07":
				typ = FrameDelivery
			case "0x08":
				typ = FrameNotice
			case "0x09":
				typ = FrameNodes
			default:
				t.Fatalf("example type %q not handled by this test", fields["type"])
			}
			payload := []byte(fields["payload"])
			if h, ok := fields["payload-hex"]; ok {
				payload = mustHex(t, h)
			}
			var buf bytes.Buffer
			if err := WriteFrame(&buf, typ, payload); err != nil {
				t.Fatal(err)
			}
			want := mustHex(t, fields["frame-hex"])
			if !bytes.HasPrefix(buf.Bytes(), want) {
				t.Fatalf("encoded % x, SPEC says it starts % x", buf.Bytes(), want)
			}
			gt, gp, err := ReadFrame(&buf)
			if err != nil || gt != typ || !bytes.Equal(gp, payload) {
				t.Fatalf("decode: %v %v %q", gt, err, gp)
			}
			switch typ {
			case FrameHello:
				var h Hello
				if err := DecodeMessage(typ, payload, &h); err != nil || h.Version != 1 || h.Token == "" {
					t.Fatalf("hello decodes to %+v, %v", h, err)
				}
			case FrameReject:
				var r Reject
				if err := DecodeMessage(typ, payload, &r); err != nil || !errors.Is(r.Err(), ErrVersionMismatch) {
					t.Fatalf("reject decodes to %+v, %v", r, err)
				}
			case FrameDelivery:
				var d Delivery
				if err := DecodeMessage(typ, payload, &d); err != nil || d.ID != "dlv_1" || d.ReceivedAt == 0 {
					t.Fatalf("delivery decodes to %+v, %v", d, err)
				}
			case FrameNotice:
				var n Notice
				if err := DecodeMessage(typ, payload, &n); err != nil || len(n.Refused) != 1 || n.Refused[0].Status != 413 {
					t.Fatalf("notice decodes to %+v, %v", n, err)
				}
				if again, _ := json.Marshal(n); !bytes.Equal(again, payload) {
					t.Fatalf("a notice encodes as %s, SPEC says %s", again, payload)
				}
			case FrameNodes:
				var n Nodes
				if err := DecodeMessage(typ, payload, &n); err != nil || len(n.Nodes) != 2 || n.Nodes[1].Addr != "n2.relay.example.com:443" {
					t.Fatalf("nodes decode to %+v, %v", n, err)
				}
				if again, _ := json.Marshal(n); !bytes.Equal(again, payload) {
					t.Fatalf("nodes encode as %s, SPEC says %s", again, payload)
				}
			}
		})
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadFrame(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		wantErr error
	}{
		{"a length over the limit is refused before the payload is read", []byte{0x01, 0x00, 0x01, 0x00, 0x01}, ErrFrameTooLarge},
		{"a truncated header is an unexpected EOF", []byte{0x01, 0x00}, io.ErrUnexpectedEOF},
		{"a truncated payload is an unexpected EOF", []byte{0x01, 0, 0, 0, 5, 'a'}, io.ErrUnexpectedEOF},
		{"an empty stream is EOF", nil, io.EOF},
		{"an empty payload is fine", []byte{0x04, 0, 0, 0, 0}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := ReadFrame(bytes.NewReader(tt.in))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestReadFrameLeavesTheRestOfTheStream(t *testing.T) {
	var buf bytes.Buffer
	WriteMessage(&buf, FrameDelivery, Delivery{ID: "x"})
	buf.WriteString("POST / HTTP/1.1\r\n")
	if _, _, err := ReadFrame(&buf); err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); got != "POST / HTTP/1.1\r\n" {
		t.Fatalf("after the frame the stream holds %q", got)
	}
}

func TestReadHelloReply(t *testing.T) {
	tests := []struct {
		name    string
		write   func(w io.Writer)
		wantErr error
	}{
		{"a welcome is returned", func(w io.Writer) { WriteMessage(w, FrameWelcome, Welcome{Name: "a", URL: "https://a.x"}) }, nil},
		{"a bad-token reject becomes ErrBadToken", func(w io.Writer) { WriteMessage(w, FrameReject, Reject{Code: RejectBadToken, Message: "no"}) }, ErrBadToken},
		{"a name-taken reject becomes ErrNameTaken", func(w io.Writer) { WriteMessage(w, FrameReject, Reject{Code: RejectNameTaken}) }, ErrNameTaken},
		{"a version reject becomes ErrVersionMismatch", func(w io.Writer) { WriteMessage(w, FrameReject, Reject{Code: RejectVersionMismatch}) }, ErrVersionMismatch},
		{"another frame type is unexpected", func(w io.Writer) { WriteFrame(w, FramePing, make([]byte, 8)) }, ErrUnexpectedFrame},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			tt.write(&buf)
			w, err := ReadHelloReply(&buf)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err == nil && w.URL != "https://a.x" {
				t.Fatalf("welcome = %+v", w)
			}
		})
	}
}

func TestHelloCheck(t *testing.T) {
	tests := []struct {
		name  string
		hello Hello
		want  RejectCode
	}{
		{"a good hello passes", Hello{Version: Version, Token: "relay_x", Name: "stripe-dev"}, ""},
		{"a hello without a name passes", Hello{Version: Version, Token: "relay_x"}, ""},
		{"another version is a mismatch naming both", Hello{Version: 99, Token: "t"}, RejectVersionMismatch},
		{"no token is a bad token", Hello{Version: Version}, RejectBadToken},
		{"a huge token is a bad token", Hello{Version: Version, Token: strings.Repeat("x", 300)}, RejectBadToken},
		{"a name with a dot is a bad request", Hello{Version: Version, Token: "t", Name: "a.b"}, RejectBadRequest},
		{"an upper-case name is a bad request", Hello{Version: Version, Token: "t", Name: "Abc"}, RejectBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rj := tt.hello.Check()
			var got RejectCode
			if rj != nil {
				got = rj.Code
			}
			if got != tt.want {
				t.Fatalf("Check() = %+v, want code %q", rj, tt.want)
			}
			if got == RejectVersionMismatch && !strings.Contains(rj.Message, "99") {
				t.Fatalf("mismatch message %q does not name the agent's version", rj.Message)
			}
		})
	}
}

func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	WriteMessage(&buf, FrameHello, Hello{Version: 1, Token: "t"})
	f.Add(buf.Bytes())
	f.Add([]byte{0x04, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8})
	f.Add([]byte{0x07, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, p, err := ReadFrame(bytes.NewReader(b))
		if err != nil {
			return
		}
		if len(p) > MaxFrameSize {
			t.Fatalf("payload of %d bytes passed the limit", len(p))
		}
		var out bytes.Buffer
		if err := WriteFrame(&out, typ, p); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), b[:out.Len()]) {
			t.Fatal("re-encoding differs")
		}
	})
}

func FuzzDecodeMessages(f *testing.F) {
	f.Add([]byte(`{"version":1,"token":"relay_x","name":"a"}`))
	f.Add([]byte(`{"code":"bad_token","message":"m","version":1}`))
	f.Add([]byte(`{"id":"d","received_at":1,"remote_addr":"1.2.3.4:5","queued":true}`))
	f.Add([]byte(`{"name":"a","url":"https://a","max_body":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var h Hello
		if DecodeMessage(FrameHello, b, &h) == nil {
			h.Check()
		}
		var buf bytes.Buffer
		WriteFrame(&buf, FrameReject, b)
		ReadHelloReply(&buf)
		buf.Reset()
		WriteFrame(&buf, FrameWelcome, b)
		ReadHelloReply(&buf)
		var d Delivery
		DecodeMessage(FrameDelivery, b, &d)
		var g GoAway
		DecodeMessage(FrameGoAway, b, &g)
	})
}

// TestSpecHeaders keeps SPEC.md's header table and hop-by-hop list equal
// to the constants the code uses.
func TestSpecHeaders(t *testing.T) {
	spec, err := os.ReadFile("SPEC.md")
	if err != nil {
		t.Fatal(err)
	}
	var inTable []string
	for _, line := range strings.Split(string(spec), "\n") {
		if strings.HasPrefix(line, "| `X-Relay-") {
			inTable = append(inTable, strings.Trim(strings.Split(line, "|")[1], " `"))
		}
	}
	code := []string{HeaderDelivery, HeaderError, HeaderVerdict, HeaderDuplicate, HeaderReplayOf}
	if !slices.Equal(inTable, code) {
		t.Errorf("SPEC.md lists headers %v, the code defines %v", inTable, code)
	}
	for _, h := range HopHeaders {
		if !strings.Contains(string(spec), "`"+h+"`") {
			t.Errorf("SPEC.md does not name hop-by-hop header %s", h)
		}
	}
}

func TestRemoveHopHeadersDropsWhatConnectionNames(t *testing.T) {
	h := http.Header{
		"Connection":       {"keep-alive, X-Secret-Hop"},
		"X-Secret-Hop":     {"1"},
		"Keep-Alive":       {"timeout=5"},
		"Te":               {"trailers"},
		"Stripe-Signature": {"t=1,v1=abc"},
	}
	RemoveHopHeaders(h)
	if len(h) != 1 || h.Get("Stripe-Signature") == "" {
		t.Errorf("after RemoveHopHeaders: %v, want only Stripe-Signature", h)
	}
}
