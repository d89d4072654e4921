// relay inspector: the live list of recorded deliveries, one in detail (with
// replay, edit and replay, copy as curl), and two side by side.
// Recorded requests come from strangers on the internet, so nothing they
// contain is ever parsed as HTML: every node is built with textContent.
"use strict";

const PAGE = 100;
const state = {
  rows: new Map(), newest: 0, oldest: 0, selected: 0, filter: {}, loading: false,
  info: {}, pickFor: 0, view: "", listSeq: 0,
};
const $ = (id) => document.getElementById(id);

// el("div.cls", child, "text", ...) builds a node; strings become text.
function el(spec, ...children) {
  const [tag, ...classes] = spec.split(".");
  const n = document.createElement(tag || "div");
  if (classes.length) n.className = classes.join(" ");
  for (const c of children) {
    if (c == null || c === false) continue;
    n.append(typeof c === "string" || typeof c === "number" ? String(c) : c);
  }
  return n;
}

function button(label, onClick, cls) {
  const b = el("button" + (cls ? "." + cls : ""), label);
  b.type = "button";
  if (onClick) b.addEventListener("click", onClick);
  return b;
}

function link(text, hash) {
  const a = el("a", text);
  a.href = "#" + hash;
  return a;
}

// The filter box: free text plus status:5xx (or just 5xx), provider:NAME,
// path:/PREFIX and since:1h.
function parseFilter(text) {
  const f = {};
  const free = [];
  for (const word of text.trim().split(/\s+/).filter(Boolean)) {
    const m = word.match(/^(status|provider|path|since):(.+)$/i);
    if (m) f[m[1].toLowerCase()] = m[2];
    else if (/^[1-5]xx$/i.test(word)) f.status = word.toLowerCase();
    else free.push(word);
  }
  if (free.length) f.q = free.join(" ");
  return f;
}

function query(extra) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries({ ...state.filter, ...extra })) if (v !== undefined && v !== "") p.set(k, v);
  return p.toString();
}

async function api(path, opts) {
  const resp = await fetch(path, opts);
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.error || resp.status + " " + resp.statusText);
  return body;
}

