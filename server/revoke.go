package server

import (
	"context"
	"sync"
	"time"

	"github.com/relaytunnel/relay/protocol"
)

// GoAwayRevoked is the GoAway reason for a session whose token was
// revoked; the agent takes it as final and exits.
const GoAwayRevoked = "revoked"

// revokedTokens are the tokens revoked since this server started, as its
// watch reported them. A session admitted just before its token's
// revocation was seen checks here once it is registered: between the two
// checks (the watch scanning the registry, the session scanning this set)
// none escapes.
type revokedTokens struct {
	mu  sync.Mutex
	ids map[string]struct{}
}

func (r *revokedTokens) add(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ids == nil {
		r.ids = make(map[string]struct{})
	}
	r.ids[id] = struct{}{}
}

func (r *revokedTokens) has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.ids[id]
	return ok
}

// endRevoked ends the sessions of every token the store reports revoked,
// until the channel closes (the server's context ended).
func (s *Server) endRevoked(revoked <-chan string) {
	for id := range revoked {
		s.revoked.add(id)
		for _, t := range s.reg.all() {
			if t.tokenID == id {
				s.endSession(t)
			}
		}
	}
}

// endSession ends a revoked token's session: no new delivery reaches it
// from now on, its queue stops draining, and the agent is told why before
// the session closes.
func (s *Server) endSession(t *tunnel) {
	if !t.revoked.CompareAndSwap(false, true) {
		return
	}
	s.reg.remove(t)
	t.stopQueue()
	s.log.Info("token revoked: ending its session", "name", t.name, "session", t.id, "token", t.tokenID)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t.ctrl.SendGoAway(protocol.GoAway{Reason: GoAwayRevoked,
			Message: "token " + t.tokenID + " was revoked on the relay server; ask its operator for a new one (relay token create)"})
		// Closing at once could drop the GoAway unsent (QUIC); the agent
		// hangs up when it reads it.
		timer := time.NewTimer(5 * time.Second)
		defer timer.Stop()
		select {
		case <-t.sess.Done():
		case <-timer.C:
		case <-s.ctx.Done():
		}
		t.sess.Close()
	}()
}

// tokenUses collects when tokens authenticated, for the store's
// last_used_at: written in one batch a minute, never on the handshake.
type tokenUses struct {
	mu   sync.Mutex
	used map[string]time.Time
}

func (u *tokenUses) note(id string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.used == nil {
		u.used = make(map[string]time.Time)
	}
	u.used[id] = time.Now()
}

func (u *tokenUses) take() map[string]time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	m := u.used
	u.used = nil
	return m
}

// upkeepInterval is how often token uses are written and abandoned
// spools looked for.
const upkeepInterval = time.Minute

// upkeep writes token uses and removes bodies whose upload died with a
// process, until ctx ends; it writes the last uses then.
func (s *Server) upkeep(ctx context.Context) {
	t := time.NewTicker(upkeepInterval)
	defer t.Stop()
	s.purgeSpools(ctx)
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s.flushUses(fctx)
			return
		case <-t.C:
			s.flushUses(ctx)
			s.purgeSpools(ctx)
		}
	}
}

func (s *Server) flushUses(ctx context.Context) {
	if err := s.store.TouchTokens(ctx, s.used.take()); err != nil {
		s.log.Warn("record token use", "err", err)
	}
}

// purgeSpools removes spools older than any upload could last, on any
// node of a cluster (they may have other settings): an hour, or longer
// if this node's limits allow a longer upload.
func (s *Server) purgeSpools(ctx context.Context) {
	longest := s.cfg.BodyTimeout + time.Duration(s.cfg.MaxBody/s.cfg.MinBodyRate)*time.Second
	n, err := s.store.PurgeSpools(ctx, time.Now().Add(-max(time.Hour, 2*longest)))
	switch {
	case err != nil && ctx.Err() == nil:
		s.log.Warn("remove abandoned queue uploads", "err", err)
	case n > 0:
		s.log.Info("removed abandoned queue uploads", "count", n)
	}
}
