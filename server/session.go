package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/relaytunnel/relay/protocol"
	"github.com/relaytunnel/relay/server/store"
)

// serveSession runs one agent session from Hello to its end.
func (s *Server) serveSession(ctx context.Context, sess protocol.Session) {
	defer sess.Close()
	log := s.log.With("transport", sess.Transport(), "remote", sess.RemoteAddr().String())

	actx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	ctrl, err := sess.AcceptStream(actx)
	cancel()
	if err != nil {
		log.Debug("agent opened no control stream", "err", err)
		return
	}
	// An agent opens the control stream and nothing else. Any other
	// stream, before the Welcome or after, is a protocol violation that
	// ends the session: refusing streams one by one would let a stranger
	// keep the server buffering what it sends on them. The transports
	// enforce it without a goroutine watching (QUIC grants the agent one
	// stream; yamux ends the session on a second, with ErrTooManyStreams).

	ctrl.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	var hello protocol.Hello
	if err := protocol.ReadMessage(ctrl, protocol.FrameHello, &hello); err != nil {
		log.Info("agent handshake failed", "err", err)
		s.metrics.rejected(protocol.RejectBadRequest)
		s.reject(sess, ctrl, &protocol.Reject{Code: protocol.RejectBadRequest, Version: protocol.Version, Message: err.Error()})
		return
	}
	ctrl.SetReadDeadline(time.Time{})

	t, rej := s.admit(ctx, hello, sess)
	if rej != nil {
		log.Info("agent refused", "code", rej.Code, "reason", rej.Message)
		s.metrics.rejected(rej.Code)
		s.reject(sess, ctrl, rej)
		return
	}
	defer t.stopQueue()
	t.ctrl = protocol.NewControl(ctrl, s.cfg.Heartbeat)
	log = log.With("name", t.name, "session", t.id)

	w := protocol.Welcome{
		Name:            t.name,
		URL:             s.PublicURL(t.name),
		SessionID:       t.id,
		Server:          s.cfg.Version,
		MaxBody:         s.cfg.MaxBody,
		HeartbeatMillis: s.cfg.Heartbeat.Milliseconds(),
	}
	if s.clustered() {
		w.Node = s.cfg.NodeName
	}
	// Registered before the Welcome leaves: an agent that has its Welcome
	// is live, and a delivery right after must not be queued instead.
	// Streams opened before the agent accepts any wait for it.
	old := s.reg.put(t)
	// The node list is read once t is registered, and t is marked
	// welcomed under the same lock a change's push takes: a change either
	// makes it into the Welcome or follows it as a Nodes frame.
	t.nodesMu.Lock()
	if s.clustered() {
		w.Nodes, t.nodesGen = s.cluster.get()
	}
	ctrl.SetWriteDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if err := protocol.WriteMessage(ctrl, protocol.FrameWelcome, w); err != nil {
		t.nodesMu.Unlock()
		log.Info("send welcome", "err", err)
		s.reg.remove(t)
		if old != nil {
			s.reg.put(old) // the session it would have replaced lives on
		}
		return
	}
	ctrl.SetWriteDeadline(time.Time{})
	t.welcomed = true
	t.nodesMu.Unlock()
	if s.clustered() {
		s.sendNodes(t) // a change between the read and welcomed
	}

	if old != nil {
		old.stopQueue()
		// The same token reconnecting: the network dropped and the old
		// session has not noticed yet. The newest one wins.
		// Deliveries already on the old session may finish there; new
		// ones go to t from now on.
		log.Info("agent replaced its previous session", "old_session", old.id)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			old.ctrl.SendGoAway(protocol.GoAway{Reason: "replaced", Message: "a newer session for " + t.name + " connected"})
			dctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
			old.flight.wait(dctx)
			cancel()
			// Give the GoAway time to arrive: closing a QUIC connection
			// drops what it has not sent yet. The agent hangs up on it.
			t := time.NewTimer(5 * time.Second)
			select {
			case <-old.sess.Done():
			case <-t.C:
			case <-s.ctx.Done():
			}
			t.Stop()
			old.sess.Close()
		}()
	}
	log.Info("agent connected", "agent", hello.Agent)
	defer s.metrics.sessionOpened(sess.Transport())()
	if s.revoked.has(t.tokenID) {
		s.endSession(t) // revoked while it was being admitted
	}

	// The queue drains for as long as this session is the tunnel's, from
	// now (deliveries queued while the agent was away) and whenever a
	// delivery is queued for it.
	t.kickQueue()
	err = t.ctrl.Run(ctx)
	t.stopQueue()
	s.reg.remove(t)
	select {
	case <-sess.Done():
		// The session's reason (the agent went silent, or hung up) says
		// more than the control stream failing with it.
		err = sess.Err()
	default:
	}
	var ga *protocol.GoAwayError
	switch {
	case errors.Is(err, protocol.ErrTooManyStreams):
		log.Warn("agent opened a stream of its own; session closed", "err", err)
	case errors.As(err, &ga), ctx.Err() != nil, errors.Is(err, protocol.ErrSessionClosed):
		log.Info("agent disconnected")
	default:
		log.Info("agent disconnected", "err", err)
	}
}

