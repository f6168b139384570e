// flow-archiver console: plain JavaScript, no build step, no dependencies. Every
// read and action goes through /graphql with the token kept in sessionStorage
// (sent as a bearer header, never in a URL). Data is put on the page as text
// nodes only, so nothing a flow carries can run as markup.
"use strict";

const TOKEN_KEY = "flow-archiver.token";
const STATUSES = ["running", "completed", "failed", "error", "cancelled", "timed_out", "abandoned"];
let viewer = null;

// ---- small DOM helpers ----------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    // Through the CSSOM: the page's CSP refuses style attributes.
    else if (k === "style") el.style.cssText = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (id) => document.getElementById(id);
const main = () => $("main");
function show(...nodes) { main().replaceChildren(...nodes); }

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i ? v.toFixed(1) : v) + " " + units[i];
}
const num = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));
const time = (t) => (t ? t.replace("T", " ").replace(/\.\d+Z$|Z$/, " UTC") : "–");
const flowHref = (t, f) => "#/flow/" + encodeURIComponent(t) + "/" + encodeURIComponent(f);
const badge = (status) => h("span", { class: "badge " + status }, status);

// ---- the API --------------------------------------------------------------
let pending = 0;
function busy(delta) {
  pending += delta;
  $("busy").hidden = pending <= 0;
  main().setAttribute("aria-busy", pending > 0 ? "true" : "false");
}
function showError(message) {
  const box = $("error");
  box.hidden = !message;
  box.textContent = message || "";
}

class AuthError extends Error {}

async function gql(query, variables) {
  const headers = { "content-type": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.authorization = "Bearer " + token;
  busy(1);
  try {
    let res;
    try {
      res = await fetch("/graphql", { method: "POST", headers, body: JSON.stringify({ query, variables }) });
    } catch (e) {
      throw new Error("the server cannot be reached (" + e.message + ")");
    }
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON: reported below */ }
    if (res.status === 401) throw new AuthError((body && body.error) || "sign in with a token");
    if (!res.ok) throw new Error((body && body.error) || "HTTP " + res.status);
    if (body.errors && body.errors.length) throw new Error(body.errors.map((e) => e.message).join("; "));
    return body.data;
  } finally {
    busy(-1);
  }
}

// Runs a loader, showing its error (or the sign-in form). A page that fails is
// replaced by a note; a "More" that fails keeps what is already shown.
async function load(render, keepPage) {
  showError("");
  try {
    await render();
  } catch (e) {
    if (e instanceof AuthError) return signIn(e.message);
    showError(e.message);
    if (!keepPage) show(h("p", { class: "muted" }, "This page could not be loaded: see the message above."));
  }
}

// ---- sign in --------------------------------------------------------------
function signIn(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  viewer = null;
  $("nav").hidden = true;
  $("who").hidden = true;
  const input = h("input", { id: "token", type: "password", autocomplete: "off", required: true, "aria-label": "API token" });
  const form = h("form", { id: "sign-in-form", onsubmit: async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    await start();
  } },
    h("label", { class: "field", for: "token" }, "API token (admin or tenant)"), input,
    h("button", { type: "submit", id: "sign-in" }, "Sign in"),
    h("p", { class: "muted" }, "The token stays in this browser tab's session storage and is sent only as a bearer header."));
  show(h("section", { class: "login panel" }, h("h1", {}, "Sign in"),
    message && message !== "sign in with a token" ? h("p", { class: "error", role: "alert" }, message) : null, form));
  showError("");
  input.focus();
}

async function start() {
  try {
    const data = await gql("{ viewer { role tenant canAct seesLiveFlows } }");
    viewer = data.viewer;
  } catch (e) {
    if (e instanceof AuthError) return signIn(e.message);
    showError(e.message);
    return;
  }
  $("nav").hidden = false;
  $("who").hidden = false;
  $("who-text").textContent = viewer.role === "tenant" ? "tenant " + viewer.tenant
    : viewer.role === "admin" ? "admin" : "open (no tokens configured)";
  $("sign-out").hidden = viewer.role === "open";
  route();
}

