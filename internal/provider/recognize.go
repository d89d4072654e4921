package provider

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
)

// Recognition names the provider, event type and event id of a delivery.
// Fields that cannot be told are empty; Provider is "" when no provider's
// marks are present.
type Recognition struct {
	Provider string
	Event    string
	EventID  string
}

// Recognize tells which provider sent a request and what it carries. It never
// fails: whatever it cannot read stays empty.
func Recognize(method string, u *url.URL, h http.Header, body []byte) Recognition {
	d := newDelivery(method, u, h, body)
	s := detect(d)
	if s == nil {
		return Recognition{}
	}
	event, id := s.describe(d)
	return Recognition{Provider: s.name, Event: event, EventID: id}
}

func detect(d *delivery) *scheme {
	for _, s := range detectOrder {
		if s.detect(d) {
			return s
		}
	}
	for _, s := range detectOrder {
		if s.detectBody != nil && s.detectBody(d) {
			return s
		}
	}
	return nil
}

// object is a JSON object read leniently: a field of an unexpected type reads
// as empty rather than spoiling the rest.
type object map[string]json.RawMessage

// jsonObject decodes body when it is a JSON object and returns nil otherwise.
func jsonObject(body []byte) object {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil
	}
	var o object
	if json.Unmarshal(trimmed, &o) != nil {
		return nil
	}
	return o
}

// str returns the string at key, or "" when absent or not a string.
func (o object) str(key string) string {
	raw, ok := o[key]
	if !ok {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
}

// obj returns the object at key, or nil.
func (o object) obj(key string) object {
	raw, ok := o[key]
	if !ok {
		return nil
	}
	var inner object
	if json.Unmarshal(raw, &inner) != nil {
		return nil
	}
	return inner
}

// form decodes body as application/x-www-form-urlencoded. Bodies that are not
// forms decode to nonsense keys, which callers never ask for.
func form(body []byte) url.Values {
	v, _ := url.ParseQuery(string(body)) // a partial parse is still useful
	return v
}