// act is a request that changes something: the inspector refuses those
// without this header, which another site's page cannot send.
function act(path, body) {
  const headers = { "X-Relay-Inspector": "1" };
  const opts = { method: "POST", headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  return api(path, opts);
}

function statusClass(code) {
  return code ? "s" + String(code)[0] : "serr";
}

function fmtTime(iso) {
  const d = new Date(iso);
  return isNaN(d) ? "" : d.toLocaleTimeString([], { hour12: false });
}

function fmtDateTime(iso) {
  const d = new Date(iso);
  return isNaN(d) ? "" : d.toLocaleString([], { hour12: false });
}

// Durations keep three significant digits: 954 µs, 1.89 ms, 12.3 ms, 123 ms.
function fmtMS(ms) {
  if (ms == null || isNaN(ms)) return "";
  if (ms < 1) return Math.round(ms * 1000) + " µs";
  if (ms < 10) return ms.toFixed(2) + " ms";
  if (ms < 100) return ms.toFixed(1) + " ms";
  if (ms < 10000) return Math.round(ms) + " ms";
  return (ms / 1000).toFixed(1) + " s";
}
const fmtUS = (us) => fmtMS(us / 1000);

function fmtBytes(n) {
  if (n < 1024) return n + " bytes";
  if (n < 1 << 20) return (n / 1024).toFixed(1) + " KiB";
  return (n / (1 << 20)).toFixed(1) + " MiB";
}

function uriOf(d) {
  return d.path + (d.query ? "?" + d.query : "");
}

// ---- the header: which tunnel this page belongs to ----

async function loadInfo() {
  try {
    state.info = await api("/api/info");
  } catch {
    return;
  }
  const i = state.info;
  $("tunnel-name").textContent = i.tunnel || "";
  $("tunnel-name").hidden = !i.tunnel;
  $("public-url").textContent = i.public_url || "connecting to the relay…";
  $("public-url").title = i.public_url ? "Public URL: " + i.public_url : "";
  $("target").textContent = i.target || "";
  $("target").title = i.target ? "Local app: " + i.target : "";
  $("target").hidden = $("target-arrow").hidden = !i.target;
  document.title = i.tunnel ? i.tunnel + " · relay inspector" : "relay inspector";
  if (!state.view) showStart();
}

// ---- the list ----

function row(s, isNew) {
  const tags = [];
  if (s.kind && s.kind !== "live") tags.push(el("span.tag." + s.kind, s.kind === "replay" && s.replay_of ? "replay of #" + s.replay_of : s.kind));
  if (s.outcome && s.outcome !== "forwarded") tags.push(el("span.tag." + s.outcome, s.outcome));
  if (s.signature === "valid" || s.signature === "invalid") tags.push(el("span.tag." + s.signature, "sig " + s.signature));
  if (s.attempts > 1) tags.push(el("span.tag", s.attempts + " attempts"));
  const sub = [s.provider, s.event].filter(Boolean).join(" · ") || s.error || "";
  const uri = uriOf(s);
  const a = el("a.row" + (isNew ? ".new" : ""),
    el("span.c-status." + statusClass(s.status), s.status || "---"),
    el("span.c-method", s.method),
    el("span.c-path", el("span.path", uri), el("span.sub", el("span.text", sub), tags.length ? el("span.tags", ...tags) : null)),
    el("span.c-time", fmtTime(s.received_at)),
    el("span.c-dur", fmtMS(s.duration_ms)));
  a.href = "#" + s.id;
  a.dataset.id = s.id;
  // Cells are cut to fit; the full values are one hover away.
  a.title = "#" + s.id + "  " + s.method + " " + uri + (sub ? "\n" + sub : "") + "\n" + fmtDateTime(s.received_at);
  a.children[1].title = s.method;
  a.children[2].firstChild.title = uri;
  if (sub) a.children[2].lastChild.firstChild.title = sub;
  if (s.id === state.selected) a.classList.add("selected");
  const li = el("li", a);
  li.dataset.id = s.id;
  return li;
}

function showListState() {
  const filtered = Object.keys(state.filter).length > 0;
  $("empty").hidden = state.rows.size > 0 || filtered;
  $("no-match").hidden = state.rows.size > 0 || !filtered;
}

async function loadList() {
  state.loading = true;
  const seq = ++state.listSeq;
  try {
    // One more than a page says whether there is more.
    const list = await api("/api/requests?" + query({ limit: PAGE + 1 }));
    if (seq !== state.listSeq) return; // the filter changed meanwhile: a newer load draws the list
    const more = list.length > PAGE;
    if (more) list.pop();
    const ol = $("list");
    ol.replaceChildren();
    state.rows.clear();
    const frag = document.createDocumentFragment();
    for (const s of list) {
      const li = row(s, false);
      state.rows.set(s.id, li);
      frag.append(li);
    }
    ol.append(frag);
    state.newest = list.length ? list[0].id : 0;
    state.oldest = list.length ? list[list.length - 1].id : 0;
    $("more").hidden = !more;
    note("");
  } catch (e) {
    note("Could not load deliveries: " + e.message, true);
  } finally {
    if (seq === state.listSeq) {
      state.loading = false;
      showListState();
    }
  }
}

async function loadMore() {
  if (!state.oldest) return;
  try {
    const list = await api("/api/requests?" + query({ limit: PAGE + 1, before: state.oldest }));
    const more = list.length > PAGE;
    if (more) list.pop();
    const frag = document.createDocumentFragment();
    for (const s of list) {
      if (state.rows.has(s.id)) continue;
      const li = row(s, false);
      state.rows.set(s.id, li);
      frag.append(li);
    }
    $("list").append(frag);
    if (list.length) state.oldest = list[list.length - 1].id;
    $("more").hidden = !more;
  } catch (e) {
    note("Could not load more: " + e.message, true);
  }
}

// What arrived since the newest row, on top.
async function loadNew() {
  if (state.loading) return;
  try {
    const list = await api("/api/requests?" + query({ limit: 1000, after: state.newest }));
    const wasEmpty = state.rows.size === 0;
    const ol = $("list");
    for (const s of list.reverse()) {
      if (state.rows.has(s.id)) continue;
      const li = row(s, true);
      state.rows.set(s.id, li);
      ol.prepend(li);
      state.newest = Math.max(state.newest, s.id);
    }
    showListState();
    if (!state.view && wasEmpty && state.rows.size) showStart(); // "waiting for the first" is over
  } catch (e) {
    note("Could not load new deliveries: " + e.message, true);
  }
}

function note(text, isError) {
  const n = $("list-note");
  n.textContent = text;
  n.hidden = !text;
  n.classList.toggle("error", !!isError);
}

function markSelected() {
  for (const li of state.rows.values()) li.firstChild.classList.toggle("selected", Number(li.dataset.id) === state.selected);
}

function connectEvents() {
  const live = $("live");
  const es = new EventSource("/api/events");
  es.addEventListener("open", () => {
    live.textContent = "live";
    live.classList.add("on");
    loadInfo();
    loadNew();
  });
  es.addEventListener("delivery", () => loadNew());
  es.addEventListener("info", () => loadInfo());
  es.addEventListener("resync", () => {
    loadInfo();
    loadList();
  });
  es.addEventListener("error", () => {
    live.textContent = "reconnecting…";
    live.classList.remove("on");
  });
}

// Compare mode: the next row clicked is compared with pickFor.
function startPick(id) {
  state.pickFor = id;
  $("pick-text").textContent = "Pick a delivery to compare with #" + id;
  $("pick").hidden = false;
  $("list-pane").classList.add("picking");
  $("list-pane").scrollTop = 0;
}

function stopPick() {
  state.pickFor = 0;
  $("pick").hidden = true;
  $("list-pane").classList.remove("picking");
}

// ---- the first screen ----

function cmdLine(id, text) {
  const pre = el("pre.cmd", text);
  pre.id = id;
  const copied = el("span.result");
  const copy = button("Copy", async () => {
    try {
      await navigator.clipboard.writeText(text);
      copied.textContent = "copied";
    } catch {
      copied.textContent = "select it to copy";
    }
  });
  return el("div", el("div.cmdline", pre, copy), copied);
}

function showStart() {
  state.view = "";
  state.selected = 0;
  markSelected();
  const i = state.info;
  const out = [];
  const start = el("div.start");
  start.id = "start";
  if (state.rows.size) {
    start.append(el("p.muted", "Select a delivery to see its request, response, timings and signature, replay it as it was or edited, or compare two."));
  }
  start.append(el("h2", state.rows.size ? "Send another delivery" : "Waiting for the first delivery"));
  if (i.public_url) {
    start.append(el("p", "Anything sent to ", el("b.mono", i.public_url), " reaches ", el("b.mono", i.target || "your local app"), " and shows up here as it arrives."));
    if (i.try_curl) start.append(el("h4", "Post some JSON"), cmdLine("try-curl", i.try_curl));
    if (i.try_trigger) {
      start.append(el("h4", "Or a realistic sample from a provider, signed as the provider signs"), cmdLine("try-trigger", i.try_trigger));
      if (i.try_secret) start.append(el("p.muted", i.try_secret));
    }
  } else {
    start.append(el("p.muted", "The agent is connecting to the relay; its public URL appears here once it is connected."));
  }
  out.push(start);
  $("detail").replaceChildren(...out);
  delete $("detail").dataset.id;
  delete $("detail").dataset.diff;
}

// ---- one delivery ----

function kvTable(pairs) {
  const t = el("table.kv");
  for (const [k, v] of pairs) t.append(el("tr", el("td", k), el("td", v)));
  return t;
}

function headerPairs(h) {
  const pairs = [];
  for (const k of Object.keys(h || {}).sort()) for (const v of h[k]) pairs.push([k, v]);
  return pairs;
}

function bodyText(b) {
  if (!b || !b.size) return "";
  if (b.encoding === "base64") {
    try {
      return new TextDecoder("utf-8", { fatal: false }).decode(Uint8Array.from(atob(b.data), (c) => c.charCodeAt(0)));
    } catch {
      return "";
    }
  }
  return b.data;
}

// JSON pretty-printed with colour, built node by node.
function jsonNodes(v, indent) {
  const pad = "  ".repeat(indent);
  if (v === null || typeof v === "boolean") return [el("span.j-lit", String(v))];
  if (typeof v === "number") return [el("span.j-num", String(v))];
  if (typeof v === "string") return [el("span.j-str", JSON.stringify(v))];
  const isArr = Array.isArray(v);
  const entries = isArr ? v.map((x, i) => [i, x]) : Object.entries(v);
  if (!entries.length) return [isArr ? "[]" : "{}"];
  const out = [isArr ? "[\n" : "{\n"];
  entries.forEach(([k, x], i) => {
    out.push(pad + "  ");
    if (!isArr) out.push(el("span.j-key", JSON.stringify(k)), ": ");
    out.push(...jsonNodes(x, indent + 1));
    out.push(i < entries.length - 1 ? ",\n" : "\n");
  });
  out.push(pad + (isArr ? "]" : "}"));
  return out;
}

function contentType(h) {
  for (const k of Object.keys(h || {})) if (k.toLowerCase() === "content-type") return (h[k][0] || "").toLowerCase();
  return "";
}

function parseJSON(text) {
  try {
    const v = JSON.parse(text);
    return typeof v === "object" && v !== null ? v : undefined;
  } catch {
    return undefined;
  }
}

function isForm(text, headers) {
  return contentType(headers).includes("x-www-form-urlencoded") || /^[^\s=&]+=[^\s]*(&[^\s=&]+=[^\s]*)*$/.test(text);
}

function bodyView(b, headers, cls) {
  const box = el("div.bodyview" + (cls ? "." + cls : ""));
  if (!b || !b.size) {
    box.append(el("p.muted", "empty"));
    return box;
  }
  const text = bodyText(b);
  const views = {};
  const parsed = parseJSON(text);
  if (parsed !== undefined) views.json = () => el("pre.body.json", ...jsonNodes(parsed, 0));
  if (parsed === undefined && isForm(text, headers)) {
    const pairs = [...new URLSearchParams(text)];
    if (pairs.length) views.form = () => kvTable(pairs);
  }
  views.raw = () => el("pre.body.raw", b.encoding === "base64" ? "(binary, shown as UTF-8 where possible)\n" + text : text);
  const meta = el("div.body-meta", fmtBytes(b.size) + (b.truncated ? " — only the first " + fmtBytes(b.encoding === "base64" ? Math.floor(b.data.length * 3 / 4) : new Blob([b.data]).size) + " recorded" : ""));
  const holder = el("div");
  const bar = el("span.views");
  const names = Object.keys(views);
  const show = (name) => {
    holder.replaceChildren(views[name]());
    for (const btn of bar.children) btn.classList.toggle("on", btn.dataset.view === name);
  };
  if (names.length > 1) {
    for (const name of names) {
      const btn = button(name, () => show(name));
      btn.dataset.view = name;
      bar.append(btn);
    }
    meta.append(bar);
  }
  box.append(meta, holder);
  show(names[0]);
  return box;
}

// The timing bar and table; the parts add up to the total.
function timingView(d) {
  const t = d.timing;
  if (!t) return null;
  const segs = [];
  if (d.kind !== "replay" && !t.clock_skew) segs.push(["relay", d.kind === "queued" ? "waited in the relay's queue" : "relay → agent", t.relay_us]);
  if (d.answered_at) {
    segs.push(["local", "local app answered (headers)", t.app_us]);
    segs.push(["body", "response body", t.body_us]);
  } else {
    segs.push(["local", d.outcome === "failed" ? "trying the local app" : "agent handled it", t.agent_us]);
  }
  const total = segs.reduce((a, s) => a + s[2], 0);
  const bar = el("div.bar");
  const rows = [];
  for (const [cls, label, us] of segs) {
    const seg = el("span.seg." + cls);
    seg.style.flexGrow = String(total ? us / total : 1);
    seg.title = label + ": " + fmtUS(us);
    bar.append(seg);
    rows.push(el("tr", el("td", el("span.swatch." + cls), label), el("td.ms", fmtUS(us))));
  }
  rows.push(el("tr.total", el("td", "total"), el("td.ms", fmtUS(total))));
  const box = el("div.timing", bar, el("table", ...rows));
  if (t.relay_us) box.append(el("p.muted", "At the agent: " + fmtUS(t.agent_us) + " (the list's “took”)."));
  if (t.clock_skew) box.append(el("p.muted", "The relay's clock is ahead of this machine's, so the time before the agent had it is not shown."));
  return box;
}

function replayResult(r, origID) {
  const parts = ["replayed as ", link("#" + r.id, r.id), " → ", el("span.status." + statusClass(r.status), r.status ? String(r.status) : "no answer"), " in " + fmtMS(r.duration_ms)];
  if (r.signature && r.signature !== "unchecked") parts.push(el("span.sep", "·"), "signature " + r.signature + (r.signature_reason ? " (" + r.signature_reason + ")" : ""));
  if (r.error) parts.push(el("span.sep", "·"), r.error);
  parts.push(el("span.sep", "·"), link("compare with #" + origID, "diff/" + origID + "/" + r.id));
  return parts;
}

async function replay(d, result, btn, edit) {
  btn.disabled = true;
  result.className = "result";
  result.textContent = "replaying…";
  try {
    const r = await act("/api/requests/" + d.id + "/replay", edit);
    result.replaceChildren(...replayResult(r, d.id));
    result.dataset.newId = r.id;
    await loadNew();
  } catch (e) {
    result.className = "result error";
    result.textContent = "replay failed: " + e.message;
  } finally {
    btn.disabled = false;
  }
}

// Headers that relay sets itself on a replay: not offered for editing.
const SET_BY_RELAY = new Set(["content-length", "transfer-encoding", "connection", "x-relay-replay-of"]);

function editor(d, holder) {
  const method = el("input");
  method.id = "edit-method";
  method.value = d.method;
  method.setAttribute("aria-label", "Method");
  method.spellcheck = false;
  const uri = el("input");
  uri.id = "edit-uri";
  uri.value = uriOf(d);
  uri.setAttribute("aria-label", "Path and query");
  uri.spellcheck = false;
  const headers = el("textarea");
  headers.id = "edit-headers";
  headers.rows = 8;
  headers.spellcheck = false;
  headers.value = headerPairs(d.request_headers).filter(([k]) => !SET_BY_RELAY.has(k.toLowerCase())).map(([k, v]) => k + ": " + v).join("\n");
  const body = el("textarea");
  body.id = "edit-body";
  body.spellcheck = false;
  const b = d.request_body || {};
  const binary = b.encoding === "base64";
  body.value = binary ? "" : b.data || "";
  body.rows = Math.min(20, Math.max(6, body.value.split("\n").length + 1));
  if (binary) {
    body.disabled = true;
    body.placeholder = "binary body (" + fmtBytes(b.size) + "): sent as recorded";
  }
  const result = el("span.result");
  result.id = "edit-result";
  // It goes where the recording went: a replay's target is its whole URL.
  let to = d.target || "the local app";
  try {
    if (d.kind === "replay") to = new URL(d.target).origin;
  } catch { /* keep the recorded text */ }
  const send = button("Send to " + to, null, "primary");
  send.id = "edit-send";
  send.addEventListener("click", () => {
    const pairs = [];
    const lines = headers.value.split("\n");
    for (let n = 0; n < lines.length; n++) {
      const line = lines[n].trim();
      if (!line) continue;
      const i = line.indexOf(":");
      if (i <= 0) {
        result.className = "result error";
        result.textContent = "header line " + (n + 1) + ": want Name: value";
        return;
      }
      pairs.push([line.slice(0, i).trim(), line.slice(i + 1).trim()]);
    }
    const edit = { method: method.value.trim(), uri: uri.value.trim(), headers: pairs, body: binary ? b.data : body.value };
    if (binary) edit.body_encoding = "base64";
    replay(d, result, send, edit);
  });
  const cancel = button("Close", () => holder.replaceChildren());
  cancel.id = "edit-cancel";
  const hint = "It goes to " + to + " (never elsewhere) and is recorded as a replay of #" + d.id +
    ", with the signature checked on what was sent. relay sets Content-Length and the hop-by-hop headers.";
  const box = el("div.editor",
    el("h3", "Edit and replay #" + d.id),
    el("div.line", method, uri),
    el("label", "Headers, one per line: Name: value"), headers,
    el("label", "Body"), body);
  if (b.truncated && !binary) box.append(el("div.warnbox", "Only the first part of this body was recorded: what is above is what will be sent."));
  box.append(el("div.actions", send, cancel, result), el("p.hint", hint));
  box.id = "editor";
  holder.replaceChildren(box);
  method.focus();
}

async function select(id) {
  if (!id) return;
  state.view = "detail";
  state.selected = id;
  markSelected();
  const pane = $("detail");
  let d;
  try {
    d = await api("/api/requests/" + id);
  } catch (e) {
    pane.replaceChildren(el("p.note.error", "Delivery #" + id + ": " + e.message));
    return;
  }
  if (state.selected !== id || state.view !== "detail") return; // another view was opened meanwhile
  const out = [];
  out.push(el("h2", el("span.status." + statusClass(d.status), d.status || "---"), d.method + " " + uriOf(d)));

  const result = el("span.result");
  result.id = "replay-result";
  const editHolder = el("div");
  const replayBtn = button("Replay", null, "primary");
  replayBtn.id = "replay";
  replayBtn.title = "Send it to the local app again, as recorded";
  replayBtn.addEventListener("click", () => replay(d, result, replayBtn));
  const editBtn = button("Edit and replay", () => editor(d, editHolder));
  editBtn.id = "edit";
  const compareBtn = button("Compare…", () => startPick(d.id));
  compareBtn.id = "compare";
  compareBtn.title = "Pick another delivery in the list to compare with this one";
  const curlPre = el("pre.cmd", d.curl || "");
  curlPre.id = "curl-command";
  curlPre.hidden = true;
  const curlBtn = button("Copy as curl", async () => {
    curlPre.hidden = false;
    try {
      await navigator.clipboard.writeText(curlPre.textContent);
      result.className = "result";
      result.textContent = "curl command copied";
    } catch {
      result.className = "result";
      result.textContent = "select the command below to copy it";
    }
  });
  curlBtn.id = "copy-curl";
  const actions = el("div.actions", replayBtn, editBtn, compareBtn, curlBtn);
  if (d.replay_of) {
    const diffOrig = button("Compare with #" + d.replay_of, () => { location.hash = "diff/" + d.replay_of + "/" + d.id; });
    diffOrig.id = "compare-original";
    actions.append(diffOrig);
  }
  actions.append(result);
  out.push(actions, curlPre, editHolder);

  // "unchecked: provider unknown" would sit on every plain request.
  if (d.signature && (d.provider || d.signature !== "unchecked")) out.push(el("div.verdict." + d.signature, "signature " + d.signature + (d.signature_reason ? ": " + d.signature_reason : "")));
  if (d.error) out.push(el("div.errorbox", d.error));

  const facts = el("dl.facts");
  const fact = (k, v) => {
    if (v === undefined || v === null || v === "" || v === 0) return;
    facts.append(el("dt", k), el("dd", v));
  };
  fact("id", "#" + d.id);
  fact("received", fmtDateTime(d.received_at));
  fact("kind", d.kind);
  if (d.replay_of) fact("replay of", link("#" + d.replay_of, d.replay_of));
  fact("outcome", d.outcome);
  if (d.duplicate_of) fact("duplicate of", link("#" + d.duplicate_of, d.duplicate_of));
  fact("provider", d.provider);
  fact("event", d.event);
  fact("event id", d.event_id);
  fact("transport", d.transport);
  fact("tunnel", d.tunnel);
  fact("target", d.target);
  fact("from", d.remote_addr);
  fact("relay id", d.relay_id);
  out.push(facts);

  const tm = timingView(d);
  if (tm) out.push(el("h3", "Timing"), tm);
  if (d.attempts && d.attempts.length) {
    out.push(el("h3", "Attempts"), kvTable(d.attempts.map((a, i) => [
      "#" + (i + 1) + " " + fmtTime(a.at), (a.status ? String(a.status) : a.error || "") + " (" + fmtMS(a.duration_ms) + ")"])));
  }

  const req = el("section.request");
  req.id = "request";
  req.append(el("h3", "Request"));
  if (d.query) req.append(el("h4", "Query"), kvTable([...new URLSearchParams(d.query)]));
  req.append(el("h4", "Headers"), kvTable(headerPairs(d.request_headers)), el("h4", "Body"), bodyView(d.request_body, d.request_headers));
  out.push(req);

  const resp = el("section.response");
  resp.id = "response";
  resp.append(el("h3", "Response"), el("p", el("span.status.mono." + statusClass(d.status), d.status ? String(d.status) : "no answer")));
  if (d.response_headers) resp.append(el("h4", "Headers"), kvTable(headerPairs(d.response_headers)));
  resp.append(el("h4", "Body"), bodyView(d.response_body, d.response_headers));
  out.push(resp);

  pane.replaceChildren(...out);
  pane.dataset.id = d.id;
  delete pane.dataset.diff;
  pane.scrollTop = 0;
}

// ---- two deliveries side by side ----

// Lines to compare: JSON with its keys sorted (so that order and spacing do
// not count as differences), a form as one field per line, else the text.
function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object") {
    const o = {};
    for (const k of Object.keys(v).sort()) o[k] = sortKeys(v[k]);
    return o;
  }
  return v;
}

