package postgres_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaytunnel/relay/internal/pgtest"
	"github.com/relaytunnel/relay/server/store"
	"github.com/relaytunnel/relay/server/store/postgres"
)

var benchLimits = store.QueueLimits{MaxCount: 1 << 30, MaxBytes: 1 << 40, MaxTotalBytes: 1 << 40}

const benchBody = `{"id":"evt_1","type":"invoice.paid","data":{"object":{"amount":1000,"currency":"usd"}}}`

func benchQueued(name string, i int64) *store.Queued {
	return &store.Queued{Name: name, DeliveryID: fmt.Sprintf("dlv_%s_%d", name, i), ReceivedAt: time.Now(), RemoteAddr: "192.0.2.1:1",
		Method: "POST", URI: "/hook", Host: name + ".relay.test", Header: http.Header{"Content-Type": {"application/json"}}, BodySize: int64(len(benchBody))}
}

// BenchmarkQueue measures the PostgreSQL offline queue: Enqueue of a
// small webhook by parallel senders spread over 16 names, and the
// hand-over loop a drainer runs for one name (NextQueued, the body read,
// Ack). ops/s is the figure to read. pgtest's server runs with fsync and
// synchronous_commit off, so this is what the SQL and round trips cost,
// not a disk's flushes.
//
//	go test -run '^$' -bench BenchmarkQueue ./server/store/postgres/
func BenchmarkQueue(b *testing.B) {
	url := pgtest.URL(b)
	s, err := postgres.Open(context.Background(), url, postgres.Options{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	var seq atomic.Int64
	b.Run("enqueue", func(b *testing.B) {
		b.SetParallelism(4) // 8 senders on 2 cores
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := seq.Add(1)
				if err := s.Enqueue(ctx, benchQueued(fmt.Sprintf("name%d", i%16), i), strings.NewReader(benchBody), benchLimits); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	})
	b.Run("hand-over", func(b *testing.B) {
		b.StopTimer()
		for i := range b.N {
			if err := s.Enqueue(ctx, benchQueued("drain", seq.Add(1)+int64(i)), strings.NewReader(benchBody), benchLimits); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		for range b.N {
			q, err := s.NextQueued(ctx, "drain")
			if err != nil {
				b.Fatal(err)
			}
			rc := s.QueuedBody(ctx, q)
			io.Copy(io.Discard, rc)
			rc.Close()
			if err := s.Ack(ctx, q, store.OutcomeDelivered, 200); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	})
}
