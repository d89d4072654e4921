package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestTokens(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)

	tok, secret, err := s.CreateToken(ctx, "stripe-dev", "gh")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("the secret authenticates and names its token", func(t *testing.T) {
		got, err := s.Authenticate(ctx, secret)
		if err != nil || got.ID != tok.ID || len(got.Names) != 2 {
			t.Fatalf("Authenticate = %+v, %v", got, err)
		}
	})
	t.Run("a wrong secret is a bad token", func(t *testing.T) {
		if _, err := s.Authenticate(ctx, secret+"x"); !errors.Is(err, ErrBadToken) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("the owner of a reserved name is its token", func(t *testing.T) {
		if id, err := s.NameOwner(ctx, "gh"); err != nil || id != tok.ID {
			t.Fatalf("NameOwner = %q, %v", id, err)
		}
		if _, err := s.NameOwner(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unreserved: %v", err)
		}
	})
	t.Run("another token cannot reserve a taken name", func(t *testing.T) {
		if _, _, err := s.CreateToken(ctx, "stripe-dev"); !errors.Is(err, ErrNameTaken) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("the secret is stored only as a hash", func(t *testing.T) {
		s.DB().Exec(`PRAGMA wal_checkpoint(FULL)`)
		for _, f := range []string{"relay.db", "relay.db-wal"} {
			b, _ := os.ReadFile(filepath.Join(dir, f))
			if bytes.Contains(b, []byte(secret)) {
				t.Fatalf("%s holds the secret in clear", f)
			}
		}
	})
	t.Run("a revoked token is refused and frees its names", func(t *testing.T) {
		if err := s.RevokeToken(ctx, tok.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, secret); !errors.Is(err, ErrBadToken) {
			t.Fatalf("revoked token: %v", err)
		}
		if _, _, err := s.CreateToken(ctx, "stripe-dev"); err != nil {
			t.Fatalf("name not freed: %v", err)
		}
		if err := s.RevokeToken(ctx, tok.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("second revoke: %v", err)
		}
	})
	t.Run("tokens survive a reopen", func(t *testing.T) {
		s.Close()
		s2 := open(t, dir)
		toks, err := s2.ListTokens(ctx)
		if err != nil || len(toks) != 2 {
			t.Fatalf("ListTokens = %+v, %v", toks, err)
		}
	})
}

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"stripe-dev", true}, {"a", true}, {"0x1", true},
		{"", false}, {"-a", false}, {"a-", false}, {"A", false}, {"a.b", false}, {"a_b", false},
		{string(make([]byte, 64)), false},
	}
	for _, tt := range tests {
		if err := ValidName(tt.name); (err == nil) != tt.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestMigrations(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)
	s.Close()
	t.Run("opening a migrated database again is a no-op", func(t *testing.T) {
		s := open(t, dir)
		var v int
		s.DB().QueryRow(`PRAGMA user_version`).Scan(&v)
		if v != len(migrations) {
			t.Fatalf("user_version = %d", v)
		}
		s.Close()
	})
	t.Run("a database from a newer relay is refused", func(t *testing.T) {
		db, _ := sql.Open("sqlite", filepath.Join(dir, "relay.db"))
		db.Exec(`PRAGMA user_version = 999`)
		db.Close()
		if _, err := Open(ctx, dir); !errors.Is(err, ErrSchemaTooNew) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestConcurrentAuthenticate(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	_, secret, _ := s.CreateToken(ctx, "a")
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Authenticate(ctx, secret); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
}
