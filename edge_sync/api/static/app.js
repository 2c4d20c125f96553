// The Cloud Events page: reads GET /api/cloud-events (envelope=true, newest first, seq cursors)
// and GET /api/status, replays dead letters with POST /api/dead-letters/replay. No framework,
// no build step. With admin.token set the API answers 401 until the operator gives the token,
// which is kept in this tab's sessionStorage and sent as "Authorization: Bearer <token>".
"use strict";

const TOKEN_KEY = "edge-sync-admin-token";
const LEVEL_WORD = { healthy: "✓ Healthy", degraded: "! Degraded", warning: "✕ Warning" };
const COLUMNS = ["Seq", "Created (UTC)", "Type", "Action", "Entity type", "Entity", "Status",
  "Lane", "Error", ""];

const state = { cursor: null, page: null, timer: null, busy: false, again: false };
const $ = (id) => document.getElementById(id);

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (response.status === 401) throw new Unauthorized("token needed");
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const why = body && body.message ? body.message : response.statusText;
    throw new Error(`${response.status} ${why}`);
  }
  return body;
}

function showLogin(message) {
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

// -- filters and the query ------------------------------------------------------------------

function utcMs(value, end = false) { // a datetime-local value read as UTC
  if (!value) return "";
  const ms = Date.parse(value.length === 16 ? `${value}:00Z` : `${value}Z`);
  if (Number.isNaN(ms)) return "";
  // "to" is inclusive to the second shown (the input has step 1; the browser leaves ":00"
  // seconds out of its value, so a 16-character value is still a whole second)
  const last = end && value.length <= 19 ? 999 : 0;
  return String(ms + last);
}

function query() {
  const form = $("filters");
  const params = new URLSearchParams({ envelope: "true", order: "desc" });
  for (const name of ["status", "entity", "type", "action", "limit"]) {
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  const from = utcMs(form.elements.from.value), to = utcMs(form.elements.to.value, true);
  if (from) params.set("from", from);
  if (to) params.set("to", to);
  if (state.cursor) params.set(state.cursor.name, String(state.cursor.value));
  return params;
}

// -- the table --------------------------------------------------------------------------------

function cell(tr, index, content, cls) {
  const td = content instanceof Node ? el("td", null, cls) : el("td", content, cls);
  if (content instanceof Node) td.append(content);
  td.dataset.label = COLUMNS[index];
  tr.append(td);
  return td;
}

function renderRows(page) {
  const body = $("events").tBodies[0];
  body.replaceChildren();
  for (const row of page.rows) {
    const tr = el("tr");
    tr.dataset.seq = row.seq;
    tr.dataset.status = row.status;
    cell(tr, 0, row.seq, "seq");
    const created = el("span", row.created_iso);
    created.title = `${row.created_time} ms`;
    cell(tr, 1, created);
    cell(tr, 2, row.type);
    cell(tr, 3, row.action);
    cell(tr, 4, row.entity_type);
    const entity = el("span");
    if (row.entity_name) entity.append(el("b", row.entity_name, "name"));
    const id = el("a", row.entity_id, "entity id mono");
    id.href = "#";
    id.title = "show only this entity's events";
    id.addEventListener("click", (event) => {
      event.preventDefault();
      $("filters").elements.entity.value = row.entity_id;
      state.cursor = null;
      refresh();
    });
    entity.append(id);
    cell(tr, 5, entity, "entity");
    cell(tr, 6, row.status, `st st-${row.status}`);
    cell(tr, 7, row.lane);
    cell(tr, 8, row.error || "", "error");
    const actions = cell(tr, 9, "");
    if (row.status === "DEAD") {
      const button = el("button", "Replay", "replay");
      button.type = "button";
      button.addEventListener("click", () => replay({ seqs: [row.seq] }));
      actions.append(button);
    }
    body.append(tr);
  }
  $("empty").hidden = page.rows.length > 0;
  $("newer").disabled = !page.next;
  $("older").disabled = !page.previous;
  $("newest").disabled = !state.cursor;
  const seqs = page.rows.map((r) => r.seq);
  const parts = seqs.length ? [`seq ${Math.max(...seqs)} … ${Math.min(...seqs)}`] : [];
  parts.push(`${page.rows.length} row${page.rows.length === 1 ? "" : "s"}`);
  if (page.partial) {
    parts.push(`scanned ${page.scanned} events: more may match, page on to continue`);
    if ($("live").checked) parts.push("live refresh updates the health panel only while a filter scans");
  }
  $("range").textContent = parts.join(" · ");
}

// -- the health panel ---------------------------------------------------------------------------

function setCard(id, value, level, note) {
  const card = $(id);
  card.className = `card lvl-${level || "unknown"}`;
  card.dataset.level = level || "unknown";
  card.querySelector(".value").textContent = value;
  card.querySelector(".level").textContent = LEVEL_WORD[level] || "– not judged";
  const noteEl = card.querySelector(".note");
  if (noteEl) noteEl.textContent = note || "";
}

function seconds(ms) {
  if (ms === null || ms === undefined) return "–";
  const s = ms / 1000;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

function renderHealth(status) {
  const h = status.health_detail;
  const q = status.queue;
  const rules = h.rules || { level: null, reasons: [] };
  const off = [["queue depth", h.queue_depth.level], ["sync latency", h.sync_latency.level],
    ["link", h.link.level], ["rule chain", rules.level]]
    .filter(([, lv]) => lv && lv !== "healthy").map(([name]) => name);
  const why = rules.level && rules.level !== "healthy" ? ` (${rules.reasons.join("; ")})` : "";
  setCard("h-overall", LEVEL_WORD[h.overall].slice(2), h.overall,
    off.length ? `from ${off.join(", ")}${why}` : "queue depth, sync latency, link and rule chain");
  setCard("h-queue", q.pending.toLocaleString("en"), h.queue_depth.level,
    `high ${q.pending_high} · normal ${q.pending_normal}; healthy < ${h.queue_depth.healthy_under}, warning > ${h.queue_depth.warning_over}`);
  const lat = h.sync_latency;
  const source = lat.measured_ms !== null && lat.measured_ms !== undefined &&
    lat.measured_ms >= (lat.oldest_pending_age_ms || 0)
    ? "accept to acknowledge, last batch" : "oldest pending event's age";
  setCard("h-latency", seconds(lat.value_ms), lat.level,
    `${source}; healthy < ${lat.healthy_under_s} s, warning > ${lat.warning_over_s} s`);
  const link = h.link;
  const word = link.state === "CONNECTED" ? "Connected"
    : status.link.note ? "Not configured"
      : link.level === null ? link.state : `Reconnecting (${link.state})`;
  const next = link.next_attempt_in_s === null || link.next_attempt_in_s === undefined
    ? "" : `; next attempt in ${link.next_attempt_in_s} s`;
  const down = link.down_for_s === null || link.down_for_s === undefined
    ? "" : `; down for ${link.down_for_s} s (warning over ${link.warning_over_s} s)`;
  setCard("h-link", word, link.level,
    `${status.link.note ? status.link.note + "; " : ""}breaker ${link.breaker || "–"}${next}${down}`);
  const skew = h.clock_skew;
  setCard("h-skew", skew.value_ms === null || skew.value_ms === undefined ? "–" : `${skew.value_ms} ms`,
    skew.level, `warning > ${skew.warning_over_s} s`);
  setCard("h-dead", q.dead.toLocaleString("en"), h.dead_letters.level,
    q.dead ? "replay from the table or with “Replay all dead”" : "");
  const st = status.storage, sh = h.storage;
  const reclaim = st.reclaimable_mb === undefined ? ""
    : `; ${st.reclaimable_mb} MiB of delivered events reclaimable`;
  setCard("h-storage", `${sh.value_pct === undefined ? sh.used_pct : sh.value_pct} %`, sh.level,
    `${st.used_mb} of ${st.cap_mb} MiB used${reclaim} (file ${st.file_mb} MiB)`);
  $("replay-all").disabled = q.dead === 0;
}

// -- actions ------------------------------------------------------------------------------------

function say(text, bad) {
  const m = $("message");
  m.textContent = text;
  m.className = bad ? "message bad" : "message";
  m.hidden = !text;
}

async function replay(body) {
  try {
    const out = await api("/api/dead-letters/replay", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const done = out.replayed || [], skipped = out.skipped || [];
    let text = `Replayed ${done.length} dead letter${done.length === 1 ? "" : "s"}`;
    if (done.length) text += `: seq ${done.join(", ")}`;
    if (skipped.length) text += `; skipped ${skipped.map((s) => `${s.seq} (${s.reason})`).join(", ")}`;
    say(text, false);
  } catch (error) {
    if (error instanceof Unauthorized) showLogin("");
    else say(`Replay failed: ${error.message}`, true);
  }
  await refresh();
}

async function refresh() {
  if (state.busy) { state.again = true; return; } // (run once more when this one ends)
  state.busy = true;
  try {
    const [page, status] = await Promise.all([
      api(`/api/cloud-events?${query()}`), api("/api/status")]);
    $("login").hidden = true;
    $("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
    state.page = page;
    renderRows(page);
    renderHealth(status);
    $("updated").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
  } catch (error) {
    if (error instanceof Unauthorized) showLogin(sessionStorage.getItem(TOKEN_KEY) ? "wrong token" : "");
    else say(`Cannot read the agent: ${error.message}`, true);
  } finally {
    state.busy = false;
    if (state.again) { state.again = false; refresh(); }
  }
}

async function tick() {
  // A filter without an index scans up to its budget per request: repeating that every few
  // seconds would keep the agent busy, so the table waits for the operator to page on.
  if (state.page && state.page.partial) {
    try { renderHealth(await api("/api/status")); } catch (error) { /* the next refresh says */ }
    return;
  }
  await refresh();
}

function schedule() {
  clearInterval(state.timer);
  state.timer = null;
  if ($("live").checked) state.timer = setInterval(tick, Number($("interval").value));
}

function init() {
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    state.cursor = null;
    say("");
    refresh();
  });
  $("clear-filters").addEventListener("click", () => {
    $("filters").reset();
    state.cursor = null;
    refresh();
  });
  $("newest").addEventListener("click", () => { state.cursor = null; refresh(); });
  $("newer").addEventListener("click", () => {
    if (state.page && state.page.next) { state.cursor = { name: "after", value: state.page.next.after }; refresh(); }
  });
  $("older").addEventListener("click", () => {
    if (state.page && state.page.previous) { state.cursor = { name: "before", value: state.page.previous.before }; refresh(); }
  });
  $("replay-all").addEventListener("click", () => replay({ all: true }));
  $("live").addEventListener("change", schedule);
  $("interval").addEventListener("change", schedule);
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    refresh();
  });
  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("");
  });
  refresh();
  schedule();
}

document.addEventListener("DOMContentLoaded", init);
