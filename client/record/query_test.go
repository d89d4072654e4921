package record_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client/record"
)

func TestListFindsCodesBodiesAndTunnels(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir(), record.Options{})
	now := time.Now()
	add := func(path string, status int, tunnel, reqBody, respBody string) {
		d := sample(path, status, now)
		d.Tunnel = tunnel
		d.RequestBody = record.Body{Data: []byte(reqBody), Size: int64(len(reqBody))}
		d.ResponseBody = record.Body{Data: []byte(respBody), Size: int64(len(respBody))}
		if _, err := st.Add(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	add("/a", 200, "stripe-dev", `{"customer":"cus_Alice42"}`, `ok`)                 // 1
	add("/b", 502, "stripe-dev", `name=Bob&amount=12.50`, `{"error":"bad gateway"}`) // 2
	add("/c", 503, "gh-dev", `{}`, `upstream DOWN for maintenance`)                  // 3
	add("/d", 404, "gh-dev", "50%_off", ``)                                          // 4

	tests := []struct {
		name string
		f    record.Filter
		want []int64
	}{
		{"an exact status selects that code only", record.Filter{Status: 502}, []int64{2}},
		{"a status class selects the class", record.Filter{StatusClass: 5}, []int64{3, 2}},
		{"search finds a value in a JSON request body", record.Filter{Search: "cus_alice42"}, []int64{1}},
		{"search finds a form field's value", record.Filter{Search: "Bob"}, []int64{2}},
		{"search finds text in a response body", record.Filter{Search: "maintenance"}, []int64{3}},
		{"search treats % and _ as themselves", record.Filter{Search: "50%_"}, []int64{4}},
		{"a tunnel selects its deliveries", record.Filter{Tunnel: "gh-dev"}, []int64{4, 3}},
		{"filters combine", record.Filter{Tunnel: "stripe-dev", StatusClass: 5, Search: "amount"}, []int64{2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := st.List(ctx, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			var ids []int64
			for _, s := range got {
				ids = append(ids, s.ID)
			}
			if len(ids) != len(tt.want) || (len(ids) > 0 && (ids[0] != tt.want[0] || ids[len(ids)-1] != tt.want[len(tt.want)-1])) {
				t.Errorf("got ids %v, want %v", ids, tt.want)
			}
		})
	}
	got, _ := st.List(ctx, record.Filter{Limit: 1})
	if got[0].Tunnel != "gh-dev" {
		t.Errorf("summary tunnel %q, want gh-dev", got[0].Tunnel)
	}
}

// TestOpenExistingCreatesAndPrunesNothing: relay requests reads while the
// agent (with its own --keep) writes; it must neither create a database
// where there is none nor apply the default retention to another's.
func TestOpenExistingCreatesAndPrunesNothing(t *testing.T) {
	ctx := context.Background()
	empty := t.TempDir()
	if _, err := record.OpenExisting(ctx, empty); !errors.Is(err, record.ErrNoRecordings) {
		t.Errorf("OpenExisting on an empty directory: %v, want ErrNoRecordings", err)
	}
	if _, err := os.Stat(filepath.Join(empty, record.DBFile)); !os.IsNotExist(err) {
		t.Errorf("OpenExisting created %s", record.DBFile)
	}

	dir := t.TempDir()
	st := openStore(t, dir, record.Options{MaxCount: 20000, MaxAge: 365 * 24 * time.Hour})
	old := time.Now().Add(-30 * 24 * time.Hour) // beyond the default 7 days
	if _, err := st.Add(ctx, sample("/old", 200, old)); err != nil {
		t.Fatal(err)
	}
	r, err := record.OpenExisting(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got, _ := r.List(ctx, record.Filter{}); len(got) != 1 {
		t.Errorf("after OpenExisting, %d recordings; the agent kept 1 under its own --keep-for", len(got))
	}
}
