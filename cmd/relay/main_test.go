package main

import (
	"testing"

	"github.com/relaytunnel/relay/internal/pgtest"
)

// TestMain stops the PostgreSQL server that --database tests start.
func TestMain(m *testing.M) { pgtest.Main(m) }
