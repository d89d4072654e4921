package provider

import (
	"net/http"
	"net/url"
	"strings"
)

// IsHandshake reports requests that prove to a provider that the endpoint is
// the developer's: the answer must come from the live app (it echoes a
// challenge or signs it with the app's secret), so such a request must never
// be queued or answered on the app's behalf. They are Slack's
// url_verification, Zoom's endpoint.url_validation, Twitter/X's CRC check
// (GET with crc_token) and Microsoft Graph's validationToken.
func IsHandshake(method string, u *url.URL, h http.Header, body []byte) bool {
	d := newDelivery(method, u, h, body)
	if d.query("validationToken") != "" {
		return true
	}
	if strings.EqualFold(method, http.MethodGet) && d.query("crc_token") != "" {
		return true
	}
	o := jsonObject(body)
	return o.str("type") == "url_verification" || o.str("event") == "endpoint.url_validation"
}