// ---- routing --------------------------------------------------------------
function route() {
  if (!viewer) return;
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const page = parts[0] || "overview";
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === page);
  }
  if (page === "flow" && parts.length === 3) return load(() => flowPage(parts[1], parts[2]));
  if (page === "search") return load(() => searchPage(new URLSearchParams(query || "")), true);
  if (page === "holds") return load(holdsPage);
  return load(overviewPage);
}

// ---- overview -------------------------------------------------------------
function card(label, value, id) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value", id }, value));
}

function barList(title, rows) {
  const max = Math.max(1, ...rows.map((r) => r.value));
  return h("div", { class: "panel" }, h("h2", {}, title),
    rows.length === 0 ? h("p", { class: "muted" }, "Nothing archived yet.") :
    h("ul", { class: "bars" }, rows.map((r) => h("li", { title: r.title },
      h("span", { class: "wrap" }, r.label),
      h("div", {}, h("div", { class: "bar" }, h("span", { style: "width:" + (100 * r.value / max).toFixed(1) + "%" })),
        h("div", { class: "muted" }, r.text))))));
}

function columnChart(title, rows) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "columns");
  svg.setAttribute("viewBox", "0 0 600 170");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const max = Math.max(1, ...rows.map((r) => r.value));
  const w = Math.min(600 / Math.max(rows.length, 1), 70);
  const left = (600 - w * rows.length) / 2;
  rows.forEach((r, i) => {
    const height = 140 * r.value / max;
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", left + i * w + w * 0.15);
    rect.setAttribute("width", w * 0.7);
    rect.setAttribute("y", 145 - height);
    rect.setAttribute("height", Math.max(height, 1));
    const tip = document.createElementNS(ns, "title");
    tip.textContent = r.label + ": " + r.text;
    rect.append(tip);
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", left + i * w + w / 2);
    label.setAttribute("y", 160);
    label.setAttribute("text-anchor", "middle");
    label.textContent = rows.length > 12 && i % Math.ceil(rows.length / 12) ? "" : r.label.slice(5);
    svg.append(rect, label);
  });
  return h("div", { class: "panel" }, h("h2", {}, title),
    rows.length === 0 ? h("p", { class: "muted" }, "Nothing archived yet.") : svg);
}

function group(rows, key) {
  const out = new Map();
  for (const r of rows) {
    const g = out.get(r[key]) || { parts: 0, stored: 0, raw: 0 };
    g.parts += r.flowParts; g.stored += r.storedBytes; g.raw += r.rawBytes;
    out.set(r[key], g);
  }
  return [...out.entries()];
}

