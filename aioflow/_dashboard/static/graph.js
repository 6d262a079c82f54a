// A flow's graph as SVG, drawn from the structure its journal records:
//   ["task", name, needs, provides, ...]      needs: [[param, symbol, optional], ...]
//   ["checkpoint", name]
//   ["linear" | "unordered", name, members, optional ["retry", kind, provides]]
//   ["graph", name, members, links, optional ["retry", kind, provides]]
//   ["map", name, over, item, provides_or_null, member]
// Top to bottom: a Linear is a chain, an Unordered parallel lanes, a Graph layers whose
// edges run from the member that provides a symbol to the members that require it (and
// along its explicit links, dashed when a decider guards them). A nested flow is a box;
// a flow with a retry or a deadline is an atom of its own, drawn as its box's header.
// A Map is one node (a stack of boxes), never its member's insides: its copies exist only
// at run time, as atoms named `name[i]` or `name[i].atom`; the node shows how many there
// are and, along its bottom edge, the fraction of them finished.
// Only text nodes and attributes are set: nothing the API sends is parsed as markup.

const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 156;
const NODE_H = 30;
const GAP_X = 16;
const GAP_Y = 22;
const RANK_GAP = 30;
const PAD = 10;
const HEAD = 22;
const MAX_ATOMS = 400;
const FLOWS = new Set(["linear", "unordered", "graph"]);

function el(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
  }
  return node;
}

function symbolOf(need) {
  return Array.isArray(need) ? String(need[1]) : String(need);
}

// The structure as a tree of plain objects, with what each part requires from outside
// it and what it provides.
function parse(node) {
  if (!Array.isArray(node) || typeof node[1] !== "string") return null;
  const kind = node[0];
  if (kind === "task") {
    const requires = Array.isArray(node[2]) ? node[2].map(symbolOf) : [];
    const provides = Array.isArray(node[3]) ? node[3].map(String) : [];
    return { kind, name: node[1], requires: new Set(requires), provides: new Set(provides) };
  }
  if (kind === "checkpoint") {
    return { kind, name: node[1], requires: new Set(), provides: new Set() };
  }
  if (kind === "map") {
    // What it needs is its sequence and what its member needs, but the item.
    const member = parse(node[5]);
    const over = typeof node[2] === "string" ? node[2] : "";
    const item = typeof node[3] === "string" ? node[3] : "item";
    const requires = new Set(member ? [...member.requires].filter((s) => s !== item) : []);
    if (over) requires.add(over);
    const provides = new Set(typeof node[4] === "string" ? [node[4]] : []);
    return { kind, name: node[1], over, requires, provides };
  }
  if (!FLOWS.has(kind)) return null;
  const last = node[node.length - 1];
  const retry = node.length > 3 && Array.isArray(last) && last[0] === "retry" ? last : null;
  const members = (Array.isArray(node[2]) ? node[2] : []).map(parse).filter(Boolean);
  let links = [];
  if (kind === "graph" && Array.isArray(node[3]) && node[3] !== retry) {
    links = node[3].filter((l) => Array.isArray(l) && l.length >= 2);
  }
  const provides = new Set();
  const requires = new Set();
  for (const m of members) m.provides.forEach((s) => provides.add(s));
  for (const m of members) m.requires.forEach((s) => { if (!provides.has(s)) requires.add(s); });
  return {
    kind, name: node[1], members, links, provides, requires,
    retry: retry ? String(retry[1] || "times") : null,
  };
}

function countAtoms(part) {
  if (!part.members) return 1;
  return part.members.reduce((n, m) => n + countAtoms(m), part.retry ? 1 : 0);
}

// Each member's predecessors inside a Graph: by data, then by links.
function graphDeps(part) {
  const byName = new Map(part.members.map((m) => [m.name, m]));
  const providerOf = new Map();
  for (const m of part.members) m.provides.forEach((s) => providerOf.set(s, m.name));
  const deps = new Map(part.members.map((m) => [m.name, new Map()]));
  for (const m of part.members) {
    for (const s of m.requires) {
      const source = providerOf.get(s);
      if (source !== undefined && source !== m.name) deps.get(m.name).set(source, false);
    }
  }
  for (const [source, target, decider] of part.links) {
    if (byName.has(source) && byName.has(target) && source !== target) {
      deps.get(target).set(source, Boolean(decider) || deps.get(target).get(source) === true);
    }
  }
  return deps;
}