function bodyLines(b, headers, mode) {
  const text = bodyText(b);
  if (!text) return [];
  if (mode === "json") {
    const v = parseJSON(text);
    if (v !== undefined) return JSON.stringify(sortKeys(v), null, 2).split("\n");
  }
  if (mode === "form") return [...new URLSearchParams(text)].map(([k, v]) => k + " = " + v);
  return text.split("\n");
}

// diffLines is Myers' O(ND) diff over the lines that differ after the
// common head and tail are set aside. It gives up (null) when the two are
// too large or too different to align in a moment.
const MAX_LINES = 40000, MAX_EDITS = 1500;
function diffLines(a, b) {
  let pre = 0;
  while (pre < a.length && pre < b.length && a[pre] === b[pre]) pre++;
  let suf = 0;
  while (suf < a.length - pre && suf < b.length - pre && a[a.length - 1 - suf] === b[b.length - 1 - suf]) suf++;
  const A = a.slice(pre, a.length - suf), B = b.slice(pre, b.length - suf);
  if (A.length + B.length > MAX_LINES) return null;
  const mid = myers(A, B);
  if (!mid) return null;
  const ops = [];
  for (let i = 0; i < pre; i++) ops.push(["eq", i, i]);
  for (const [t, i, j] of mid) ops.push([t, i < 0 ? -1 : i + pre, j < 0 ? -1 : j + pre]);
  for (let i = 0; i < suf; i++) ops.push(["eq", a.length - suf + i, b.length - suf + i]);
  return ops;
}

