// The live dashboard: one EventSource on /events, a figures snapshot about twice a second (named
// as tickerplant.ops.figures registers them); rates from consecutive snapshots; two hand-drawn
// canvas charts: two line plots are sixty lines of canvas, less than a vendored charting library
// would cost to keep, and nothing is fetched from the internet.
"use strict";

const SOURCES = { a: "line A", b: "line B", rerequest: "re-request", replay: "replay" };
const WINDOW = 300; // seconds of history in the charts
const COLORS = { a: "#5af", b: "#fa5", line: "#5af", rerequest: "#fa5", replay: "#c7f" };
const history = { rate: { a: [], b: [] }, latency: { line: [], rerequest: [], replay: [] } };
let previous = null;
let lastEvent = "";

const $ = (id) => document.getElementById(id);
const fmt = (n) => (n === undefined || n === null ? "-" : Math.round(n).toLocaleString("en-US"));
const ms = (s) => (s === undefined ? "-" : (s * 1e3).toFixed(3) + " ms");
const bytes = (n) => (n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MiB" : fmt(n) + " B");
const sum = (o) => Object.values(o || {}).reduce((a, b) => a + (typeof b === "object" ? sum(b) : b), 0);

function rate(now, before, dt, name, key) {
  if (!before || dt <= 0) return undefined;
  return (now[name][key] - before[name][key]) / dt;
}

function rows(tbody, data) {
  const body = document.querySelector(tbody + " tbody");
  body.replaceChildren(...data.map(([id, cells, cls]) => {
    const tr = document.createElement("tr");
    if (id) tr.id = id;
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      td.textContent = c;
      if (cls && cls[i]) td.className = cls[i];
      if (id) td.dataset.col = i;
      tr.appendChild(td);
    });
    return tr;
  }));
}

function show(message) {
  const f = message.figures;
  if (!f || !f.packets) return;
  if (previous && message.time === previous.time) {  // the same snapshot again: only new events
    events(message.events || []);
    return;
  }
  const dt = previous ? message.time - previous.time : 0;
  const before = previous && previous.figures;
  $("session").textContent = f.session || "-";
  $("delivered").textContent = fmt(f.delivered_messages);
  // (several channels: each its own numbers, which added up mean nothing)
  $("next-sequence").textContent = f.channels ? "per channel" : fmt(f.next_sequence);
  $("held-bytes").textContent = bytes(f.held_bytes);
  $("open-gaps").textContent = fmt(f.open_gaps);
  rows("#lines", Object.entries(SOURCES).map(([s, name]) => {
    const state = (f.line_state || {})[s] || "";
    const r = f.gaps_repaired[s];
    return [`source-${s}`, [name, state, fmt(rate(f, before, dt, "packets", s)),
      fmt(rate(f, before, dt, "messages", s)), fmt(f.gaps_seen[s]), fmt(r.line),
      fmt(r.rerequest), fmt(r.replay), fmt(f.gaps_lost[s]),
      fmt(sum(f.defects[s]) + f.foreign_packets[s])], [null, state]];
  }));
  if (f.channels) {  // several channels: the worst few, not 48 rows
    $("channels-section").hidden = false;
    $("channels-unheard").textContent = fmt(f.channels_unheard);
    rows("#channels", Object.entries(f.channels).map(([n, c]) => {
      const lines = c.line_state || {};
      return [`channel-${n}`, [n, c.session || "(unheard)", fmt(c.delivered_messages),
        fmt(c.lost_messages), fmt(c.open_gaps), lines.a || "", lines.b || "",
        ms(c.events_delivery_p99_seconds)], [null, null, null, null, null, lines.a, lines.b]];
    }));
  }
  rows("#latency", Object.entries(f.repair_latency_seconds).map(([k, v]) =>
    [`latency-${k}`, [k, fmt(v.count), ms(v.p50), ms(v.p99), ms(v.max)]]));
  $("lost-messages").textContent = fmt(f.lost_messages);
  $("lost-ranges").textContent = f.lost_ranges.length
    ? f.lost_ranges.map(([a, b]) => `[${a.toLocaleString("en-US")}, ${b.toLocaleString("en-US")})`).join(" ")
    : "none";
  for (const k of ["book_symbols", "live_orders", "book_levels", "bbo_updates", "trades", "book_anomalies"]) {
    const el = $(k.replace(/_/g, "-"));
    if (el) el.textContent = fmt(f[k]);
  }
  rows("#busiest", (f.busiest || []).map((b) => [null, [b.symbol,
    `${b.bid.toFixed(4)} × ${fmt(b.bid_size)}`, `${b.ask.toFixed(4)} × ${fmt(b.ask_size)}`,
    fmt(b.bbo_updates)]]));
  if (f.clients) {
    rows("#streams", Object.keys(f.clients).map((s) => [`stream-${s}`, [s, fmt(f.clients[s]),
      bytes(f.queued_bytes[s]), fmt(rate(f, before, dt, "sent_messages", s)),
      ms((f.delivery_latency_seconds[s] || {}).p50), ms((f.delivery_latency_seconds[s] || {}).p99),
      fmt(f.slow_consumers[s].disconnect), fmt(f.slow_consumers[s].conflate),
      s in f.staleness_seconds ? ms(f.staleness_seconds[s].p99) : "",
      fmt(f.slow_consumers[s].skip)]]));
  } else {
    $("distribution").hidden = true;
  }
  if (before && dt > 0) {
    for (const s of ["a", "b"]) history.rate[s].push([message.time, rate(f, before, dt, "messages", s)]);
  }
  for (const [k, v] of Object.entries(f.repair_latency_seconds)) {
    if (v.count && history.latency[k]) history.latency[k].push([message.time, v.p99 * 1e3]);
  }
  for (const series of [...Object.values(history.rate), ...Object.values(history.latency)]) {
    while (series.length && series[0][0] < message.time - WINDOW) series.shift();
  }
  chart($("rate-chart"), history.rate, message.time, false);
  chart($("latency-chart"), history.latency, message.time, true);
  events(message.events || []);
  previous = message;
}

