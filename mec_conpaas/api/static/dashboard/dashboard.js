// MEC-ConPaaS dashboard: plain JS and SVG, served by the manager.
// Every action is a REST API call; its error is shown where it was made,
// as the API words it, and the form keeps what was typed.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const $ = (sel) => document.querySelector(sel);
let state = null;          // the last view from /dashboard/events
let stream = null;         // AbortController of the event stream
const cards = new Map();   // service id -> its card (kept: forms survive updates)
const nodeCards = new Map();

function token() { return sessionStorage.getItem("mec-token"); }
// A keystone token goes in X-Auth-Token (as keystone clients send it), a
// PaaS token as a bearer token.
function authHeaders() {
  return sessionStorage.getItem("mec-token-kind") === "keystone"
    ? { "X-Auth-Token": token() } : { Authorization: "Bearer " + token() };
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = authHeaders();
  const init = { method, headers };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let data = null;
  try { data = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) {
    const msg = data && data.error ? (data.error.message || data.error) : resp.status + " " + resp.statusText;
    throw new ApiError(resp.status, msg);
  }
  return data;
}

// An action: clears the error slot, shows the API's error in it on failure.
async function act(errorEl, fn) {
  errorEl.textContent = "";
  try { return await fn(); } catch (e) {
    errorEl.textContent = e.message;
    if (e.status === 401) logout();
    return null;
  }
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// -- login ------------------------------------------------------------------
async function login(secret, kind) {
  sessionStorage.setItem("mec-token", secret);
  sessionStorage.setItem("mec-token-kind", kind || "token");
  const first = await api("GET", "/dashboard/state");  // checks the token
  $("#login-view").hidden = true;
  $("#app-view").hidden = false;
  $("#logout").hidden = false;
  render(first);
  listen();
}

// Keystone: the manager trades the credentials for a project-scoped token
// (keystone is another origin, which the page may not reach).
async function keystoneLogin() {
  const body = {};
  for (const f of ["username", "password", "project", "domain"]) {
    body[f] = $("#login-keystone [name=" + f + "]").value.trim();
  }
  const resp = await fetch("/dashboard/keystone-login", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body) });
  const data = await resp.json().catch(() => null);
  if (!resp.ok) {
    throw new ApiError(resp.status, data && data.error ? data.error.message : resp.status + " " + resp.statusText);
  }
  $("#login-password").value = "";
  await login(data.token, "keystone");
}

async function loginMethods() {
  const resp = await fetch("/dashboard/login-methods");
  const methods = resp.ok ? (await resp.json()).methods : ["token"];
  const keystone = methods.includes("keystone") && !methods.includes("token");
  $("#login-keystone").hidden = $("#login-keystone").disabled = !keystone;
  $("#login-token-field").hidden = keystone;
  $("#login-token").disabled = keystone;
  $("#login-form").dataset.method = keystone ? "keystone" : "token";
}

function logout() {
  sessionStorage.removeItem("mec-token");
  sessionStorage.removeItem("mec-token-kind");
  if (stream) stream.abort();
  stream = null;
  state = null;
  cards.clear(); nodeCards.clear();
  $("#services").replaceChildren(); $("#nodes").replaceChildren();
  $("#app-view").hidden = true;
  $("#login-view").hidden = false;
  $("#logout").hidden = true;
  $("#who").textContent = "";
}

