// relay inspector: the live list of recorded deliveries and one in detail.
// Recorded requests come from strangers on the internet, so nothing they
// contain is ever parsed as HTML: every node is built with textContent.
"use strict";

const PAGE = 100;
const state = { rows: new Map(), newest: 0, oldest: 0, selected: 0, filter: {}, loading: false };
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

function statusClass(code) {
  return code ? "s" + String(code)[0] : "serr";
}

function fmtTime(iso) {
  const d = new Date(iso);
  return isNaN(d) ? "" : d.toLocaleTimeString([], { hour12: false });
}

function fmtMS(ms) {
  if (ms == null) return "";
  return ms < 10 ? ms.toFixed(1) + " ms" : Math.round(ms) + " ms";
}

function row(s, isNew) {
  const tags = [];
  if (s.kind && s.kind !== "live") tags.push(el("span.tag." + s.kind, s.kind === "replay" && s.replay_of ? "replay of #" + s.replay_of : s.kind));
  if (s.outcome && s.outcome !== "forwarded") tags.push(el("span.tag." + s.outcome, s.outcome));
  if (s.signature === "valid" || s.signature === "invalid") tags.push(el("span.tag." + s.signature, "sig " + s.signature));
  if (s.attempts > 1) tags.push(el("span.tag", s.attempts + " attempts"));
  const sub = [s.provider, s.event].filter(Boolean).join(" · ") || (s.error ? s.error : "");
  const btn = el("button.row" + (isNew ? ".new" : ""),
    el("span.status." + statusClass(s.status), s.status || "---"),
    el("span.method", s.method),
    el("span.path", s.path + (s.query ? "?" + s.query : "")),
    el("span.time", fmtTime(s.received_at)),
    el("span.sub", sub, " ", ...tags),
    el("span.dur", fmtMS(s.duration_ms)));
  btn.type = "button";
  btn.dataset.id = s.id;
  btn.title = "#" + s.id;
  if (s.id === state.selected) btn.classList.add("selected");
  const li = el("li", btn);
  li.dataset.id = s.id;
  return li;
}

function showEmpty() {
  $("empty").hidden = state.rows.size > 0;
}

async function loadList() {
  state.loading = true;
  try {
    const list = await api("/api/requests?" + query({ limit: PAGE }));
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
    $("more").hidden = list.length < PAGE;
    note("");
  } catch (e) {
    note("Could not load deliveries: " + e.message, true);
  } finally {
    state.loading = false;
    showEmpty();
  }
}

async function loadMore() {
  if (!state.oldest) return;
  try {
    const list = await api("/api/requests?" + query({ limit: PAGE, before: state.oldest }));
    const frag = document.createDocumentFragment();
    for (const s of list) {
      if (state.rows.has(s.id)) continue;
      const li = row(s, false);
      state.rows.set(s.id, li);
      frag.append(li);
    }
    $("list").append(frag);
    if (list.length) state.oldest = list[list.length - 1].id;
    $("more").hidden = list.length < PAGE;
  } catch (e) {
    note("Could not load more: " + e.message, true);
  }
}

