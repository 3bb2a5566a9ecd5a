// agentdispatch dashboard: one EventSource on /admin/events; a snapshot replaces the state, events patch it.
"use strict";

const BUCKET_MS = 10000;
const CHART_BUCKETS = 60;
const RECENT_ROWS = 50;

const state = {
  workers: new Map(),    // worker_id -> worker
  waiting: new Map(),    // job_id -> {agent_name, since_ms}
  running: {},           // agent_name -> count (from the last snapshot, patched by events)
  recent: [],            // newest first
  samples: [],           // [at_ms, latency_ms]
  clockSkew: 0,          // server now - local now
  fresh: new Set(),
};

function token() {
  const hash = new URLSearchParams(location.hash.slice(1));
  return hash.get("token") || new URLSearchParams(location.search).get("token") || "";
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function serverNow() { return Date.now() + state.clockSkew; }
function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms < 1000 ? `${ms.toFixed(ms < 10 ? 2 : 0)} ms` : `${(ms / 1000).toFixed(2)} s`;
}
function fmtWait(s) { return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)}m ${Math.round(s % 60)}s`; }
function fmtTime(ms) { return ms ? new Date(ms).toLocaleTimeString() : ""; }
function pill(word) { return el("span", { class: `pill ${word}` }, word); }

function loadBar(load) {
  const pct = Math.max(0, Math.min(1, load)) * 100;
  const bar = el("div", { class: "bar" + (load >= 0.9 ? " high" : load >= 0.7 ? " mid" : "") },
    el("span", { style: `width:${pct.toFixed(1)}%` }), el("em", {}, `${pct.toFixed(0)}%`));
  bar.title = `load ${load}`;
  return bar;
}

// -- state updates ------------------------------------------------------------------------------
function applySnapshot(s) {
  state.clockSkew = s.now_ms - Date.now();
  state.workers = new Map(s.workers.map((w) => [w.worker_id, w]));
  state.waiting = new Map(s.waiting_jobs.map((j) => [j.job_id, { agent_name: j.agent_name,
    since_ms: s.now_ms - j.wait_s * 1000 }]));
  state.running = s.running || {};
  state.recent = s.recent_jobs.slice(0, RECENT_ROWS);
  state.samples = s.latency_samples;
  document.getElementById("node").textContent = s.node_id ? `node ${s.node_id}` : "";
}

function applyWorker(e) {
  const w = e.worker;
  if (e.kind === "disconnected") state.workers.delete(w.worker_id);
  else {
    if (!state.workers.has(w.worker_id)) state.fresh.add(w.worker_id);
    state.workers.set(w.worker_id, w);
  }
}

function applyJob(e) {
  if (e.kind === "created" || e.kind === "queued" || e.kind === "restarting") {
    if (!state.waiting.has(e.job_id)) state.waiting.set(e.job_id, { agent_name: e.agent_name, since_ms: serverNow() });
  } else if (["assigned", "migrated", "running", "ended"].includes(e.kind)) {
    state.waiting.delete(e.job_id);
  }
  if (e.kind === "running" || e.kind === "ended") {
    state.recent = [e, ...state.recent.filter((j) => j.job_id !== e.job_id)].slice(0, RECENT_ROWS);
    state.fresh.add(e.job_id);
  }
  if (e.kind === "running" && e.latency_ms !== null && e.latency_ms !== undefined) {
    state.samples.push([serverNow(), e.latency_ms]);
  }
}

// -- rendering -------------------------------------------------------------------------------------
function fill(tableId, rows, emptyId) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows);
  document.getElementById(emptyId).classList.toggle("hidden", rows.length > 0);
}

function renderWorkers() {
  const rows = [...state.workers.values()].sort((a, b) => a.agent_name.localeCompare(b.agent_name)
    || a.worker_id.localeCompare(b.worker_id)).map((w) => {
    const tr = el("tr", { "data-worker-id": w.worker_id, class: state.fresh.has(w.worker_id) ? "fresh" : "" },
      el("td", { class: "mono worker-id" }, w.worker_id),
      el("td", {}, w.agent_name || "(automatic)"),
      el("td", { class: "mono" }, w.node_id),
      el("td", {}, pill(w.state)),
      el("td", { class: "load", "data-load": String(w.load) }, loadBar(w.load)),
      el("td", { class: "num jobs" }, w.active_jobs),
      el("td", { class: "num" }, w.pending_offers));
    return tr;
  });
  fill("workers", rows, "workers-empty");
}

function renderWaiting() {
  const per = new Map();
  const now = serverNow();
  for (const j of state.waiting.values()) {
    const p = per.get(j.agent_name) || { count: 0, oldest: 0 };
    p.count += 1; p.oldest = Math.max(p.oldest, (now - j.since_ms) / 1000);
    per.set(j.agent_name, p);
  }
  const rows = [...per.entries()].sort().map(([name, p]) => el("tr", { "data-agent": name },
    el("td", {}, name || "(automatic)"), el("td", { class: "num" }, p.count),
    el("td", { class: "num" }, fmtWait(p.oldest))));
  fill("waiting", rows, "waiting-empty");
  return [...per.values()].reduce((n, p) => n + p.count, 0);
}

function renderJobs() {
  const rows = state.recent.map((j) => el("tr", { "data-job-id": j.job_id, class: state.fresh.has(j.job_id) ? "fresh" : "" },
    el("td", {}, fmtTime(j.at_ms)),
    el("td", { class: "mono" }, j.job_id),
    el("td", {}, j.agent_name || "(automatic)"),
    el("td", {}, j.room),
    el("td", {}, pill(j.status)),
    el("td", { class: "reason", title: j.error || "" }, j.status === "failed" ? (j.error || j.reason) : (j.reason === "none" ? "" : j.reason)),
    el("td", { class: "num" }, fmtMs(j.latency_ms)),
    el("td", { class: "mono" }, j.worker_id || "")));
  fill("jobs", rows, "jobs-empty");
}

function percentile(sorted, q) {
  if (!sorted.length) return null;
  return sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)];
}

function renderLatency() {
  const now = serverNow();
  const start = Math.floor(now / BUCKET_MS) * BUCKET_MS - (CHART_BUCKETS - 1) * BUCKET_MS;
  state.samples = state.samples.filter(([at]) => at >= start);
  const buckets = Array.from({ length: CHART_BUCKETS }, () => []);
  for (const [at, v] of state.samples) buckets[Math.min(CHART_BUCKETS - 1, Math.floor((at - start) / BUCKET_MS))].push(v);
  const p50 = [], p99 = [];
  buckets.forEach((b) => { b.sort((x, y) => x - y); p50.push(percentile(b, 0.5)); p99.push(percentile(b, 0.99)); });
  const all = state.samples.map(([, v]) => v).sort((x, y) => x - y);
  document.getElementById("t-latency").textContent = all.length
    ? `${fmtMs(percentile(all, 0.5))} / ${fmtMs(percentile(all, 0.99))}` : "–";
  const max = Math.max(1, ...p99.filter((v) => v !== null));
  const svg = document.getElementById("latency-chart");
  const W = 600, H = 180, pad = 4;
  const x = (i) => (i / (CHART_BUCKETS - 1)) * (W - 2 * pad) + pad;
  const y = (v) => H - pad - (v / max) * (H - 2 * pad - 12);
  const path = (series) => series.map((v, i) => (v === null ? null : `${x(i).toFixed(1)},${y(v).toFixed(1)}`))
    .filter(Boolean).join(" ");
  const ns = "http://www.w3.org/2000/svg";
  const mk = (tag, attrs) => { const n = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); return n; };
  const nodes = [];
  for (let g = 1; g <= 3; g++) nodes.push(mk("line", { class: "grid", x1: 0, x2: W, y1: y((max * g) / 4), y2: y((max * g) / 4) }));
  for (const [cls, series] of [["p99", p99], ["p50", p50]]) {
    nodes.push(mk("polyline", { class: cls, points: path(series) }));
    series.forEach((v, i) => { if (v !== null) nodes.push(mk("circle", { class: `${cls} dot`, cx: x(i), cy: y(v), r: 2.5 })); });
  }
  const label = mk("text", { x: 6, y: 12 }); label.textContent = `max ${fmtMs(max)}`; nodes.push(label);
  const left = mk("text", { x: 6, y: H - 4 }); left.textContent = `-${CHART_BUCKETS * BUCKET_MS / 60000} min`; nodes.push(left);
  const right = mk("text", { x: W - 6, y: H - 4, "text-anchor": "end" }); right.textContent = "now"; nodes.push(right);
  svg.replaceChildren(...nodes);
  document.getElementById("latency-max").textContent = `${all.length} jobs in the last ${CHART_BUCKETS * BUCKET_MS / 60000} min`;
}

function render() {
  renderWorkers();
  const waiting = renderWaiting();
  renderJobs();
  renderLatency();
  const workers = [...state.workers.values()];
  document.getElementById("t-workers").textContent = workers.length;
  document.getElementById("t-available").textContent = workers.filter((w) => w.state === "available").length;
  document.getElementById("t-running").textContent = workers.reduce((n, w) => n + w.active_jobs, 0);
  document.getElementById("t-waiting").textContent = waiting;
  state.fresh.clear();
}

let pending = false;
function scheduleRender() {
  if (pending) return;
  pending = true;
  setTimeout(() => { pending = false; render(); }, 50);
}

function setConn(cls, text) {
  document.getElementById("conn-dot").className = `dot ${cls}`;
  document.getElementById("conn-text").textContent = text;
}

function connect() {
  const t = token();
  const source = new EventSource("/admin/events" + (t ? `?access_token=${encodeURIComponent(t)}` : ""));
  source.addEventListener("open", () => setConn("live", "live"));
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {  // refused (401/403) or gone: the browser gives up
      setConn("down", t ? "no access: check the #token" : "no access: add #token=<admin token>");
      setTimeout(connect, 5000);
    } else {
      setConn("down", "reconnecting");
    }
  });
  source.addEventListener("snapshot", (m) => { applySnapshot(JSON.parse(m.data)); render(); });
  source.addEventListener("worker", (m) => { applyWorker(JSON.parse(m.data)); scheduleRender(); });
  source.addEventListener("job", (m) => { applyJob(JSON.parse(m.data)); scheduleRender(); });
}

connect();
setInterval(() => { renderWaiting(); renderLatency(); }, 1000);
