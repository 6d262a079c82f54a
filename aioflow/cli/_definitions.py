"""The commands about flow definitions rather than a journal: ``graph`` draws a flow,
``providers`` lists the entries of a registry."""

from __future__ import annotations

import argparse
import sys

from .._compile import BARRIER, CHECKPOINT, RETRY, ExecGraph, Node, compile_flow
from .._engine import load_reference
from .._errors import InvalidFlowError, MissingInputsError
from ._common import EXIT_OK, UsageError, _load_attr
from ._format import _console


def _visible_preds(graph: ExecGraph, node: Node) -> list[int]:
    """The atoms before ``node``, looking through the internal barrier nodes."""
    out: set[int] = set()
    seen: set[int] = set()
    stack = list(node.preds)
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        if graph.nodes[p].kind == BARRIER:
            stack.extend(graph.nodes[p].preds)
        else:
            out.add(p)
    return sorted(out)


def render_graph(graph: ExecGraph, fmt: str) -> str:
    """The flow's atoms and their order as Mermaid (``flowchart``) or Graphviz ``dot``.

    Checkpoints are hexagons, flow retries stadiums, tasks boxes; an edge into an atom
    guarded by a decider is dashed.
    """
    atoms = list(graph.atoms)
    edges = [(p, n) for n in atoms for p in _visible_preds(graph, n)]

    def quote(text: str) -> str:
        return text.replace("\\", "\\\\").replace('"', '\\"')

    if fmt == "mermaid":
        shapes = {CHECKPOINT: ('{{"', '"}}'), RETRY: ('(["', '"])')}
        lines = ["flowchart TD"]
        for n in atoms:
            left, right = shapes.get(n.kind, ('["', '"]'))
            label = n.name.replace('"', "#quot;")
            lines.append(f"    n{n.index}{left}{label}{right}")
        for p, n in edges:
            arrow = "-.->" if n.deciders else "-->"
            lines.append(f"    n{p} {arrow} n{n.index}")
        return "\n".join(lines) + "\n"
    shape = {CHECKPOINT: "hexagon", RETRY: "oval"}
    lines = [f'digraph "{quote(graph.name)}" {{', "    rankdir=TB;"]
    for n in atoms:
        lines.append(f'    n{n.index} [label="{quote(n.name)}", shape={shape.get(n.kind, "box")}];')
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
