package inspect

import (
	"net/http"
	"slices"
	"strings"

	"github.com/relaytunnel/relay/internal/provider"
)

// infoJSON is GET /api/info: which tunnel the page belongs to, and two
// commands that send it a first delivery.
type infoJSON struct {
	Tunnel    string `json:"tunnel,omitempty"`
	PublicURL string `json:"public_url,omitempty"`
	Target    string `json:"target,omitempty"`
	// TryCurl posts a small JSON body, declared as JSON, to the tunnel.
	TryCurl string `json:"try_curl,omitempty"`
	// TryTrigger sends a provider's realistic sample (`relay trigger`).
	TryTrigger string `json:"try_trigger,omitempty"`
	// TrySecret says what SECRET stands for in TryTrigger, if it has one.
	TrySecret string `json:"try_secret,omitempty"`
}

func (s *Server) handleInfo(w http.ResponseWriter, r *http.Request) {
	var in Info
	if s.info != nil {
		in = s.info()
	}
	writeJSON(w, http.StatusOK, tryCommands(in))
}

// tryCommands fills infoJSON: its commands are meant to be pasted, so each
// part is shell-quoted, and secrets are never written out (SECRET stands
// for the one given to the agent).
func tryCommands(in Info) infoJSON {
	out := infoJSON{Tunnel: in.Tunnel, PublicURL: in.PublicURL, Target: in.Target}
	if in.PublicURL == "" {
		return out
	}
	base := strings.TrimSuffix(in.PublicURL, "/")
	curl := []string{"curl"}
	if in.CAFile != "" {
		curl = append(curl, "--cacert", shellQuote(in.CAFile))
	}
	curl = append(curl, shellQuote(base+"/webhooks"), "-H", shellQuote("Content-Type: application/json"),
		"-d", shellQuote(`{"id":"evt_1","type":"test.event"}`))
	out.TryCurl = strings.Join(curl, " ")

	prov := provider.Stripe
	signing := slices.Sorted(slices.Values(in.Signing))
	if len(signing) > 0 {
		prov = signing[0]
	}
	events := provider.Events(prov)
	if len(events) == 0 {
		return out
	}
	event := events[0]
	if prov == provider.Stripe && slices.Contains(events, "payment_intent.succeeded") {
		event = "payment_intent.succeeded"
	}
	trigger := []string{"relay", "trigger", shellQuote(prov), shellQuote(event), "--to", shellQuote(base)}
	if in.CAFile != "" {
		trigger = append(trigger, "--ca", shellQuote(in.CAFile))
	}
	if len(signing) > 0 {
		trigger = append(trigger, "--secret", "SECRET")
		out.TrySecret = "SECRET: the " + prov + " secret you gave relay with --secret " + prov + "=…"
	}
	out.TryTrigger = strings.Join(trigger, " ")
	return out
}
