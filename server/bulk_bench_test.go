package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"testing"

	"github.com/relaytunnel/relay/client/record"
	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/server"
)

// BenchmarkDeliveryLargeBody is a provider's 100 MB POST through the whole
// relay, streamed (no Content-Length buffering anywhere): HTTPS to the
// edge, the tunnel, the agent recording its first bytes, a local app that
// reads and counts it. It reports MB/s, allocations, CPU and the peak Go
// heap in use while bodies flow. Everything runs in this process, so the
// CPU includes the provider's TLS and the app.
func BenchmarkDeliveryLargeBody(b *testing.B) {
	const size = 100 << 20
	for _, tr := range relaytest.Transports {
		b.Run(tr, func(b *testing.B) {
			srv := relaytest.StartServer(b, func(c *server.Config) { c.MaxBody = size + 1<<20 })
			app := relaytest.App(b, func(w http.ResponseWriter, r *http.Request) {
				n, err := io.Copy(io.Discard, r.Body)
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadRequest)
					return
				}
				io.WriteString(w, strconv.FormatInt(n, 10))
			})
			st, err := record.Open(context.Background(), b.TempDir(), record.Options{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { st.Close() })
			cfg := relaytest.AgentConfig(srv, tr, relaytest.CreateToken(b, srv, "bulk"), "bulk", app)
			cfg.Store = st
			relaytest.RunAgent(b, cfg)
			hc := relaytest.ProviderClientHTTP1(b, srv)
			url := relaytest.TunnelURL(srv, "bulk", "/upload")
			send := func(n int64) error {
				req, err := http.NewRequest(http.MethodPost, url, io.LimitReader(zeros{}, n))
				if err != nil {
					return err
				}
				req.ContentLength = n
				resp, err := hc.Do(req)
				if err != nil {
					return err
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || string(got) != strconv.FormatInt(n, 10) {
					return fmt.Errorf("status %d, app read %q of %d bytes", resp.StatusCode, got, n)
				}
				return nil
			}
			if err := send(1 << 20); err != nil { // connections up before the clock starts
				b.Fatal(err)
			}
			heap := relaytest.WatchHeap(b)
			cpu := relaytest.StartCPU()
			b.SetBytes(size)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := send(size); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			cpu.Report(b)
			b.ReportMetric(float64(heap())/(1<<20), "peak-heap-MB")
		})
	}
}

// zeros is an endless body that costs nothing to produce.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