// Sizes, bottom up (w, h); rows for a Graph (its members by longest path from a source).
function measure(part) {
  if (!part.members) {
    part.w = NODE_W;
    part.h = NODE_H;
    return;
  }
  part.members.forEach(measure);
  const ms = part.members;
  let innerW = 0;
  let innerH = 0;
  if (ms.length === 0) {
    innerW = NODE_W;
  } else if (part.kind === "linear") {
    innerW = Math.max(...ms.map((m) => m.w));
    innerH = ms.reduce((h, m) => h + m.h, 0) + GAP_Y * (ms.length - 1);
  } else if (part.kind === "unordered") {
    innerW = ms.reduce((w, m) => w + m.w, 0) + GAP_X * (ms.length - 1);
    innerH = Math.max(...ms.map((m) => m.h));
  } else {
    part.deps = graphDeps(part);
    const rank = new Map();
    const rankOf = (name, seen) => {
      if (rank.has(name)) return rank.get(name);
      if (seen.has(name)) return 0; // a cycle cannot compile; never loop on one
      seen.add(name);
      let r = 0;
      for (const d of part.deps.get(name).keys()) r = Math.max(r, rankOf(d, seen) + 1);
      rank.set(name, r);
      return r;
    };
    part.rows = [];
    for (const m of ms) {
      const r = rankOf(m.name, new Set());
      (part.rows[r] = part.rows[r] || []).push(m);
    }
    part.rows = part.rows.filter(Boolean);
    for (const row of part.rows) {
      innerW = Math.max(innerW, row.reduce((w, m) => w + m.w, 0) + GAP_X * (row.length - 1));
      innerH += Math.max(...row.map((m) => m.h));
    }
    innerH += RANK_GAP * (part.rows.length - 1);
  }
  part.innerW = innerW;
  part.w = innerW + 2 * PAD;
  part.h = HEAD + innerH + PAD + (ms.length === 0 ? PAD : 0);
}

// Positions, top down: (x, y) is the part's top-left corner.
function place(part, x, y) {
  part.x = x;
  part.y = y;
  if (!part.members) return;
  const left = x + PAD;
  let top = y + HEAD;
  const centred = (w, width) => left + (width - w) / 2;
  if (part.kind === "linear") {
    for (const m of part.members) {
      place(m, centred(m.w, part.innerW), top);
      top += m.h + GAP_Y;
    }
  } else if (part.kind === "unordered") {
    const total = part.members.reduce((w, m) => w + m.w, 0) + GAP_X * (part.members.length - 1);
    let at = centred(total, part.innerW);
    for (const m of part.members) {
      place(m, at, top);
      at += m.w + GAP_X;
    }
  } else if (part.rows) {
    for (const row of part.rows) {
      const total = row.reduce((w, m) => w + m.w, 0) + GAP_X * (row.length - 1);
      let at = centred(total, part.innerW);
      for (const m of row) {
        place(m, at, top);
        at += m.w + GAP_X;
      }
      top += Math.max(...row.map((m) => m.h)) + RANK_GAP;
    }
  }
}

function edge(from, to, dashed) {
  const x1 = from.x + from.w / 2;
  const y1 = from.y + from.h;
  const x2 = to.x + to.w / 2;
  const y2 = to.y;
  const bend = Math.max(8, (y2 - y1) / 2);
  const d = `M${x1},${y1} C${x1},${y1 + bend} ${x2},${y2 - bend} ${x2},${y2 - 4}`;
  return el("path", { d, class: dashed ? "edge decided" : "edge", "marker-end": "url(#arrow)" });
}

function label(text, room) {
  const most = Math.max(4, Math.floor(room / 7));
  return text.length > most ? text.slice(0, most - 1) + "…" : text;
}

// A Map's node is drawn as a stack: a box with another behind it, STACK pixels lower.
const STACK = 4;

function atomNode(part, atoms) {
  const { x, y } = part;
  const map = part.kind === "map";
  const w = map ? part.w - STACK : part.w;
  const h = map ? part.h - STACK : part.h;
  const shape = part.kind === "checkpoint"
    ? el("polygon", {
      class: "shape",
      points: [[x + 10, y], [x + w - 10, y], [x + w, y + h / 2], [x + w - 10, y + h],
        [x + 10, y + h], [x, y + h / 2]].map((p) => p.join(",")).join(" "),
    })
    : el("rect", { class: "shape", x, y, width: w, height: h, rx: 6 });
  const behind = map
    ? el("rect", { class: "shape behind", x: x + STACK, y: y + STACK, width: w, height: h, rx: 6 })
    : null;
  const title = el("title", null, part.name);
  const bar = el("rect", { class: "meter", x: x + 1, y: y + h - 4, width: 0, height: 3, rx: 1.5 });
  const text = el("text", { x: x + w / 2, y: y + h / 2 + 4, "text-anchor": "middle" },
    map ? mapLabel(part.name, null, w - 14) : label(part.name, w - 14));
  const g = el("g", { class: "atom", "data-atom": part.name, "data-kind": part.kind },
    title, behind, shape, bar, text);
  atoms.set(part.name, {
    g, title, bar, text, width: w - 2, room: w - 14, kind: part.kind, over: part.over,
  });
  return g;
}

