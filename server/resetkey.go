package server

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/quic-go/quic-go"
)

// resetKeyFile holds the QUIC stateless reset key in the data directory.
const resetKeyFile = "quic-reset.key"

// loadResetKey reads the QUIC stateless reset key from dir, making one on
// first start. Keeping it across restarts is what lets a restarted server
// answer an agent's next packet on its old connection with a stateless
// reset, so the agent reconnects at once instead of waiting out the idle
// timeout.
func loadResetKey(dir string) (*quic.StatelessResetKey, error) {
	path := filepath.Join(dir, resetKeyFile)
	var key quic.StatelessResetKey
	b, err := os.ReadFile(path)
	switch {
	case err == nil && len(b) == len(key):
		copy(key[:], b)
		return &key, nil
	case err == nil:
		return nil, fmt.Errorf("%s: %d bytes, want %d (delete it to make a new one)", path, len(b), len(key))
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	rand.Read(key[:])
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, key[:], 0o600); err != nil {
		return nil, err
	}
	return &key, nil
}
