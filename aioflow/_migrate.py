"""Migrating a flow in flight: may a resting flow go on under a changed definition?

The rule is that what already happened must stay true. Atoms that have not started may
be added, removed, reordered or changed. An atom that started must still be there (under
its name, or the name ``renames`` gives it) and be the same kind of atom; one that
finished must still provide the same symbols, and everything it now comes after must
have finished too (else it would have run before something it now depends on). A wait
that is open keeps its name, since its token names it.

:func:`plan` checks a flow's journaled state against a compiled flow and lists every
conflict, or gives the record that the resume journals; the replay folds that record
into the flow's state (``aioflow._replay.migrate_state``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._compile import BARRIER, CHECKPOINT, MAP, RETRY, weights_of
from ._replay import AtomRecord, FlowState, atom_names, maps_of, provided
from ._states import AtomState, FlowStatus

if TYPE_CHECKING:
    from ._compile import ExecGraph

__all__ = ["Migration", "plan"]

_FINISHED = (AtomState.SUCCESS, AtomState.IGNORED)
_UNWINDING = (AtomState.REVERTING, AtomState.REVERT_FAILURE)
# A node's kind as atom_names tells it.
_KINDS = {CHECKPOINT: "checkpoint", RETRY: "retry", MAP: "map"}


@dataclass(slots=True)
class Migration:
    """The outcome of :func:`plan`: ``conflicts`` (empty when the flow may move), and
    the record the resume journals (``record``)."""

    conflicts: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


def plan(
    state: FlowState, graph: ExecGraph, renames: Mapping[str, str] | None = None
) -> Migration:
    """Whether flow ``state`` may go on as ``graph``; every conflict, one line each."""
    renames = dict(renames or {})
    conflicts: list[str] = []
    if state.status.is_final:
        return Migration([f"the flow has ended ({state.status.value}); nothing is migrated"])
    if state.status is FlowStatus.REVERTING or state.cancel is not None or state.revert_to:
        return Migration(
            ["the flow is being reverted (or moved back); resume it without migrate= first"]
        )
    old_kinds = dict(atom_names(state.structure))
    new_nodes = {n.name: n for n in graph.nodes if n.kind != BARRIER}
    unknown = sorted(set(renames) - set(old_kinds))
    if unknown:
        conflicts.append(f"renames name atoms the flow does not have: {', '.join(unknown)}")
    missing = sorted(n for n in set(renames.values()) if n not in new_nodes)
    if missing:
        conflicts.append(f"renames name atoms the new flow does not have: {', '.join(missing)}")
    if len(set(renames.values())) != len(renames):
        conflicts.append("renames give two atoms the same new name")
    old_provides = {name: (tuple(p), unpack) for name, p, unpack in provided(state.structure)}
    grown = _grown_maps(state, graph, renames, conflicts)
    # What each atom of the new flow stands for in the journal: its record, if any.
    records: dict[str, AtomRecord] = {}
    for old, record in state.atoms.items():
        if _copy_of(old, grown):
            continue  # a copy a Map grew: it stays with its Map, which stays as it was
        new = renames.get(old, old)
        started = record.state is not AtomState.PENDING
        if record.state in _UNWINDING:
            conflicts.append(f"atom {old!r} is being reverted; resume without migrate= first")
            continue
        if new not in new_nodes:
            if started:
                conflicts.append(
                    f"atom {old!r} has run ({record.state.value}) but the new flow has no atom"
                    f" {new!r}; keep it, or name its new name in renames="
                )
            continue
        if new in records and started:
            conflicts.append(f"atom {new!r} would stand for two atoms of the journal")
            continue
        node = new_nodes[new]
        kind = _KINDS.get(node.kind, "task")
        if started and old_kinds.get(old, kind) != kind:
            conflicts.append(f"atom {old!r} was a {old_kinds[old]} and is now a {kind}")
            continue
        if record.state is AtomState.WAITING and new != old:
            conflicts.append(f"atom {old!r} waits (its token names it): it cannot be renamed")
            continue
        if record.state is AtomState.SUCCESS and kind not in ("checkpoint", "map"):
            before = old_provides.get(old, ((), False))
            after = (tuple(node.provides), len(node.provides) > 1 or node.unpack)
            if before != after:
                conflicts.append(
                    f"atom {old!r} finished providing {list(before[0])}; the new flow has it"
                    f" provide {list(after[0])}"
                )
        if started:
            records[new] = record
    # A finished atom must come only after finished atoms (barriers pass it through).
    done = _finished(graph, records)
    for node in graph.nodes:
        if node.kind != BARRIER and done[node.index]:
            behind = [graph.nodes[p].name for p in node.preds if not done[p]]
            if behind:
                conflicts.append(
                    f"atom {node.name!r} has finished but the new flow puts it after"
                    f" {', '.join(repr(b) for b in behind)}, which has not"
                )
    if conflicts:
        return Migration(conflicts)
    journaled: dict[str, Any] = {
        "from": state.fingerprint,
        "to": graph.fingerprint,
        "renames": renames,
        "dropped": sorted(
            old
            for old in state.atoms
            if renames.get(old, old) not in new_nodes and not _copy_of(old, grown)
        ),
        "name": graph.name,
        "structure": graph.structure_json,
        "weights": weights_of(graph),
    }
    return Migration([], journaled)


def _grown_maps(
    state: FlowState, graph: ExecGraph, renames: Mapping[str, str], conflicts: list[str]
) -> set[str]:
    """The Maps that grew their copies (their controllers started): each must stay as it
    was, under its name (its copies are named after it); a conflict for each that does
    not."""
    new = {str(node[1]): node for node in maps_of(graph.structure)}
    grown: set[str] = set()
    for node in maps_of(state.structure):
        name = str(node[1])
        record = state.atoms.get(name)
        if record is None or record.state is AtomState.PENDING:
            continue
        grown.add(name)
        if renames.get(name, name) != name:
            conflicts.append(
                f"map {name!r} has grown copies named after it; it cannot be renamed"
            )
        elif name in new and json.dumps(new[name]) != json.dumps(node):
            conflicts.append(
                f"map {name!r} has grown its copies; what it maps (its member, over, item"
                " and provides) must stay as it was"
            )
    return grown


def _copy_of(name: str, maps: set[str]) -> bool:
    """True when atom ``name`` is a copy one of ``maps`` grew (or an atom of one)."""
    head, bracket, _ = name.partition("[")
    return bool(bracket) and head in maps


def _finished(graph: ExecGraph, records: Mapping[str, AtomRecord]) -> list[bool]:
    """For each node of ``graph``: an atom whose record finished, or a barrier all of
    whose predecessors are finished."""
    done: list[bool | None] = [None] * len(graph.nodes)
    for start in range(len(graph.nodes)):
        stack = [start]
        while stack:
            i = stack[-1]
            if done[i] is not None:
                stack.pop()
                continue
            node = graph.nodes[i]
            if node.kind != BARRIER:
                record = records.get(node.name)
                done[i] = record is not None and record.state in _FINISHED
                stack.pop()
                continue
            waiting = [p for p in node.preds if done[p] is None]
            if waiting:
                stack.extend(waiting)
                continue
            done[i] = all(done[p] for p in node.preds)
            stack.pop()
    return [bool(d) for d in done]
