package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
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

// ErrCertificate means the relay server was reached but its certificate
// is not one this machine trusts for that name (unknown CA, wrong name,
// expired). Retrying over the other transport would meet the same one.
var ErrCertificate = errors.New("relay server's certificate refused")

// ErrReplaced means another agent with the same token took the name.
var ErrReplaced = errors.New("another agent with the same token took over this tunnel")

// Agent keeps one tunnel up and forwards its deliveries.
type Agent struct {
	cfg      *resolved
	fwd      *localApp
	dedup    *dedup
	console  console
	inflight sync.WaitGroup // deliveries being handled (delivery.go)

	mu      sync.Mutex
	welcome protocol.Welcome
	ready   chan struct{} // closed at the first Welcome
	readyOK sync.Once

	sessions sync.WaitGroup // accept loops of every session
	current  atomic.Pointer[sessionState]
	fleet    atomic.Pointer[fleet] // the sessions to a cluster's nodes; nil for one server

	rec     *recorder // nil without a store
	metrics *metrics

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
	welcome  protocol.Welcome
	upgraded bool // replaces a TCP session (auto moving back to QUIC)
}

// target is one relay server the agent keeps a session to: the one
// --server names, or one node of a cluster at its advertised address.
type target struct {
	node             string // the node's name; "" for a single server
	tcpAddr, udpAddr string
	probing          atomic.Bool // a QUIC upgrade handshake is under way
}