// What arrived since the newest row, on top.
async function loadNew() {
  if (state.loading) return;
  try {
    const list = await api("/api/requests?" + query({ limit: 1000, after: state.newest }));
    const ol = $("list");
    for (const s of list.reverse()) {
      if (state.rows.has(s.id)) continue;
      const li = row(s, true);
      state.rows.set(s.id, li);
      ol.prepend(li);
      state.newest = Math.max(state.newest, s.id);
    }
    showEmpty();
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

function connectEvents() {
  const live = $("live");
  const es = new EventSource("/api/events");
  es.addEventListener("open", () => {
    live.textContent = "live";
    live.classList.add("on");
    loadNew();
  });
  es.addEventListener("delivery", () => loadNew());
  es.addEventListener("resync", () => loadList());
  es.addEventListener("error", () => {
    live.textContent = "reconnecting…";
    live.classList.remove("on");
  });
}

// ---- detail ----

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

function bodyView(title, b, headers) {
  const box = el("div");
  box.append(el("h4", title));
  if (!b || !b.size) {
    box.append(el("p.muted", "empty"));
    return box;
  }
  const text = bodyText(b);
  const ct = contentType(headers);
  const views = {};
  try {
    const parsed = JSON.parse(text);
    if (typeof parsed === "object" && parsed !== null) views.json = () => el("pre.body.json", ...jsonNodes(parsed, 0));
  } catch { /* not JSON */ }
  if (ct.includes("x-www-form-urlencoded") || (!views.json && /^[^\s=&]+=[^\s]*(&[^\s=&]+=[^\s]*)*$/.test(text))) {
    const pairs = [...new URLSearchParams(text)];
    if (pairs.length) views.form = () => kvTable(pairs);
  }
  views.raw = () => el("pre.body", b.encoding === "base64" ? "(binary, shown as UTF-8 where possible)\n" + text : text);
  const meta = el("div.body-meta", b.size + " bytes" + (b.truncated ? ", first " + (b.encoding === "base64" ? "part" : text.length + " characters") + " recorded" : ""));
  const holder = el("div");
  const bar = el("span.views");
  const names = Object.keys(views);
  const show = (name) => {
    holder.replaceChildren(views[name]());
    for (const btn of bar.children) btn.classList.toggle("on", btn.dataset.view === name);
  };
  if (names.length > 1) {
    for (const name of names) {
      const btn = el("button", name);
      btn.type = "button";
      btn.dataset.view = name;
      btn.addEventListener("click", () => show(name));
      bar.append(btn);
    }
    meta.append(bar);
  }
  box.append(meta, holder);
  show(names[0]);
  return box;
}

function timing(d) {
  const t = (iso) => (iso ? new Date(iso).getTime() : 0);
  const rcv = t(d.received_at), start = t(d.started_at), ans = t(d.answered_at), fin = t(d.finished_at);
  if (!start || !fin) return null;
  const segs = [];
  if (rcv && d.kind !== "replay" && start >= rcv) segs.push(["relay", "relay → agent", start - rcv]);
  if (ans) {
    segs.push(["local", "local app answered", ans - start]);
    segs.push(["body", "response body back", fin - ans]);
  } else {
    segs.push(["local", "agent handled", fin - start]);
  }
  const total = segs.reduce((a, s) => a + s[2], 0) || 1;
  const bar = el("div.bar");
  const rows = [];
  for (const [cls, label, ms] of segs) {
    const seg = el("span.seg." + cls);
    seg.style.flexGrow = String(Math.max(ms, 0) / total);
    seg.title = label + ": " + fmtMS(ms);
    bar.append(seg);
    rows.push(el("tr", el("td", el("span.swatch." + cls), label), el("td", fmtMS(ms))));
  }
  rows.push(el("tr", el("td", "total"), el("td", fmtMS(total))));
  return el("div.timing", bar, el("table", ...rows));
}

// A shell-quoted curl command that sends the recorded request again.
function shellQuote(s) {
  return "'" + String(s).replace(/'/g, "'\\''") + "'";
}

function curlCommand(d) {
  const skip = new Set(["content-length", "host", "connection", "accept-encoding", "transfer-encoding"]);
  const url = (d.target ? new URL(d.target).origin : "http://localhost") + d.path + (d.query ? "?" + d.query : "");
  const parts = ["curl", "-X", d.method, shellQuote(url)];
  for (const [k, v] of headerPairs(d.request_headers)) {
    if (!skip.has(k.toLowerCase())) parts.push("-H", shellQuote(k + ": " + v));
  }
  const b = d.request_body;
  if (b && b.size) {
    if (b.encoding === "base64") {
      return "printf %s " + shellQuote(b.data) + " | base64 -d | " + parts.join(" ") + " --data-binary @-";
    }
    parts.push("--data-binary", shellQuote(b.data));
  }
  return parts.join(" ");
}

async function replay(id, result, button) {
  button.disabled = true;
  result.className = "result";
  result.textContent = "replaying…";
  try {
    const r = await api("/api/requests/" + id + "/replay", { method: "POST", headers: { "X-Relay-Inspector": "1" } });
    result.textContent = "replayed as ";
    const a = el("a", "#" + r.id);
    a.href = "#" + r.id;
    result.append(a);
    result.dataset.newId = r.id;
    await loadNew();
  } catch (e) {
    result.className = "result error";
    result.textContent = "replay failed: " + e.message;
  } finally {
    button.disabled = false;
  }
}

async function select(id) {
  if (!id) return;
  state.selected = id;
  for (const li of state.rows.values()) li.firstChild.classList.toggle("selected", Number(li.dataset.id) === id);
  const pane = $("detail");
  let d;
  try {
    d = await api("/api/requests/" + id);
  } catch (e) {
    pane.replaceChildren(el("p.note.error", "Delivery #" + id + ": " + e.message));
    return;
  }
  if (state.selected !== id) return; // another row was clicked meanwhile
  const out = [];
  out.push(el("h2", el("span.status." + statusClass(d.status), d.status || "---"), d.method + " " + d.path + (d.query ? "?" + d.query : "")));

  const result = el("span.result");
  const replayBtn = el("button.primary", "Replay");
  replayBtn.type = "button";
  replayBtn.id = "replay";
  replayBtn.addEventListener("click", () => replay(d.id, result, replayBtn));
  const curlBtn = el("button", "Copy as curl");
  curlBtn.type = "button";
  curlBtn.id = "copy-curl";
  const curlPre = el("pre", curlCommand(d));
  curlPre.id = "curl-command";
  curlPre.hidden = true;
  curlBtn.addEventListener("click", async () => {
    curlPre.hidden = false;
    try {
      await navigator.clipboard.writeText(curlPre.textContent);
      result.className = "result";
      result.textContent = "curl command copied";
    } catch {
      result.textContent = "select the command below to copy it";
    }
  });
  out.push(el("div.actions", replayBtn, curlBtn, result), curlPre);

  if (d.signature) {
    const v = el("div.verdict." + d.signature, "signature " + d.signature + (d.signature_reason ? ": " + d.signature_reason : ""));
    out.push(v);
  }
  if (d.error) out.push(el("div.errorbox", d.error));

  const facts = el("dl.facts");
  const fact = (k, v) => {
    if (v === undefined || v === null || v === "" || v === 0) return;
    facts.append(el("dt", k), el("dd", v));
  };
  const link = (n) => {
    const a = el("a", "#" + n);
    a.href = "#" + n;
    return a;
  };
  fact("id", "#" + d.id);
  fact("received", d.received_at ? new Date(d.received_at).toLocaleString() : "");
  fact("kind", d.kind);
  if (d.replay_of) fact("replay of", link(d.replay_of));
  fact("outcome", d.outcome);
  if (d.duplicate_of) fact("duplicate of", link(d.duplicate_of));
  fact("provider", d.provider);
  fact("event", d.event);
  fact("event id", d.event_id);
  fact("transport", d.transport);
  fact("tunnel", d.tunnel);
  fact("target", d.target);
  fact("from", d.remote_addr);
  fact("relay id", d.relay_id);
  out.push(facts);

  const tm = timing(d);
  if (tm) out.push(el("h3", "Timing"), tm);
  if (d.attempts && d.attempts.length) {
    out.push(el("h3", "Attempts"), kvTable(d.attempts.map((a, i) => [
      "#" + (i + 1) + " " + fmtTime(a.at), (a.status ? String(a.status) : a.error || "") + " (" + fmtMS(a.duration_ms) + ")"])));
  }

  out.push(el("h3", "Request"));
  if (d.query) out.push(el("h4", "Query"), kvTable([...new URLSearchParams(d.query)]));
  out.push(el("h4", "Headers"), kvTable(headerPairs(d.request_headers)));
  out.push(bodyView("Body", d.request_body, d.request_headers));

  out.push(el("h3", "Response"));
  out.push(el("p", el("span.status." + statusClass(d.status), d.status ? String(d.status) : "no answer")));
  if (d.response_headers) out.push(el("h4", "Headers"), kvTable(headerPairs(d.response_headers)));
  out.push(bodyView("Body", d.response_body, d.response_headers));

  pane.replaceChildren(...out);
  pane.dataset.id = d.id;
  pane.scrollTop = 0;
}

function fromHash() {
  const id = Number(location.hash.slice(1));
  if (id) select(id);
}

document.addEventListener("DOMContentLoaded", () => {
  $("list").addEventListener("click", (e) => {
    const btn = e.target.closest("button.row");
    if (btn) location.hash = btn.dataset.id;
  });
  $("more").addEventListener("click", loadMore);
  let timer;
  $("filter").addEventListener("input", (e) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      state.filter = parseFilter(e.target.value);
      loadList();
    }, 200);
  });
  window.addEventListener("hashchange", fromHash);
  loadList().then(() => {
    connectEvents();
    fromHash();
  });
});
