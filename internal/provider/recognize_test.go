package provider

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
)

func TestNames(t *testing.T) {
	want := []string{"stripe", "github", "gitlab", "bitbucket", "shopify", "slack", "typeform", "standardwebhooks", "paypal", "braintree"}
	if got := Names(); !slices.Equal(got, want) {
		t.Fatalf("Names() = %v, want %v", got, want)
	}
	Names()[0] = "changed"
	if Names()[0] != "stripe" {
		t.Fatal("Names returns the package's own slice")
	}
}

func TestRecognize(t *testing.T) {
	btPayload := base64.StdEncoding.EncodeToString([]byte(`<?xml version="1.0" encoding="UTF-8"?>
<notification><timestamp type="datetime">2025-03-14T15:09:26Z</timestamp><kind>subscription_charged_successfully</kind><subject><subscription><kind>not this one</kind></subscription></subject></notification>`))
	btBody := url.Values{"bt_signature": {"pk|00"}, "bt_payload": {btPayload}}.Encode()
	tests := []struct {
		name   string
		method string
		url    string
		header http.Header
		body   string
		want   Recognition
	}{
		{
			name:   "Stripe event gives its type and id",
			header: http.Header{"Stripe-Signature": {"t=1,v1=00"}},
			body:   `{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","type":"payment_intent.succeeded"}`,
			want:   Recognition{Stripe, "payment_intent.succeeded", "evt_1NG8Du2eZvKYlo2CUI79vXWy"},
		},
		{
			name: "unsigned Stripe event is still Stripe",
			body: `{"id":"evt_1","object":"event","type":"invoice.paid"}`,
			want: Recognition{Stripe, "invoice.paid", "evt_1"},
		},
		{
			name:   "Stripe-Signature with a body that is not JSON gives Stripe alone",
			header: http.Header{"Stripe-Signature": {"t=1,v1=00"}},
			body:   `<xml/>`,
			want:   Recognition{Provider: Stripe},
		},
		{
			name:   "GitHub push has no action",
			header: http.Header{"X-Github-Event": {"push"}, "X-Github-Delivery": {"72d3162e-cc78-11e3-81ab-4c9367dc0958"}},
			body:   `{"ref":"refs/heads/main"}`,
			want:   Recognition{GitHub, "push", "72d3162e-cc78-11e3-81ab-4c9367dc0958"},
		},
		{
			name:   "GitHub event with an action joins them with a dot",
			header: http.Header{"X-GitHub-Event": {"issues"}, "X-GitHub-Delivery": {"d1"}},
			body:   `{"action":"opened","issue":{"number":1}}`,
			want:   Recognition{GitHub, "issues.opened", "d1"},
		},
		{
			name:   "GitHub action that is not a string is ignored",
			header: http.Header{"X-GitHub-Event": {"issues"}},
			body:   `{"action":7}`,
			want:   Recognition{GitHub, "issues", ""},
		},
		{
			name:   "GitLab event id comes from X-Gitlab-Event-UUID",
			header: http.Header{"X-Gitlab-Event": {"Push Hook"}, "X-Gitlab-Event-Uuid": {"u1"}, "Idempotency-Key": {"k1"}},
			body:   `{"object_kind":"push"}`,
			want:   Recognition{GitLab, "Push Hook", "u1"},
		},
		{
			name:   "GitLab event id falls back to Idempotency-Key",
			header: http.Header{"X-Gitlab-Event": {"Merge Request Hook"}, "Idempotency-Key": {"k1"}},
			want:   Recognition{GitLab, "Merge Request Hook", "k1"},
		},
		{
			name: "GitLab with signing-token webhook-* headers is still GitLab",
			header: http.Header{"X-Gitlab-Event": {"Push Hook"}, "Webhook-Id": {"w1"}, "Webhook-Timestamp": {"1"},
				"Webhook-Signature": {"v1,AA=="}, "X-Gitlab-Event-Uuid": {"u1"}},
			want: Recognition{GitLab, "Push Hook", "u1"},
		},
		{
			name:   "Bitbucket event id comes from X-Request-UUID",
			header: http.Header{"X-Event-Key": {"repo:push"}, "X-Request-Uuid": {"r1"}, "X-Hook-Uuid": {"h1"}},
			want:   Recognition{Bitbucket, "repo:push", "r1"},
		},
		{
			name:   "Bitbucket event id falls back to X-Hook-UUID",
			header: http.Header{"X-Event-Key": {"pullrequest:created"}, "X-Hook-Uuid": {"h1"}},
			want:   Recognition{Bitbucket, "pullrequest:created", "h1"},
		},
		{
			name:   "Shopify topic and webhook id",
			header: http.Header{"X-Shopify-Topic": {"orders/create"}, "X-Shopify-Webhook-Id": {"b54557e4"}, "X-Shopify-Event-Id": {"e1"}},
			want:   Recognition{Shopify, "orders/create", "b54557e4"},
		},
		{
			name:   "Shopify event id when the webhook id is absent",
			header: http.Header{"X-Shopify-Topic": {"products/update"}, "X-Shopify-Event-Id": {"e1"}},
			want:   Recognition{Shopify, "products/update", "e1"},
		},
		{
			name:   "Slack event callback gives the inner event type",
			header: http.Header{"X-Slack-Signature": {"v0=00"}, "X-Slack-Request-Timestamp": {"1"}},
			body:   `{"type":"event_callback","event_id":"Ev0PV52K21","event":{"type":"app_mention","text":"hi"}}`,
			want:   Recognition{Slack, "app_mention", "Ev0PV52K21"},
		},
		{
			name:   "Slack url_verification keeps its outer type",
			header: http.Header{"X-Slack-Signature": {"v0=00"}},
			body:   `{"token":"t","challenge":"c","type":"url_verification"}`,
			want:   Recognition{Slack, "url_verification", ""},
		},
		{
			name:   "Slack slash command form",
			header: http.Header{"X-Slack-Signature": {"v0=00"}, "Content-Type": {"application/x-www-form-urlencoded"}},
			body:   "command=%2Fdeploy&text=staging&trigger_id=13345224609.738474920.8088930838d88f008e0",
			want:   Recognition{Slack, "slash_command", "13345224609.738474920.8088930838d88f008e0"},
		},
		{
			name:   "Slack interaction form carries JSON in payload",
			header: http.Header{"X-Slack-Signature": {"v0=00"}},
			body:   "payload=" + url.QueryEscape(`{"type":"block_actions","trigger_id":"t1"}`),
			want:   Recognition{Slack, "block_actions", "t1"},
		},
		{
			name:   "Typeform signed response",
			header: http.Header{"Typeform-Signature": {"sha256=AA=="}},
			body:   `{"event_id":"LtWXD3crgy","event_type":"form_response","form_response":{}}`,
			want:   Recognition{Typeform, "form_response", "LtWXD3crgy"},
		},
		{
			name: "Typeform response without a secret is known by its body",
			body: `{"event_id":"LtWXD3crgy","event_type":"form_response","form_response":{"form_id":"x"}}`,
			want: Recognition{Typeform, "form_response", "LtWXD3crgy"},
		},
		{
			name:   "Standard Webhooks type from the body, id from webhook-id",
			header: http.Header{"Webhook-Id": {"msg_p5jXN8AQM9LWM0D4loKWxJek"}, "Webhook-Timestamp": {"1614265330"}, "Webhook-Signature": {"v1,AA=="}},
			body:   `{"type":"invoice.paid","data":{}}`,
			want:   Recognition{StandardWebhooks, "invoice.paid", "msg_p5jXN8AQM9LWM0D4loKWxJek"},
		},
		{
			name:   "Svix's own header names are Standard Webhooks",
			header: http.Header{"Svix-Id": {"msg_1"}, "Svix-Timestamp": {"1"}, "Svix-Signature": {"v1,AA=="}},
			body:   `{"type":"user.created"}`,
			want:   Recognition{StandardWebhooks, "user.created", "msg_1"},
		},
		{
			name:   "a lone webhook-id is not enough for Standard Webhooks",
			header: http.Header{"Webhook-Id": {"msg_1"}},
			want:   Recognition{},
		},
		{
			name:   "PayPal event type and id from the body",
			header: http.Header{"Paypal-Transmission-Id": {"69cd13f0"}, "Paypal-Transmission-Sig": {"AA=="}},
			body:   `{"id":"WH-2WR32451HC0233532-67976317FL4543714","event_type":"PAYMENT.CAPTURE.COMPLETED"}`,
			want:   Recognition{PayPal, "PAYMENT.CAPTURE.COMPLETED", "WH-2WR32451HC0233532-67976317FL4543714"},
		},
		{
			name:   "Braintree kind from the XML in bt_payload",
			header: http.Header{"Content-Type": {"application/x-www-form-urlencoded"}},
			body:   btBody,
			want:   Recognition{Braintree, "subscription_charged_successfully", braintreeID(btPayload)},
		},
		{
			name: "Braintree payload that is not base64 still names Braintree",
			body: "bt_signature=pk%7C00&bt_payload=%21%21%21",
			want: Recognition{Braintree, "", braintreeID("!!!")},
		},
		{
			name:   "request from nobody we know is unknown",
			header: http.Header{"Content-Type": {"application/json"}, "User-Agent": {"curl/8.5.0"}},
			body:   `{"type":"something","id":"1"}`,
			want:   Recognition{},
		},
		{
			name: "empty request is unknown",
			want: Recognition{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var u *url.URL
			if tt.url != "" {
				u, _ = url.Parse(tt.url)
			}
			method := tt.method
			if method == "" {
				method = http.MethodPost
			}
			got := Recognize(method, u, tt.header, []byte(tt.body))
			if got != tt.want {
				t.Fatalf("Recognize = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// braintreeID is the id Recognize gives a Braintree payload: the first 12
// bytes of the SHA-256 of the payload, in hex.
func braintreeID(payload string) string {
	sum := sha256.Sum256([]byte(strings.TrimSpace(payload)))
	return "bt_" + hex.EncodeToString(sum[:12])
}

func TestBraintreeIDIsStableAcrossRetries(t *testing.T) {
	body := []byte(url.Values{"bt_payload": {"PG5vdGlmaWNhdGlvbi8+\n"}, "bt_signature": {"pk|00"}}.Encode())
	a := Recognize(http.MethodPost, nil, nil, body)
	b := Recognize(http.MethodPost, nil, nil, body)
	other := Recognize(http.MethodPost, nil, nil, []byte(url.Values{"bt_payload": {"PG90aGVyLz4=\n"}}.Encode()))
	if a.EventID == "" || a.EventID != b.EventID {
		t.Fatalf("the same payload gave ids %q and %q", a.EventID, b.EventID)
	}
	if a.EventID == other.EventID {
		t.Fatalf("different payloads share id %q", a.EventID)
	}
}