// New checks cfg and builds an agent; Run connects it.
func New(cfg Config) (*Agent, error) {
	r, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: r, ready: make(chan struct{}), fwd: newLocalApp(r), dedup: newDedup(r.Store, r.DedupWindow, r.Logger), metrics: newMetrics()}
	a.console.w = r.Console
	if r.Store != nil {
		a.rec = newRecorder(r.Store, r.Logger, &a.console)
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

// Run connects and serves until ctx ends; it reconnects after any failure
// but the ones a retry cannot fix (bad token, name owned by another token,
// version mismatch): at once after a session that was healthy, then with
// a backoff that grows (and spreads agents apart) only while attempts keep
// failing. The first connection must succeed: a wrong address or an
// untrusted certificate should be said at once, not retried forever.
func (a *Agent) Run(ctx context.Context) error {
	if a.rec != nil {
		a.rec.start(a.OnRecorded)
		// Deliveries are all answered (waited for below) before the last
		// recordings are written.
		defer a.rec.stop()
	}
	defer func() {
		a.sessions.Wait()
		a.waitDeliveries(10 * time.Second)
		a.fwd.transport.CloseIdleConnections()
	}()

	first := &target{tcpAddr: a.cfg.tcpAddr, udpAddr: a.cfg.udpAddr}
	l, err := a.connect(ctx, a.cfg.Transport, first)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if l.welcome.Node == "" {
		w := l.welcome
		a.say("connected via %s: %s -> %s", transportName(l.sess), w.URL, a.cfg.target)
		// Transport answers from the moment Ready is closed.
		a.current.Store(&sessionState{sess: l.sess})
		a.metrics.setConnected(true)
		a.readyOK.Do(func() { close(a.ready) })
		return a.runTarget(ctx, first, l)
	}
	return a.runCluster(ctx, first, l)
}

// runTarget keeps a session to t up until ctx ends or an error a retry
// cannot fix, starting with l when it is not nil. It reconnects at once
// after a session that was healthy, then with a backoff that grows (and
// spreads agents apart) only while attempts keep failing.
func (a *Agent) runTarget(ctx context.Context, t *target, l *link) error {
	retry := retryPolicy{max: a.cfg.MaxBackoff, rand: rand.Float64}
	var next *link
	connected := l != nil
	for {
		if l == nil {
			l = next
		}
		next = nil
		var err error
		if l == nil {
			l, err = a.connect(ctx, a.cfg.Transport, t)
			if err == nil {
				if connected {
					a.metrics.reconnects.Inc()
				}
				switch {
				case t.node != "":
					a.fleet.Load().up(t, l)
					// The nodes may have changed while it was away.
					a.fleet.Load().update(l.welcome.Nodes, false)
				case connected:
					a.say("connected again via %s: %s", transportName(l.sess), l.welcome.URL)
				}
			}
		} else if l.upgraded {
			a.say("%smoved to QUIC", a.nodePrefix(t))
		}
		if err == nil {
			connected = true
			a.metrics.setConnected(true)
			began := time.Now()
			next, err = a.serve(ctx, t, l)
			l = nil
			if t.node == "" {
				a.metrics.setConnected(next != nil) // an upgrade to QUIC is no disconnection
			}
			retry.sessionEnded(time.Since(began), time.Now())
			if next != nil {
				next.upgraded = true
				continue
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if permanent(err) {
			return err
		}
		if t.node != "" {
			a.fleet.Load().down(t)
		}
		d := retry.next(time.Now())
		if d == 0 {
			a.say("%sconnection lost: %v; reconnecting", a.nodePrefix(t), err)
			continue
		}
		a.say("%sconnection lost: %v; reconnecting in %s", a.nodePrefix(t), err, d.Round(10*time.Millisecond))
		timer := time.NewTimer(d)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
	}
}

// nodePrefix starts a console line about one node of a cluster.
func (a *Agent) nodePrefix(t *target) string {
	if t.node == "" {
		return ""
	}
	return "relay node " + t.node + ": "
}

func permanent(err error) bool {
	var ga *protocol.GoAwayError
	return errors.Is(err, protocol.ErrBadToken) || errors.Is(err, protocol.ErrNameTaken) ||
		errors.Is(err, protocol.ErrNameNotAllowed) || errors.Is(err, protocol.ErrVersionMismatch) ||
		errors.Is(err, protocol.ErrBadRequest) || errors.Is(err, ErrReplaced) ||
		(errors.As(err, &ga) && ga.GoAway.Reason == "revoked") // the token is gone for good
}

// Reconnect timing.
const (
	// healthySession is how long a session must have lasted for the next
	// reconnect to start from scratch (at once); a session that keeps
	// dropping sooner keeps the backoff growing.
	healthySession = 10 * time.Second
	// firstBackoff is the wait after the first failed attempt; it doubles
	// with every further failure up to MaxBackoff.
	firstBackoff = 200 * time.Millisecond
)

// retryPolicy says how long to wait before each reconnect attempt.
type retryPolicy struct {
	max      time.Duration
	rand     func() float64 // [0, 1)
	failures int            // attempts since the last healthy session
	since    time.Time      // when the last healthy session ended
}

// sessionEnded notes a session that lasted d and ended at now; a healthy
// one starts the count afresh.
func (p *retryPolicy) sessionEnded(d time.Duration, now time.Time) {
	if d >= healthySession {
		p.failures, p.since = 0, now
	}
}

// next is the wait before the next attempt: none the first time, then
// firstBackoff doubling to max, but never more than half the time the
// tunnel has been down, so a server back after an outage of T is found
// within about T/2. Jitter spreads agents that lost the same server; it
// starts at ±10% and widens by 10% per failure up to ±50%, so a short
// outage is not paid for in jitter.
func (p *retryPolicy) next(now time.Time) time.Duration {
	p.failures++
	if p.since.IsZero() {
		p.since = now
	}
	if p.failures == 1 {
		return 0
	}
	d := firstBackoff << min(p.failures-2, 20)
	if d > p.max || d <= 0 {
		d = p.max
	}
	d = min(d, max(firstBackoff, now.Sub(p.since)/2))
	j := min(0.1*float64(p.failures-1), 0.5)
	d = time.Duration(float64(d) * (1 - j + 2*j*p.rand()))
	return min(d, p.max)
}

func transportName(s protocol.Session) string {
	if s.Transport() == protocol.TransportQUIC {
		return "QUIC"
	}
	return "TCP (TLS+yamux)"
}

// Dialing in auto mode.
const (
	// tcpHeadStart is how long QUIC dials alone before TCP joins the race.
	tcpHeadStart = 250 * time.Millisecond
	// quicPreference is how long after the start a QUIC session is still
	// taken over a TCP one that is already up.
	quicPreference = time.Second
)

// connect dials t by the given mode and completes the handshake.
func (a *Agent) connect(ctx context.Context, mode string, t *target) (*link, error) {
	sess, err := a.dial(ctx, mode, t)
	if err != nil {
		return nil, err
	}
	ctrl, w, err := a.handshake(ctx, sess)
	if err != nil {
		sess.Close()
		return nil, err
	}
	return &link{sess: sess, ctrl: ctrl, welcome: w}, nil
}

// dial opens a session by mode. auto races the transports: QUIC first,
// TCP from tcpHeadStart on if QUIC has not answered; QUIC wins if it is up
// within quicPreference, TCP otherwise. A certificate problem is final:
// the other transport meets the same certificate.
func (a *Agent) dial(ctx context.Context, mode string, t *target) (protocol.Session, error) {
	switch mode {
	case "quic":
		return a.dialTransport(ctx, protocol.TransportQUIC, t)
	case "tcp":
		return a.dialTransport(ctx, protocol.TransportTCP, t)
	}
	ctx, cancel := context.WithCancel(ctx)
	type result struct {
		transport string
		sess      protocol.Session
		err       error
	}
	results := make(chan result, 2)
	pending := 0
	start := func(transport string) {
		pending++
		go func() {
			s, err := a.dialTransport(ctx, transport, t)
			results <- result{transport, s, err}
		}()
	}
	var chosen protocol.Session
	defer func() {
		// The loser is cancelled; a session it opened anyway is closed.
		cancel()
		for ; pending > 0; pending-- {
			if r := <-results; r.sess != nil && r.sess != chosen {
				r.sess.Close()
			}
		}
	}()

	start(protocol.TransportQUIC)
	began := time.Now()
	head := time.NewTimer(tcpHeadStart)
	defer head.Stop()
	var (
		tcpStarted   bool
		tcp          protocol.Session
		qerr, terr   error
		preferExpiry <-chan time.Time
	)
	startTCP := func() {
		if !tcpStarted {
			tcpStarted = true
			start(protocol.TransportTCP)
		}
	}
	for {
		select {
		case <-head.C:
			startTCP()
		case <-preferExpiry:
			a.say("QUIC did not answer within %s; falling back to TCP", quicPreference)
			chosen = tcp
			return tcp, nil
		case r := <-results:
			pending--
			switch {
			case r.err == nil && r.transport == protocol.TransportQUIC:
				if tcp != nil {
					tcp.Close()
				}
				chosen = r.sess
				return r.sess, nil
			case r.err == nil:
				if qerr != nil {
					chosen = r.sess
					return r.sess, nil
				}
				tcp = r.sess
				pt := time.NewTimer(max(quicPreference-time.Since(began), 0))
				defer pt.Stop()
				preferExpiry = pt.C
			case errors.Is(r.err, ErrCertificate):
				if tcp != nil {
					tcp.Close()
				}
				return nil, r.err
			case r.transport == protocol.TransportQUIC:
				qerr = r.err
				if tcp != nil {
					a.say("QUIC failed (%v); falling back to TCP", shortErr(qerr))
					chosen = tcp
					return tcp, nil
				}
				if terr != nil {
					return nil, fmt.Errorf("%w %s: quic: %w; tcp: %w", ErrUnreachable, t.tcpAddr, qerr, terr)
				}
				startTCP()
			default:
				terr = r.err
				if errors.Is(terr, protocol.ErrVersionMismatch) {
					return nil, terr
				}
				if qerr != nil {
					return nil, fmt.Errorf("%w %s: quic: %w; tcp: %w", ErrUnreachable, t.tcpAddr, qerr, terr)
				}
			}
		}
	}
}

// dialTransport opens one transport session; errors say which transport
// failed and keep their cause. A certificate the agent cannot trust wraps
// ErrCertificate, not ErrUnreachable: the server was reached.
func (a *Agent) dialTransport(ctx context.Context, transport string, t *target) (protocol.Session, error) {
	l := protocol.LivenessFor(0)
	l.KeepAlive = protocol.AgentKeepAlive
	var (
		sess protocol.Session
		err  error
		addr string
		over string
	)
	if transport == protocol.TransportQUIC {
		addr, over = t.udpAddr, "QUIC"
		dctx, cancel := context.WithTimeout(ctx, a.cfg.QUICTimeout)
		sess, err = protocol.DialQUIC(dctx, addr, a.cfg.tls, l)
		cancel()
	} else {
		addr, over = t.tcpAddr, "TCP"
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		sess, err = protocol.DialTCP(dctx, addr, a.cfg.tls, l)
		cancel()
	}
	switch {
	case err == nil:
		return sess, nil
	case errors.Is(err, protocol.ErrVersionMismatch):
		return nil, err
	case isCertificateError(err):
		return nil, fmt.Errorf("%w: %s over %s: %w", ErrCertificate, addr, over, err)
	}
	return nil, fmt.Errorf("%w %s over %s: %w", ErrUnreachable, addr, over, err)
}

func (a *Agent) handshake(ctx context.Context, sess protocol.Session) (protocol.Stream, protocol.Welcome, error) {
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ctrl, err := sess.OpenStream(hctx)
	if err != nil {
		return nil, protocol.Welcome{}, fmt.Errorf("open control stream: %w", err)
	}
	deadline, _ := hctx.Deadline()
	ctrl.SetDeadline(deadline)
	hello := protocol.Hello{Version: protocol.Version, Token: a.cfg.Token, Name: a.cfg.Name, Agent: "relay/" + a.cfg.Version, NoQueue: a.cfg.NoQueue}
	if err := protocol.WriteMessage(ctrl, protocol.FrameHello, hello); err != nil {
		return nil, protocol.Welcome{}, fmt.Errorf("send hello: %w", err)
	}
	w, err := protocol.ReadHelloReply(ctrl)
	if err != nil {
		return nil, protocol.Welcome{}, err
	}
	ctrl.SetDeadline(time.Time{})
	a.mu.Lock()
	a.welcome = w
	a.mu.Unlock()
	return ctrl, w, nil
}

// serve runs one session until it ends. In auto mode on TCP it also tries
// QUIC from time to time and returns the new session when that works.
func (a *Agent) serve(ctx context.Context, t *target, l *link) (*link, error) {
	sess, ctrl := l.sess, l.ctrl
	a.current.Store(&sessionState{sess: sess})
	hb := time.Duration(l.welcome.HeartbeatMillis) * time.Millisecond
	live := protocol.LivenessFor(hb)
	live.KeepAlive = min(live.KeepAlive, protocol.AgentKeepAlive)
	protocol.SetLiveness(sess, live)
	c := protocol.NewControl(ctrl, controlPingInterval(sess.Transport(), live))
	if f := a.fleet.Load(); f != nil {
		c.OnNodes = func(n protocol.Nodes) { f.update(n.Nodes, true) }
	}

	a.sessions.Add(1)
	go func() {
		defer a.sessions.Done()
		a.acceptDeliveries(sess)
	}()

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	upgraded := make(chan *link, 1)
	if a.cfg.Transport == "auto" && sess.Transport() == protocol.TransportTCP {
		a.sessions.Add(1)
		go func() {
			defer a.sessions.Done()
			a.probeQUIC(sctx, t, upgraded)
		}()
	}
	// On shutdown the session is closed first and the control stream
	// ends with it, so every server hears a clean close (QUIC application
	// error 0, yamux GoAway) rather than a control stream aborted a moment
	// before it, which it logs as an error.
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRun()
	defer context.AfterFunc(ctx, func() { sess.Close() })()
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(runCtx) }()

	var next *link
	select {
	case err := <-runErr:
		var ga *protocol.GoAwayError
		replaced := errors.As(err, &ga) && ga.GoAway.Reason == "replaced"
		if replaced {
			// Our own upgrade may have replaced this session: the server
			// hangs up the old session as it welcomes the new one, so
			// the GoAway can come before or after probeQUIC hands the
			// new one over. probing is read first: probeQUIC clears it
			// only after the hand-over, so once it reads false a new
			// session is already in upgraded or none is coming.
			if t.probing.Load() {
				select {
				case next = <-upgraded:
				case <-time.After(10 * time.Second):
				}
			} else {
				select {
				case next = <-upgraded:
				default:
				}
			}
		}
		if next == nil {
			// Why the session ended (the server went silent, or hung up)
			// says more than the control stream failing with it; the
			// transport marks the session done before its streams fail.
			if ga == nil {
				select {
				case <-sess.Done():
					err = sess.Err()
				default:
				}
			}
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
		stopRun()
		<-runErr
	}
	// The server moves the name to the new session at once and closes
	// this one after its deliveries finish.
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

// controlPingInterval is how often the agent pings on the control stream.
// Over QUIC it is every AgentKeepAlive, answered or not: quic-go's own
// keep-alive PINGs and loss probes are 25-byte packets, too short for a
// restarted server to answer with a stateless reset (it answers nothing of
// 42 bytes or less), so without a padded ping each second the agent only
// learned of a restart at its next ping, up to IdleTimeout/3 later (kill -9
// and a restart 2 s later: back after 1.9–2.9 s instead of 0.4–0.6 s). Over
// TCP the keep-alive frame already meets the new server's RST.
func controlPingInterval(transport string, live protocol.Liveness) time.Duration {
	d := live.IdleTimeout / 3
	if transport == protocol.TransportQUIC {
		d = min(d, protocol.AgentKeepAlive)
	}
	return d
}

func (a *Agent) probeQUIC(ctx context.Context, tg *target, out chan<- *link) {
	t := time.NewTicker(a.cfg.QUICRetry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		tg.probing.Store(true)
		l, err := a.connect(ctx, "quic", tg)
		if err != nil {
			tg.probing.Store(false)
			a.cfg.Logger.Debug("QUIC still unavailable", "err", err)
			continue
		}
		select {
		case out <- l:
		case <-ctx.Done():
			l.sess.Close()
		}
		tg.probing.Store(false)
		return
	}
}

func (a *Agent) say(format string, args ...any) {
	a.console.print(time.Now().Format("15:04:05") + " " + fmt.Sprintf(format, args...) + "\n")
}

// isCertificateError reports whether err is TLS refusing the server's
// certificate, on either transport.
func isCertificateError(err error) bool {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		verify   *tls.CertificateVerificationError
	)
	return errors.As(err, &unknown) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &verify)
}

func shortErr(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timed out"
	}
	return err.Error()
}