function events(list) {
  const log = $("event-log");
  const fresh = [];
  for (const e of list) {
    const key = e.time + e.message;
    if (key > lastEvent) fresh.push(e);
  }
  if (!fresh.length) return;
  lastEvent = fresh[fresh.length - 1].time + fresh[fresh.length - 1].message;
  for (const e of fresh) {
    const li = document.createElement("li");
    li.className = e.level;
    li.dataset.event = e.event || "";
    li.textContent = `${e.time.slice(11, 23)} ${e.message}`;
    log.prepend(li);
  }
  while (log.children.length > 200) log.lastChild.remove();
}

function chart(canvas, series, now, log) {
  const g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 36;
  g.clearRect(0, 0, w, h);
  const values = Object.values(series).flat().map((p) => p[1]).filter((v) => v > 0);
  if (!values.length) return;
  const max = Math.max(...values), min = log ? Math.max(1e-3, Math.min(...values)) : 0;
  const y = (v) => {
    const t = log ? (Math.log10(Math.max(v, min)) - Math.log10(min)) / Math.max(1e-9, Math.log10(max) - Math.log10(min))
      : v / max;
    return h - pad / 2 - t * (h - pad);
  };
  // Until five minutes have passed, the span is what there is (30 s at least).
  const oldest = Math.min(...Object.values(series).filter((p) => p.length).map((p) => p[0][0]));
  const span = Math.max(30, Math.min(WINDOW, now - oldest));
  const x = (t) => pad + (1 - (now - t) / span) * (w - pad - 4);
  g.fillStyle = "#777";
  g.font = "11px system-ui";
  g.fillText(log ? max.toPrecision(3) : fmt(max), 2, 12);
  g.fillText(log ? min.toPrecision(3) : "0", 2, h - 4);
  for (const [name, points] of Object.entries(series)) {
    if (!points.length) continue;
    g.strokeStyle = COLORS[name];
    g.beginPath();
    points.forEach(([t, v], i) => (i ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
    g.stroke();
    g.fillStyle = COLORS[name];
    g.fillText(name, w - 70, 14 + 12 * Object.keys(series).indexOf(name));
  }
}

function connect() {
  const source = new EventSource("/events");
  source.onopen = () => { $("connection").textContent = "live"; $("connection").className = "up"; };
  source.onmessage = (m) => show(JSON.parse(m.data));
  source.onerror = () => { $("connection").textContent = "reconnecting"; $("connection").className = "down"; };
}

connect();