function myers(a, b) {
  const n = a.length, m = b.length, max = n + m, off = max + 1;
  const v = new Int32Array(2 * max + 3);
  const trace = [];
  for (let d = 0; d <= Math.min(max, MAX_EDITS); d++) {
    trace.push(v.slice(off - d - 1, off + d + 2)); // V[k] for k in -d-1..d+1, as step d found it
    for (let k = -d; k <= d; k += 2) {
      let x = k === -d || (k !== d && v[off + k - 1] < v[off + k + 1]) ? v[off + k + 1] : v[off + k - 1] + 1;
      let y = x - k;
      while (x < n && y < m && a[x] === b[y]) { x++; y++; }
      v[off + k] = x;
      if (x >= n && y >= m) return backtrack(trace, d, n, m);
    }
  }
  return null;
}

function backtrack(trace, D, n, m) {
  const ops = [];
  let x = n, y = m;
  for (let d = D; d > 0; d--) {
    const V = trace[d], at = (k) => V[k + d + 1];
    const k = x - y;
    const prevK = k === -d || (k !== d && at(k - 1) < at(k + 1)) ? k + 1 : k - 1;
    const prevX = at(prevK), prevY = prevX - prevK;
    while (x > prevX && y > prevY) { x--; y--; ops.push(["eq", x, y]); }
    if (prevK === k + 1) { y--; ops.push(["ins", -1, y]); } else { x--; ops.push(["del", x, -1]); }
  }
  while (x > 0 && y > 0) { x--; y--; ops.push(["eq", x, y]); }
  return ops.reverse();
}

