package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/relaytunnel/relay/protocol"
)

// ErrUnreachable means no transport could reach the relay server.
var ErrUnreachable = errors.New("cannot reach relay server")

// ErrReplaced means another agent with the same token took the name.
var ErrReplaced = errors.New("another agent with the same token took over this tunnel")

// Agent keeps one tunnel up and forwards its deliveries.
type Agent struct {
	cfg *resolved
	fwd *forwarder
	ln  *protocol.StreamListener

	mu      sync.Mutex
	welcome protocol.Welcome
	ready   chan struct{} // closed at the first Welcome
	readyOK sync.Once

	sessions sync.WaitGroup // accept loops of every session
	probing  atomic.Bool    // a QUIC upgrade handshake is under way
	current  atomic.Pointer[sessionState]

	rec *recorder // nil without a store

	// OnDelivery, when set before Run, is called after every delivery
	// (once it is recorded, when there is a store).
	OnDelivery func(*Delivery)
	// OnRecorded, when set before Run, is called with the id of every
	// recording the agent writes, replays included (the inspector's feed).
	OnRecorded func(id int64)
}

type sessionState struct {
	sess protocol.Session
}

// link is a session that has completed its handshake.
type link struct {
	sess     protocol.Session
	ctrl     protocol.Stream
	upgraded bool // replaces a TCP session (auto moving back to QUIC)
}

// New checks cfg and builds an agent; Run connects it.
func New(cfg Config) (*Agent, error) {
	r, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: r, ready: make(chan struct{}), ln: protocol.NewStreamListener()}
	a.fwd = newForwarder(r, a.onDelivery)
	if r.Store != nil {
		a.rec = newRecorder(r.Store, r.Logger, a.recorded)
	}
	return a, nil
}

// Ready is closed once the agent is first connected.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Welcome is the server's latest Welcome (the public URL and limits).
func (a *Agent) Welcome() protocol.Welcome {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.welcome
}

// Transport is the transport of the current session, or "".
func (a *Agent) Transport() string {
	if s := a.current.Load(); s != nil {
		return s.sess.Transport()
	}
	return ""
}

