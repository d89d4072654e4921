package inspect

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/client/record"
)

// List page sizes: the page asks for 100 at a time; nobody needs more than
// maxListLimit in one answer.
const (
	defaultListLimit = 100
	maxListLimit     = 1000
)

func (s *Server) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/requests", s.handleList)
	mux.HandleFunc("GET /api/requests/{id}", s.handleGet)
	mux.HandleFunc("POST /api/requests/{id}/replay", s.handleReplay)
	mux.HandleFunc("GET /api/events", s.handleEvents)
	mux.HandleFunc("GET /api/info", s.handleInfo)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such API endpoint")
	})
	mux.HandleFunc("GET /{$}", serveAsset("index.html"))
	mux.HandleFunc("GET /inspector.js", serveAsset("inspector.js"))
	mux.HandleFunc("GET /inspector.css", serveAsset("inspector.css"))
	return mux
}

// handleList is GET /api/requests: summaries, newest first, never bodies.
func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	f, err := parseFilter(r.URL.Query(), time.Now())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	list, err := s.st.List(r.Context(), f)
	if err != nil {
		s.log.Debug("inspector list", "err", err)
		writeError(w, http.StatusInternalServerError, "list deliveries: "+err.Error())
		return
	}
	if list == nil {
		list = []record.Summary{} // [] not null: the page iterates it
	}
	writeJSON(w, http.StatusOK, list)
}

// parseFilter reads the list query: limit, before and after (ids),
// status (2xx..5xx), provider, path (a prefix), since (RFC 3339, or a
// duration meaning "that long ago") and q (free text).
func parseFilter(q url.Values, now time.Time) (record.Filter, error) {
	f := record.Filter{Limit: defaultListLimit}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return f, fmt.Errorf("limit %q: want a positive number", v)
		}
		f.Limit = min(n, maxListLimit)
	}
	var err error
	if f.BeforeID, err = optionalID(q, "before"); err != nil {
		return f, err
	}
	if f.AfterID, err = optionalID(q, "after"); err != nil {
		return f, err
	}
	if v := q.Get("status"); v != "" {
		if len(v) != 3 || v[0] < '1' || v[0] > '5' || (v[1:] != "xx" && v[1:] != "XX") {
			return f, fmt.Errorf("status %q: want 1xx, 2xx, 3xx, 4xx or 5xx", v)
		}
		f.StatusClass = int(v[0] - '0')
	}
	f.Provider = q.Get("provider")
	f.PathPrefix = q.Get("path")
	f.Search = q.Get("q")
	if v := q.Get("since"); v != "" {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			f.Since = t
		} else if d, err := time.ParseDuration(v); err == nil && d >= 0 {
			f.Since = now.Add(-d)
		} else {
			return f, fmt.Errorf("since %q: want an RFC 3339 time or a duration such as 1h", v)
		}
	}
	return f, nil
}

func optionalID(q url.Values, key string) (int64, error) {
	v := q.Get(key)
	if v == "" {
		return 0, nil
	}
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id < 0 {
		return 0, fmt.Errorf("%s %q: want a delivery id", key, v)
	}
	return id, nil
}

func pathID(r *http.Request) (int64, error) {
	v := r.PathValue("id")
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id < 1 {
		return 0, fmt.Errorf("delivery id %q: want a positive number", v)
	}
	return id, nil
}

// detail is one delivery as the page shows it: the record package's JSON,
// plus its timings in microseconds (which add up) and the curl command that
// sends it again.
type detail struct {
	*record.Delivery
	Timing *timing `json:"timing,omitempty"`
	Curl   string  `json:"curl,omitempty"`
}

// handleGet is GET /api/requests/{id}: one delivery with bodies.
func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	d, err := s.st.Get(r.Context(), id)
	if errors.Is(err, record.ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("delivery %d not found (it may have been pruned)", id))
		return
	}
	if err != nil {
		s.log.Debug("inspector get", "id", id, "err", err)
		writeError(w, http.StatusInternalServerError, fmt.Sprintf("get delivery %d: %v", id, err))
		return
	}
	writeJSON(w, http.StatusOK, detail{Delivery: d, Timing: timingOf(d), Curl: curlCommand(d)})
}

// replayed is the answer to a replay: the new recording's id and what came
// of it.
type replayed struct {
	ID              int64   `json:"id"`
	ReplayOf        int64   `json:"replay_of"`
	Edited          bool    `json:"edited,omitempty"`
	Status          int     `json:"status"`
	DurationMS      float64 `json:"duration_ms"`
	Signature       string  `json:"signature,omitempty"`
	SignatureReason string  `json:"signature_reason,omitempty"`
	Error           string  `json:"error,omitempty"`
}

// handleReplay is POST /api/requests/{id}/replay, with no body to send the
// recording again as it is, or a JSON edit (see readEdit); ServeHTTP has
// already checked that it comes from the inspector's page.
func (s *Server) handleReplay(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if s.replay == nil {
		writeError(w, http.StatusNotImplemented, "replay is not available here")
		return
	}
	var edit *client.ReplayEdit
	if r.ContentLength != 0 {
		if edit, err = readEdit(w, r, s.st.BodyCap()); err != nil {
			status := http.StatusBadRequest
			if errors.Is(err, errNotJSON) {
				status = http.StatusUnsupportedMediaType
			}
			writeError(w, status, err.Error())
			return
		}
	}
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(replayTimeout))
	d, err := s.replay(r.Context(), id, edit)
	switch {
	case errors.Is(err, record.ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("delivery %d not found (it may have been pruned)", id))
		return
	case errors.Is(err, client.ErrBadEdit):
		writeError(w, http.StatusBadRequest, err.Error())
		return
	case errors.Is(err, client.ErrNotReplayable):
		writeError(w, http.StatusConflict, err.Error())
		return
	case err != nil:
		s.log.Debug("inspector replay", "id", id, "err", err)
		writeError(w, http.StatusBadGateway, fmt.Sprintf("replay delivery %d: %v", id, err))
		return
	}
	writeJSON(w, http.StatusOK, replayed{
		ID: d.ID, ReplayOf: d.ReplayOf, Edited: edit != nil, Status: d.Status, DurationMS: d.Summary().DurationMS,
		Signature: d.Signature, SignatureReason: d.SignatureReason, Error: d.Error,
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "encode answer: "+err.Error())
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

func writeError(w http.ResponseWriter, status int, msg string) {
	body, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{msg})
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}
