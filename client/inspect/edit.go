package inspect

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"

	"github.com/relaytunnel/relay/client"
)

// errNotJSON is readEdit's answer to a body that is not declared JSON.
var errNotJSON = errors.New("an edited replay is sent as application/json")

// editJSON is an edited request as the page sends it. It has a path, never
// a URL: the replay goes to the agent's own local app, so the page cannot
// make the agent reach anything else.
type editJSON struct {
	Method string `json:"method"`
	// URI is the path and query: /hooks?x=1.
	URI string `json:"uri"`
	// Headers are name/value pairs in order; a name may repeat.
	Headers [][2]string `json:"headers"`
	Body    string      `json:"body"`
	// BodyEncoding is "utf-8" (the default) or "base64" for a binary body
	// the page sends back as recorded.
	BodyEncoding string `json:"body_encoding,omitempty"`
}

// readEdit reads the page's edit. The body may be at most bodyCap bytes, so
// that the replay's own recording is whole and can be replayed again.
func readEdit(w http.ResponseWriter, r *http.Request, bodyCap int64) (*client.ReplayEdit, error) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return nil, errNotJSON
	}
	// JSON escaping and base64 grow a body; the cap applies once decoded.
	r.Body = http.MaxBytesReader(w, r.Body, 4*bodyCap+64<<10)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	var e editJSON
	if err := dec.Decode(&e); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, fmt.Errorf("the edited request is over %d bytes", tooBig.Limit)
		}
		return nil, fmt.Errorf("edited request: %w", err)
	}
	h := make(http.Header, len(e.Headers))
	for _, kv := range e.Headers {
		if kv[0] == "" {
			return nil, fmt.Errorf("%w: a header has no name", client.ErrBadEdit)
		}
		h.Add(kv[0], kv[1])
	}
	body := []byte(e.Body)
	switch e.BodyEncoding {
	case "", "utf-8":
	case "base64":
		b, err := base64.StdEncoding.DecodeString(e.Body)
		if err != nil {
			return nil, fmt.Errorf("%w: body is not base64: %w", client.ErrBadEdit, err)
		}
		body = b
	default:
		return nil, fmt.Errorf("%w: body_encoding %q: want utf-8 or base64", client.ErrBadEdit, e.BodyEncoding)
	}
	if int64(len(body)) > bodyCap {
		return nil, fmt.Errorf("%w: the body is %d bytes; an edited replay sends at most %d", client.ErrBadEdit, len(body), bodyCap)
	}
	return &client.ReplayEdit{Method: e.Method, URI: e.URI, Header: h, Body: body}, nil
}
