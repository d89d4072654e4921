package provider

import (
	"crypto/rand"
	"embed"
	"fmt"
	"io/fs"
	"math/big"
	"net/http"
	"path"
	"strings"
	"sync"
	"text/template"
	"time"
)

// Sample is a provider's delivery as `relay trigger` sends it: unsigned until
// signed with Sign, SignBody or the Sign method.
type Sample struct {
	Provider, Event string
	Method, Path    string
	Header          http.Header
	Body            []byte
}

// Sign signs the sample in place, body included where the provider signs
// inside it. For PayPal it returns ErrNeedsPrivateKey and leaves the sample
// unsigned: see SignPayPal.
func (s *Sample) Sign(secret string, now time.Time) error {
	body, err := SignBody(s.Provider, secret, s.Header, s.Body, now)
	if err != nil {
		return err
	}
	s.Body = body
	return nil
}

// The fixtures are files fixtures/PROVIDER/*.http: "#"-lines of metadata
// ("# event: NAME"), then a request line "METHOD PATH", header lines, a blank
// line and the body, all a text/template rendered at send time so ids and
// timestamps are fresh:
//
//	{{.Unix}} {{.RFC3339}} {{.RFC3339Milli}} {{(.Ago "3m").RFC3339}}
//	{{id "evt_"}}  prefix + 24 random alphanumerics
//	{{uuid "name"}}  a random UUID
//	{{num "name" 9}}  a random 9-digit number
//	{{hex "name" 40}}  40 random hex digits
//	{{code "name" 9}}  9 random uppercase alphanumerics (Slack's ids)
//	{{lower "ABC"}}  strings.ToLower
//
// Within one sample the same arguments give the same value, so a body and a
// header can carry the same id.
//
//go:embed fixtures
var fixtureFiles embed.FS

type fixture struct {
	event string
	file  string
	text  string
}

var fixtures = sync.OnceValues(loadFixtures)

func loadFixtures() (map[string][]fixture, error) {
	all := make(map[string][]fixture)
	for _, s := range schemes {
		dir := path.Join("fixtures", s.name)
		entries, err := fs.ReadDir(fixtureFiles, dir)
		if err != nil {
			return nil, fmt.Errorf("read fixtures %s: %w", dir, err)
		}
		for _, e := range entries {
			if e.IsDir() || !strings.HasSuffix(e.Name(), ".http") {
				continue
			}
			file := path.Join(dir, e.Name())
			raw, err := fixtureFiles.ReadFile(file)
			if err != nil {
				return nil, fmt.Errorf("read fixture %s: %w", file, err)
			}
			fx, err := parseFixture(file, string(raw))
			if err != nil {
				return nil, err
			}
			all[s.name] = append(all[s.name], fx)
		}
	}
	return all, nil
}

func parseFixture(file, raw string) (fixture, error) {
	fx := fixture{file: file}
	for strings.HasPrefix(raw, "#") {
		line, rest, _ := strings.Cut(raw, "\n")
		raw = rest
		key, value, _ := strings.Cut(strings.TrimPrefix(line, "#"), ":")
		if strings.TrimSpace(key) == "event" {
			fx.event = strings.TrimSpace(value)
		}
	}
	if fx.event == "" {
		return fixture{}, fmt.Errorf("fixture %s: no \"# event:\" line", file)
	}
	fx.text = raw
	return fx, nil
}

// Events lists the sample events known for provider; nil for an unknown one.
func Events(provider string) []string {
	s := lookup(provider)
	all, err := fixtures()
	if s == nil || err != nil {
		return nil
	}
	var events []string
	for _, fx := range all[s.name] {
		events = append(events, fx.event)
	}
	return events
}

// NewSample renders the provider's sample for event with fresh ids and
// timestamps at now. The sample is unsigned.
func NewSample(provider, event string, now time.Time) (Sample, error) {
	s := lookup(provider)
	if s == nil {
		return Sample{}, fmt.Errorf("%w %q (known: %s)", ErrUnknownProvider, provider, strings.Join(Names(), ", "))
	}
	all, err := fixtures()
	if err != nil {
		return Sample{}, err
	}
	for _, fx := range all[s.name] {
		if strings.EqualFold(fx.event, strings.TrimSpace(event)) {
			return renderSample(s, fx, now)
		}
	}
	return Sample{}, fmt.Errorf("%w %q for %s (known: %s)", ErrUnknownEvent, event, s.name, strings.Join(Events(s.name), ", "))
}