// Run connects and serves until ctx ends; it reconnects with jittered
// exponential backoff after any failure but the ones a retry cannot fix
// (bad token, name owned by another token, version mismatch). The first
// connection must succeed: a wrong address should be said at once, not
// retried forever.
func (a *Agent) Run(ctx context.Context) error {
	if a.rec != nil {
		a.rec.start()
		// Deliveries are all answered (the server below has shut down)
		// before the last recordings are written.
		defer a.rec.stop()
	}
	srvDone := make(chan struct{})
	go func() {
		defer close(srvDone)
		a.fwd.serve(a.ln)
	}()
	defer func() {
		a.ln.Close()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		a.fwd.shutdown(sctx)
		cancel()
		<-srvDone
		a.sessions.Wait()
	}()

	connected := false
	attempt := 0
	var next *link
	for {
		l := next
		next = nil
		var err error
		if l == nil {
			l, err = a.connect(ctx, a.cfg.Transport)
		}
		if err == nil {
			if l.upgraded {
				a.say("moved to QUIC")
			} else if connected {
				a.say("connected again via %s: %s", transportName(l.sess), a.Welcome().URL)
			} else {
				w := a.Welcome()
				a.say("connected via %s: %s -> %s", transportName(l.sess), w.URL, a.cfg.target)
			}
			connected = true
			attempt = 0
			a.readyOK.Do(func() { close(a.ready) })
			next, err = a.serve(ctx, l)
			if next != nil {
				next.upgraded = true
				continue
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if permanent(err) || !connected {
			return err
		}
		attempt++
		d := backoff(attempt, a.cfg.MaxBackoff)
		a.say("connection lost: %v; reconnecting in %s", err, d.Round(100*time.Millisecond))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

func permanent(err error) bool {
	var ga *protocol.GoAwayError
	return errors.Is(err, protocol.ErrBadToken) || errors.Is(err, protocol.ErrNameTaken) ||
		errors.Is(err, protocol.ErrNameNotAllowed) || errors.Is(err, protocol.ErrVersionMismatch) ||
		errors.Is(err, protocol.ErrBadRequest) || errors.Is(err, ErrReplaced) ||
		(errors.As(err, &ga) && ga.GoAway.Reason == "revoked") // the token is gone for good
}

// backoff is exponential from 500 ms with full jitter in its upper half,
// capped at max.
func backoff(attempt int, max time.Duration) time.Duration {
	d := 500 * time.Millisecond << min(attempt-1, 10)
	if d > max || d <= 0 {
		d = max
	}
	return d/2 + rand.N(d/2+1)
}

func transportName(s protocol.Session) string {
	if s.Transport() == protocol.TransportQUIC {
		return "QUIC"
	}
	return "TCP (TLS+yamux)"
}

// connect dials by the given mode and completes the handshake.
func (a *Agent) connect(ctx context.Context, mode string) (*link, error) {
	var qerr error
	if mode == "auto" || mode == "quic" {
		l, err := a.dialHandshake(ctx, protocol.TransportQUIC)
		if err == nil || mode == "quic" || permanent(err) || ctx.Err() != nil {
			return l, err
		}
		qerr = err
		a.say("QUIC failed (%v); falling back to TCP", shortErr(err))
	}
	l, err := a.dialHandshake(ctx, protocol.TransportTCP)
	if err != nil && qerr != nil && !permanent(err) {
		return nil, fmt.Errorf("%w %s: quic: %v; tcp: %v", ErrUnreachable, a.cfg.Server, shortErr(qerr), shortErr(err))
	}
	return l, err
}

func (a *Agent) dialHandshake(ctx context.Context, transport string) (*link, error) {
	var (
		sess protocol.Session
		err  error
	)
	if transport == protocol.TransportQUIC {
		dctx, cancel := context.WithTimeout(ctx, a.cfg.QUICTimeout)
		sess, err = protocol.DialQUIC(dctx, a.cfg.udpAddr, a.cfg.tls)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%w %s over QUIC: %v", ErrUnreachable, a.cfg.udpAddr, err)
		}
	} else {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		sess, err = protocol.DialTCP(dctx, a.cfg.tcpAddr, a.cfg.tls)
		cancel()
		if err != nil {
			if errors.Is(err, protocol.ErrVersionMismatch) {
				return nil, err
			}
			return nil, fmt.Errorf("%w %s over TCP: %v", ErrUnreachable, a.cfg.tcpAddr, err)
		}
	}
	ctrl, err := a.handshake(ctx, sess)
	if err != nil {
		sess.Close()
		return nil, err
	}
	return &link{sess: sess, ctrl: ctrl}, nil
}

func (a *Agent) handshake(ctx context.Context, sess protocol.Session) (protocol.Stream, error) {
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ctrl, err := sess.OpenStream(hctx)
	if err != nil {
		return nil, fmt.Errorf("open control stream: %w", err)
	}
	deadline, _ := hctx.Deadline()
	ctrl.SetDeadline(deadline)
	hello := protocol.Hello{Version: protocol.Version, Token: a.cfg.Token, Name: a.cfg.Name, Agent: "relay/" + a.cfg.Version, NoQueue: a.cfg.NoQueue}
	if err := protocol.WriteMessage(ctrl, protocol.FrameHello, hello); err != nil {
		return nil, fmt.Errorf("send hello: %w", err)
	}
	w, err := protocol.ReadHelloReply(ctrl)
	if err != nil {
		return nil, err
	}
	ctrl.SetDeadline(time.Time{})
	a.mu.Lock()
	a.welcome = w
	a.mu.Unlock()
	return ctrl, nil
}

// serve runs one session until it ends. In auto mode on TCP it also tries
// QUIC from time to time and returns the new session when that works.
func (a *Agent) serve(ctx context.Context, l *link) (*link, error) {
	sess, ctrl := l.sess, l.ctrl
	a.current.Store(&sessionState{sess: sess})
	hb := time.Duration(a.Welcome().HeartbeatMillis) * time.Millisecond
	if hb <= 0 {
		hb = 5 * time.Second
	}
	c := protocol.NewControl(ctrl, hb)

	a.sessions.Add(1)
	go func() {
		defer a.sessions.Done()
		a.ln.AcceptDeliveries(sess)
	}()

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	upgraded := make(chan *link, 1)
	if a.cfg.Transport == "auto" && sess.Transport() == protocol.TransportTCP {
		a.sessions.Add(1)
		go func() {
			defer a.sessions.Done()
			a.probeQUIC(sctx, upgraded)
		}()
	}
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(sctx) }()

	var next *link
	select {
	case err := <-runErr:
		var ga *protocol.GoAwayError
		replaced := errors.As(err, &ga) && ga.GoAway.Reason == "replaced"
		if replaced && a.probing.Load() {
			// Our own upgrade replaced this session; the new one is on
			// its way from probeQUIC.
			select {
			case next = <-upgraded:
			case <-time.After(10 * time.Second):
			}
		}
		if next == nil {
			sess.Close()
			if ctx.Err() != nil {
				return nil, nil
			}
			if replaced {
				return nil, fmt.Errorf("%w (%s)", ErrReplaced, ga.GoAway.Message)
			}
			return nil, err
		}
	case next = <-upgraded:
		cancel()
		<-runErr
	}
	{
		// The server moves the name to the new session at once and
		// closes this one after its deliveries finish.
		a.sessions.Add(1)
		go func() {
			defer a.sessions.Done()
			t := time.NewTimer(time.Minute)
			defer t.Stop()
			select {
			case <-sess.Done():
			case <-t.C:
			case <-ctx.Done():
			}
			sess.Close()
		}()
		return next, nil
	}
}

func (a *Agent) probeQUIC(ctx context.Context, out chan<- *link) {
	t := time.NewTicker(a.cfg.QUICRetry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.probing.Store(true)
		l, err := a.dialHandshake(ctx, protocol.TransportQUIC)
		if err != nil {
			a.probing.Store(false)
			a.cfg.Logger.Debug("QUIC still unavailable", "err", err)
			continue
		}
		select {
		case out <- l:
		case <-ctx.Done():
			l.sess.Close()
		}
		a.probing.Store(false)
		return
	}
}

// recorded is the recorder's notice that a recording was written.
func (a *Agent) recorded(d *Delivery, id int64) {
	if d != nil && a.OnDelivery != nil {
		a.OnDelivery(d)
	}
	if a.OnRecorded != nil && id != 0 {
		a.OnRecorded(id)
	}
}

func (a *Agent) say(format string, args ...any) {
	fmt.Fprintf(a.cfg.Console, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func shortErr(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timed out"
	}
	return err.Error()
}
