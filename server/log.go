package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/relaytunnel/relay/server/store"
)

// serveLog answers GET https://DOMAIN/api/log?name=N for the agent's
// token (Authorization: Bearer TOKEN): what arrived for N, queued or live,
// and what became of it, newest first, with the queue's current length.
func (e *edge) serveLog(w http.ResponseWriter, r *http.Request) {
	s := e.s
	if r.Method != http.MethodGet {
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "use GET")
		return
	}
	secret, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		writeError(w, http.StatusUnauthorized, "unauthorized", "send the agent's token as Authorization: Bearer TOKEN")
		return
	}
	tok, err := s.store.Authenticate(r.Context(), secret)
	if err == nil {
		s.used.note(tok.ID)
	}
	if errors.Is(err, store.ErrBadToken) {
		writeError(w, http.StatusUnauthorized, "unauthorized", "the token is unknown or revoked")
		return
	}
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "unavailable", "cannot check tokens right now")
		return
	}
	name := r.URL.Query().Get("name")
	if name == "" && len(tok.Names) > 0 {
		name = tok.Names[0]
	}
	if !slices.Contains(tok.Names, name) {
		writeError(w, http.StatusForbidden, "forbidden", fmt.Sprintf("this token may read the log of %v, not %q", tok.Names, name))
		return
	}
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	entries, err := s.store.DeliveryLog(r.Context(), name, limit)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "log_unavailable", err.Error())
		return
	}
	queued, _ := s.store.QueueLen(r.Context(), name)
	if entries == nil {
		entries = []store.LogEntry{}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(struct {
		Name    string           `json:"name"`
		Queued  int              `json:"queued"`
		Entries []store.LogEntry `json:"entries"`
	}{name, queued, entries})
}
