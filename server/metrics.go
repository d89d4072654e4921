package server

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/relaytunnel/relay/protocol"
)

// transportOffline labels deliveries that no agent session carried: the
// edge queued or refused them itself.
const transportOffline = "offline"

// metrics is what the server tells Prometheus. Each Server has its own
// registry (tests run many servers in one process). Labels stay bounded:
// a tunnel name is reserved by a token, never taken from a request; paths
// and ids are never labels.
type metrics struct {
	reg        *prometheus.Registry
	deliveries *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	reqBytes   *prometheus.CounterVec
	respBytes  *prometheus.CounterVec
	sessions   *prometheus.GaugeVec
	sessTotal  *prometheus.CounterVec
	rejections *prometheus.CounterVec
	dead       *prometheus.CounterVec
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_deliveries_total",
			Help: "Deliveries the edge answered, by tunnel, HTTP status code and the transport that carried them (offline: queued or refused without an agent).",
		}, []string{"tunnel", "code", "transport"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "relay_delivery_duration_seconds",
			Help:    "Edge time of a delivery, from its request headers to the end of the answer to the provider.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"tunnel", "transport"}),
		reqBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_request_bytes_total",
			Help: "Request body bytes received from providers.",
		}, []string{"tunnel"}),
		respBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_response_bytes_total",
			Help: "Response body bytes sent back to providers from agents.",
		}, []string{"tunnel"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "relay_sessions",
			Help: "Agent sessions connected now.",
		}, []string{"transport"}),
		sessTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_sessions_total",
			Help: "Agent sessions admitted since the start.",
		}, []string{"transport"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_session_rejections_total",
			Help: "Agent handshakes refused, by reject code.",
		}, []string{"code"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_queue_dead_letters_total",
			Help: "Queued deliveries moved out of the queue after the local app failed on them too often.",
		}, []string{"tunnel"}),
	}
	m.reg.MustRegister(m.deliveries, m.duration, m.reqBytes, m.respBytes, m.sessions, m.sessTotal, m.rejections, m.dead,
		&stateCollector{s: s},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// 0, not absent, before the first: rate() and alerts see a start.
	for _, tr := range []string{protocol.TransportQUIC, protocol.TransportTCP} {
		m.sessions.WithLabelValues(tr)
		m.sessTotal.WithLabelValues(tr)
	}
	for _, c := range []protocol.RejectCode{protocol.RejectBadToken, protocol.RejectNameTaken, protocol.RejectNameNotAllowed,
		protocol.RejectVersionMismatch, protocol.RejectBadRequest, protocol.RejectUnavailable} {
		m.rejections.WithLabelValues(string(c))
	}
	return m
}

// delivered counts one answered delivery; status 0 (the provider left
// before any answer) is not one.
func (m *metrics) delivered(tunnel, transport string, status int, elapsed time.Duration, in, out int64) {
	if status == 0 {
		return
	}
	m.deliveries.WithLabelValues(tunnel, strconv.Itoa(status), transport).Inc()
	m.duration.WithLabelValues(tunnel, transport).Observe(elapsed.Seconds())
	m.reqBytes.WithLabelValues(tunnel).Add(float64(in))
	m.respBytes.WithLabelValues(tunnel).Add(float64(out))
}

// sessionOpened counts an admitted session and returns what ends it.
func (m *metrics) sessionOpened(transport string) (closed func()) {
	m.sessTotal.WithLabelValues(transport).Inc()
	g := m.sessions.WithLabelValues(transport)
	g.Inc()
	return g.Dec
}

func (m *metrics) rejected(code protocol.RejectCode) {
	m.rejections.WithLabelValues(string(code)).Inc()
}

// stateCollector reads, at scrape time, what the server keeps elsewhere:
// each reserved name's queue (depth and the age of its oldest delivery,
// one query for every name at once: thousands of names must not cost
// thousands of queries a scrape) and the expiry of the certificates the
// server serves.
type stateCollector struct{ s *Server }

var (
	queueDepthDesc = prometheus.NewDesc("relay_queue_depth",
		"Deliveries waiting in a tunnel's offline queue.", []string{"tunnel"}, nil)
	queueAgeDesc = prometheus.NewDesc("relay_queue_oldest_age_seconds",
		"Age of the oldest delivery in a tunnel's offline queue (0 when empty).", []string{"tunnel"}, nil)
	certExpiryDesc = prometheus.NewDesc("relay_certificate_expiry_timestamp_seconds",
		"When a certificate the server serves expires (Unix time): the --tls-cert leaf, ACME certificates in the cache, the --dev CA.", []string{"name"}, nil)
	scrapeErrorDesc = prometheus.NewDesc("relay_metrics_scrape_errors",
		"Errors reading the store or certificates during this scrape (the metrics above may be incomplete).", nil, nil)
)