// Rows for a side-by-side table: a run of deletions and insertions is
// paired up line by line as changes.
function diffRows(ops) {
  const rows = [];
  for (let i = 0; i < ops.length;) {
    if (ops[i][0] === "eq") {
      rows.push(["eq", ops[i][1], ops[i][2]]);
      i++;
      continue;
    }
    const dels = [], inss = [];
    while (i < ops.length && ops[i][0] !== "eq") {
      if (ops[i][0] === "del") dels.push(ops[i][1]); else inss.push(ops[i][2]);
      i++;
    }
    for (let j = 0; j < Math.max(dels.length, inss.length); j++) {
      const l = j < dels.length ? dels[j] : -1, r = j < inss.length ? inss[j] : -1;
      rows.push([l >= 0 && r >= 0 ? "chg" : l >= 0 ? "del" : "ins", l, r]);
    }
  }
  return rows;
}

const CONTEXT = 3;

function bodyDiffTable(a, b) {
  // Column widths come from a colgroup: with a fixed layout the first row
  // would set them, and that may be a fold spanning all four.
  const t = el("table.dbody", el("colgroup", el("col.ln"), el("col"), el("col.ln"), el("col")));
  const ops = diffLines(a, b);
  if (!ops) {
    t.append(el("tr", el("td.ln", ""), el("td.l", a.join("\n")), el("td.ln", ""), el("td.r", b.join("\n"))));
    return [t, null];
  }
  const rows = diffRows(ops);
  const cell = (lines, i, side) => [el("td.ln", i >= 0 ? String(i + 1) : ""), el("td." + side, i >= 0 ? lines[i] : "")];
  let changed = 0;
  for (let i = 0; i < rows.length;) {
    if (rows[i][0] !== "eq") {
      changed++;
      t.append(el("tr." + rows[i][0], ...cell(a, rows[i][1], "l"), ...cell(b, rows[i][2], "r")));
      i++;
      continue;
    }
    let j = i;
    while (j < rows.length && rows[j][0] === "eq") j++;
    // A long run of equal lines folds, keeping a little context each side.
    const head = i === 0 ? 0 : CONTEXT, tail = j === rows.length ? 0 : CONTEXT;
    if (j - i > head + tail + 2) {
      for (let k = i; k < i + head; k++) t.append(el("tr.eq", ...cell(a, rows[k][1], "l"), ...cell(b, rows[k][2], "r")));
      const hidden = rows.slice(i + head, j - tail);
      const fold = el("tr.fold", el("td", "⋯ " + hidden.length + " equal lines (show)"));
      fold.firstChild.colSpan = 4;
      fold.addEventListener("click", () => fold.replaceWith(...hidden.map((r) => el("tr.eq", ...cell(a, r[1], "l"), ...cell(b, r[2], "r")))));
      t.append(fold);
      for (let k = j - tail; k < j; k++) t.append(el("tr.eq", ...cell(a, rows[k][1], "l"), ...cell(b, rows[k][2], "r")));
    } else {
      for (let k = i; k < j; k++) t.append(el("tr.eq", ...cell(a, rows[k][1], "l"), ...cell(b, rows[k][2], "r")));
    }
    i = j;
  }
  return [t, changed];
}