// admit checks a Hello against the store and builds the tunnel, or says
// why not.
func (s *Server) admit(ctx context.Context, h protocol.Hello, sess protocol.Session) (*tunnel, *protocol.Reject) {
	if rej := h.Check(); rej != nil {
		return nil, rej
	}
	if s.draining.Load() {
		return nil, &protocol.Reject{Code: protocol.RejectUnavailable, Version: protocol.Version, Message: "server is shutting down; reconnect shortly"}
	}
	tok, err := s.store.Authenticate(ctx, h.Token)
	if err == nil {
		s.used.note(tok.ID)
	}
	if errors.Is(err, store.ErrBadToken) {
		return nil, &protocol.Reject{Code: protocol.RejectBadToken, Version: protocol.Version,
			Message: "the token is unknown or revoked; create one on the server with `relay token create --name NAME`"}
	}
	if err != nil {
		s.log.Error("authenticate agent", "err", err)
		return nil, &protocol.Reject{Code: protocol.RejectUnavailable, Version: protocol.Version, Message: "server cannot check tokens right now"}
	}
	name := h.Name
	if name == "" {
		if len(tok.Names) == 0 {
			return nil, &protocol.Reject{Code: protocol.RejectNameNotAllowed, Version: protocol.Version,
				Message: fmt.Sprintf("token %s has no names; pass --name", tok.ID)}
		}
		name = tok.Names[0]
	}
	if !slices.Contains(tok.Names, name) {
		owner, err := s.store.NameOwner(ctx, name)
		if err == nil && owner != tok.ID {
			return nil, &protocol.Reject{Code: protocol.RejectNameTaken, Version: protocol.Version,
				Message: fmt.Sprintf("the name %q is reserved by another token; choose another --name", name)}
		}
		return nil, &protocol.Reject{Code: protocol.RejectNameNotAllowed, Version: protocol.Version,
			Message: fmt.Sprintf("token %s may serve %v, not %q; on the server: relay token create --name %s", tok.ID, tok.Names, name, name)}
	}
	if err := s.store.SetQueueing(ctx, name, !h.NoQueue); err != nil {
		s.log.Error("record queueing choice", "name", name, "err", err)
	}
	t := &tunnel{name: name, tokenID: tok.ID, id: newID("ses"), sess: sess, connectedAt: time.Now(), kick: make(chan struct{}, 1)}
	qctx, cancel := context.WithCancel(ctx)
	t.queueCtx = qctx
	t.stopQueue = cancel
	t.startDrain = func() {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.drainQueue(qctx, t)
		}()
	}
	return t, nil
}

// reject sends rj and waits briefly for the agent to hang up: closing the
// session at once could drop the Reject before it reaches the agent.
func (s *Server) reject(sess protocol.Session, ctrl protocol.Stream, rj *protocol.Reject) {
	ctrl.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if err := protocol.WriteMessage(ctrl, protocol.FrameReject, rj); err != nil {
		return
	}
	ctrl.CloseWrite()
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	select {
	case <-sess.Done():
	case <-t.C:
	}
}
