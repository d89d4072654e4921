// Package provider knows the webhook senders relay meets. It tells which
// provider sent a delivery and which event it carries, checks the delivery's
// signature against the developer's secret, signs sample deliveries the way the
// provider would (for `relay trigger`), and spots handshakes that only the
// developer's live app may answer.
//
// Everything here is pure computation over a request's method, URL, headers and
// raw body, except fetching PayPal's signing certificate, which is injectable.
// Nothing here ever re-serialises a body: signatures are over the bytes as sent.
package provider

import (
	"context"
	"errors"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Provider names, as used in `--secret PROVIDER=SECRET` and `relay trigger`.
const (
	Stripe           = "stripe"
	GitHub           = "github"
	GitLab           = "gitlab"
	Bitbucket        = "bitbucket"
	Shopify          = "shopify"
	Slack            = "slack"
	Typeform         = "typeform"
	StandardWebhooks = "standardwebhooks"
	PayPal           = "paypal"
	Braintree        = "braintree"
)

var (
	// ErrUnknownProvider is returned for a provider name this package does not know.
	ErrUnknownProvider = errors.New("unknown provider")
	// ErrUnknownEvent is returned by NewSample for an event it has no fixture for.
	ErrUnknownEvent = errors.New("unknown event")
	// ErrSignsBody is returned by Sign for a provider whose signature travels
	// inside the body (Braintree's bt_signature form field): use SignBody.
	ErrSignsBody = errors.New("provider signs inside the body")
	// ErrNeedsPrivateKey is returned when signing for PayPal without an RSA key:
	// PayPal signs with its own private key, which nobody else holds. SignPayPal
	// signs with a key of the caller's own.
	ErrNeedsPrivateKey = errors.New("provider signs with its private key")
)

// scheme is everything relay knows about one provider.
type scheme struct {
	name string
	// detect reports whether the request carries the provider's own headers.
	detect func(d *delivery) bool
	// detectBody recognises the provider from the body alone; it runs only
	// when no provider's headers matched, since body shapes are weaker evidence.
	detectBody func(d *delivery) bool
	// describe returns the event type and event id, "" where unknown.
	describe func(d *delivery) (event, id string)
	// signed reports whether a signature is present at all, and missing is the
	// reason given when it is not.
	signed  func(d *delivery) bool
	missing string
	// verify runs only on a signed delivery with a configured secret.
	verify func(ctx context.Context, v *Verifier, d *delivery, secret string) Verdict
	// sign sets the signature on h, returning the body to send (changed only
	// when bodySigned).
	sign       func(secret string, h http.Header, body []byte, now time.Time) ([]byte, error)
	bodySigned bool
	// wire turns a rendered fixture body into the bytes the provider sends;
	// nil sends it as written.
	wire func(body []byte) []byte
}

// schemes in the order of the "Providers" table; Names reports this order.
var schemes = []*scheme{
	stripeScheme,
	githubScheme,
	gitlabScheme,
	bitbucketScheme,
	shopifyScheme,
	slackScheme,
	typeformScheme,
	standardWebhooksScheme,
	paypalScheme,
	braintreeScheme,
}

// detectOrder lists the schemes most specific first: Standard Webhooks'
// generic webhook-* headers are also sent by senders that have headers of
// their own (GitLab's signing tokens), so they are tried last.
var detectOrder = []*scheme{
	stripeScheme,
	githubScheme,
	gitlabScheme,
	bitbucketScheme,
	shopifyScheme,
	slackScheme,
	typeformScheme,
	paypalScheme,
	braintreeScheme,
	standardWebhooksScheme,
}

// Names returns the known provider names.
func Names() []string {
	names := make([]string, len(schemes))
	for i, s := range schemes {
		names[i] = s.name
	}
	return names
}

// lookup finds a scheme by name; names are matched without regard to case
// because users type them on the command line.
func lookup(name string) *scheme {
	name = strings.ToLower(strings.TrimSpace(name))
	i := slices.IndexFunc(schemes, func(s *scheme) bool { return s.name == name })
	if i < 0 {
		return nil
	}
	return schemes[i]
}

// delivery is the part of a request every decision here is made on.
type delivery struct {
	method string
	url    *url.URL
	header http.Header
	body   []byte

	decoded bool
	object  object // the body as a JSON object, nil when it is not one

	// canonical is 1 when every header name is in canonical form (as
	// net/http makes them), -1 when one is not, 0 before anyone asked.
	canonical int8
}

// json returns the body as a JSON object, decoding it once however many
// schemes look.
func (d *delivery) json() object {
	if !d.decoded {
		d.object, d.decoded = jsonObject(d.body), true
	}
	return d.object
}

func newDelivery(method string, u *url.URL, h http.Header, body []byte) *delivery {
	if h == nil {
		h = http.Header{}
	}
	return &delivery{method: method, url: u, header: h, body: body}
}

// get reads a header. Headers that came from a recording or were built by
// hand may not be in canonical form, so a miss falls back to a
// case-insensitive scan.
func (d *delivery) get(name string) string {
	if v := d.header.Get(name); v != "" {
		return v
	}
	if d.canonical == 0 {
		d.canonical = 1
		for k := range d.header {
			if textproto.CanonicalMIMEHeaderKey(k) != k {
				d.canonical = -1
				break
			}
		}
	}
	if d.canonical == 1 {
		return "" // every scheme asks for many headers a delivery lacks
	}
	for k, vs := range d.header {
		if len(vs) > 0 && strings.EqualFold(k, name) {
			return vs[0]
		}
	}
	return ""
}

func (d *delivery) has(name string) bool { return d.get(name) != "" }

func (d *delivery) query(name string) string {
	if d.url == nil {
		return ""
	}
	return d.url.Query().Get(name)
}