async function overviewPage() {
  const data = await gql(`{
    stats { flowParts events rawBytes storedBytes compressionRatio liveFlows holds
            groups { tenant status day flowParts rawBytes storedBytes } }
    activity(last: 15) { time action actor tenant flowId reason objectUri counts { name value } }
  }`);
  const s = data.stats;
  const ratio = s.rawBytes ? (s.rawBytes / Math.max(s.storedBytes, 1)).toFixed(1) + " : 1" : "–";
  const byDay = group(s.groups, "day").sort((a, b) => (a[0] < b[0] ? -1 : 1));
  const byTenant = group(s.groups, "tenant").sort((a, b) => b[1].stored - a[1].stored);
  const byStatus = group(s.groups, "status").sort((a, b) => b[1].parts - a[1].parts);
  const rows = (entries) => entries.map(([label, g]) => ({
    label, value: g.parts, text: num(g.parts) + " parts · " + bytes(g.stored),
    title: bytes(g.raw) + " raw → " + bytes(g.stored) + " stored" }));
  show(
    h("h1", {}, viewer.tenant ? "Overview of " + viewer.tenant : "Overview"),
    h("div", { class: "cards" },
      card("Live flows", s.liveFlows === null ? "not visible here" : num(s.liveFlows), "live-flows"),
      card("Archived flow parts", num(s.flowParts), "archived-parts"),
      card("Archived events", num(s.events)),
      card("Stored", bytes(s.storedBytes), "stored-bytes"),
      card("Compression", ratio, "compression-ratio"),
      card("On hold", num(s.holds), "hold-count")),
    h("div", { class: "charts" },
      columnChart("Archived parts by day", byDay.map(([day, g]) => ({ label: day, value: g.parts,
        text: num(g.parts) + " parts, " + bytes(g.stored) }))),
      barList("By tenant", rows(byTenant)),
      barList("By status", rows(byStatus))),
    h("h2", {}, "Recent activity"),
    data.activity.length === 0 ? h("p", { class: "muted" }, "No archive, purge, hold or replay recorded yet.") :
    h("div", { class: "table-wrap" }, h("table", { id: "activity" },
      h("thead", {}, h("tr", {}, ["Time", "Action", "Actor", "Flow or object", "Counts", "Reason"].map((t) => h("th", {}, t)))),
      h("tbody", {}, data.activity.map((a) => h("tr", {},
        h("td", {}, time(a.time)), h("td", {}, a.action), h("td", {}, a.actor),
        h("td", { class: "wrap" }, a.flowId ? h("a", { href: flowHref(a.tenant, a.flowId) }, a.tenant + "/" + a.flowId)
          : h("span", { class: "mono", title: a.objectUri || "" }, (a.objectUri || "").split("/").pop())),
        h("td", {}, a.counts.map((c) => c.name.replace(/_/g, " ") + " " + (c.name.endsWith("bytes") ? bytes(c.value) : num(c.value))).join(", ")),
        h("td", { class: "wrap" }, a.reason || "")))))));
}

// ---- search ---------------------------------------------------------------
const LIVE_QUERY = `query($filter: FlowFilter, $after: String) {
  liveFlows(filter: $filter, first: 50, after: $after) {
    edges { node { tenant flowId part status eventCount lastEventTime dueAt labels { key value } } }
    pageInfo { hasNextPage endCursor } } }`;
const ARCHIVED_QUERY = `query($filter: FlowFilter, $after: String) {
  archivedFlows(filter: $filter, first: 50, after: $after) {
    edges { node { tenant flowId part status eventCount archivedAt purgeAt held labels { key value } } }
    pageInfo { hasNextPage endCursor } } }`;

function filterFrom(params) {
  const f = {};
  for (const k of ["tenant", "flowIdPrefix", "status"]) if (params.get(k)) f[k] = params.get(k);
  // "key=value, key=value": every label must match.
  const labels = (params.get("labels") || "").split(",").map((l) => l.trim()).filter(Boolean)
    .map((l) => { const at = l.indexOf("="); return at < 0 ? { key: l, value: "" } : { key: l.slice(0, at).trim(), value: l.slice(at + 1).trim() }; });
  if (labels.length) f.labels = labels;
  for (const k of ["from", "until"]) if (params.get(k)) f[k] = new Date(params.get(k)).toISOString();
  return f;
}

function resultTable(id, heads, rowOf, field, query, filter) {
  const tbody = h("tbody", {});
  const more = h("button", { type: "button", class: "secondary more", hidden: true }, "More");
  const empty = h("p", { class: "muted", hidden: true }, "No matches.");
  let after = null;
  async function next() {
    more.disabled = true;
    try {
      const page = (await gql(query, { filter, after }))[field];
      tbody.append(...page.edges.map((e) => rowOf(e.node)));
      after = page.pageInfo.endCursor;
      more.hidden = !page.pageInfo.hasNextPage;
      empty.hidden = tbody.children.length > 0 || page.pageInfo.hasNextPage;
    } finally {
      more.disabled = false;
    }
  }
  more.addEventListener("click", () => load(next, true));
  const table = h("div", { class: "table-wrap" }, h("table", { id }, h("thead", {}, h("tr", {}, heads.map((t) => h("th", {}, t)))), tbody));
  return { node: h("div", {}, table, empty, more), next };
}

const flowLink = (n) => h("a", { href: flowHref(n.tenant, n.flowId), class: "flow-link" }, n.tenant + "/" + n.flowId);
const labelText = (labels) => labels.map((l) => l.key + "=" + l.value).join(", ");

