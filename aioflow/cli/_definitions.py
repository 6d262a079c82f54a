"""The commands about flow definitions rather than a journal: ``graph`` draws a flow,
``providers`` lists the entries of a registry."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._compile import BARRIER, CHECKPOINT, MAP, RETRY, ExecGraph, Node, compile_flow
from .._engine import load_reference
from .._errors import InvalidFlowError, MissingInputsError
from ._common import EXIT_OK, UsageError, _load_attr
from ._format import _console


def _visible_preds(graph: ExecGraph, node: Node, controllers: dict[int, int]) -> list[int]:
    """The atoms before ``node``, looking through the internal barrier nodes; a Map's
    collector (``controllers``: collector -> controller) stands for the Map's node,
    whatever copies a run grows between them."""
    out: set[int] = set()
    seen: set[int] = set()
    stack = list(node.preds)
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        if p in controllers:
            out.add(controllers[p])
        elif graph.nodes[p].kind == BARRIER:
            stack.extend(graph.nodes[p].preds)
        else:
            out.add(p)
    return sorted(out)


def _map_collectors(graph: ExecGraph) -> dict[int, int]:
    """Each Map's collector (a barrier carrying its spec) -> its controller."""
    controller = {
        id(n.mapping): n.index for n in graph.nodes if n.kind == MAP and n.mapping is not None
    }
    return {
        n.index: controller[id(n.mapping)]
        for n in graph.nodes
        if n.kind == BARRIER and n.mapping is not None and id(n.mapping) in controller
    }


def _map_labels(structure: list[Any]) -> dict[str, str]:
    """A label for each Map of a compiled flow (not those inside Maps' members, which
    are not drawn): ``thumbs [map resize over images]`` (how many copies it makes is
    known only when it runs)."""
    out: dict[str, str] = {}
    stack = [structure]
    while stack:
        node = stack.pop()
        if not isinstance(node, list) or len(node) < 3:
            continue
        if node[0] == "map" and len(node) >= 6:
            member = node[5][1] if isinstance(node[5], list) and len(node[5]) > 1 else "?"
            out[str(node[1])] = f"{node[1]} [map {member} over {node[2]}]"
        elif node[0] in ("linear", "unordered", "graph") and isinstance(node[2], list):
            stack.extend(node[2])
    return out


def render_graph(graph: ExecGraph, fmt: str) -> str:
    """The flow's atoms and their order as Mermaid (``flowchart``) or Graphviz ``dot``.

    Checkpoints are hexagons, flow retries stadiums, tasks boxes, Maps one node each
    (Mermaid's subroutine, a 3D box in ``dot``) labelled with what they map and over
    which sequence; an edge into an atom guarded by a decider is dashed.
    """
    atoms = list(graph.atoms)
    collectors = _map_collectors(graph)
    edges = [(p, n) for n in atoms for p in _visible_preds(graph, n, collectors)]
    maps = _map_labels(graph.structure) if collectors else {}

    def name_of(n: Node) -> str:
        return maps.get(n.name, n.name) if n.kind == MAP else n.name

    def quote(text: str) -> str:
        return text.replace("\\", "\\\\").replace('"', '\\"')

    if fmt == "mermaid":
        shapes = {CHECKPOINT: ('{{"', '"}}'), RETRY: ('(["', '"])'), MAP: ('[["', '"]]')}
        lines = ["flowchart TD"]
        for n in atoms:
            left, right = shapes.get(n.kind, ('["', '"]'))
            label = name_of(n).replace('"', "#quot;")
            lines.append(f"    n{n.index}{left}{label}{right}")
        for p, n in edges:
            arrow = "-.->" if n.deciders else "-->"
            lines.append(f"    n{p} {arrow} n{n.index}")
        return "\n".join(lines) + "\n"
    shape = {CHECKPOINT: "hexagon", RETRY: "oval", MAP: "box3d"}
    lines = [f'digraph "{quote(graph.name)}" {{', "    rankdir=TB;"]
    for n in atoms:
        label = quote(name_of(n))
        lines.append(f'    n{n.index} [label="{label}", shape={shape.get(n.kind, "box")}];')
    for p, n in edges:
        style = " [style=dashed]" if n.deciders else ""
        lines.append(f"    n{p} -> n{n.index}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def cmd_graph(args: argparse.Namespace) -> int:
    """Print a flow's graph (from a ``package.module:factory`` reference)."""
    flow = load_reference(args.ref)
    try:
        graph = compile_flow(flow)
    except MissingInputsError as exc:
        graph = compile_flow(flow, exc.symbols)  # what nothing provides comes as inputs
    except InvalidFlowError as exc:
        raise UsageError(f"flow {args.ref!r} is not valid: {exc}") from None
    sys.stdout.write(render_graph(graph, args.format))
    return EXIT_OK


def cmd_providers(args: argparse.Namespace) -> int:
    """List the entries of a registry, optionally those with given capabilities."""
    from rich.table import Table

    from .._registry import Registry

    registry = _load_attr(args.registry)
    if not isinstance(registry, Registry) and callable(registry):
        registry = registry()
    if not isinstance(registry, Registry):
        raise UsageError(f"{args.registry!r} is a {type(registry).__name__}, not a Registry")
    table = Table("name", "capabilities", "attributes")
    for entry in registry.find(*args.capabilities):
        attributes = ", ".join(f"{k}={v!r}" for k, v in sorted(entry.attributes.items()))
        table.add_row(entry.name, ", ".join(sorted(entry.capabilities)), attributes)
    console = _console()
    if not table.rows:
        console.print("no matching entries")
    else:
        console.print(table)
    return EXIT_OK