// "thumbs ×12" ("thumbs ×?" before the Map knows its sequence), the name shortened first.
function mapLabel(name, count, room) {
  const times = ` ×${count === null ? "?" : count}`;
  return label(name, room - 7 * times.length) + times;
}

// The index of the copy of Map `name` that atom `atom` belongs to (`name[3]` and
// `name[3].resize` are copy 3), or -1.
function copyIndex(name, atom) {
  const prefix = `${name}[`;
  if (!atom.startsWith(prefix)) return -1;
  const close = atom.indexOf("]", prefix.length);
  const digits = close > prefix.length ? atom.slice(prefix.length, close) : "";
  if (!/^[0-9]+$/.test(digits)) return -1;
  if (close + 1 < atom.length && atom[close + 1] !== ".") return -1;
  return Number(digits);
}

// The atoms of each copy of Map `name` among `names`: [[index, [atom, ...]], ...] by index.
function copiesOf(name, names) {
  const byIndex = new Map();
  for (const atom of names) {
    const i = copyIndex(name, atom);
    if (i < 0) continue;
    if (!byIndex.has(i)) byIndex.set(i, []);
    byIndex.get(i).push(atom);
  }
  return [...byIndex.entries()].sort((a, b) => a[0] - b[0]);
}

const DONE = new Set(["SUCCESS", "IGNORED"]);
// The state a Map's node shows once the Map has grown its copies: the most pressing of
// theirs (a failure before a retry before work in progress), SUCCESS when all finished.
const PRESSING = ["REVERT_FAILURE", "FAILURE", "REVERTING", "RETRYING", "RUNNING", "WAITING"];

function stateOf(atom) {
  return atom && typeof atom.state === "string" ? atom.state : "PENDING";
}

// What a Map's node shows: {state, count (null while unknown), finished}.
function mapView(name, own, states) {
  const copies = copiesOf(name, Object.keys(states || {}));
  const ownState = stateOf(own);
  // The number the Map journaled, if the API sends it; else its copies' atoms, which
  // the flow's progress lists once the Map knows its sequence (none for an empty one).
  let count = own && typeof own.copies === "number" ? own.copies : null;
  if (count === null && (copies.length || ownState === "SUCCESS")) count = copies.length;
  const copyStates = copies.map(([, names]) => {
    const inside = names.map((n) => stateOf(states[n]));
    if (inside.every((s) => DONE.has(s))) return "SUCCESS";
    return PRESSING.find((s) => inside.includes(s))
      || (inside.includes("REVERTED") ? "REVERTED" : inside.some((s) => DONE.has(s)) ? "RUNNING" : "PENDING");
  });
  const finished = copyStates.filter((s) => s === "SUCCESS").length;
  let state = ownState;
  if (ownState === "SUCCESS" && copies.length) {
    if (finished === copyStates.length) state = "SUCCESS";
    else {
      state = PRESSING.find((s) => copyStates.includes(s))
        || (copyStates.includes("REVERTED") ? "REVERTING" : finished ? "RUNNING" : "PENDING");
    }
  }
  return { state, count, finished, copies };
}

function draw(part, layer, edges, atoms) {
  if (!part.members) {
    layer.append(atomNode(part, atoms));
    return;
  }
  const { x, y, w, h } = part;
  const box = el("g", { class: `part ${part.kind}`, "data-part": part.name });
  box.append(el("rect", { class: "frame", x, y, width: w, height: h, rx: 8 }));
  const kind = { linear: "linear", unordered: "unordered", graph: "graph" }[part.kind];
  const caption = part.retry ? `${part.name} · ${kind} · ${part.retry}` : `${part.name} · ${kind}`;
  if (part.retry) {
    // The flow's retry (or deadline) atom, named as the flow: its header shows its state.
    const head = { ...part, kind: "retry", h: HEAD - 4, y: y + 2, x: x + 2, w: w - 4 };
    const g = atomNode(head, atoms);
    g.querySelector("text").textContent = label(caption, w - 14);
    box.append(g);
  } else {
    box.append(el("text", { class: "caption", x: x + 8, y: y + 15 }, label(caption, w - 16)));
  }
  layer.append(box);
  for (const m of part.members) draw(m, layer, edges, atoms);
  if (part.kind === "linear") {
    for (let i = 1; i < part.members.length; i += 1) {
      edges.append(edge(part.members[i - 1], part.members[i], false));
    }
  } else if (part.kind === "graph" && part.deps) {
    const byName = new Map(part.members.map((m) => [m.name, m]));
    for (const [target, sources] of part.deps) {
      for (const [source, decided] of sources) {
        edges.append(edge(byName.get(source), byName.get(target), decided));
      }
    }
  }
}

