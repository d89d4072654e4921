package server

// Draining reports whether a queue drainer runs for name's session on
// this node (tests wait for one to have gone idle).
func (s *Server) Draining(name string) bool {
	t := s.reg.get(name)
	if t == nil {
		return false
	}
	t.drainMu.Lock()
	defer t.drainMu.Unlock()
	return t.draining
}