async function searchPage(params) {
  const field = (name, label, attrs) => h("label", { class: "field" }, label,
    h("input", Object.assign({ name, id: "search-" + name, value: params.get(name) || "" }, attrs || {})));
  const status = h("select", { name: "status", id: "search-status" }, h("option", { value: "" }, "any"),
    STATUSES.map((s) => h("option", { value: s, selected: params.get("status") === s }, s)));
  const form = h("form", { class: "search panel", id: "search-form", onsubmit: (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (String(v).trim()) q.set(k, String(v).trim());
    location.hash = "#/search?" + (q.toString() || "all=1");
  } },
    viewer.tenant ? h("label", { class: "field" }, "Tenant", h("input", { value: viewer.tenant, disabled: true }))
      : field("tenant", "Tenant"),
    field("flowIdPrefix", "Flow id starts with"),
    h("label", { class: "field" }, "Status", status),
    field("labels", "Labels (key=value, …)", { placeholder: "team=ml, pipeline=fetch" }),
    field("from", "From (archived or last event)", { type: "datetime-local" }),
    field("until", "Until", { type: "datetime-local" }),
    h("button", { type: "submit", id: "search-submit" }, "Search"));
  const nodes = [h("h1", {}, "Search flows"), form];
  if (params.toString() === "") {
    show(...nodes, h("p", { class: "muted" }, "Leave every field empty and press Search to list everything."));
    return;
  }
  const filter = filterFrom(params);
  const archived = resultTable("archived-results",
    ["Flow", "Part", "Status", "Events", "Archived", "Purge", "Labels"],
    (n) => h("tr", {}, h("td", {}, flowLink(n)), h("td", {}, n.part), h("td", {}, badge(n.status)),
      h("td", {}, num(n.eventCount)), h("td", {}, time(n.archivedAt)),
      h("td", {}, n.held ? badge("held") : time(n.purgeAt)),
      h("td", { class: "wrap" }, labelText(n.labels))),
    "archivedFlows", ARCHIVED_QUERY, filter);
  nodes.push(h("h2", {}, "Archived"), archived.node);
  let live = null;
  if (viewer.seesLiveFlows) {
    live = resultTable("live-results", ["Flow", "Part", "Status", "Events", "Last event", "Due", "Labels"],
      (n) => h("tr", {}, h("td", {}, flowLink(n)), h("td", {}, n.part), h("td", {}, badge(n.status)),
        h("td", {}, num(n.eventCount)), h("td", {}, time(n.lastEventTime)), h("td", {}, time(n.dueAt)),
        h("td", { class: "wrap" }, labelText(n.labels))),
      "liveFlows", LIVE_QUERY, filter);
    nodes.push(h("h2", {}, "Live"), live.node);
  } else {
    nodes.push(h("p", { class: "notice" }, "Live flows are not visible here: a running archiver holds the state store. Its own API (api.listen) shows them."));
  }
  show(...nodes);
  await Promise.all([archived.next(), live && live.next()]);
}

// ---- flow page ------------------------------------------------------------
const FLOW_QUERY = `query($tenant: String!, $flowId: String!, $after: String) {
  flow(tenant: $tenant, flowId: $flowId) {
    tenant flowId status live archived eventCount firstEventTime lastEventTime
    labels { key value }
    hold { reason actor since }
    parts { part state status labels { key value } eventCount firstEventTime lastEventTime archivedAt purgeAt held objectUri storedBytes dueAt }
    events(first: 200, after: $after) { total nextCursor items { position part id type time json } }
  } }`;

function eventItem(e) {
  const pre = h("pre", { hidden: true }, JSON.stringify(e.json, null, 2));
  const button = h("button", { type: "button", class: "event", "aria-expanded": "false", onclick: () => {
    pre.hidden = !pre.hidden;
    button.setAttribute("aria-expanded", String(!pre.hidden));
  } },
    h("span", { class: "mono position" }, "#" + e.position),
    h("span", { class: "event-type" }, e.type || "(no type)"),
    h("span", { class: "muted" }, time(e.time)),
    h("span", { class: "muted mono event-id" }, e.id || ""),
    h("span", { class: "muted" }, "part " + e.part));
  return h("li", { "data-position": e.position }, button, pre);
}