function bodyDiff(da, db, which) {
  const ba = da[which + "_body"], bb = db[which + "_body"];
  const ha = da[which + "_headers"], hb = db[which + "_headers"];
  const ta = bodyText(ba), tb = bodyText(bb);
  const box = el("div.bodydiff");
  box.id = which + "-body-diff";
  if (!ta && !tb) {
    box.append(el("p.muted", "both empty"));
    return [box, 0];
  }
  const modes = [];
  if (parseJSON(ta) !== undefined && parseJSON(tb) !== undefined) modes.push("json");
  else if ((!ta || isForm(ta, ha)) && (!tb || isForm(tb, hb))) modes.push("form");
  modes.push("text");
  const holder = el("div");
  const meta = el("div.diff-note");
  const bar = el("span.views");
  let changedCount = 0;
  const show = (mode) => {
    const [t, changed] = bodyDiffTable(bodyLines(ba, ha, mode), bodyLines(bb, hb, mode));
    holder.replaceChildren(t);
    for (const btn of bar.children) btn.classList.toggle("on", btn.dataset.view === mode);
    label.textContent = changed === null ? "too different to align line by line: shown whole" :
      changed === 0 ? (ta === tb ? "identical" : "the same " + (mode === "json" ? "JSON (keys sorted)" : mode === "form" ? "fields" : "lines")) :
      changed + " line" + (changed === 1 ? "" : "s") + " differ" + (mode === "json" ? " (JSON, keys sorted)" : "");
    label.className = changed === 0 ? "badge-same" : "badge-diff";
    return changed;
  };
  const label = el("span");
  meta.append(label, fmtBytes(ba ? ba.size : 0) + " vs " + fmtBytes(bb ? bb.size : 0));
  if (modes.length > 1) {
    for (const m of modes) {
      const btn = button(m, () => show(m));
      btn.dataset.view = m;
      bar.append(btn);
    }
    meta.append(bar);
  }
  box.append(meta, holder);
  changedCount = show(modes[0]);
  return [box, changedCount === null ? 1 : changedCount];
}

