// What every view of the dashboard shares: building DOM from text, formatting, the API
// (with the actions' permission), and views that clean up their timers.
// Everything the API sends is put in the page as text (textContent, attributes), never
// parsed as markup.

export const FLOW_STATUSES = ["PENDING", "RUNNING", "WAITING", "SUSPENDED", "SUCCESS",
  "REVERTING", "REVERTED", "FAILED"];
export const MOVING = new Set(["PENDING", "RUNNING", "REVERTING"]);
export const FINAL = new Set(["SUCCESS", "REVERTED", "FAILED"]);
export const JOB_STATES = ["UNCLAIMED", "CLAIMED", "WAITING", "COMPLETE", "FAILED"];
// Actions are probed on a flow id no flow has: the answer says whether the server lets
// this browser act (401/403) without touching anything.
const PROBE = "flows/dashboard-auth-check/messages/dashboard-auth-check";

export const main = document.getElementById("main");
const banner = document.getElementById("auth");
const live = document.getElementById("live");

// DOM ------------------------------------------------------------------------------

export function h(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function flowHref(id) {
  return `#/flows/${encodeURIComponent(id)}`;
}

export function badge(kind, value) {
  return h("span", { class: `badge ${kind}-${value}`, "data-status": value }, value);
}

export function progressBar(fraction, state) {
  const fill = h("div", { class: "fill" });
  const bar = h("div", { class: "bar", role: "progressbar", "aria-valuemin": 0,
    "aria-valuemax": 100 }, fill);
  const setBar = (value, status) => {
    const f = typeof value === "number" && Number.isFinite(value) ? Math.min(1, Math.max(0, value)) : 0;
    const pct = Math.round(f * 1000) / 10;
    fill.style.width = `${pct}%`;
    bar.setAttribute("aria-valuenow", String(pct));
    bar.title = `${pct} %`;
    bar.dataset.state = status || "";
  };
  setBar(fraction, state);
  return { bar, set: setBar };
}

// Formatting -----------------------------------------------------------------------

export function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  const d = typeof value === "number" ? new Date(value * 1000) : new Date(String(value));
  return Number.isNaN(d.getTime()) ? null : d;
}

function pad(n) {
  return String(n).padStart(2, "0");
}

// A time in the browser's zone; `compact` leaves today's date out (tables of atoms and
// events). The title holds it in UTC.
export function when(value, compact) {
  const d = toDate(value);
  if (!d) return h("span", { class: "muted" }, "—");
  const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  const clock = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const today = d.toDateString() === new Date().toDateString();
  const text = compact && today ? clock : `${day} ${clock}`;
  return h("time", { datetime: d.toISOString(), title: `${d.toISOString()} (UTC)` }, text);
}

export function seconds(value) {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) return "—";
  if (value < 10) return `${value.toFixed(1)} s`;
  if (value < 60) return `${Math.round(value)} s`;
  if (value < 3600) return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
  if (value < 86400) return `${Math.floor(value / 3600)} h ${Math.round((value % 3600) / 60)} min`;
  return `${Math.floor(value / 86400)} d ${Math.round((value % 86400) / 3600)} h`;
}

export function until(value) {
  const d = toDate(value);
  if (!d) return "";
  const left = (d.getTime() - Date.now()) / 1000;
  return left >= 0 ? `in ${seconds(left)}` : `${seconds(-left)} ago`;
}

export function short(value, most = 160) {
  let text;
  if (typeof value === "string") text = value;
  else if (typeof value === "number") text = Number.isInteger(value) ? String(value) : String(Math.round(value * 1000) / 1000);
  else text = JSON.stringify(value);
  if (text === undefined) text = String(value);
  return text.length > most ? `${text.slice(0, most - 1)}…` : text;
}

export function detailsText(details) {
  if (!details || typeof details !== "object") return "";
  return Object.entries(details).map(([k, v]) => `${k}=${short(v, 60)}`).join("  ");
}

export function pretty(value) {
  try {
    return JSON.stringify(value, null, 2);
  } catch (err) {
    return String(value);
  }
}

// The API ----------------------------------------------------------------------------

export const actions = { allowed: true, reason: "" };
export const actionButtons = new Set();

export async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin",
    cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    setLive(false);
    return { ok: false, status: 0, data: null, error: "the server cannot be reached" };
  }
  setLive(true);
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null;
  }
  let error = null;
  if (!response.ok) {
    error = data && typeof data.error === "string" ? data.error : `HTTP ${response.status}`;
    if (method !== "GET" && (response.status === 401 || response.status === 403)) {
      denyActions(response.status, error);
    }
  }
  return { ok: response.ok, status: response.status, data, error };
}

function setLive(ok) {
  live.textContent = ok ? "● live" : "● offline";
  live.className = ok ? "live on" : "live off";
}

function denyActions(status, error) {
  actions.allowed = false;
  actions.reason = `the server refuses actions (${status}: ${error})`;
  banner.hidden = false;
  banner.replaceChildren(h("strong", null, "Read-only. "), `Actions are disabled: ${actions.reason}.`);
  for (const button of actionButtons) applyAction(button);
  for (const note of document.querySelectorAll(".actions-denied")) note.textContent = deniedText();
}

function deniedText() {
  return actions.allowed ? "" : `Actions are disabled: ${actions.reason}.`;
}

// A note beside a view's buttons that says why they are disabled, kept up to date.
export function deniedNote(id) {
  return h("p", { class: "muted actions-denied", id }, deniedText());
}

export function applyAction(button) {
  const blocked = !actions.allowed ? actions.reason : button.blockedBy ? button.blockedBy() : "";
  button.disabled = Boolean(blocked);
  button.title = blocked ? `Disabled: ${blocked}` : button.dataset.help || "";
}

// A button that calls the API; disabled (with the reason in its title) when the
// server refuses actions or blockedBy() names a reason.
export function actionButton(view, text, props, run, blockedBy) {
  const button = h("button", { type: "button", ...props }, text);
  button.blockedBy = blockedBy;
  button.addEventListener("click", async () => {
    if (button.disabled) return;
    button.disabled = true;
    try {
      await run();
    } finally {
      applyAction(button);
    }
  });
  actionButtons.add(button);
  view.onDispose(() => actionButtons.delete(button));
  applyAction(button);
  return button;
}

export async function probeActions() {
  const answer = await api("POST", PROBE, { message: null });
  if (answer.status === 401 || answer.status === 403) return;  // api() denied them
  for (const button of actionButtons) applyAction(button);
}

// Views ----------------------------------------------------------------------------

export function newView() {
  const cleanups = [];
  const view = {
    disposed: false,
    onDispose(fn) {
      cleanups.push(fn);
    },
    dispose() {
      view.disposed = true;
      cleanups.splice(0).forEach((fn) => fn());
    },
    // Run fn every `ms` (never two at once), while the page is shown.
    every(ms, fn) {
      let timer = null;
      const tick = async () => {
        if (view.disposed) return;
        if (!document.hidden) {
          try {
            await fn();
          } catch (err) {
            console.error(err);
          }
        }
        if (!view.disposed) timer = setTimeout(tick, ms);
      };
      timer = setTimeout(tick, ms);
      view.onDispose(() => clearTimeout(timer));
    },
  };
  return view;
}

export function problem(text) {
  return h("p", { class: "problem", role: "alert" }, text);
}

export function select(id, label, values, current) {
  return h("label", { for: id }, label, " ",
    h("select", { id, name: id },
      h("option", { value: "" }, "any"),
      values.map((v) => h("option", { value: v, selected: v === current }, v))));
}