function actionResult() { return h("div", { class: "result", role: "status" }); }

function flowActions(flow) {
  const panels = [];
  const verifyOut = actionResult();
  const verify = h("button", { type: "button", id: "verify", class: "secondary", disabled: !flow.archived, onclick: async () => {
    verify.disabled = true;
    verifyOut.className = "result"; verifyOut.textContent = "Verifying…";
    try {
      const r = (await gql(`query($t: String!, $f: String!) { verifyFlow(tenant: $t, flowId: $f) { ok objects flowParts problems } }`,
        { t: flow.tenant, f: flow.flowId })).verifyFlow;
      verifyOut.className = "result " + (r.ok ? "ok" : "bad");
      verifyOut.textContent = r.ok ? `All checksums match: ${r.flowParts} parts in ${r.objects} objects.`
        : r.problems.join("; ");
    } catch (e) { verifyOut.className = "result bad"; verifyOut.textContent = e.message; }
    verify.disabled = !flow.archived;
  } }, "Verify checksums");
  panels.push(h("div", { class: "panel" }, h("span", { class: "panel-title" }, "Integrity"), verify, flow.archived ? null : h("span", { class: "muted" }, "Nothing archived to verify yet."), verifyOut));
  if (!viewer.canAct) {
    panels.push(h("div", { class: "panel muted" }, viewer.role === "admin"
      ? "Holds and replays are made through the API of the process that owns the state store."
      : "Holds and replays need the admin token."));
    return h("div", { class: "actions" }, panels);
  }
  const reason = h("input", { id: "hold-reason", placeholder: "Reason (required)", "aria-label": "Hold reason" });
  const holdOut = actionResult();
  const held = !!flow.hold;
  const holdForm = h("form", { id: "hold-form", class: "panel", onsubmit: async (ev) => {
    ev.preventDefault();
    if (!held && !reason.value.trim()) { holdOut.className = "result bad"; holdOut.textContent = "Say why the flow is held."; return; }
    try {
      await gql(held
        ? `mutation($t: String!, $f: String!, $r: String) { releaseHold(tenant: $t, flowId: $f, reason: $r, actor: "console") }`
        : `mutation($t: String!, $f: String!, $r: String!) { placeHold(tenant: $t, flowId: $f, reason: $r, actor: "console") { since } }`,
        { t: flow.tenant, f: flow.flowId, r: reason.value.trim() || null });
      route();
    } catch (e) { holdOut.className = "result bad"; holdOut.textContent = e.message; }
  } }, h("span", { class: "panel-title" }, held ? "Legal hold (placed)" : "Legal hold"),
    reason, h("button", { type: "submit", id: held ? "release-hold" : "place-hold", class: held ? "secondary" : "danger" },
    held ? "Release hold" : "Place hold"), holdOut);
  const target = h("input", { id: "replay-target", placeholder: "kafka:TOPIC or nats:SUBJECT", "aria-label": "Replay target" });
  const replayOut = actionResult();
  const replayForm = h("form", { id: "replay-form", class: "panel", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const r = (await gql(`mutation($t: String!, $f: String!, $to: String!) { replayFlow(tenant: $t, flowId: $f, to: $to, actor: "console") { target events bytes } }`,
        { t: flow.tenant, f: flow.flowId, to: target.value.trim() })).replayFlow;
      replayOut.className = "result ok";
      replayOut.textContent = `Replayed ${r.events} events (${bytes(r.bytes)}) to ${r.target}.`;
    } catch (e) { replayOut.className = "result bad"; replayOut.textContent = e.message; }
  } }, h("span", { class: "panel-title" }, "Replay the archived events"),
    target, h("button", { type: "submit", class: "secondary", disabled: !flow.archived }, "Replay to…"), replayOut);
  panels.push(holdForm, replayForm);
  return h("div", { class: "actions" }, panels);
}

