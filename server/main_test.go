package server_test

import (
	"testing"

	"github.com/relaytunnel/relay/internal/pgtest"
)

// TestMain stops the PostgreSQL server that tests over the postgres
// backend start.
func TestMain(m *testing.M) { pgtest.Main(m) }
