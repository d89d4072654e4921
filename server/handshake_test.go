package server_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/protocol"
)

// TestAHundredAgentsConnectingAtOnceAreAllAdmitted is the reconnect storm
// after a server restart: a login must never be refused `unavailable`
// because the database was busy with another login.
func TestAHundredAgentsConnectingAtOnceAreAllAdmitted(t *testing.T) {
	for _, backend := range relaytest.Backends {
		t.Run(backend, func(t *testing.T) {
			const n = 100
			srv := relaytest.StartServer(t, relaytest.NewBackend(t, backend).Use)
			app := relaytest.EchoApp(t)
			cfgs := make([]func() error, n)
			for i := range n {
				name := fmt.Sprintf("burst-%d", i)
				tok := relaytest.CreateToken(t, srv, name)
				tr := relaytest.Transports[i%len(relaytest.Transports)]
				cfg := relaytest.AgentConfig(srv, tr, tok, name, app.URL)
				cfg.QUICTimeout = 10 * time.Second
				cfgs[i] = func() error {
					// A dial that times out on a loaded machine is tried
					// again; a refusal by the server is what this is about.
					for try := 1; ; try++ {
						a, errc := relaytest.StartAgent(t, cfg)
						select {
						case <-a.Ready():
							return nil
						case err := <-errc:
							refused := errors.Is(err, protocol.ErrUnavailable) || errors.Is(err, protocol.ErrBadToken) ||
								errors.Is(err, protocol.ErrNameNotAllowed) || errors.Is(err, protocol.ErrNameTaken)
							if !refused && try < 5 {
								continue
							}
							return fmt.Errorf("agent %s (%s) was refused: %w", name, tr, err)
						case <-time.After(60 * time.Second):
							return fmt.Errorf("agent %s (%s) did not connect in 60s", name, tr)
						}
					}
				}
			}
			var wg sync.WaitGroup
			for _, connect := range cfgs {
				wg.Go(func() {
					if err := connect(); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
		})
	}
}