async function flowPage(tenant, flowId) {
  show(h("h1", {}, tenant + "/" + flowId), h("p", { class: "muted" }, "Loading the flow…"));
  const data = await gql(FLOW_QUERY, { tenant, flowId, after: null });
  const flow = data.flow;
  if (!flow) {
    show(h("h1", {}, tenant + "/" + flowId), h("p", { class: "notice", id: "not-found" }, "No such flow, live or archived."));
    return;
  }
  const timeline = h("ol", { class: "timeline", id: "timeline" }, flow.events.items.map(eventItem));
  const more = h("button", { type: "button", class: "secondary more", hidden: !flow.events.nextCursor }, "More events");
  let after = flow.events.nextCursor;
  more.addEventListener("click", () => load(async () => {
    const page = (await gql(FLOW_QUERY, { tenant, flowId, after })).flow.events;
    timeline.append(...page.items.map(eventItem));
    after = page.nextCursor;
    more.hidden = !after;
  }, true));
  show(
    h("h1", { id: "flow-title" }, flow.tenant + "/" + flow.flowId),
    h("div", {}, badge(flow.status), flow.live ? h("span", { class: "badge running" }, "live") : null,
      flow.archived ? h("span", { class: "badge" }, "archived") : null,
      flow.hold ? h("span", { class: "badge held", id: "hold-badge" }, "On hold: " + (flow.hold.reason || "")) : null),
    h("div", { class: "chips" }, flow.labels.map((l) => h("span", { class: "chip" }, l.key + "=" + l.value))),
    h("p", { class: "muted" }, `${num(flow.eventCount)} events, ${time(flow.firstEventTime)} → ${time(flow.lastEventTime)}`,
      flow.hold ? ` · held by ${flow.hold.actor || "?"} since ${time(flow.hold.since)}` : ""),
    flowActions(flow),
    h("h2", {}, "Parts"),
    h("div", { class: "table-wrap" }, h("table", { id: "parts" },
      h("thead", {}, h("tr", {}, ["Part", "Where", "Status", "Labels", "Events", "First event", "Last event", "Archived", "Purge or hold", "Frame bytes", "Object"].map((t) => h("th", {}, t)))),
      h("tbody", {}, flow.parts.map((p) => h("tr", {},
        h("td", {}, p.part), h("td", {}, p.state.toLowerCase()), h("td", {}, badge(p.status)),
        h("td", { class: "wrap" }, labelText(p.labels)), h("td", {}, num(p.eventCount)),
        h("td", {}, time(p.firstEventTime)), h("td", {}, time(p.lastEventTime)), h("td", {}, time(p.archivedAt)),
        h("td", {}, p.held || flow.hold ? badge("held") : p.purgeAt ? time(p.purgeAt) : p.dueAt ? "due " + time(p.dueAt) : "–"),
        h("td", {}, bytes(p.storedBytes)),
        h("td", { class: "mono", title: p.objectUri || "" }, (p.objectUri || "").split("/").pop())))))),
    h("h2", {}, `Events (${num(flow.events.total)}, in flow order)`),
    timeline, more);
}

// ---- holds ----------------------------------------------------------------
async function holdsPage() {
  const data = await gql("{ holds { tenant flowId reason actor since } }");
  show(h("h1", {}, "Legal holds"),
    data.holds.length === 0 ? h("p", { class: "muted", id: "no-holds" }, "No flow is on hold.") :
    h("div", { class: "table-wrap" }, h("table", { id: "holds" },
      h("thead", {}, h("tr", {}, ["Flow", "Reason", "By", "Since"].map((t) => h("th", {}, t)))),
      h("tbody", {}, data.holds.map((x) => h("tr", {},
        h("td", {}, flowLink(x)), h("td", { class: "wrap" }, x.reason || "–"), h("td", {}, x.actor || "–"), h("td", {}, time(x.since))))))));
}

// ---- start ----------------------------------------------------------------
window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  $("sign-out").addEventListener("click", () => {
    // The next token starts at the overview, not on the last one's page.
    history.replaceState(null, "", "#/");
    signIn();
  });
  start();
});