// {svg, update(atoms)} for a recorded structure, or {svg: null, reason} when it cannot
// (or should not) be drawn.
export function render(structure) {
  const root = parse(structure);
  if (!root) return { svg: null, reason: "this flow's journal records no structure" };
  const count = countAtoms(root);
  if (count > MAX_ATOMS) {
    return { svg: null, reason: `not drawn: ${count} atoms (more than ${MAX_ATOMS})` };
  }
  measure(root);
  place(root, 8, 8);
  const width = root.w + 16;
  const height = root.h + 16;
  const svg = el("svg", {
    xmlns: SVG, width, height, viewBox: `0 0 ${width} ${height}`, class: "flow-graph",
    role: "img", "aria-label": `graph of flow ${root.name}`,
  });
  svg.append(el("defs", null, el("marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
    orient: "auto-start-reverse",
  }, el("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }))));
  const layer = el("g", { class: "parts" });
  const edges = el("g", { class: "edges" });
  const atoms = new Map();
  draw(root, layer, edges, atoms);
  svg.append(layer, edges);

  // Colour each atom by its state; `failed` names the atoms that hold a failure (a
  // reverted flow's culprit stays marked after it was reverted too).
  function update(states, failed) {
    for (const [name, node] of atoms) {
      const atom = (states && states[name]) || null;
      if (node.kind === "map") {
        updateMap(name, node, atom, states || {}, failed);
        continue;
      }
      const state = atom && typeof atom.state === "string" ? atom.state : "PENDING";
      const marked = failed && failed.has(name);
      node.g.setAttribute("class", `atom state-${state}${marked ? " failed" : ""}`);
      node.g.dataset.state = state;
      node.title.textContent = `${name} (${node.kind}): ${state}${marked ? ", failed" : ""}`;
      const fraction = atom && typeof atom.fraction === "number" ? atom.fraction : 0;
      const shown = state === "RUNNING" ? Math.max(0, Math.min(1, fraction)) : 0;
      node.bar.setAttribute("width", String(node.width * shown));
    }
  }
  update({}, null);
  return { svg, update, names: [...atoms.keys()] };
}

function updateMap(name, node, atom, states, failed) {
  const view = mapView(name, atom, states);
  const marked = Boolean(failed)
    && (failed.has(name) || view.copies.some(([, names]) => names.some((n) => failed.has(n))));
  node.g.setAttribute("class", `atom state-${view.state}${marked ? " failed" : ""}`);
  node.g.dataset.state = view.state;
  node.g.dataset.copies = view.count === null ? "" : String(view.count);
  node.text.textContent = mapLabel(name, view.count, node.room);
  const over = node.over ? ` over ${node.over}` : "";
  const copies = view.count === null ? "copies not known yet"
    : `${view.finished} of ${view.count} copies finished`;
  node.title.textContent = `${name} (map${over}): ${view.state}, ${copies}${marked ? ", failed" : ""}`;
  let shown = 0;
  if (view.count && view.state !== "SUCCESS") shown = view.finished / view.count;
  else if (view.state === "RUNNING" && atom && typeof atom.fraction === "number") shown = atom.fraction;
  node.bar.setAttribute("width", String(node.width * Math.max(0, Math.min(1, shown))));
}

// Atom names in definition order (what the atoms table lists first): a Map's copies
// (those `atoms` names, from the flow's progress) follow the Map, copy by copy.
export function atomNames(structure, atoms) {
  const out = [];
  const known = Object.keys(atoms || {});
  const walk = (part) => {
    if (!part) return;
    if (part.kind === "map") {
      out.push(part.name);
      for (const [, names] of copiesOf(part.name, known)) out.push(...names);
      return;
    }
    if (!part.members) {
      out.push(part.name);
      return;
    }
    if (part.retry) out.push(part.name);
    part.members.forEach(walk);
  };
  walk(parse(structure));
  return out;
}
