package provider

import (
	"net/http"
	"net/url"
	"testing"
)

func TestIsHandshake(t *testing.T) {
	tests := []struct {
		name   string
		method string
		url    string
		header http.Header
		body   string
		want   bool
	}{
		{"Slack url_verification is a handshake", http.MethodPost, "/slack", http.Header{"X-Slack-Signature": {"v0=00"}},
			`{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}`, true},
		{"Slack event callback is not", http.MethodPost, "/slack", nil, `{"type":"event_callback","event":{"type":"url_verification"}}`, false},
		{"Zoom endpoint.url_validation is a handshake", http.MethodPost, "/zoom", nil,
			`{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}`, true},
		{"Zoom meeting event is not", http.MethodPost, "/zoom", nil, `{"event":"meeting.started","payload":{}}`, false},
		{"Twitter CRC GET is a handshake", http.MethodGet, "/twitter?crc_token=9b4507b3-9040-4669-9ba9-3a2a5a3fd6e0&nonce=MTU3NTQ3", nil, "", true},
		{"Twitter CRC with a lower-case method is a handshake", "get", "/twitter?crc_token=abc", nil, "", true},
		{"crc_token on a POST is not a CRC check", http.MethodPost, "/twitter?crc_token=abc", nil, `{}`, false},
		{"Microsoft Graph validationToken is a handshake", http.MethodPost, "/graph?validationToken=Validation%3a+Testing+client+application+reachability", http.Header{"Content-Type": {"text/plain"}}, "", true},
		{"ordinary Graph notification is not", http.MethodPost, "/graph", nil, `{"value":[{"subscriptionId":"7f105c7d"}]}`, false},
		{"Stripe event is not", http.MethodPost, "/stripe", http.Header{"Stripe-Signature": {"t=1,v1=00"}}, `{"type":"payment_intent.succeeded"}`, false},
		{"body that is not JSON is not", http.MethodPost, "/", nil, `type=url_verification`, false},
		{"request without a URL is judged by its body", http.MethodPost, "", nil, `{"type":"url_verification"}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var u *url.URL
			if tt.url != "" {
				var err error
				if u, err = url.Parse(tt.url); err != nil {
					t.Fatal(err)
				}
			}
			if got := IsHandshake(tt.method, u, tt.header, []byte(tt.body)); got != tt.want {
				t.Fatalf("IsHandshake = %v, want %v", got, tt.want)
			}
		})
	}
}