func renderSample(s *scheme, fx fixture, now time.Time) (Sample, error) {
	tmpl, err := template.New(fx.file).Option("missingkey=error").Funcs(freshValues()).Parse(fx.text)
	if err != nil {
		return Sample{}, fmt.Errorf("parse fixture %s: %w", fx.file, err)
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, sampleTime{now}); err != nil {
		return Sample{}, fmt.Errorf("render fixture %s: %w", fx.file, err)
	}
	head, body, _ := strings.Cut(b.String(), "\n\n")
	lines := strings.Split(head, "\n")
	method, target, ok := strings.Cut(lines[0], " ")
	if !ok {
		return Sample{}, fmt.Errorf("fixture %s: request line %q is not \"METHOD PATH\"", fx.file, lines[0])
	}
	h := make(http.Header)
	for _, line := range lines[1:] {
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			return Sample{}, fmt.Errorf("fixture %s: header line %q has no colon", fx.file, line)
		}
		h.Add(strings.TrimSpace(key), strings.TrimSpace(value))
	}
	wire := []byte(strings.TrimRight(body, "\n"))
	if s.wire != nil {
		wire = s.wire(wire)
	}
	return Sample{Provider: s.name, Event: fx.event, Method: method, Path: target, Header: h, Body: wire}, nil
}

// sampleTime is the template's view of the send time.
type sampleTime struct{ t time.Time }

func (s sampleTime) Unix() int64            { return s.t.Unix() }
func (s sampleTime) RFC3339() string        { return s.t.UTC().Format("2006-01-02T15:04:05Z") }
func (s sampleTime) RFC3339Milli() string   { return s.t.UTC().Format("2006-01-02T15:04:05.000Z") }
func (s sampleTime) Format(l string) string { return s.t.UTC().Format(l) }

// Ago is the send time moved back by a duration such as "3m" or "720h", for
// objects created before the event about them.
func (s sampleTime) Ago(d string) (sampleTime, error) {
	dur, err := time.ParseDuration(d)
	if err != nil {
		return sampleTime{}, err
	}
	return sampleTime{s.t.Add(-dur)}, nil
}

// freshValues returns the template functions for one sample; each remembers
// its values so repeated arguments give the same value.
func freshValues() template.FuncMap {
	seen := make(map[string]string)
	memo := func(key string, make func() string) string {
		if v, ok := seen[key]; ok {
			return v
		}
		v := make()
		seen[key] = v
		return v
	}
	return template.FuncMap{
		"id": func(prefix string) string {
			return memo("id\x00"+prefix, func() string { return randomID(prefix, 24) })
		},
		"uuid": func(name string) string {
			return memo("uuid\x00"+name, randomUUID)
		},
		"num": func(name string, digits int) string {
			return memo(fmt.Sprintf("num\x00%s\x00%d", name, digits), func() string { return randomDigits(digits) })
		},
		"hex": func(name string, n int) string {
			return memo(fmt.Sprintf("hex\x00%s\x00%d", name, n), func() string { return randomHex(n) })
		},
		"lower": strings.ToLower,
		"code": func(name string, n int) string {
			return memo(fmt.Sprintf("code\x00%s\x00%d", name, n), func() string { return randomCode(n) })
		},
	}
}

// randomDigits returns n random decimal digits with no leading zero.
func randomDigits(n int) string {
	if n < 1 {
		return ""
	}
	lo := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(n-1)), nil)
	span := new(big.Int).Sub(new(big.Int).Mul(lo, big.NewInt(10)), lo)
	v, _ := rand.Int(rand.Reader, span) // never fails
	return v.Add(v, lo).String()
}

func randomCode(n int) string {
	return strings.ToUpper(randomID("", n))
}

func randomHex(n int) string {
	const digits = "0123456789abcdef"
	b := make([]byte, n)
	rand.Read(b) // never fails
	for i := range b {
		b[i] = digits[b[i]&0x0f]
	}
	return string(b)
}
