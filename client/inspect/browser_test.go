package inspect_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/client/inspect"
	"github.com/relaytunnel/relay/client/record"
	"github.com/relaytunnel/relay/internal/relaytest"
)

// shotsDir is where the browser tests also leave their screenshots, so
// that a person can look at them after a run.
const shotsDir = "/tmp/inspector-shots"

// page is headless Chromium showing the inspector at one window size.
type page struct {
	t   *testing.T
	ctx context.Context
	tab context.Context // without ctx's deadline: what a failure reads the page with
}

// browser is one headless Chromium for the package's tests, started by the
// first test that needs it and stopped by TestMain; each test gets a tab of
// its own. Starting Chromium costs seconds on a busy machine.
var browser struct {
	once sync.Once
	ctx  context.Context // the browser's; tabs derive from it
	stop func()
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if browser.stop != nil {
		browser.stop()
	}
	os.Exit(code)
}

// openBrowser opens a tab of w×h CSS pixels in headless Chromium; it closes
// when the test ends. Without chromium the test is skipped.
func openBrowser(t *testing.T, w, h int) *page {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (.ci/run installs Debian's chromium)")
	}
	browser.once.Do(func() {
		actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
			chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU)...)
		bctx, cancelBrowser := chromedp.NewContext(actx)
		browser.ctx, browser.stop = bctx, func() { cancelBrowser(); cancelAlloc() }
		browser.err = chromedp.Do(bctx) // starts Chromium; it lives as long as bctx
	})
	if browser.err != nil {
		t.Fatalf("start chromium: %v", browser.err)
	}
	tab, closeTab := chromedp.NewContext(browser.ctx)
	t.Cleanup(closeTab)
	if err := chromedp.Do(tab); err != nil { // opens the tab, which lives as long as tab
		t.Fatalf("open a tab: %v", err)
	}
	ctx, cancel := context.WithTimeout(tab, 90*time.Second)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(int64(w), int64(h))); err != nil {
		t.Fatalf("size the tab: %v", err)
	}
	return &page{t: t, ctx: ctx, tab: tab}
}

func (p *page) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, actions...); err != nil {
		p.t.Fatalf("%s: %v\n%s", what, err, p.state())
	}
}

