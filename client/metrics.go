package client

import (
	"io"
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/relaytunnel/relay/protocol"
)

// metrics is what the agent tells Prometheus, on its own registry (tests
// run many agents in one process). The inspector serves it.
type metrics struct {
	reg        *prometheus.Registry
	deliveries *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	reqBytes   prometheus.Counter
	respBytes  prometheus.Counter
	reconnects prometheus.Counter
	connected  prometheus.Gauge
	replays    *prometheus.CounterVec
	up         atomic.Bool // what connected says, for /healthz
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_agent_deliveries_total",
			Help: "Deliveries the agent handled, by the status class of its answer (none: nobody was left to answer) and transport.",
		}, []string{"status_class", "transport"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "relay_agent_delivery_duration_seconds",
			Help:    "Time the local app took to answer a delivery (to its response headers, retries included).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"transport"}),
		reqBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_agent_request_bytes_total",
			Help: "Request body bytes received through the tunnel.",
		}),
		respBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_agent_response_bytes_total",
			Help: "Response body bytes the local app answered.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_agent_reconnects_total",
			Help: "Sessions established again after a connection was lost (to any node of a cluster).",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_agent_connected",
			Help: "1 while the agent has a session with the relay server, else 0.",
		}),
		replays: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_agent_replays_total",
			Help: "Recorded deliveries replayed to the local app (inspector or relay replay), by result.",
		}, []string{"result"}),
	}
	m.reg.MustRegister(m.deliveries, m.duration, m.reqBytes, m.respBytes, m.reconnects, m.connected, m.replays,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, tr := range []string{protocol.TransportQUIC, protocol.TransportTCP} {
		for _, c := range []string{"2xx", "4xx", "5xx"} {
			m.deliveries.WithLabelValues(c, tr) // 0, not absent, before the first
		}
	}
	m.replays.WithLabelValues("ok")
	m.replays.WithLabelValues("error")
	return m
}

// delivered counts one delivery as it is recorded.
func (m *metrics) delivered(d *delivery) {
	m.deliveries.WithLabelValues(statusClass(d.status), d.transport).Inc()
	if !d.answered.IsZero() {
		m.duration.WithLabelValues(d.transport).Observe(d.answered.Sub(d.started).Seconds())
	}
	m.reqBytes.Add(float64(d.reqBody.Size))
	m.respBytes.Add(float64(d.respBody.Size))
}

func (m *metrics) setConnected(up bool) {
	m.up.Store(up)
	if up {
		m.connected.Set(1)
	} else {
		m.connected.Set(0)
	}
}

func (m *metrics) replayed(err error) {
	if err != nil {
		m.replays.WithLabelValues("error").Inc()
		return
	}
	m.replays.WithLabelValues("ok").Inc()
}

func statusClass(status int) string {
	if status < 100 || status > 599 {
		return "none"
	}
	return strconv.Itoa(status/100) + "xx"
}

// MetricsHandler serves the agent's metrics in Prometheus's format.
func (a *Agent) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{MaxRequestsInFlight: 4})
}

// Connected says whether the agent has a session with the relay now.
func (a *Agent) Connected() bool { return a.metrics.up.Load() }

// HealthHandler answers 200 "connected" while the agent has a session
// with the relay, 503 otherwise (starting, or reconnecting).
func (a *Agent) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if !a.Connected() {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "not connected\n")
			return
		}
		io.WriteString(w, "connected\n")
	})
}
