package record

import (
	"fmt"
	"net/url"
	"strings"
)

// LocalURL is where d went on the local app. A replay's Target is already
// the full URL it was sent to; a delivery's recorded path and query are
// joined to its Target's path, the way the agent forwards.
func (d *Delivery) LocalURL() (*url.URL, error) {
	if d.Target == "" {
		return nil, fmt.Errorf("delivery %d: no local app recorded", d.ID)
	}
	if d.Kind == KindReplay {
		u, err := url.Parse(d.Target)
		if err != nil {
			return nil, fmt.Errorf("recorded target %q: %w", d.Target, err)
		}
		return u, nil
	}
	return JoinPath(d.Target, d.Path, d.Query)
}

// JoinPath is base (an http URL, possibly with a path of its own) with the
// escaped path and raw query of a request appended, as a reverse proxy
// joins them.
func JoinPath(base, escapedPath, rawQuery string) (*url.URL, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", base, err)
	}
	escaped := strings.TrimSuffix(u.EscapedPath(), "/") + "/" + strings.TrimPrefix(escapedPath, "/")
	if u.Path, err = url.PathUnescape(escaped); err != nil {
		return nil, fmt.Errorf("path %q: %w", escapedPath, err)
	}
	u.RawPath = escaped
	u.RawQuery = rawQuery
	return u, nil
}

// Origin is u's scheme and host alone.
func Origin(u *url.URL) *url.URL {
	return &url.URL{Scheme: u.Scheme, Host: u.Host}
}