// state describes the page for a failure's message: where it is, what
// the list and the detail pane show, whether the event stream is up.
func (p *page) state() string {
	ctx, cancel := context.WithTimeout(p.tab, 10*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify({
		url: location.href,
		live: document.querySelector("#live")?.className,
		rows: [...document.querySelectorAll("#list a.row")].map(a => a.dataset.id + (a.classList.contains("selected") ? "*" : "")),
		listNote: document.querySelector("#list-note")?.textContent,
		detail: document.querySelector("#detail")?.dataset.id ?? null,
		detailText: (document.querySelector("#detail")?.innerText || "").slice(0, 300),
	})`))
	if err != nil {
		return "(the page could not be read: " + err.Error() + ")"
	}
	return "the page: " + s
}

func (p *page) text(sel string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		p.t.Fatalf("read %s: %v", sel, err)
	}
	return s
}

// eval runs js in the page and decodes its JSON-able result into out.
func (p *page) eval(js string, out any) {
	p.t.Helper()
	raw, err := chromedp.Run(p.ctx, chromedp.Evaluate[json.RawMessage](js))
	if err == nil {
		err = json.Unmarshal(raw, out)
	}
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", firstLine(js), err)
	}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + "…"
	}
	return s
}

// visible reports whether sel is rendered (present and not display:none).
func (p *page) visible(sel string) bool {
	p.t.Helper()
	var v bool
	p.eval(fmt.Sprintf(`(() => { const e = document.querySelector(%q); return !!e && e.getClientRects().length > 0; })()`, sel), &v)
	return v
}

// shot saves a screenshot of the viewport into the test's temp dir and a
// copy into shotsDir.
func (p *page) shot(name string) {
	p.t.Helper()
	// Animations (a new row's highlight) end before the picture is taken.
	p.eval(`document.getAnimations().forEach(a => a.finish()) || true`, new(bool))
	png, err := chromedp.Run(p.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		p.t.Fatalf("screenshot %s: %v", name, err)
	}
	dir := p.t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		p.t.Fatal(err)
	}
	if err := os.MkdirAll(shotsDir, 0o755); err == nil {
		os.WriteFile(filepath.Join(shotsDir, name), png, 0o644)
	}
	p.t.Logf("screenshot %s (%d bytes), copied to %s", filepath.Join(dir, name), len(png), shotsDir)
}

// echoApp is a local app that keeps what it received and answers JSON.
type echoApp struct {
	*httptest.Server
	mu  sync.Mutex
	got []relaytest.Echoed
}

func newEchoApp(t *testing.T) *echoApp {
	a := &echoApp{}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.got = append(a.got, relaytest.Echoed{Method: r.Method, URI: r.RequestURI, Host: r.Host, Body: string(body), Headers: r.Header.Clone()})
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"received": true, "method": r.Method, "uri": r.RequestURI, "bytes": len(body)})
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *echoApp) requests() []relaytest.Echoed {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]relaytest.Echoed(nil), a.got...)
}

// replayer is an inspector's Replay through client.Replay on st, telling
// the page of each new recording as the agent does.
func replayer(st *record.Store, ins **inspect.Server, secrets map[string]string) func(context.Context, int64, *client.ReplayEdit) (*record.Delivery, error) {
	return func(ctx context.Context, id int64, edit *client.ReplayEdit) (*record.Delivery, error) {
		d, err := client.Replay(ctx, st, id, client.ReplayOptions{Edit: edit, Secrets: secrets})
		if err != nil {
			return nil, err
		}
		(*ins).Notify(d.ID)
		return d, nil
	}
}

var devInfo = inspect.Info{
	Tunnel: "stripe-dev", PublicURL: "https://stripe-dev.localhost:8443", Target: "http://localhost:3000",
	CAFile: "/home/dev/.local/state/relay/dev/dev-ca.pem", Signing: []string{"stripe"},
}

// seed records a morning's worth of deliveries of every kind the list must
// show well: providers and verdicts, replays, failures, a queued one, long
// paths and queries, a form post and a stranger's hostile method.
func seed(t *testing.T, st *record.Store, target string) []int64 {
	t.Helper()
	base := time.Now().Add(-time.Hour)
	stripeBody := `{"id":"evt_3PqL9Z2eZvKYlo2C","object":"event","api_version":"2024-06-20","type":"payment_intent.succeeded","data":{"object":{"id":"pi_3PqL9Z2eZvKYlo2C0jKQ","amount":2000,"currency":"usd","customer":"cus_Qh3nT5p","metadata":{"order_id":"1001"}}},"livemode":false}`
	type spec struct {
		method, path, query    string
		status                 int
		prov, event, sig, why  string
		kind, outcome, errText string
		replayOf               int64
		body                   string
		ctype                  string
		dur                    time.Duration
	}
	specs := []spec{
		{method: "POST", path: "/webhooks/stripe", status: 200, prov: "stripe", event: "payment_intent.succeeded", sig: "valid", body: stripeBody, ctype: "application/json", dur: 5100 * time.Microsecond},
		{method: "POST", path: "/webhooks", status: 200, prov: "stripe", event: "payment_intent.succeeded", sig: "invalid", why: "signature mismatch", body: stripeBody, ctype: "application/json", dur: 1100 * time.Microsecond},
		{method: "POST", path: "/gh", status: 200, prov: "github", event: "push", sig: "valid", body: `{"ref":"refs/heads/main","commits":[]}`, ctype: "application/json", dur: 1200 * time.Microsecond},
		{method: "POST", path: "/webhooks/slack", status: 200, prov: "slack", event: "url_verification", body: `{"type":"url_verification","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}`, ctype: "application/json", dur: 1200 * time.Microsecond},
		{method: "POST", path: "/webhooks", status: 502, errText: "relay agent could not connect to http://localhost:3000 (connection refused); is your app running?", outcome: record.OutcomeFailed, body: `{"id":"evt_1"}`, ctype: "application/json", dur: 1900 * time.Microsecond},
		{method: "POST", path: "/webhooks/stripe", status: 200, prov: "stripe", event: "payment_intent.succeeded", sig: "valid", kind: record.KindReplay, replayOf: 1, body: stripeBody, ctype: "application/json", dur: 6800 * time.Microsecond},
		{method: "POST", path: "/hooks/form", status: 200, body: "name=Alice&amount=12.50&note=hello+world", ctype: "application/x-www-form-urlencoded", dur: 900 * time.Microsecond},
		{method: "GET", path: "/callback", query: "code=abc123&state=xyz&list=1&list=2&redirect_uri=https%3A%2F%2Fexample.com%2Foauth%2Fcallback%2Fafter%2Flogin", status: 200, dur: 1100 * time.Microsecond},
		{method: "POST", path: "/webhooks/stripe", status: 202, prov: "stripe", event: "invoice.payment_failed", sig: "valid", kind: record.KindQueued, body: stripeBody, ctype: "application/json", dur: 3 * time.Millisecond},
		{method: "POST", path: "/api/v2/integrations/partners/acme-corporation/webhooks/inbound/events/very/long/path/that/does/not/fit", status: 404, body: `{"ping":1}`, ctype: "application/json", dur: 23 * time.Millisecond},
		{method: "POST", path: "/webhooks/stripe", status: 200, prov: "stripe", event: "customer.subscription.trial_will_end", sig: "invalid", why: "timestamp outside tolerance (-9m21s)", kind: record.KindReplay, replayOf: 2, body: stripeBody, ctype: "application/json", dur: 1500 * time.Microsecond},
		{method: "X`touch$IFS'PWNED'`", path: "/hook", status: 405, body: "", dur: 400 * time.Microsecond},
		{method: "POST", path: "/big", status: 200, body: strings.Repeat(`{"chunk":"xxxxxxxxxxxxxxxx"},`, 10), ctype: "text/plain", dur: 77 * time.Millisecond},
		{method: "DELETE", path: "/webhooks/shopify", status: 500, prov: "shopify", event: "orders/create", sig: "valid", body: `{"id":820982911946154500}`, ctype: "application/json", dur: 1530 * time.Millisecond},
	}
	var ids []int64
	for i, s := range specs {
		at := base.Add(time.Duration(i) * 97 * time.Second)
		kind := s.kind
		if kind == "" {
			kind = record.KindLive
		}
		outcome := s.outcome
		if outcome == "" {
			outcome = record.OutcomeForwarded
		}
		h := http.Header{"User-Agent": {"Stripe/1.0 (+https://stripe.com/docs/webhooks)"}, "X-Forwarded-For": {"203.0.113.7"}, "X-Forwarded-Proto": {"https"}}
		if s.ctype != "" {
			h.Set("Content-Type", s.ctype)
		}
		if s.prov == "stripe" {
			h.Set("Stripe-Signature", "t=1795423558,v1=5f6fe179fc9fea979ecc55357ee80d78a9228d711ecf78dabb2606364060b511")
		}
		d := &record.Delivery{
			Kind: kind, Outcome: outcome, ReplayOf: s.replayOf, Transport: "quic", Tunnel: "stripe-dev", Target: target,
			Method: s.method, Host: "stripe-dev.localhost:8443", Path: s.path, Query: s.query, RemoteAddr: "203.0.113.7:41234",
			RequestHeader: h, RequestBody: record.Body{Data: []byte(s.body), Size: int64(len(s.body))},
			Status: s.status, Error: s.errText,
			Provider: s.prov, Event: s.event, Signature: s.sig, SignatureReason: s.why,
			ReceivedAt: at, StartedAt: at.Add(1890 * time.Microsecond),
			AnsweredAt: at.Add(1890*time.Microsecond + s.dur*8/10), FinishedAt: at.Add(1890*time.Microsecond + s.dur),
		}
		if s.status != 502 {
			d.ResponseHeader = http.Header{"Content-Type": {"application/json"}, "X-App": {"tiny"}}
			d.ResponseBody = record.Body{Data: []byte(`{"ok":true,"handled":"` + s.path + `"}`)}
			d.ResponseBody.Size = int64(len(d.ResponseBody.Data))
		} else {
			d.AnsweredAt = time.Time{}
		}
		if s.event != "" {
			d.EventID = fmt.Sprintf("evt_%04d", i)
		}
		id, err := st.Add(context.Background(), d)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// filter types text into the filter box at once, as a paste would: typed
// key by key on a slow machine, each prefix would be a filter of its own.
func (p *page) filter(text string) {
	p.t.Helper()
	p.eval(fmt.Sprintf(`(() => { const f = document.getElementById("filter"); f.value = %q; f.dispatchEvent(new Event("input")); return true; })()`, text), new(bool))
}

// open navigates to the inspector and waits until it is live.
func (p *page) open(url string) {
	p.t.Helper()
	p.do("open "+url, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS(`#live.on`)))
}

type box struct{ Left, Right, Width float64 }

// geometry is where the list's rows and their cells sit on the page.
type geometry struct {
	List box
	Head []box
	Rows []struct {
		ID    string
		Row   box
		Cells []box
		Tags  []box
		Path  box
	}
	Pane box
	Clip []string // tags cut by their cell
}

const geometryJS = `(() => {
  const b = (e) => { const r = e.getBoundingClientRect(); return { Left: r.left, Right: r.right, Width: r.width }; };
  const list = document.getElementById("list");
  const rows = [...list.querySelectorAll("a.row")].map((a) => ({
    ID: a.dataset.id, Row: b(a), Cells: [...a.children].map(b),
    Tags: [...a.querySelectorAll(".tag")].map(b), Path: b(a.querySelector(".c-path")),
  }));
  const clip = [];
  for (const a of list.querySelectorAll("a.row")) {
    const cell = a.querySelector(".c-path").getBoundingClientRect();
    for (const t of a.querySelectorAll(".tag")) {
      const r = t.getBoundingClientRect();
      if (r.right > cell.right + 0.5 || r.left < cell.left - 0.5) clip.push("#" + a.dataset.id + " " + t.textContent);
    }
  }
  return { List: b(list), Head: [...document.querySelectorAll("#list-head > span")].map(b), Rows: rows,
           Pane: b(document.getElementById("list-pane")), Clip: clip };
})()`

func near(a, b float64) bool { return a-b < 0.6 && b-a < 0.6 }

// TestListIsATableAtEveryWidth checks what the first-hour review found
// broken: every row spans the list, the columns line up from row to row and
// with the header, and no badge is cut, at 1400, 1000 and 800 px.
func TestListIsATableAtEveryWidth(t *testing.T) {
	st := newStore(t)
	app := newEchoApp(t)
	ids := seed(t, st, app.URL)
	_, base := inspector(t, st, inspect.Options{Info: func() inspect.Info { return devInfo }})

	for _, width := range []int{1400, 1000, 800} {
		t.Run(fmt.Sprintf("%dpx", width), func(t *testing.T) {
			p := openBrowser(t, width, 900)
			p.open(base + "/")
			p.do("wait for the rows", chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#list a.row[data-id="%d"]`, ids[0]))))
			var g geometry
			p.eval(geometryJS, &g)
			if len(g.Rows) != len(ids) {
				t.Fatalf("%d rows shown, want %d", len(g.Rows), len(ids))
			}
			if width > 800 && !(g.List.Width < float64(width)*0.6) || width <= 800 && !near(g.List.Width, float64(width)) {
				t.Errorf("the list is %.0f px wide in a %d px window", g.List.Width, width)
			}
			first := g.Rows[0]
			for _, r := range g.Rows {
				if !near(r.Row.Width, g.List.Width) || !near(r.Row.Left, g.List.Left) {
					t.Errorf("row #%s spans %.1f-%.1f (%.1f px); the list spans %.1f-%.1f (%.1f px)",
						r.ID, r.Row.Left, r.Row.Right, r.Row.Width, g.List.Left, g.List.Right, g.List.Width)
				}
				if len(r.Cells) != 5 {
					t.Fatalf("row #%s has %d cells, want 5 columns", r.ID, len(r.Cells))
				}
				for c := range r.Cells {
					if !near(r.Cells[c].Left, first.Cells[c].Left) || !near(r.Cells[c].Right, first.Cells[c].Right) {
						t.Errorf("row #%s column %d spans %.1f-%.1f, row #%s's %.1f-%.1f: columns are not aligned",
							r.ID, c, r.Cells[c].Left, r.Cells[c].Right, first.ID, first.Cells[c].Left, first.Cells[c].Right)
					}
				}
			}
			if len(g.Head) != 5 {
				t.Fatalf("the list header has %d columns, want 5", len(g.Head))
			}
			for c := range g.Head {
				if !near(g.Head[c].Left, first.Cells[c].Left) || !near(g.Head[c].Right, first.Cells[c].Right) {
					t.Errorf("header column %d spans %.1f-%.1f, the rows' %.1f-%.1f", c, g.Head[c].Left, g.Head[c].Right, first.Cells[c].Left, first.Cells[c].Right)
				}
			}
			if len(g.Clip) > 0 {
				t.Errorf("badges cut by their cell: %v", g.Clip)
			}
			// Cut cells keep their full value a hover away.
			var title string
			long := ids[9]
			p.eval(fmt.Sprintf(`document.querySelector('#list a.row[data-id="%d"] .path').title`, long), &title)
			if !strings.HasSuffix(title, "/very/long/path/that/does/not/fit") {
				t.Errorf("the long path's hover text is %q", title)
			}
			if p.visible("#more") {
				t.Error(`"Load more" is shown though every delivery is listed`)
			}
			p.shot(fmt.Sprintf("list-%d.png", width))

			// The detail of an invalid signature next to the list.
			p.do("open a delivery", chromedp.Click(chromedp.CSS(fmt.Sprintf(`#list a.row[data-id="%d"]`, ids[1]))),
				chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#detail[data-id="%d"] .verdict`, ids[1]))))
			p.shot(fmt.Sprintf("detail-%d.png", width))
		})
	}
}

// TestEmptyStateSaysWhereToSendADelivery opens the inspector of an agent
// that has recorded nothing yet and is still connecting: the header and
// the first screen fill in when it connects, without a reload.
func TestEmptyStateSaysWhereToSendADelivery(t *testing.T) {
	st := newStore(t)
	connected := make(chan struct{})
	var isUp atomic.Bool
	_, base := inspector(t, st, inspect.Options{
		Info: func() inspect.Info {
			if !isUp.Load() {
				return inspect.Info{Tunnel: devInfo.Tunnel, Target: devInfo.Target}
			}
			return devInfo
		},
		Connected: connected,
	})
	p := openBrowser(t, 1400, 800)
	p.open(base + "/")
	if got := p.text("#public-url"); !strings.Contains(got, "connecting") {
		t.Errorf("before the agent connects the header says %q", got)
	}
	p.shot("connecting.png")

	isUp.Store(true)
	close(connected)
	p.do("the public URL arrives", chromedp.WaitVisible(chromedp.CSS(`#try-curl`)))
	if got := p.text("#public-url"); got != devInfo.PublicURL {
		t.Errorf("header shows public URL %q, want %q", got, devInfo.PublicURL)
	}
	if got := p.text("#target"); got != devInfo.Target {
		t.Errorf("header shows local app %q, want %q", got, devInfo.Target)
	}
	if got := p.text("#tunnel-name"); got != devInfo.Tunnel {
		t.Errorf("header shows tunnel %q", got)
	}
	if !p.visible("#empty") {
		t.Error("the empty list says nothing")
	}
	if p.visible("#more") {
		t.Error(`"Load more" is shown under an empty list`)
	}
	curl := p.text("#try-curl")
	for _, want := range []string{"curl --cacert " + devInfo.CAFile, devInfo.PublicURL + "/webhooks", "-H 'Content-Type: application/json'", `-d '{"id":"evt_1"`} {
		if !strings.Contains(curl, want) {
			t.Errorf("the curl to try, %q, lacks %q", curl, want)
		}
	}
	trigger := p.text("#try-trigger")
	for _, want := range []string{"relay trigger stripe payment_intent.succeeded --to " + devInfo.PublicURL, "--ca " + devInfo.CAFile, "--secret SECRET"} {
		if !strings.Contains(trigger, want) {
			t.Errorf("the trigger line, %q, lacks %q", trigger, want)
		}
	}
	p.shot("empty.png")
}

// TestLoadMoreShowsOnlyWhenThereIsMore: the button the review found under
// an empty list and a one-row filter.
func TestLoadMoreShowsOnlyWhenThereIsMore(t *testing.T) {
	st := newStore(t)
	addDelivery(t, st, "/stripe", 200, "stripe")
	addDelivery(t, st, "/github", 500, "github")
	_, base := inspector(t, st, inspect.Options{Info: func() inspect.Info { return devInfo }})
	p := openBrowser(t, 1400, 800)
	p.open(base + "/")
	p.do("rows", chromedp.WaitVisible(chromedp.CSS(`#list a.row`)))
	if p.visible("#more") {
		t.Error(`"Load more" is shown under two deliveries`)
	}
	p.filter("provider:stripe")
	p.do("filter to one row", chromedp.WaitNotPresent(chromedp.CSS(`#list a.row .path[title="/github"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#list a.row .path[title="/stripe"]`)))
	if p.visible("#more") {
		t.Error(`"Load more" is shown under a one-row filter`)
	}
	p.filter("provider:nobody")
	p.do("filter to nothing", chromedp.WaitVisible(chromedp.CSS(`#no-match`)))
	if p.visible("#more") || p.visible("#empty") {
		t.Error(`a filter that matches nothing shows "Load more" or the empty tunnel's hint`)
	}

	// A page and one more: the button shows, and goes once all are listed.
	batch := make([]*record.Delivery, 0, 100)
	now := time.Now()
	for i := range 100 {
		batch = append(batch, &record.Delivery{Kind: record.KindLive, Outcome: record.OutcomeForwarded, Method: "POST",
			Path: fmt.Sprintf("/bulk/%d", i), Status: 200, ReceivedAt: now, StartedAt: now, FinishedAt: now})
	}
	if err := st.AddBatch(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	p.open(base + "/")
	p.do("a full page", chromedp.WaitVisible(chromedp.CSS(`#more`)))
	var n int
	p.eval(`document.querySelectorAll("#list a.row").length`, &n)
	if n != 100 {
		t.Errorf("first page shows %d rows, want 100", n)
	}
	p.do("load the rest", chromedp.Click(chromedp.CSS(`#more`)), chromedp.WaitNotVisible(chromedp.CSS(`#more`)))
	p.eval(`document.querySelectorAll("#list a.row").length`, &n)
	if n != 102 {
		t.Errorf("after Load more %d rows, want all 102", n)
	}
}

// TestEditAndReplayReachesTheLocalApp edits a recorded Stripe delivery on
// the page (method, path, a header, the body), sends it, and checks that
// the real local app got exactly the edit, that the replay is recorded
// against the original with the verdict on what was sent, and that the two
// compare side by side.
func TestEditAndReplayReachesTheLocalApp(t *testing.T) {
	const secret = "whsec_edit"
	st := newStore(t)
	app := newEchoApp(t)
	ids := seed(t, st, app.URL)
	orig := ids[0] // stripe, JSON body, signature valid when recorded
	var ins *inspect.Server
	ins, base := inspector(t, st, inspect.Options{Info: func() inspect.Info { return devInfo },
		Replay: replayer(st, &ins, map[string]string{"stripe": secret})})

	p := openBrowser(t, 1400, 1000)
	p.open(fmt.Sprintf("%s/#%d", base, orig))
	p.do("open the editor", chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#detail[data-id="%d"]`, orig))),
		chromedp.Click(chromedp.CSS(`#edit`)), chromedp.WaitVisible(chromedp.CSS(`#editor`)))
	var headers string
	p.eval(`document.getElementById("edit-headers").value`, &headers)
	if !strings.Contains(headers, "Stripe-Signature: t=") || strings.Contains(headers, "Content-Length") {
		t.Errorf("the editor's headers start as %q", headers)
	}
	const newBody = `{"id":"evt_edited","type":"payment_intent.payment_failed","data":{"object":{"amount":1}}}`
	p.do("edit",
		chromedp.SetValue(chromedp.CSS(`#edit-method`), "PUT"),
		chromedp.SetValue(chromedp.CSS(`#edit-uri`), "/edited/path?attempt=2&mode=test"),
		chromedp.SetValue(chromedp.CSS(`#edit-headers`), headers+"\nX-Edited: yes, by hand"),
		chromedp.SetValue(chromedp.CSS(`#edit-body`), newBody))
	p.shot("edit.png")
	p.do("send", chromedp.Click(chromedp.CSS(`#edit-send`)), chromedp.WaitVisible(chromedp.CSS(`#edit-result a`)))

	got := app.requests()
	if len(got) != 1 {
		t.Fatalf("the local app got %d requests, want the edited one", len(got))
	}
	r := got[0]
	if r.Method != "PUT" || r.URI != "/edited/path?attempt=2&mode=test" || r.Headers.Get("X-Edited") != "yes, by hand" || r.Body != newBody {
		t.Errorf("the app got %s %s X-Edited=%q body %q; want the edit", r.Method, r.URI, r.Headers.Get("X-Edited"), r.Body)
	}
	if r.Headers.Get("X-Relay-Replay-Of") != fmt.Sprint(orig) {
		t.Errorf("X-Relay-Replay-Of: %q", r.Headers.Get("X-Relay-Replay-Of"))
	}
	result := p.text("#edit-result")
	newID := ids[len(ids)-1] + 1
	for _, want := range []string{fmt.Sprintf("replayed as #%d", newID), "200", "signature invalid", fmt.Sprintf("compare with #%d", orig)} {
		if !strings.Contains(result, want) {
			t.Errorf("the edit's result %q lacks %q", result, want)
		}
	}
	d, err := st.Get(context.Background(), newID)
	if err != nil {
		t.Fatal(err)
	}
	if d.ReplayOf != orig || d.Kind != record.KindReplay || d.Method != "PUT" || d.Path != "/edited/path" || string(d.RequestBody.Data) != newBody || d.Signature != "invalid" {
		t.Errorf("the replay is recorded as %s %s?%s (%s of #%d, signature %s)", d.Method, d.Path, d.Query, d.Kind, d.ReplayOf, d.Signature)
	}
	p.do("the replay is listed", chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#list a.row[data-id="%d"]`, newID))))
	p.shot("edit-result.png")

	// The result links to a side-by-side comparison with the original.
	p.do("compare", chromedp.Click(chromedp.CSS(`#edit-result a[href^="#diff/"]`)),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#detail[data-diff="%d-%d"] #request-body-diff table`, orig, newID))))
	var rows map[string]string
	p.eval(`Object.fromEntries([...document.querySelectorAll("#overview-diff tr")].map(tr => [tr.dataset.key, tr.className]))`, &rows)
	for key, want := range map[string]string{"method": "chg", "path": "chg", "signature": "chg", "status": "same", "provider": "same"} {
		if rows[key] != want {
			t.Errorf("overview row %q is %q, want %q (rows: %v)", key, rows[key], want, rows)
		}
	}
	p.eval(`Object.fromEntries([...document.querySelectorAll("#request-headers-diff tr")].map(tr => [tr.dataset.key, tr.className]))`, &rows)
	if rows["X-Edited"] != "add" || rows["Stripe-Signature"] != "same" || rows["X-Relay-Replay-Of"] != "add" {
		t.Errorf("request header rows: %v", rows)
	}
	var changed []string
	p.eval(`[...document.querySelectorAll("#request-body-diff tr.chg td.r, #request-body-diff tr.ins td.r")].map(td => td.textContent)`, &changed)
	joined := strings.Join(changed, "\n")
	if !strings.Contains(joined, `"type": "payment_intent.payment_failed"`) || !strings.Contains(joined, `"id": "evt_edited"`) {
		t.Errorf("the body diff marks these lines changed:\n%s", joined)
	}
	if strings.Contains(joined, `"currency"`) {
		t.Errorf("the body diff marks an unchanged key changed:\n%s", joined)
	}
	p.shot("diff.png")
	p.do("scroll to the bodies", chromedp.ScrollIntoView(chromedp.CSS(`#request-body-diff`)))
	p.shot("diff-body.png")
}

// TestCompareTwoDeliveries picks two deliveries from the list and checks
// that JSON bodies are compared as JSON: key order and spacing are no
// difference, a changed value is.
func TestCompareTwoDeliveries(t *testing.T) {
	st := newStore(t)
	now := time.Now()
	add := func(status int, h http.Header, body string) int64 {
		id, err := st.Add(context.Background(), &record.Delivery{Kind: record.KindLive, Outcome: record.OutcomeForwarded,
			Method: "POST", Path: "/webhooks/github", Status: status, RequestHeader: h,
			RequestBody: record.Body{Data: []byte(body), Size: int64(len(body))}, Provider: "github", Event: "push",
			ReceivedAt: now, StartedAt: now, FinishedAt: now.Add(time.Millisecond)})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	a := add(200, http.Header{"Content-Type": {"application/json"}, "X-Github-Delivery": {"a1"}, "X-Github-Event": {"push"}},
		`{"ref":"refs/heads/main","after":"c0ffee","pusher":{"name":"ann","email":"ann@example.com"},"commits":[1,2,3]}`)
	b := add(500, http.Header{"Content-Type": {"application/json"}, "X-Github-Delivery": {"b2"}, "X-Github-Event": {"push"}},
		`{"pusher": {"email":"ann@example.com", "name":"ann"}, "ref":"refs/heads/dev", "commits":[1,2,3], "after":"c0ffee"}`)
	_, base := inspector(t, st, inspect.Options{Info: func() inspect.Info { return devInfo }})
	p := openBrowser(t, 1400, 900)
	p.open(fmt.Sprintf("%s/#%d", base, a))
	p.do("compare", chromedp.WaitVisible(chromedp.CSS(`#compare`)), chromedp.Click(chromedp.CSS(`#compare`)),
		chromedp.WaitVisible(chromedp.CSS(`#pick`)),
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`#list a.row[data-id="%d"]`, b))),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#detail[data-diff="%d-%d"] #request-body-diff table`, a, b))))
	if p.visible("#pick") {
		t.Error("the pick banner stays after the pick")
	}
	var lines struct{ Changed, Left, Right []string }
	p.eval(`({
	  Changed: [...document.querySelectorAll("#request-body-diff tr.chg, #request-body-diff tr.del, #request-body-diff tr.ins")].map(tr => tr.textContent),
	  Left: [...document.querySelectorAll("#request-body-diff td.l")].map(td => td.textContent),
	  Right: [...document.querySelectorAll("#request-body-diff td.r")].map(td => td.textContent),
	})`, &lines)
	if len(lines.Changed) != 1 || !strings.Contains(lines.Changed[0], `"ref": "refs/heads/main"`) || !strings.Contains(lines.Changed[0], `"ref": "refs/heads/dev"`) {
		t.Errorf("changed lines %q, want only ref main → dev (key order is no difference)", lines.Changed)
	}
	var status string
	p.eval(`document.querySelector('#overview-diff tr[data-key="status"]').className`, &status)
	if status != "chg" {
		t.Errorf("status row is %q, want chg", status)
	}
	if got := p.text(`h3:has(+ #overview-diff) .diff-summary`); got != "1 differ" {
		t.Errorf("the overview counts %q; only the status differs (times always do and are not counted)", got)
	}
	p.shot("compare.png")
}

// TestCopyAsCurlShowsTheQuotedCommand: the page shows the API's command,
// as text, for a stranger's hostile method.
func TestCopyAsCurlShowsTheQuotedCommand(t *testing.T) {
	st := newStore(t)
	ids := seed(t, st, "http://localhost:3000")
	hostile := ids[11]
	_, base := inspector(t, st, inspect.Options{Info: func() inspect.Info { return devInfo }})
	p := openBrowser(t, 1400, 900)
	p.open(fmt.Sprintf("%s/#%d", base, hostile))
	p.do("copy as curl", chromedp.WaitVisible(chromedp.CSS(`#copy-curl`)), chromedp.Click(chromedp.CSS(`#copy-curl`)),
		chromedp.WaitVisible(chromedp.CSS(`#curl-command`)))
	shown := p.text("#curl-command")
	want := `curl -X 'X` + "`touch$IFS'\\''PWNED'\\''`" + `' http://localhost:3000/hook`
	if !strings.HasPrefix(shown, want) {
		t.Errorf("the page shows\n%s\nwant it to start\n%s", shown, want)
	}
	p.shot("copy-as-curl.png")
}

// TestInspectorInARealBrowser opens the inspector in headless Chromium,
// watches a delivery arrive live, opens it and replays it to a real local
// app through client.Replay, and sees the replay arrive in the list.
func TestInspectorInARealBrowser(t *testing.T) {
	app := newEchoApp(t)
	st := newStore(t)
	var ins *inspect.Server
	ins, base := inspector(t, st, inspect.Options{Replay: replayer(st, &ins, nil)})
	p := openBrowser(t, 1400, 900)
	p.open(base + "/") // live before anything is recorded

	now := time.Now()
	body := `{"id":"evt_browser","object":"event","type":"invoice.paid","data":{"amount":4200}}`
	id, err := st.Add(context.Background(), &record.Delivery{
		Kind: record.KindLive, Outcome: record.OutcomeForwarded, Transport: "quic", Target: app.URL,
		Method: "POST", Host: "stripe-dev.relay.example.com", Path: "/webhooks/stripe", Query: "src=test",
		RequestHeader: http.Header{"Content-Type": {"application/json"}, "Stripe-Signature": {"t=1,v1=00"}},
		RequestBody:   record.Body{Data: []byte(body), Size: int64(len(body))},
		Status:        200, ResponseHeader: http.Header{"Content-Type": {"application/json"}},
		ResponseBody: record.Body{Data: []byte(`{"ok":true,"order":{"id":7}}`), Size: 28},
		Provider:     "stripe", Event: "invoice.paid", EventID: "evt_browser", Signature: "invalid", SignatureReason: "signature mismatch",
		ReceivedAt: now, StartedAt: now.Add(300 * time.Microsecond), AnsweredAt: now.Add(2 * time.Millisecond), FinishedAt: now.Add(3 * time.Millisecond),
	})
	if err != nil {
		t.Fatal(err)
	}
	ins.Notify(id)

	row := fmt.Sprintf(`#list a.row[data-id="%d"]`, id)
	p.do("open the delivery", chromedp.WaitVisible(chromedp.CSS(row)), chromedp.Click(chromedp.CSS(row)),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#detail[data-id="%d"] #request pre.body.json`, id))))
	if detail := p.text(`#request pre.body.json`); !strings.Contains(detail, "\n  \"type\": \"invoice.paid\"") || !strings.Contains(detail, "\"amount\": 4200") {
		t.Errorf("the JSON body is not pretty-printed:\n%s", detail)
	}
	if resp := p.text(`#response pre.body.json`); !strings.Contains(resp, "\"order\": {\n    \"id\": 7") {
		t.Errorf("the response body is not shown as pretty JSON:\n%s", resp)
	}
	if verdict := p.text(`#detail .verdict`); !strings.Contains(verdict, "invalid") || !strings.Contains(verdict, "signature mismatch") {
		t.Errorf("verdict shown as %q", verdict)
	}
	// Timings to the microsecond, adding up: 300 µs + 1.70 ms + 1.00 ms = 3.00 ms.
	timing := p.text(`#detail .timing table`)
	for _, want := range []string{"300 µs", "1.70 ms", "1.00 ms", "3.00 ms"} {
		if !strings.Contains(timing, want) {
			t.Errorf("timing table %q lacks %q", timing, want)
		}
	}

	p.do("replay", chromedp.Click(chromedp.CSS(`#replay`)), chromedp.WaitVisible(chromedp.CSS(`#replay-result a`)))
	newID := id + 1
	if result := p.text(`#replay-result`); !strings.Contains(result, fmt.Sprintf("#%d", newID)) {
		t.Fatalf("replay result %q, want the new recording #%d", result, newID)
	}
	replaySel := fmt.Sprintf(`#list a.row[data-id="%d"]`, newID)
	p.do("the replay is listed", chromedp.WaitVisible(chromedp.CSS(replaySel)))
	if replayRow := p.text(replaySel); !strings.Contains(replayRow, fmt.Sprintf("replay of #%d", id)) {
		t.Errorf("replay row reads %q, want it marked as a replay of #%d", replayRow, id)
	}
	if got := app.requests(); len(got) != 1 || got[0].Body != body {
		t.Errorf("the local app got %d requests (%+v); want the recorded body once", len(got), got)
	}

	// The filter box narrows the list.
	p.filter("provider:nobody")
	p.do("filter", chromedp.WaitNotPresent(chromedp.CSS(row)))
	var rows int
	p.eval(`document.querySelectorAll("#list li").length`, &rows)
	if rows != 0 {
		t.Errorf("%d rows match provider:nobody", rows)
	}
}