// A field-by-field table: name, A's value, B's value.
// Keys in info differ between any two deliveries (when, how long): shown,
// never counted as a difference.
function kvDiff(pairsA, pairsB, id, info) {
  const keys = [...new Set([...pairsA.keys(), ...pairsB.keys()])];
  const t = el("table.dkv", el("colgroup", el("col.key"), el("col"), el("col")));
  t.id = id;
  let differ = 0;
  for (const k of keys) {
    const a = pairsA.get(k), b = pairsB.get(k);
    const cls = info && info.has(k) ? "info" : a === b ? "same" : a === undefined ? "add" : b === undefined ? "del" : "chg";
    if (cls !== "same" && cls !== "info") differ++;
    const tr = el("tr." + cls, el("td", k), el("td.a", a === undefined ? "—" : a), el("td.b", b === undefined ? "—" : b));
    tr.dataset.key = k;
    t.append(tr);
  }
  return [t, differ];
}

function headerMap(h) {
  const m = new Map();
  for (const k of Object.keys(h || {}).sort()) m.set(k, h[k].join("\n"));
  return m;
}

function overviewMap(d) {
  const m = new Map();
  const put = (k, v) => m.set(k, v === undefined || v === null || v === "" ? undefined : String(v));
  put("method", d.method);
  put("path", uriOf(d));
  put("status", d.status || "no answer");
  put("outcome", d.outcome);
  put("kind", d.kind + (d.replay_of ? " of #" + d.replay_of : ""));
  put("provider", d.provider);
  put("event", d.event);
  put("event id", d.event_id);
  put("signature", d.signature ? d.signature + (d.signature_reason ? ": " + d.signature_reason : "") : "");
  put("error", d.error);
  put("took", d.timing ? fmtUS(d.timing.agent_us) : "");
  put("received", fmtDateTime(d.received_at));
  return m;
}

