// One flow (#/flows/{id}): its graph, atoms, failures, waits, results, events (live over
// server-sent events) and the actions on it.
import {
  FINAL, MOVING, actionButton, api, applyAction, badge, deniedNote, detailsText, h, main,
  newView, pretty, problem, progressBar, seconds, short, toDate, until, when,
} from "./common.js";
import { atomNames, render as renderGraph } from "./graph.js";

const FLOW_EVERY = 4000;
const EVENTS_KEPT = 300;
const ATOM_ROWS = 500;
const REFRESH_GAP = 700;

export function flowView(id) {
  const view = newView();
  const path = `flows/${encodeURIComponent(id)}`;
  let flow = null;
  let graph = null;
  let source = null;
  let lastSeq = 0;
  const opened = new Set();

  const title = h("h1", null, "Flow");
  const facts = h("dl", { class: "facts", id: "flow-facts" });
  const overall = progressBar(0, "");
  const overallText = h("span", { class: "pct" });
  const error = h("div");
  const graphBox = h("div", { class: "graph", id: "graph" }, h("p", { class: "muted" }, "Loading…"));
  const legend = h("div", { class: "legend" },
    ["PENDING", "RUNNING", "WAITING", "SUCCESS", "FAILURE", "RETRYING", "REVERTING",
      "REVERTED", "IGNORED"].map((s) => h("span", { class: `key state-${s}` }, s)),
    h("span", { class: "key failed", title: "The atom holds a failure (the flow's culprit)" }, "failed"));
  const failuresBox = h("div", { id: "flow-failures" });
  const atomsBody = h("tbody", { id: "atoms" });
  const atomsNote = h("span", { class: "muted" });
  const waitsBox = h("div", { id: "waits" });
  const resultsBox = h("div", { id: "results" });
  const eventsBody = h("tbody", { id: "events" });
  const eventsNote = h("span", { class: "muted", id: "events-note" }, "connecting…");
  const actionResult = h("p", { class: "action-result", id: "action-result", role: "status" });

  // Actions
  const ended = () => (flow && FINAL.has(flow.status) ? "the flow has ended" : "");
  const notResting = () => ended()
    || (flow && MOVING.has(flow.status) && !flow.orphaned ? "the flow is running (cancel it, or let it rest)" : "");
  const checkpointSelect = h("select", { id: "checkpoint", name: "checkpoint" });
  const noCheckpoint = () => ended() || (checkpointSelect.value ? "" : "the flow has no checkpoint");
  const topic = h("input", { id: "topic", name: "topic", placeholder: "topic", autocomplete: "off" });
  const message = h("textarea", { id: "message", name: "message", rows: 3, spellcheck: "false" });
  message.value = "{}";

  async function act(label, url, body, confirmText) {
    if (confirmText && !window.confirm(confirmText)) return;
    actionResult.className = "action-result";
    actionResult.textContent = `${label}…`;
    const answer = await api("POST", url, body);
    if (view.disposed) return;
    actionResult.className = answer.ok ? "action-result ok" : "action-result failed";
    actionResult.textContent = answer.ok ? `${label}: done.` : `${label} refused (${answer.status}): ${answer.error}`;
    scheduleRefresh(100);
    if (answer.ok) follow();
  }

  const buttons = [
    actionButton(view, "Cancel flow", { id: "cancel", class: "danger", "data-help": "Stop the flow and revert it (ends REVERTED)" },
      () => act("Cancel", `${path}/cancel`, {}, "Cancel this flow? It stops and reverts what it did."),
      ended),
    actionButton(view, "Resume", { id: "resume", "data-help": "Continue the flow from its journal" },
      () => act("Resume", `${path}/resume`, {}), notResting),
    actionButton(view, "Revert to", { id: "revert-to", "data-help": "Revert what ran after the checkpoint, and stop there" },
      () => act(`Revert to ${checkpointSelect.value}`,
        `${path}/revert-to/${encodeURIComponent(checkpointSelect.value)}`, {},
        `Revert this flow to checkpoint ${checkpointSelect.value}?`), noCheckpoint),
    actionButton(view, "Go to", { id: "goto", "data-help": "Move the flow forward to the checkpoint, and stop there" },
      () => act(`Go to ${checkpointSelect.value}`,
        `${path}/goto/${encodeURIComponent(checkpointSelect.value)}`, {}), noCheckpoint),
    actionButton(view, "Send", { id: "send", "data-help": "Send the message to the flow's Receive on this topic" },
      async () => {
        let value;
        try {
          value = JSON.parse(message.value);
        } catch (err) {
          actionResult.className = "action-result failed";
          actionResult.textContent = `The message is not JSON: ${err.message}`;
          return;
        }
        if (!topic.value.trim()) {
          actionResult.className = "action-result failed";
          actionResult.textContent = "Name the topic to send to.";
          return;
        }
        await act(`Send on ${topic.value.trim()}`,
          `${path}/messages/${encodeURIComponent(topic.value.trim())}`, { message: value });
      }, ended),
  ];
  const [cancelButton, resumeButton, revertButton, gotoButton, sendButton] = buttons;
  checkpointSelect.addEventListener("change", () => buttons.forEach(applyAction));
  const actionsDenied = deniedNote("actions-denied");

  main.replaceChildren(
    h("section", { class: "card flow-head" },
      h("div", { class: "head" }, title, h("a", { href: "#/", class: "back" }, "← all flows")),
      facts,
      h("div", { class: "overall" }, overall.bar, overallText),
      error, failuresBox),
    h("div", { class: "columns" },
      h("section", { class: "card" }, h("h2", null, "Graph"), graphBox, legend),
      h("aside", null,
        h("section", { class: "card", id: "actions" }, h("h2", null, "Actions"), actionsDenied,
          h("div", { class: "row" }, cancelButton, resumeButton),
          h("div", { class: "row" }, h("label", { for: "checkpoint" }, "Checkpoint"), checkpointSelect,
            revertButton, gotoButton),
          h("div", { class: "message" }, h("label", { for: "topic" }, "Message"), topic,
            message, sendButton),
          actionResult),
        h("section", { class: "card" }, h("h2", null, "Open waits"), waitsBox),
        h("section", { class: "card" }, h("h2", null, "Results"), resultsBox))),
    h("section", { class: "card" }, h("h2", null, "Atoms ", atomsNote),
      h("table", { class: "atoms" },
        h("thead", null, h("tr", null, ["Atom", "State", "Attempt", "Started", "Duration",
          "Progress", "Details and errors"].map((t) => h("th", null, t)))),
        atomsBody)),
    h("section", { class: "card" }, h("h2", null, "Events ", eventsNote),
      h("table", { class: "events" },
        h("thead", null, h("tr", null, ["#", "Time", "Kind", "Atom", "State", "Attempt",
          "Progress", "Details"].map((t) => h("th", null, t)))),
        eventsBody)));

  function errorsOf(name) {
    const list = [];
    const attempts = flow.attempts && Array.isArray(flow.attempts[name]) ? flow.attempts[name] : [];
    for (const a of attempts) if (a && typeof a === "object") list.push(a);
    const last = flow.failures && flow.failures[name];
    if (last && typeof last === "object" && !list.some((a) => a.attempt === last.attempt
        && a.message === last.message && a.type === last.type)) {
      list.push(last);
    }
    return list;
  }

  function failureView(name, failure) {
    const key = `${name}#${failure.attempt}#${failure.type}`;
    const head = `${failure.attempt ? `attempt ${failure.attempt}: ` : ""}${failure.type || "Error"}: ${failure.message || ""}`;
    const node = h("div", { class: "failure", dataset: { atom: name } }, h("span", { class: "error-text" }, head));
    if (failure.traceback) {
      const more = h("details", { open: opened.has(key) },
        h("summary", null, "traceback"), h("pre", { class: "traceback" }, String(failure.traceback)));
      more.addEventListener("toggle", () => (more.open ? opened.add(key) : opened.delete(key)));
      node.append(more);
    }
    return node;
  }

  function atomOrder() {
    const atoms = (flow.progress && flow.progress.atoms) || {};
    // A Map's copies exist only at run time: the progress names them, the Map's row first.
    const names = flow.structure ? atomNames(flow.structure, atoms) : [];
    const seen = new Set(names);
    for (const name of Object.keys(atoms)) if (!seen.has(name)) { names.push(name); seen.add(name); }
    for (const name of Object.keys(flow.attempts || {})) if (!seen.has(name)) { names.push(name); seen.add(name); }
    return names;
  }

  // The atoms in definition order; past ATOM_ROWS, those that are busy or failed come
  // first, so that a large flow's table still shows what matters.
  function shownAtoms() {
    const names = atomOrder();
    if (names.length <= ATOM_ROWS) {
      atomsNote.textContent = "";
      return names;
    }
    const atoms = (flow.progress && flow.progress.atoms) || {};
    const calm = new Set(["PENDING", "SUCCESS", "IGNORED", "REVERTED"]);
    const notable = names.filter((n) => errorsOf(n).length || !calm.has((atoms[n] || {}).state || "PENDING"));
    const picked = new Set(notable.slice(0, ATOM_ROWS));
    for (const n of names) {
      if (picked.size >= ATOM_ROWS) break;
      picked.add(n);
    }
    atomsNote.textContent = `${ATOM_ROWS} of ${names.length} atoms: those running, waiting or failed first`;
    return names.filter((n) => picked.has(n));
  }

  function renderAtoms() {
    const atoms = (flow.progress && flow.progress.atoms) || {};
    atomsBody.replaceChildren(...shownAtoms().map((name) => {
      const a = atoms[name] || { state: "PENDING", fraction: 0 };
      const bar = progressBar(a.fraction, a.state);
      let duration = a.duration;
      if (typeof duration !== "number" && a.started && a.state === "RUNNING") {
        const started = toDate(a.started);
        duration = started ? (Date.now() - started.getTime()) / 1000 : null;
      }
      return h("tr", { dataset: { atom: name, state: a.state } },
        h("td", { class: "name" }, name),
        h("td", null, badge("state", a.state)),
        h("td", { class: "num" }, a.attempt ? String(a.attempt) : "—"),
        h("td", null, when(a.started, true)),
        h("td", { class: "num" }, seconds(duration)),
        h("td", { class: "progress" }, bar.bar,
          h("span", { class: "pct" }, `${Math.round((Number(a.fraction) || 0) * 100)} %`)),
        h("td", { class: "details" }, h("div", { class: "muted" }, detailsText(a.details)),
          errorsOf(name).map((f) => failureView(name, f))));
    }));
  }

  function failedAtoms() {
    return new Set(Object.keys(flow.failures || {}));
  }

  // What the flow fails with, at a glance: each atom's failure (its tracebacks are in
  // the atoms table), and a failure of the whole flow ("<cancel>") with its traceback.
  function renderFailures() {
    const failures = flow.failures || {};
    const atoms = (flow.progress && flow.progress.atoms) || {};
    failuresBox.replaceChildren(...Object.entries(failures).map(([key, f]) => {
      if (!f || typeof f !== "object") return null;
      if (!(key in atoms)) {
        return h("div", { class: "flow-failure" }, h("strong", null, key), " ", failureView(key, f));
      }
      return h("div", { class: "flow-failure" }, h("strong", null, key), " ",
        h("span", { class: "error-text" }, `${f.type || "Error"}: ${f.message || ""}`));
    }));
  }

  function renderWaits() {
    const waits = Array.isArray(flow.waiting) ? flow.waiting : [];
    if (!waits.length) {
      waitsBox.replaceChildren(h("p", { class: "muted" }, "None."));
      return;
    }
    waitsBox.replaceChildren(h("table", { class: "waits" },
      h("thead", null, h("tr", null, ["Atom", "Deadline", "Info"].map((t) => h("th", null, t)))),
      h("tbody", null, waits.map((w) => h("tr", { dataset: { atom: String(w.atom) } },
        h("td", null, String(w.atom)),
        h("td", null, when(w.deadline), h("div", { class: "muted" }, until(w.deadline))),
        h("td", null, h("pre", { class: "info" }, pretty(w.info))))))));
  }

  function renderCheckpoints() {
    let names = [];
    const given = flow.checkpoints;
    if (Array.isArray(given)) names = given.map((c) => (c && typeof c === "object" ? c.name : c));
    else if (given && typeof given === "object") names = Object.keys(given);
    if (!names.length && flow.structure) {
      const walk = (node) => {
        if (!Array.isArray(node)) return;
        if (node[0] === "checkpoint") names.push(node[1]);
        else if (Array.isArray(node[2])) node[2].forEach(walk);
      };
      walk(flow.structure);
    }
    names = names.filter((n) => typeof n === "string");
    const current = checkpointSelect.value;
    const same = names.length === checkpointSelect.options.length
      && names.every((n, i) => checkpointSelect.options[i].value === n);
    if (!same) {
      checkpointSelect.replaceChildren(...names.map((n) => h("option", { value: n, selected: n === current }, n)));
    }
    if (!names.length) checkpointSelect.replaceChildren(h("option", { value: "" }, "(none)"));
  }

  function render() {
    document.title = `${flow.name || id} · aioflow`;
    title.replaceChildren(flow.name || "(unnamed flow)", " ", badge("status", flow.status));
    const owner = flow.owner ? h("code", null, flow.owner) : h("span", { class: "muted" }, "none (resting)");
    if (flow.orphaned) {
      owner.append(" ", h("span", { class: "badge orphan", title: "Its owner's lease ran out" }, "orphaned"));
    }
    const fact = (term, ...value) => h("div", null, h("dt", null, term), h("dd", null, ...value));
    facts.replaceChildren(
      fact("Id", h("code", null, flow.flow_id || id)),
      fact("Owner", owner),
      fact("Created", when(flow.created)),
      fact("Updated", when(flow.updated)),
      fact("ETA", h("span", { id: "eta" }, MOVING.has(flow.status) && flow.progress ? seconds(flow.progress.eta) : "—")));
    const fraction = flow.progress ? flow.progress.fraction : 0;
    overall.set(fraction, flow.status);
    overallText.textContent = `${Math.round((Number(fraction) || 0) * 100)} %`;
    if (!graph) {
      graph = renderGraph(flow.structure);
      graphBox.replaceChildren(graph.svg || h("p", { class: "muted" }, graph.reason));
    }
    if (graph.svg) graph.update((flow.progress && flow.progress.atoms) || {}, failedAtoms());
    renderFailures();
    renderAtoms();
    renderWaits();
    renderCheckpoints();
    const results = flow.results;
    const some = results !== undefined && results !== null
      && !(typeof results === "object" && Object.keys(results).length === 0);
    resultsBox.replaceChildren(some
      ? h("pre", { class: "results" }, pretty(results))
      : h("p", { class: "muted" }, FINAL.has(flow.status) ? "None." : "Once the flow has finished."));
    buttons.forEach(applyAction);
  }

  async function refresh() {
    const answer = await api("GET", path);
    if (view.disposed) return;
    if (answer.status === 404) {
      error.replaceChildren(problem(`No flow ${id}: ${answer.error}`));
      return;
    }
    if (!answer.ok || !answer.data) {
      error.replaceChildren(problem(`The flow cannot be read: ${answer.error || "unexpected answer"}`));
      return;
    }
    error.replaceChildren();
    flow = answer.data;
    render();
  }

  // Events ask for a refresh; a burst of them makes one, and refreshes start at least
  // REFRESH_GAP apart (each replays the flow's journal on the server).
  let timer = null;
  let running = false;
  let again = false;
  let lastStart = 0;
  function scheduleRefresh(delay) {
    if (timer || view.disposed) return;
    const wait = Math.max(delay, lastStart + REFRESH_GAP - Date.now());
    timer = setTimeout(async () => {
      timer = null;
      if (running) {
        again = true;
        return;
      }
      running = true;
      lastStart = Date.now();
      try {
        await refresh();
      } finally {
        running = false;
        if (again) {
          again = false;
          scheduleRefresh(0);
        }
      }
    }, wait);
  }
  view.onDispose(() => clearTimeout(timer));

  function eventRow(e) {
    return h("tr", { dataset: { seq: String(e.seq), kind: String(e.kind) } },
      h("td", { class: "num" }, String(e.seq)),
      h("td", null, when(e.time, true)),
      h("td", null, String(e.kind)),
      h("td", null, e.atom === null || e.atom === undefined ? "" : String(e.atom)),
      h("td", null, e.state ? badge("state", String(e.state)) : ""),
      h("td", { class: "num" }, e.attempt ? String(e.attempt) : ""),
      h("td", { class: "num" }, e.kind === "PROGRESS" && typeof e.progress === "number" ? `${Math.round(e.progress * 100)} %` : ""),
      h("td", { class: "details" }, eventDetails(e)));
  }

  function eventDetails(e) {
    const d = e.details && typeof e.details === "object" ? { ...e.details } : {};
    const failure = d.failure;
    // What the flow's first event records of its definition: the graph shows it.
    for (const key of ["failure", "structure", "fingerprint", "weights"]) delete d[key];
    const parts = [];
    if (failure && typeof failure === "object") {
      const type = failure.type || failure.exc_type || "Error";
      parts.push(h("span", { class: "error-text" }, `${type}: ${failure.message || ""} `));
    }
    const text = detailsText(d);
    if (text) parts.push(text);
    return parts;
  }

  function addEvent(e) {
    const first = eventsBody.firstElementChild;
    const row = eventRow(e);
    // Progress comes often: a run of reports of one atom shows as its latest.
    if (e.kind === "PROGRESS" && first && first.dataset.kind === "PROGRESS" && first.dataset.atom === String(e.atom)) {
      first.replaceWith(row);
    } else {
      eventsBody.prepend(row);
    }
    row.dataset.atom = String(e.atom);
    while (eventsBody.childElementCount > EVENTS_KEPT) eventsBody.lastElementChild.remove();
  }

  function liveProgress(e) {
    if (!flow || !flow.progress || !flow.progress.atoms || !e.atom) return;
    const atom = flow.progress.atoms[e.atom];
    if (!atom) return;
    atom.fraction = e.progress;
    if (e.details && typeof e.details === "object") atom.details = e.details;
    if (graph && graph.svg) graph.update(flow.progress.atoms, failedAtoms());
  }

  // The events, live: EventSource resumes after the last seq it saw (Last-Event-ID).
  function follow() {
    if (source || view.disposed) return;
    source = new EventSource(`${path}/events`);
    eventsNote.textContent = "live";
    const onEvent = (msg) => {
      let e;
      try {
        e = JSON.parse(msg.data);
      } catch (err) {
        return;
      }
      if (!e || typeof e !== "object") return;
      if (e.error && e.seq === undefined) {
        eventsNote.textContent = `the event stream failed: ${short(e.error)}`;
        return;
      }
      if (e.kind !== "PROGRESS") {
        if (typeof e.seq === "number" && e.seq <= lastSeq) return;
        if (typeof e.seq === "number") lastSeq = e.seq;
      }
      addEvent(e);
      if (e.kind === "PROGRESS") liveProgress(e);
      scheduleRefresh(e.kind === "PROGRESS" ? 800 : 150);
      if (e.kind === "FLOW" && FINAL.has(e.state)) {
        // The stream ends with the flow; do not let EventSource reconnect forever.
        source.close();
        source = null;
        eventsNote.textContent = `the flow ended ${e.state}`;
      }
    };
    for (const kind of ["message", "FLOW", "ATOM", "PROGRESS", "CHECKPOINT", "WAIT", "SNAPSHOT"]) {
      source.addEventListener(kind, onEvent);
    }
    source.addEventListener("end", () => {
      // The flow ended (or its owner died): the server closed the stream.
      source.close();
      source = null;
      if (eventsNote.textContent === "live") eventsNote.textContent = "the stream ended";
      scheduleRefresh(100);
    });
    source.addEventListener("error", (msg) => {
      if (msg && typeof msg.data === "string") {
        onEvent(msg);
        return;
      }
      if (source && source.readyState === EventSource.CLOSED) {
        // Refused (a 503 when the server holds too many streams, a 404): poll instead.
        source = null;
        eventsNote.textContent = "not live (the server refused the event stream); polling";
      } else {
        eventsNote.textContent = "reconnecting…";
      }
    });
    source.addEventListener("open", () => {
      eventsNote.textContent = "live";
    });
  }
  view.onDispose(() => {
    if (source) source.close();
  });

  refresh().then(() => {
    if (flow) follow();
  });
  view.every(FLOW_EVERY, async () => {
    if (!flow || !FINAL.has(flow.status)) await refresh();
  });
  return view;
}
