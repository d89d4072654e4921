package record_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client/record"
)

func openStore(t *testing.T, dir string, opt record.Options) *record.Store {
	t.Helper()
	st, err := record.Open(context.Background(), dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func sample(path string, status int, at time.Time) *record.Delivery {
	return &record.Delivery{
		Kind: record.KindLive, Outcome: record.OutcomeForwarded, Transport: "quic",
		Method: "POST", Host: "h.example", Path: path, Query: "a=1",
		RequestHeader: http.Header{"Content-Type": {"application/json"}},
		RequestBody:   record.Body{Data: []byte(`{"id":"evt_1"}`), Size: 14},
		Status:        status,
		ReceivedAt:    at, StartedAt: at.Add(time.Millisecond), FinishedAt: at.Add(3 * time.Millisecond),
	}
}

func TestRecordingRoundTripsEveryField(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := openStore(t, dir, record.Options{})
	now := time.Now()
	d := sample("/hook", 201, now)
	d.RelayID, d.Tunnel, d.Target = "dlv_1", "stripe-dev", "http://localhost:3000"
	d.ResponseHeader = http.Header{"X-App": {"yes"}}
	d.ResponseBody = record.Body{Data: []byte{0xff, 0x00, 0x01}, Size: 3}
	d.Provider, d.Event, d.EventID, d.Signature, d.SignatureReason = "stripe", "charge.succeeded", "evt_1", "invalid", "signature mismatch"
	d.Attempts = []record.Attempt{{At: now, Status: 503}, {At: now, Status: 201}}
	d.AnsweredAt = now.Add(2 * time.Millisecond)
	id, err := st.Add(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()

	// A second process (relay requests) reads what the agent wrote.
	st2 := openStore(t, dir, record.Options{})
	got, err := st2.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(d)
	have, _ := json.Marshal(got)
	if string(want) != string(have) {
		t.Errorf("recording changed on the way through the store:\nwant %s\ngot  %s", want, have)
	}
	if _, err := st2.Get(ctx, id+1); !errors.Is(err, record.ErrNotFound) {
		t.Errorf("Get of a missing id: %v, want ErrNotFound", err)
	}
}

func TestBodyJSONKeepsTextReadableAndBinaryIntact(t *testing.T) {
	for _, tt := range []struct {
		name     string
		data     []byte
		encoding string
	}{
		{"utf-8 text stays text", []byte(`{"a":"é"}`), "utf-8"},
		{"binary becomes base64", []byte{0xff, 0xfe, 0x00}, "base64"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := record.Body{Data: tt.data, Size: 10, Truncated: true}
			raw, err := json.Marshal(b)
			if err != nil {
				t.Fatal(err)
			}
			var shape struct{ Encoding string }
			json.Unmarshal(raw, &shape)
			if shape.Encoding != tt.encoding {
				t.Errorf("encoding %q, want %q (%s)", shape.Encoding, tt.encoding, raw)
			}
			var back record.Body
			if err := json.Unmarshal(raw, &back); err != nil {
				t.Fatal(err)
			}
			if string(back.Data) != string(tt.data) || back.Size != 10 || !back.Truncated {
				t.Errorf("round trip gave %+v", back)
			}
		})
	}
}

func TestBodiesAreCappedAndMarkedTruncated(t *testing.T) {
	st := openStore(t, t.TempDir(), record.Options{BodyCap: 8})
	d := sample("/big", 200, time.Now())
	d.RequestBody = record.Body{Data: []byte("0123456789abcdef"), Size: 1 << 20}
	id, err := st.Add(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := st.Get(context.Background(), id)
	if string(got.RequestBody.Data) != "01234567" || !got.RequestBody.Truncated || got.RequestBody.Size != 1<<20 {
		t.Errorf("stored body %+v, want the first 8 bytes, truncated, size 1 MiB", got.RequestBody)
	}
}

func TestListFilters(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir(), record.Options{})
	base := time.Now().Add(-time.Hour)
	var ds []*record.Delivery
	for i, c := range []struct {
		path, prov, event string
		status            int
	}{
		{"/stripe", "stripe", "charge.succeeded", 200},
		{"/github", "github", "push", 500},
		{"/stripe", "stripe", "invoice.paid", 404},
		{"/other/x", "", "", 201},
	} {
		d := sample(c.path, c.status, base.Add(time.Duration(i)*time.Minute))
		d.Provider, d.Event = c.prov, c.event
		ds = append(ds, d)
	}
	if err := st.AddBatch(ctx, ds); err != nil {
		t.Fatal(err)
	}
	ids := func(f record.Filter) []int64 {
		list, err := st.List(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var out []int64
		for _, s := range list {
			out = append(out, s.ID)
		}
		return out
	}
	id := func(i int) int64 { return ds[i].ID }
	for _, tt := range []struct {
		name string
		f    record.Filter
		want []int64
	}{
		{"no filter lists newest first", record.Filter{}, []int64{id(3), id(2), id(1), id(0)}},
		{"limit keeps the newest", record.Filter{Limit: 2}, []int64{id(3), id(2)}},
		{"status class 2xx", record.Filter{StatusClass: 2}, []int64{id(3), id(0)}},
		{"status class 5xx", record.Filter{StatusClass: 5}, []int64{id(1)}},
		{"provider", record.Filter{Provider: "Stripe"}, []int64{id(2), id(0)}},
		{"path prefix", record.Filter{PathPrefix: "/other"}, []int64{id(3)}},
		{"since", record.Filter{Since: base.Add(90 * time.Second)}, []int64{id(3), id(2)}},
		{"search matches event", record.Filter{Search: "invoice"}, []int64{id(2)}},
		{"search matches status", record.Filter{Search: "404"}, []int64{id(2)}},
		{"search treats % literally", record.Filter{Search: "%"}, nil},
		{"before pages back", record.Filter{BeforeID: id(2)}, []int64{id(1), id(0)}},
		{"after shows what is new", record.Filter{AfterID: id(1)}, []int64{id(3), id(2)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := ids(tt.f); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("ids %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRetentionPrunesByCountAndAge(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir(), record.Options{MaxCount: 10, MaxAge: time.Hour})
	now := time.Now()
	old := sample("/old", 200, now.Add(-2*time.Hour))
	if _, err := st.Add(ctx, old); err != nil {
		t.Fatal(err)
	}
	var last int64
	for i := range 25 {
		d := sample(fmt.Sprintf("/n/%d", i), 200, now)
		if _, err := st.Add(ctx, d); err != nil {
			t.Fatal(err)
		}
		last = d.ID
	}
	if _, err := st.Prune(ctx, now); err != nil {
		t.Fatal(err)
	}
	list, _ := st.List(ctx, record.Filter{Limit: 1000})
	if len(list) != 10 {
		t.Fatalf("%d recordings kept, want 10", len(list))
	}
	if list[0].ID != last || list[9].ID != last-9 {
		t.Errorf("kept ids %d..%d, want the newest %d..%d", list[9].ID, list[0].ID, last-9, last)
	}
	if _, err := st.Get(ctx, old.ID); !errors.Is(err, record.ErrNotFound) {
		t.Errorf("a recording older than MaxAge survived: %v", err)
	}
}

func TestSeenKeysLastTheWindowAndSurviveReopening(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := openStore(t, dir, record.Options{})
	now := time.Now()
	if err := st.MarkSeen(ctx, "github:abc", now); err != nil {
		t.Fatal(err)
	}
	st.Close()
	st = openStore(t, dir, record.Options{})
	for _, tt := range []struct {
		name  string
		key   string
		since time.Time
		want  bool
	}{
		{"a marked key is seen within the window", "github:abc", now.Add(-time.Hour), true},
		{"a marked key is forgotten outside the window", "github:abc", now.Add(time.Second), false},
		{"an unmarked key is not seen", "github:xyz", now.Add(-time.Hour), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := st.Seen(ctx, tt.key, tt.since)
			if err != nil || got != tt.want {
				t.Errorf("Seen = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

// TestTheWriterKeepsASmallPageCache: the connection recordings are
// written on keeps 512 KiB of pages, not SQLite's default 2 MB, which
// large bodies filled with pages nobody reads again.
func TestTheWriterKeepsASmallPageCache(t *testing.T) {
	st, err := record.Open(context.Background(), t.TempDir(), record.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if n, err := record.WriterCacheSize(st); err != nil || n != -512 {
		t.Errorf("writer's cache_size %d (%v), want -512 (KiB)", n, err)
	}
}