function section(title, differ, ...content) {
  const h = el("h3", title, el("span.diff-summary." + (differ ? "badge-diff" : "badge-same"), differ ? differ + " differ" : "same"));
  return [h, ...content];
}

async function showDiff(a, b) {
  state.view = "diff";
  state.selected = 0;
  markSelected();
  for (const id of [a, b]) state.rows.get(id)?.firstChild.classList.add("selected");
  stopPick();
  const pane = $("detail");
  let da, db;
  try {
    [da, db] = await Promise.all([api("/api/requests/" + a), api("/api/requests/" + b)]);
  } catch (e) {
    pane.replaceChildren(el("p.note.error", "Compare #" + a + " and #" + b + ": " + e.message));
    return;
  }
  if (state.view !== "diff") return;
  const side = (d) => el("div.side", link("#" + d.id, d.id), " ", el("span.status.mono." + statusClass(d.status), d.status || "---"), " ",
    el("span.mono", d.method), el("div.path", uriOf(d)), el("div.muted", fmtDateTime(d.received_at)));
  const onlyDiff = el("input");
  onlyDiff.type = "checkbox";
  onlyDiff.id = "only-diff";
  const swap = button("Swap sides", () => { location.hash = "diff/" + b + "/" + a; });
  const out = [
    el("h2", "Compare #" + a + " and #" + b),
    el("div.actions", swap, el("label", onlyDiff, " only what differs")),
    el("div.diff-head", el("span"), side(da), side(db)),
  ];
  onlyDiff.addEventListener("change", () => pane.classList.toggle("only-diff", onlyDiff.checked));
  const [ov, ovN] = kvDiff(overviewMap(da), overviewMap(db), "overview-diff", new Set(["took", "received"]));
  out.push(...section("Overview", ovN, ov));
  const [rh, rhN] = kvDiff(headerMap(da.request_headers), headerMap(db.request_headers), "request-headers-diff");
  out.push(...section("Request headers", rhN, rh));
  const [rb, rbN] = bodyDiff(da, db, "request");
  out.push(...section("Request body", rbN, rb));
  const [sh, shN] = kvDiff(headerMap(da.response_headers), headerMap(db.response_headers), "response-headers-diff");
  out.push(...section("Response headers", shN, sh));
  const [sb, sbN] = bodyDiff(da, db, "response");
  out.push(...section("Response body", sbN, sb));
  pane.replaceChildren(...out);
  pane.classList.remove("only-diff");
  pane.dataset.diff = a + "-" + b;
  delete pane.dataset.id;
  pane.scrollTop = 0;
}

// ---- routing: #ID, #diff/A/B, or nothing ----

function route() {
  const h = location.hash.slice(1);
  const m = h.match(/^diff\/(\d+)\/(\d+)$/);
  if (m) return showDiff(Number(m[1]), Number(m[2]));
  const id = Number(h);
  if (id) return select(id);
  showStart();
}

function moveSelection(step) {
  const items = [...$("list").children];
  if (!items.length) return;
  let i = items.findIndex((li) => Number(li.dataset.id) === state.selected);
  i = i < 0 ? 0 : Math.min(items.length - 1, Math.max(0, i + step));
  location.hash = items[i].dataset.id;
  items[i].firstChild.focus();
}

document.addEventListener("DOMContentLoaded", () => {
  $("list").addEventListener("click", (e) => {
    const a = e.target.closest("a.row");
    if (!a || !state.pickFor) return;
    e.preventDefault();
    const other = Number(a.dataset.id);
    if (other !== state.pickFor) location.hash = "diff/" + state.pickFor + "/" + other;
  });
  $("pick-cancel").addEventListener("click", stopPick);
  $("more").addEventListener("click", loadMore);
  let timer;
  $("filter").addEventListener("input", (e) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      state.filter = parseFilter(e.target.value);
      loadList();
    }, 200);
  });
  // Up and down (or k and j) walk the list, unless the reader is typing or
  // scrolling the detail pane.
  document.addEventListener("keydown", (e) => {
    if (e.metaKey || e.ctrlKey || e.altKey || !(e.target === document.body || e.target.closest("#list-pane"))) return;
    if (e.key === "ArrowDown" || e.key === "j") { e.preventDefault(); moveSelection(1); }
    if (e.key === "ArrowUp" || e.key === "k") { e.preventDefault(); moveSelection(-1); }
    if (e.key === "Escape") stopPick();
  });
  window.addEventListener("hashchange", route);
  Promise.all([loadList(), loadInfo()]).then(() => {
    connectEvents();
    route();
  });
});