// -- live updates: server-sent events read with fetch (token in a header) ---
async function listen() {
  if (stream) stream.abort();
  const ctl = stream = new AbortController();
  while (stream === ctl) {
    try {
      const resp = await fetch("/dashboard/events", {
        headers: authHeaders(), signal: ctl.signal });
      if (resp.status === 401) { logout(); return; }
      if (!resp.ok) {  // e.g. 503: too many pages get live updates
        const body = await resp.json().catch(() => null);
        $("#live").title = "no live updates: " + (body && body.error ? body.error.message : resp.status);
        throw new ApiError(resp.status, $("#live").title);
      }
      $("#live").classList.add("on");
      $("#live").title = "live updates (server-sent events)";
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let event = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) event = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (event === "state" && data) render(JSON.parse(data));
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    $("#live").classList.remove("on");
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// -- rendering ----------------------------------------------------------------
function render(view) {
  state = view;
  const u = view.user;
  $("#who").textContent = `${u.name} (${u.role}, tenant ${u.tenant})`;
  renderMap(view);
  renderNodes(view);
  renderServices(view);
  renderOperations(view);
  const nodeSel = $("#create-form select[name=node]");
  syncOptions(nodeSel, [""].concat(view.nodes.map((n) => n.name)), "(any)");
  // The map's first paint with access points on it (bench/dashboard.py).
  if (!window.mecMapPaint && view.nodes.length) {
    requestAnimationFrame(() => { window.mecMapPaint = window.mecMapPaint || performance.now(); });
  }
}

function syncOptions(select, values, emptyLabel) {
  const have = Array.from(select.options).map((o) => o.value);
  if (have.join("\n") === values.join("\n")) return;
  const keep = select.value;
  select.replaceChildren(...values.map((v) => el("option", { value: v }, v || emptyLabel || v)));
  if (values.includes(keep)) select.value = keep;
}

// Positions: access points along the backbone (breadth-first from the
// master or the first node), then any node the topology does not link.
function layout(view) {
  const names = view.nodes.map((n) => n.name);
  const adj = new Map();
  for (const l of view.links) {
    for (const [a, b] of [[l.a, l.b], [l.b, l.a]]) {
      if (!adj.has(a)) adj.set(a, []);
      adj.get(a).push(b);
    }
  }
  const start = adj.has("master") ? "master" : names[0];
  const order = [];
  const seen = new Set();
  const queue = start ? [start] : [];
  while (queue.length) {
    const n = queue.shift();
    if (seen.has(n)) continue;
    seen.add(n); order.push(n);
    for (const m of (adj.get(n) || []).slice().sort()) queue.push(m);
  }
  for (const n of names) if (!seen.has(n)) order.push(n);
  const width = Math.max(600, $("#map").clientWidth || 600);
  const aps = order.filter((n) => n !== "master");
  const step = width / (aps.length + (order.includes("master") ? 1 : 0) + 0.5);
  const pos = {};
  let x = step * 0.75;
  if (order.includes("master")) { pos.master = { x: x - step * 0.25, y: 50 }; x += step * 0.75; }
  aps.forEach((n, i) => { pos[n] = { x: x + i * step, y: 190 + (i % 2 ? 30 : 0) }; });
  return { pos, width };
}

function renderMap(view) {
  const map = $("#map");
  const { pos, width } = layout(view);
  const W = 150, H = 128;
  // Room under the boxes for the user names listed there.
  let height = 352;
  for (const n of view.nodes) {
    const listed = expandedAps.has(n.name) && n.users && n.users.users;
    if (listed && pos[n.name]) height = Math.max(height, pos[n.name].y + H / 2 + 20 + 13 * listed.length);
  }
  map.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const g = [];
  for (const l of view.links) {
    const a = pos[l.a], b = pos[l.b];
    if (!a || !b) continue;
    g.push(svg("line", { class: "link", x1: a.x, y1: a.y, x2: b.x, y2: b.y }));
    g.push(svg("text", { class: "latency", x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 - 6 }, `${l.latency_ms} ms`));
  }
  if (pos.master) {
    const m = svg("g", { class: "master" });
    m.append(svg("circle", { cx: pos.master.x, cy: pos.master.y, r: 10 }),
      svg("text", { x: pos.master.x + 14, y: pos.master.y + 4 }, "master"));
    g.push(m);
  }
  for (const n of view.nodes) {
    const p = pos[n.name];
    const cls = ["ap", n.state === "up" ? "up" : "down", n.schedulable ? "" : "disabled"].join(" ");
    const ap = svg("g", { class: cls, "data-node": n.name, transform: `translate(${p.x - W / 2},${p.y - H / 2})` });
    ap.append(svg("rect", { class: "box", width: W, height: H, rx: 8 }));
    ap.append(svg("text", { class: "name", x: 8, y: 18 }, n.name));
    ap.append(svg("text", { x: 8, y: 34 }, `${n.state}${n.schedulable ? "" : ", drained"}`));
    const used = n.used || 0, max = n.max_instances || 0;
    ap.append(svg("rect", { class: "bar-bg", x: 8, y: 40, width: W - 16, height: 6 }));
    ap.append(svg("rect", { class: "bar" + (max && used >= max ? " full" : ""), x: 8, y: 40,
      width: max ? (W - 16) * Math.min(1, used / max) : 0, height: 6 }));
    const r = n.report || {};
    const mem = r.memory ? ` mem ${Math.round(100 * (1 - r.memory.available_bytes / r.memory.total_bytes))}%` : "";
    ap.append(svg("text", { x: 8, y: 60 }, `${used}/${max} instances`));
    ap.append(svg("text", { x: 8, y: 74 }, `cpu ${r.cpu_percent ?? "?"}%${mem}`));
    ap.append(usersRow(n, W, H));
    g.push(ap);
  }
  // Instances below their access point; the caller's may be dragged.
  const perNode = {};
  for (const s of view.services) {
    for (const i of s.instances) {
      const p = pos[i.node];
      if (!p) continue;
      const k = perNode[i.node] = (perNode[i.node] || 0) + 1;
      const cx = p.x - W / 2 + 16 + ((k - 1) % 6) * 24, cy = p.y + H / 2 - 16 - Math.floor((k - 1) / 6) * 22;
      const moving = s.operation && view.operations.some((o) => o.id === s.operation && o.kind === "migrate");
      const inst = svg("g", { class: "inst" + (s.own ? "" : " other") + (moving ? " moving" : ""),
        "data-service": s.name, "data-instance": i.id, "data-node": i.node, "data-state": i.state });
      inst.append(svg("title", {}, `${s.name} ${i.id.slice(0, 8)} on ${i.node} (${i.state}, ${i.role || "instance"})`));
      inst.append(svg("circle", { cx, cy, r: 10 }));
      inst.append(svg("text", { x: cx, y: cy + 3 }, s.name.slice(0, 2)));
      if (s.own) inst.addEventListener("pointerdown", (e) => startDrag(e, s, inst, cx, cy));
      g.push(inst);
    }
  }
  if (!dragging) map.replaceChildren(...g);
}

// The Wi-Fi users at an access point: how many, one marker each (up to
// USER_MARKS), their names on hover and, once clicked, listed under the
// box.  A tenant gets only how many users of its own services are there
// (no names: web.py users_by_ap).
const USER_MARKS = 6;
const expandedAps = new Set();
function usersRow(n, W, H) {
  const u = n.users || { count: 0, users: null };
  const names = u.users ? u.users.map((x) => x.name) : null;
  const row = svg("g", { class: "users" + (expandedAps.has(n.name) ? " open" : ""),
    "data-count": u.count, "data-users": names ? names.join(" ") : "" });
  const label = names ? `${u.count} user${u.count === 1 ? "" : "s"}`
    : `${u.count} of your users`;
  row.append(svg("title", {}, names
    ? (names.length ? names.join(", ") : "no Wi-Fi users") + " (click to list)"
    : "users of your services at this access point"));
  row.append(svg("text", { class: "count", x: 8, y: 92 }, label));
  for (let k = 0; k < Math.min(u.count, USER_MARKS); k++) {
    const m = svg("g", { class: "user" });
    if (names) {
      m.setAttribute("data-user", names[k]);
      const x = u.users[k];
      m.append(svg("title", {}, `${x.name}${x.previous ? " (from " + x.previous + ")" : ""}` +
        (x.services.length ? ": uses " + x.services.join(", ") : "")));
    }
    m.append(svg("circle", { cx: W - 12 - k * 9, cy: 88, r: 4 }));
    row.append(m);
  }
  if (names) {
    row.classList.add("named");
    if (expandedAps.has(n.name)) {
      names.forEach((name, k) => row.append(svg("text", { class: "name-item", x: 8,
        y: H + 14 + k * 13 }, name)));
    }
  }
  return row;
}

// Listed or not on pointerdown, caught by the map itself: the map is redrawn
// at every update, which may replace the row between a press and its
// release (a click would then be lost).
function toggleUsers(e) {
  const row = e.target.closest && e.target.closest("g.users.named");
  if (!row || dragging) return;
  const ap = row.closest(".ap").dataset.node;
  if (expandedAps.has(ap)) expandedAps.delete(ap); else expandedAps.add(ap);
  if (state) renderMap(state);
}

// -- drag an instance to an access point: migrate ----------------------------
let dragging = null;
function startDrag(e, svc, inst, cx, cy) {
  e.preventDefault();
  const map = $("#map");
  const pt = map.createSVGPoint();
  const toSvg = (ev) => { pt.x = ev.clientX; pt.y = ev.clientY; return pt.matrixTransform(map.getScreenCTM().inverse()); };
  const start = toSvg(e);
  dragging = { svc: svc.name };
  map.setPointerCapture(e.pointerId);
  const apAt = (ev) => {
    const hit = document.elementsFromPoint(ev.clientX, ev.clientY).find((x) => x.closest && x.closest(".ap"));
    return hit ? hit.closest(".ap") : null;
  };
  let over = null;
  const move = (ev) => {
    const p = toSvg(ev);
    inst.setAttribute("transform", `translate(${p.x - start.x},${p.y - start.y})`);
    const ap = apAt(ev);
    if (over && over !== ap) over.classList.remove("drop");
    over = ap; if (ap) ap.classList.add("drop");
  };
  const up = async (ev) => {
    map.removeEventListener("pointermove", move);
    map.removeEventListener("pointerup", up);
    const ap = apAt(ev);
    dragging = null;
    if (over) over.classList.remove("drop");
    const card = cards.get(svc.id);
    if (ap && ap.dataset.node !== svc.home_node && card) {
      await act(card.error, () => api("POST", `/v1/services/${svc.name}/migrate`, { to: ap.dataset.node }));
    }
    if (state) renderMap(state);
  };
  map.addEventListener("pointermove", move);
  map.addEventListener("pointerup", up);
}

// -- nodes: drain and enable (admins) -----------------------------------------
function renderNodes(view) {
  const box = $("#nodes");
  const admin = view.user.role === "admin";
  box.hidden = !admin;
  if (!admin) return;
  const seen = new Set();
  for (const n of view.nodes) {
    seen.add(n.name);
    let c = nodeCards.get(n.name);
    if (!c) {
      const info = el("span", { class: "meta" });
      const reason = el("input", { placeholder: "reason", name: "reason" });
      const error = el("p", { class: "error", role: "alert" });
      const drain = el("button", { type: "button", class: "drain", onclick: () => act(error, () =>
        api("POST", `/v1/nodes/${n.name}/drain`, reason.value ? { reason: reason.value } : {})) }, "Drain");
      const enable = el("button", { type: "button", class: "enable", onclick: () => act(error, () =>
        api("POST", `/v1/nodes/${n.name}/enable`)) }, "Enable");
      const root = el("div", { class: "card node", "data-node": n.name },
        el("strong", {}, n.name + " "), info, el("div", { class: "actions" }, reason, drain, enable), error);
      c = { root, info, drain, enable, error };
      nodeCards.set(n.name, c);
      box.append(root);
    }
    c.info.textContent = `${n.state}, ${n.schedulable ? "schedulable" : "drained" + (n.disabled_reason ? " (" + n.disabled_reason + ")" : "")}, ${n.used}/${n.max_instances} instances, ${n.users ? n.users.count : 0} Wi-Fi users, heartbeat ${n.last_heartbeat || "never"}`;
  }
  for (const [k, c] of nodeCards) if (!seen.has(k)) { c.root.remove(); nodeCards.delete(k); }
}

// -- services ---------------------------------------------------------------------
function serviceCard(s) {
  const info = el("div", { class: "meta" });
  const error = el("p", { class: "error", role: "alert" });
  // Follows the instance count until someone goes to type in it, and again
  // once the scale is asked for.
  const count = el("input", { type: "number", min: "0", name: "count", value: String(s.instances.length),
    onfocus: () => { count.dataset.typed = "1"; }, oninput: () => { count.dataset.typed = "1"; } });
  const target = el("select", { name: "to" });
  const root = el("div", { class: "card service", "data-service": s.name, "data-id": s.id },
    el("strong", {}, s.name), info);
  const c = { root, info, error, count, target };
  if (s.own) {
    root.append(el("div", { class: "actions" },
      count, el("button", { type: "button", class: "scale", onclick: async () => {
        if (await act(error, () => api("POST", `/v1/services/${s.name}/scale`, { count: Number(count.value) }))) {
          delete count.dataset.typed;
        }
      } }, "Scale"),
      target, el("button", { type: "button", class: "migrate", onclick: () => act(error, () =>
        api("POST", `/v1/services/${s.name}/migrate`, { to: target.value })) }, "Migrate"),
      el("button", { type: "button", class: "logs", onclick: () => act(error, async () => {
        const out = await api("GET", `/v1/services/${s.name}/logs`);
        $("#logs").textContent = out.logs.map((l) => `== ${l.instance} on ${l.node}\n${l.log}`).join("\n");
        $("#logs-panel").hidden = false;
      }) }, "Logs"),
      el("button", { type: "button", class: "delete", onclick: () => act(error, () =>
        api("DELETE", `/v1/services/${s.name}`)) }, "Delete")));
  }
  root.append(error);
  return c;
}

function renderServices(view) {
  const box = $("#services");
  const seen = new Set();
  for (const s of view.services) {
    seen.add(s.id);
    let c = cards.get(s.id);
    if (!c) { c = serviceCard(s); cards.set(s.id, c); box.append(c.root); }
    c.root.dataset.state = s.state;
    if (!c.count.dataset.typed) c.count.value = String(s.instances.length);
    c.root.dataset.home = s.home_node || "";
    const where = s.instances.map((i) => `${i.node} (${i.state}${i.tier ? ", " + i.tier : ""})`).join(", ") || "none";
    c.info.textContent = `${s.type}, ${s.state}${s.own ? "" : ", tenant " + s.tenant} — endpoint :${s.port} on every access point, home ${s.home_node} — instances: ${where}${s.error ? " — " + s.error : ""}`;
    syncOptions(c.target, view.nodes.filter((n) => n.name !== s.home_node).map((n) => n.name));
  }
  for (const [k, c] of cards) if (!seen.has(k)) { c.root.remove(); cards.delete(k); }
}

function renderOperations(view) {
  const items = view.operations.map((o) => {
    const windows = (o.windows || []).map((w) => `${w.freeze_to_switch} ms`).join(", ");
    return el("li", { class: "op state-" + o.state, "data-op": o.id, "data-state": o.state, "data-kind": o.kind },
      `${o.kind} ${o.service || ""} `, el("progress", { max: "100", value: String(o.progress || 0) }),
      ` ${o.state} ${o.step || ""}`, windows ? ` — critical window ${windows}` : "",
      o.error ? el("div", { class: "error" }, o.error) : "");
  });
  $("#operations").replaceChildren(...items);
}

// -- wiring ---------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const err = $("#login-error");
    err.textContent = "";
    try {
      if (e.target.dataset.method === "keystone") await keystoneLogin();
      else await login($("#login-token").value.trim(), "token");
    } catch (x) {
      sessionStorage.removeItem("mec-token");
      sessionStorage.removeItem("mec-token-kind");
      err.textContent = x.message;
    }
  });
  $("#logout").addEventListener("click", logout);
  $("#map").addEventListener("pointerdown", toggleUsers);
  $("#logs-close").addEventListener("click", () => { $("#logs-panel").hidden = true; });
  $("#create-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.target;
    const data = new FormData(form);
    if (!form.bundle.files.length) data.delete("bundle");
    if (!data.get("node")) data.delete("node");
    const ok = await act(form.querySelector(".error"), () => api("POST", "/v1/services", data));
    if (ok) form.reset();  // kept as typed when the API refused it
  });
  // Close the stream when the page goes: it holds a manager thread.
  window.addEventListener("pagehide", () => { if (stream) stream.abort(); });
  loginMethods().catch(() => {});
  if (token()) login(token(), sessionStorage.getItem("mec-token-kind")).catch(() => logout());
});
