package inspect_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/client/inspect"
	"github.com/relaytunnel/relay/client/record"
)

// TestInspectorInARealBrowser opens the inspector in headless Chromium,
// watches a delivery arrive live, opens it and replays it to a real local
// app through client.Replay, and sees the replay arrive in the list.
func TestInspectorInARealBrowser(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (.ci/run installs Debian's chromium)")
	}
	var appCalls atomic.Int64
	var lastBody atomic.Value
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		lastBody.Store(string(b))
		appCalls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"received":true}`)
	}))
	defer app.Close()

	st := newStore(t)
	var ins *inspect.Server
	ins, base := inspector(t, st, inspect.Options{Replay: func(ctx context.Context, id int64) (int64, error) {
		d, err := client.Replay(ctx, st, id, client.ReplayOptions{})
		if err != nil {
			return 0, err
		}
		ins.Notify(d.ID)
		return d.ID, nil
	}})

	ctx, cancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU)...)
	defer cancel()
	ctx, cancel = chromedp.NewContext(ctx, chromedp.WithErrorf(t.Logf))
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	// The page is open and live before anything is recorded.
	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#live.on`)),
	); err != nil {
		t.Fatalf("open the inspector: %v", err)
	}

	now := time.Now()
	body := `{"id":"evt_browser","object":"event","type":"invoice.paid","data":{"amount":4200}}`
	id, err := st.Add(context.Background(), &record.Delivery{
		Kind: record.KindLive, Outcome: record.OutcomeForwarded, Transport: "quic", Target: app.URL,
		Method: "POST", Host: "stripe-dev.relay.example.com", Path: "/webhooks/stripe", Query: "src=test",
		RequestHeader: http.Header{"Content-Type": {"application/json"}, "Stripe-Signature": {"t=1,v1=00"}},
		RequestBody:   record.Body{Data: []byte(body), Size: int64(len(body))},
		Status:        200, ResponseHeader: http.Header{"Content-Type": {"application/json"}},
		ResponseBody: record.Body{Data: []byte(`{"ok":true}`), Size: 11},
		Provider:     "stripe", Event: "invoice.paid", EventID: "evt_browser", Signature: "invalid", SignatureReason: "signature mismatch",
		ReceivedAt: now, StartedAt: now.Add(300 * time.Microsecond), AnsweredAt: now.Add(2 * time.Millisecond), FinishedAt: now.Add(3 * time.Millisecond),
	})
	if err != nil {
		t.Fatal(err)
	}
	ins.Notify(id)

	row := chromedp.CSS(fmt.Sprintf(`#list li[data-id="%d"] button.row`, id))
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("read %s: %v", sel, err)
		}
		return v
	}
	if err := chromedp.Do(ctx,
		chromedp.WaitVisible(row), // arrived without a reload
		chromedp.Click(row),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#detail[data-id="%d"] pre.body.json`, id))),
	); err != nil {
		t.Fatalf("open the delivery: %v", err)
	}
	if detail := text(`#detail pre.body.json`); !strings.Contains(detail, "\n  \"type\": \"invoice.paid\"") || !strings.Contains(detail, "\"amount\": 4200") {
		t.Errorf("the JSON body is not pretty-printed:\n%s", detail)
	}
	if verdict := text(`#detail .verdict`); !strings.Contains(verdict, "invalid") || !strings.Contains(verdict, "signature mismatch") {
		t.Errorf("verdict shown as %q", verdict)
	}

	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.ID("replay")),
		chromedp.WaitVisible(chromedp.CSS(`#detail .result a`)),
	); err != nil {
		t.Fatalf("replay: %v", err)
	}
	newID := id + 1
	if result := text(`#detail .result`); !strings.Contains(result, fmt.Sprintf("#%d", newID)) {
		t.Fatalf("replay result %q, want the new recording #%d", result, newID)
	}
	replaySel := fmt.Sprintf(`#list li[data-id="%d"] button.row`, newID)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(replaySel))); err != nil {
		t.Fatalf("the replay did not appear in the list: %v", err)
	}
	if replayRow := text(replaySel); !strings.Contains(replayRow, fmt.Sprintf("replay of #%d", id)) {
		t.Errorf("replay row reads %q, want it marked as a replay of #%d", replayRow, id)
	}
	if n := appCalls.Load(); n != 1 || lastBody.Load() != body {
		t.Errorf("the local app got %d requests, last body %q; want the recorded body once", n, lastBody.Load())
	}

	// The filter box narrows the list.
	if err := chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.ID("filter"), "provider:nobody"),
		chromedp.WaitNotPresent(row),
	); err != nil {
		t.Fatalf("filter: %v", err)
	}
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#list li").length`))
	if err != nil {
		t.Fatal(err)
	}
	if rows != 0 {
		t.Errorf("%d rows match provider:nobody", rows)
	}
}
