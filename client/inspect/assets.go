package inspect

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"net/http"
	"path"
	"time"
)

// The page is plain HTML, CSS and JavaScript, embedded as written: no build
// step. The script lives in its own file because the Content-Security-Policy
// forbids inline script.
//
//go:embed ui
var uiFiles embed.FS

type asset struct {
	body        []byte
	contentType string
	etag        string
}

var assets = loadAssets()

func loadAssets() map[string]asset {
	types := map[string]string{
		".html": "text/html; charset=utf-8",
		".js":   "text/javascript; charset=utf-8",
		".css":  "text/css; charset=utf-8",
	}
	entries, err := uiFiles.ReadDir("ui")
	if err != nil {
		panic("inspect: embedded ui missing: " + err.Error())
	}
	m := make(map[string]asset, len(entries))
	for _, e := range entries {
		b, err := uiFiles.ReadFile("ui/" + e.Name())
		if err != nil {
			panic("inspect: embedded ui unreadable: " + err.Error())
		}
		sum := sha256.Sum256(b)
		m[e.Name()] = asset{body: b, contentType: types[path.Ext(e.Name())], etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
	}
	return m
}

// serveAsset serves one embedded file; browsers revalidate it by ETag, so a
// new relay binary never leaves an old script running against a new API.
func serveAsset(name string) http.HandlerFunc {
	a, ok := assets[name]
	if !ok {
		panic("inspect: no embedded asset " + name)
	}
	return func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", a.contentType)
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", a.etag)
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(a.body))
	}
}
