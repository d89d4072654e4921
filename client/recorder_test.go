package client

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/relaytunnel/relay/client/record"
)

// TestTheRecorderBatchesOnlyWhenDeliveriesComeClose: a recording after a
// quiet spell is on disk at once (relay requests typed the moment relay
// trigger returns lists it); recordings right behind it wait up to
// recorderLinger to share one transaction.
func TestTheRecorderBatchesOnlyWhenDeliveriesComeClose(t *testing.T) {
	st, err := record.Open(context.Background(), t.TempDir(), record.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var written []int64
		count := func() int {
			mu.Lock()
			defer mu.Unlock()
			return len(written)
		}
		r := newRecorder(st, slog.New(slog.NewTextHandler(io.Discard, nil)), &console{w: io.Discard})
		r.start(func(id int64) {
			mu.Lock()
			written = append(written, id)
			mu.Unlock()
		})
		defer r.stop()
		delivery := func() *record.Delivery {
			return &record.Delivery{Kind: record.KindLive, Outcome: record.OutcomeForwarded, Method: "POST", Path: "/", Status: 200, ReceivedAt: time.Now()}
		}

		r.add(delivery(), "")
		synctest.Wait() // the recorder is idle again, or waiting on its linger
		if n := count(); n != 1 {
			t.Fatalf("%d recordings written after the first of a quiet spell, want it at once", n)
		}
		r.add(delivery(), "")
		r.add(delivery(), "")
		synctest.Wait()
		if n := count(); n != 1 {
			t.Fatalf("%d recordings written right behind the first, want the next two to wait for company", n)
		}
		time.Sleep(recorderLinger)
		synctest.Wait()
		if n := count(); n != 3 {
			t.Fatalf("%d recordings written after the linger, want 3", n)
		}
		time.Sleep(time.Second) // quiet again
		r.add(delivery(), "")
		synctest.Wait()
		if n := count(); n != 4 {
			t.Fatalf("%d recordings written after a second quiet spell, want 4", n)
		}
	})
}
