// The flows list (#/): filters, pages, and the live bars of running flows.
import {
  FLOW_STATUSES, MOVING, api, h, flowHref, badge, main, newView, problem, progressBar,
  seconds, select, short, when,
} from "./common.js";

const PAGE = 50;
const LIST_EVERY = 3000;
const ROW_EVERY = 1000;
const ROWS_POLLED = 20;

export function flowsView(params) {
  const view = newView();
  const status = FLOW_STATUSES.includes(params.get("status")) ? params.get("status") : "";
  const name = params.get("name") || "";
  const limit = Math.min(500, Math.max(1, Number.parseInt(params.get("limit"), 10) || PAGE));
  const rows = new Map();
  let next = null;
  let pages = 0;

  const filters = h("form", { class: "filters", id: "flow-filters" },
    select("status-filter", "Status", FLOW_STATUSES, status),
    h("label", { for: "name-filter" }, "Name ",
      h("input", { id: "name-filter", name: "name", type: "search", value: name,
        placeholder: "flow name", autocomplete: "off" })),
    h("button", { type: "submit" }, "Filter"),
    h("a", { href: "#/", class: "clear" }, "clear"));
  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    const s = filters.querySelector("#status-filter").value;
    const n = filters.querySelector("#name-filter").value.trim();
    if (s) q.set("status", s);
    if (n) q.set("name", n);
    const hash = q.toString() ? `#/?${q}` : "#/";
    if (location.hash === hash) window.dispatchEvent(new HashChangeEvent("hashchange"));
      else location.hash = hash;
  });
  filters.querySelector("#status-filter").addEventListener("change", () => filters.requestSubmit());

  const body = h("tbody", { id: "flows" });
  const empty = h("p", { class: "muted", hidden: true }, "No flows match.");
  const error = h("div");
  const more = h("button", { type: "button", id: "load-more", hidden: true }, "Load more");
  more.addEventListener("click", () => load(next));

  main.replaceChildren(
    h("section", { class: "card" },
      h("div", { class: "head" }, h("h1", null, "Flows"), filters),
      error,
      h("table", { class: "flows" },
        h("thead", null, h("tr", null, ["Flow", "Status", "Progress", "ETA", "Owner",
          "Created", "Updated"].map((t) => h("th", null, t)))),
        body),
      empty, more));

  function makeRow(flow) {
    const bar = progressBar(flow.status === "SUCCESS" ? 1 : 0, flow.status);
    const row = {
      data: flow,
      detail: null,
      busy: false,
      tr: h("tr", { dataset: { flowId: flow.flow_id } }),
      bar,
      pct: h("span", { class: "pct" }),
      eta: h("td", { class: "eta" }),
    };
    render(row);
    return row;
  }

  function render(row) {
    const flow = row.data;
    const detail = row.detail;
    const fraction = detail && detail.progress ? detail.progress.fraction
      : flow.status === "SUCCESS" ? 1 : 0;
    row.bar.set(fraction, flow.status);
    row.pct.textContent = `${Math.round((Number(fraction) || 0) * 100)} %`;
    const eta = detail && detail.progress ? detail.progress.eta : null;
    row.eta.textContent = MOVING.has(flow.status) ? seconds(eta) : "—";
    const owner = h("td", { class: "owner" },
      flow.owner ? h("code", { title: flow.owner }, short(flow.owner, 28)) : h("span", { class: "muted" }, "—"));
    if (flow.orphaned) {
      owner.append(" ", h("span", { class: "badge orphan", title: "Its owner's lease ran out:"
        + " resume it, or run an engine with recover=True." }, "orphaned"));
    }
    row.tr.replaceChildren(
      h("td", { class: "name" },
        h("a", { href: flowHref(flow.flow_id) }, flow.name || "(unnamed)"),
        h("div", { class: "id" }, flow.flow_id)),
      h("td", null, badge("status", flow.status)),
      h("td", { class: "progress" }, row.bar.bar, row.pct),
      row.eta,
      owner,
      h("td", null, when(flow.created)),
      h("td", null, when(flow.updated)));
  }

  function matches(flow) {
    return !status || flow.status === status;
  }

  async function load(before) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (status) q.set("status", status);
    if (name) q.set("name", name);
    if (before) q.set("before", before);
    const answer = await api("GET", `flows?${q}`);
    if (view.disposed) return;
    if (!answer.ok || !answer.data || !Array.isArray(answer.data.flows)) {
      error.replaceChildren(problem(`The flows cannot be listed: ${answer.error || "unexpected answer"}`));
      return;
    }
    error.replaceChildren();
    const fresh = [];
    for (const flow of answer.data.flows) {
      const row = rows.get(flow.flow_id);
      if (row) {
        const changed = row.data.status !== flow.status;
        row.data = { ...row.data, ...flow };
        if (changed) row.detail = null;
        render(row);
      } else {
        const made = makeRow(flow);
        rows.set(flow.flow_id, made);
        fresh.push(made);
      }
    }
    if (before) {
      body.append(...fresh.map((r) => r.tr));
      next = answer.data.next || null;
      pages += 1;
    } else {
      body.prepend(...fresh.map((r) => r.tr));
      if (pages <= 1) next = answer.data.next || null;
      pages = Math.max(pages, 1);
    }
    for (const [id, row] of rows) {
      if (!matches(row.data)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    more.hidden = !next;
    empty.hidden = rows.size > 0;
  }

  // Details (progress, ETA) of the rows that need them: every moving flow, and once
  // each resting one that did not succeed.
  async function details() {
    const wanted = [];
    for (const row of rows.values()) {
      if (row.busy) continue;
      if (MOVING.has(row.data.status) || (row.detail === null && row.data.status !== "SUCCESS")) {
        wanted.push(row);
      }
      if (wanted.length >= ROWS_POLLED) break;
    }
    await Promise.all(wanted.map(async (row) => {
      row.busy = true;
      try {
        const answer = await api("GET", `flows/${encodeURIComponent(row.data.flow_id)}`);
        if (answer.ok && answer.data && !view.disposed) {
          const d = answer.data;
          row.detail = d;
          for (const key of ["status", "owner", "orphaned", "updated", "name"]) {
            if (d[key] !== undefined) row.data[key] = d[key];
          }
          render(row);
        }
      } finally {
        row.busy = false;
      }
    }));
  }

  load(null).then(details);
  view.every(LIST_EVERY, () => load(null));
  view.every(ROW_EVERY, details);
  return view;
}
