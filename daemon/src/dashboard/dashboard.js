// itproxy's dashboard: routes, apps and the live request list, from the read-only API this
// page is served beside (the same paths as the control API). Every value from a request is
// set as text, never as HTML: clients choose those bytes.
"use strict";

const MAX_ROWS = 500;
const own = location.hostname.toLowerCase();
const requests = new Map(); // id -> request
let lastStatus = new Map(); // route host -> last status seen
let selected = null;

const $ = (id) => document.getElementById(id);

function cell(tr, text, className) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (className) td.className = className;
  tr.appendChild(td);
  return td;
}

function fill(tbody, items, row) {
  const rows = items.map((item) => {
    const tr = document.createElement("tr");
    row(tr, item);
    return tr;
  });
  tbody.replaceChildren(...rows);
}

async function json(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

async function refresh() {
  try {
    const [status, routes, apps] = await Promise.all([
      json("/v1/status"), json("/v1/routes"), json("/v1/apps"),
    ]);
    const env = status.env ? "environment " + status.env + " · " : "";
    $("summary").textContent = env + status.routes + " routes · itproxy " + status.version +
      " · up " + Math.round(status.uptime_seconds) + " s";
    const serving = new Map(); // host -> "app state, container state"
    for (const app of apps.apps || []) {
      for (const c of app.containers || []) {
        // "http://api.test -> :8080": the routed name, then the container's port.
        const routed = /^http:\/\/([^ ]+)/.exec(c.serves || "");
        if (routed) {
          serving.set(routed[1], "app " + app.name + " " + app.state + ", container " + c.state);
        }
      }
    }
    fill($("routes").tBodies[0], routes, (tr, r) => {
      cell(tr, r.host);
      cell(tr, r.target);
      cell(tr, r.source + (r.declared ? " (declared " + r.declared + ")" : ""));
      const seen = lastStatus.get(r.host);
      const health = serving.get(r.host) ||
        (seen === undefined ? "no request yet" : "last response " + (seen || "none"));
      cell(tr, health, seen >= 500 || seen === 0 ? "s5" : "");
    });
    $("apps-section").hidden = !(apps.apps && apps.apps.length);
    fill($("apps").tBodies[0], apps.apps || [], (tr, a) => {
      cell(tr, a.name);
      cell(tr, a.state + (a.error ? ": " + a.error : ""), a.state === "failed" ? "s5" : "");
      cell(tr, a.ready_check);
      cell(tr, String(a.restarts || 0) + (a.last_exit ? " (last: " + a.last_exit + ")" : "") +
        ", " + (a.restart_policy || "on-failure"));
      cell(tr, (a.containers || []).map((c) => c.name + " " + c.state).join(", "));
    });
  } catch (e) {
    $("summary").textContent = "cannot reach itproxy: " + e.message;
  }
}

function statusClass(s) {
  return "s" + Math.floor(s / 100);
}

function shown(r) {
  return $("show-own").checked || (r.route || "").toLowerCase() !== own;
}

function addRequest(r) {
  requests.set(r.id, r);
  if (r.route) lastStatus.set(r.route, r.status);
  if (requests.size > MAX_ROWS) requests.delete(requests.keys().next().value);
  if (!shown(r)) return;
  const tbody = $("requests").tBodies[0];
  const tr = document.createElement("tr");
  tr.dataset.id = r.id;
  cell(tr, r.time.slice(11, 23));
  cell(tr, r.status || "-", statusClass(r.status));
  cell(tr, r.method || "-");
  cell(tr, r.route || "-");
  cell(tr, r.target);
  cell(tr, r.duration_ms.toFixed(2));
  cell(tr, r.response_bytes);
  tr.addEventListener("click", () => showDetail(r.id));
  tbody.prepend(tr);
  while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(-1);
}

function redrawRequests() {
  $("requests").tBodies[0].replaceChildren();
  for (const r of requests.values()) addRequest(r);
}

function showDetail(id) {
  const r = requests.get(id);
  if (!r) return;
  selected = id;
  for (const tr of $("requests").tBodies[0].rows) {
    tr.classList.toggle("selected", tr.dataset.id === String(id));
  }
  $("detail").hidden = false;
  $("detail-title").textContent = (r.method || "-") + " " + r.target;
  const facts = [
    ["Status", r.status || "none sent"],
    ["Route", r.route || "none"],
    ["Upstream", r.upstream || "-"],
    ["Protocol", r.protocol + (r.tls ? " over TLS" : "")],
    ["Client", r.client || "-"],
    ["Time", r.time],
    ["Total", r.duration_ms.toFixed(3) + " ms"],
    ["Upstream time", r.upstream_ms === undefined ? "-" : r.upstream_ms.toFixed(3) + " ms"],
    ["Sizes", r.request_bytes + " B in, " + r.response_bytes + " B out"],
  ];
  if (r.error) facts.push(["Error", r.error]);
  const dl = $("detail-facts");
  dl.replaceChildren();
  for (const [k, v] of facts) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = String(v);
    dl.append(dt, dd);
  }
  // Bodies are kept for the routes of [proxy] inspect_bodies only.
  const body = (text, b64) => text !== undefined ? text : b64 !== undefined ? "(base64) " + b64 : "";
  const kept = [r.request_body, r.request_body_base64, r.response_body, r.response_body_base64]
    .some((b) => b !== undefined);
  $("detail-bodies").hidden = !kept;
  $("detail-request-body").textContent = body(r.request_body, r.request_body_base64);
  $("detail-response-body").textContent = body(r.response_body, r.response_body_base64) +
    (r.bodies_cut ? "\n(cut at the inspector's limit)" : "");
  for (const [table, headers] of [["detail-request", r.request_headers], ["detail-response", r.response_headers]]) {
    fill($(table).tBodies[0], headers || [], (tr, [name, value]) => {
      cell(tr, name);
      cell(tr, value);
    });
  }
}

// Follows the request stream (JSON lines); reconnects after the last id seen if it breaks.
async function follow() {
  let since = 0;
  for (;;) {
    try {
      const query = since ? "since=" + since : "limit=100";
      const r = await fetch("/v1/requests?follow=true&" + query, { cache: "no-store" });
      if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
      $("live").className = "live on";
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let pending = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += decoder.decode(value, { stream: true });
        let end;
        while ((end = pending.indexOf("\n")) >= 0) {
          const line = pending.slice(0, end).trim();
          pending = pending.slice(end + 1);
          if (!line) continue;
          const req = JSON.parse(line);
          since = Math.max(since, req.id);
          addRequest(req);
        }
      }
    } catch (e) {
      // fall through: reconnect
    }
    $("live").className = "live off";
    await new Promise((done) => setTimeout(done, 1000));
  }
}

$("show-own").addEventListener("change", () => {
  redrawRequests();
  if (selected !== null) showDetail(selected);
});
refresh();
setInterval(refresh, 2000);
follow();