// scrapeTimeout bounds the store reads of one scrape.
const scrapeTimeout = 5 * time.Second

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queueDepthDesc
	ch <- queueAgeDesc
	ch <- certExpiryDesc
	ch <- scrapeErrorDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(c.s.ctx, scrapeTimeout)
	defer cancel()
	names, errs := c.s.reservedNames(ctx)
	if len(names) > 0 {
		errs += c.collectQueues(ctx, ch, names)
	}
	certs, cerrs := c.s.certExpiries(ctx, names)
	for name, exp := range certs {
		ch <- prometheus.MustNewConstMetric(certExpiryDesc, prometheus.GaugeValue, float64(exp.Unix()), name)
	}
	ch <- prometheus.MustNewConstMetric(scrapeErrorDesc, prometheus.GaugeValue, float64(errs+cerrs))
}

// collectQueues sends every reserved name's queue depth and oldest age,
// 0 for a name with nothing queued; when the store cannot be read it sends
// none (a 0 would pass for an empty queue) and counts one error.
func (c *stateCollector) collectQueues(ctx context.Context, ch chan<- prometheus.Metric, names []string) int {
	stats, err := c.s.store.QueueStats(ctx)
	if err != nil {
		c.s.log.Warn("metrics: queue stats", "err", err)
		return 1
	}
	now := time.Now()
	for _, name := range names {
		st := stats[name]
		age := 0.0
		if st.Count > 0 {
			age = max(now.Sub(st.Oldest).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(queueDepthDesc, prometheus.GaugeValue, float64(st.Count), name)
		ch <- prometheus.MustNewConstMetric(queueAgeDesc, prometheus.GaugeValue, age, name)
	}
	return 0
}

// reservedNames is every name a token reserves.
func (s *Server) reservedNames(ctx context.Context) ([]string, int) {
	toks, err := s.store.ListTokens(ctx)
	if err != nil {
		s.log.Warn("metrics: list tokens", "err", err)
		return nil, 1
	}
	var names []string
	seen := map[string]bool{}
	for _, t := range toks {
		for _, n := range t.Names {
			if !seen[n] {
				seen[n] = true
				names = append(names, n)
			}
		}
	}
	return names, 0
}

// certExpiries is the NotAfter of each certificate the server can reach
// cleanly: the static leaf, the dev CA's root (its leaves are issued on
// demand and renewed before they expire), and the ACME cache's entries
// for the apex and every reserved name.
func (s *Server) certExpiries(ctx context.Context, names []string) (map[string]time.Time, int) {
	out := map[string]time.Time{}
	errs := 0
	switch {
	case s.devCA != nil:
		b, err := os.ReadFile(s.devCA.CertPath())
		if c := firstCert(b); err == nil && c != nil {
			out["dev-ca"] = c.NotAfter
		} else {
			errs++
		}
	case s.acme != nil:
		cache := s.store.CertCache()
		hosts := []string{s.cfg.Domain}
		for _, n := range names {
			hosts = append(hosts, n+"."+s.cfg.Domain)
		}
		for _, h := range hosts {
			b, err := cache.Get(ctx, h)
			if err != nil {
				continue // not issued yet: autocert asks on first use
			}
			if c := firstCert(b); c != nil {
				out[h] = c.NotAfter
			} else {
				errs++
			}
		}
	default:
		// Static: one certificate whatever the name asked for.
		if tc, err := s.certs.GetCertificate(nil); err == nil && tc.Leaf != nil {
			name := tc.Leaf.Subject.CommonName
			if len(tc.Leaf.DNSNames) > 0 {
				name = tc.Leaf.DNSNames[0]
			}
			out[name] = tc.Leaf.NotAfter
		} else {
			errs++
		}
	}
	return out, errs
}

// firstCert is the first certificate in PEM data (autocert keeps the key
// first, then the chain, leaf first).
func firstCert(b []byte) *x509.Certificate {
	for len(b) > 0 {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil
		}
		if blk.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil
			}
			return c
		}
	}
	return nil
}

// listenMetrics binds the metrics address; nil when it is off. Any
// address is the operator's to choose, but one reachable from elsewhere
// is said at warn: the metrics name every tunnel.
func (s *Server) listenMetrics() (net.Listener, error) {
	addr := s.cfg.MetricsListen
	if addr == "off" {
		return nil, nil
	}
	ln, err := s.cfg.Sockets.listenTCP(addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	if ip, ok := ln.Addr().(*net.TCPAddr); ok && !ip.IP.IsLoopback() {
		s.log.Warn("metrics listen on a non-loopback address: /metrics names every tunnel; keep it on a private network", "addr", ln.Addr().String())
	}
	return ln, nil
}

// metricsHandler serves /metrics and /healthz on the metrics listener.
// /healthz is 200 "ok" while the server serves, 503 once it is shutting
// down (a load balancer then stops sending it providers).
func (s *Server) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{
		ErrorLog:            slogPrintln{s},
		MaxRequestsInFlight: 4,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if s.draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "shutting down\n")
			return
		}
		io.WriteString(w, "ok\n")
	})
	return mux
}

// slogPrintln is promhttp's error log.
type slogPrintln struct{ s *Server }

func (l slogPrintln) Println(v ...any) { l.s.log.Warn("metrics", "err", fmt.Sprint(v...)) }

// MetricsAddr is the address /metrics and /healthz are served on, or ""
// when off.
func (s *Server) MetricsAddr() string {
	if s.metricsLn == nil {
		return ""
	}
	return s.metricsLn.Addr().String()
}
