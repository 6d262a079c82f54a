"""Replay: a flow's events folded into its state. A pure function with no I/O.

This is the heart of resumption: whatever the engine does, it records as events, and
:func:`replay` of those events gives back exactly the state the engine had (up to what
the journal kept). Every transition is checked against the one table in
:mod:`aioflow._states`, so a journal the engine could not have written is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import JournalError
from ._events import Event, EventKind
from ._failure import Failure
from ._states import AtomState, FlowStatus, IllegalTransitionError, check_atom, check_flow


@dataclass(slots=True)
class AtomRecord:
    """What the journal says of one atom."""

    state: AtomState = AtomState.PENDING
    attempt: int = 0
    result: Any = None
    failure: Failure | None = None
    progress: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)
    started: float | None = None
    finished: float | None = None
    retry_until: float = 0.0


@dataclass(slots=True)
class FlowState:
    """What the journal says of a flow: its status, definition record and atoms."""

    flow_id: str
    name: str = ""
    status: FlowStatus = FlowStatus.PENDING
    ref: str | None = None
    fingerprint: str = ""
    structure: list[Any] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    atoms: dict[str, AtomRecord] = field(default_factory=dict)
    checkpoint: str | None = None
    revert_to: str | None = None
    last_seq: int = 0
    created: float | None = None
    updated: float | None = None


def apply(state: FlowState, event: Event) -> None:
    """Fold one event into ``state`` (in place)."""
    if event.seq != state.last_seq + 1:
        raise JournalError(
            f"flow {state.flow_id}: event {event.seq} follows {state.last_seq};"
            " the journal has a gap"
        )
    state.last_seq = event.seq
    state.updated = event.time
    try:
        if event.kind is EventKind.FLOW:
            _apply_flow(state, event)
        elif event.kind is EventKind.ATOM:
            _apply_atom(state, event)
        elif event.kind is EventKind.PROGRESS:
            record = state.atoms.setdefault(str(event.atom), AtomRecord())
            record.progress = event.progress or 0.0
            record.details = event.details
        elif event.kind is EventKind.CHECKPOINT:
            state.checkpoint = event.atom
            if event.details.get("reverted_to"):
                state.revert_to = None
    except IllegalTransitionError as exc:
        raise JournalError(f"flow {state.flow_id}, event {event.seq}: {exc}") from exc


def _apply_flow(state: FlowState, event: Event) -> None:
    new = event.state
    assert isinstance(new, FlowStatus)
    if event.seq == 1:
        d = event.details
        state.name = str(d.get("name", ""))
        state.ref = d.get("ref")
        state.fingerprint = str(d.get("fingerprint", ""))
        structure = d.get("structure", [])
        state.structure = json.loads(structure) if isinstance(structure, str) else list(structure)
        state.inputs = dict(d.get("inputs", {}))
        state.created = event.time
    check_flow(state.flow_id, state.status, new)
    state.status = new
    state.revert_to = event.details.get("revert_to")


def _apply_atom(state: FlowState, event: Event) -> None:
    new = event.state
    assert isinstance(new, AtomState) and event.atom is not None
    record = state.atoms.get(event.atom)
    if record is None:
        record = state.atoms[event.atom] = AtomRecord()
    check_atom(event.atom, record.state, new)
    record.state = new
    if event.progress is not None:
        record.progress = event.progress
    if new is AtomState.RUNNING:
        record.attempt = event.attempt
        record.started = event.time
        record.failure = None
        record.details = {}
    elif new is AtomState.SUCCESS:
        record.result = event.details.get("result")
        record.finished = event.time
    elif new in (AtomState.FAILURE, AtomState.REVERT_FAILURE):
        record.failure = Failure.from_dict(event.details["failure"])
        record.finished = event.time
    elif new is AtomState.RETRYING:
        record.retry_until = float(event.details.get("until", 0.0))
    elif new is AtomState.PENDING:
        record.result = None
        record.progress = 0.0
    elif new is AtomState.REVERTED:
        record.progress = 0.0


def replay(flow_id: str, events: Iterable[Event]) -> FlowState:
    """The state of flow ``flow_id`` after ``events`` (its journal, or a prefix of it)."""
    state = FlowState(flow_id)
    for event in events:
        apply(state, event)
    return state


def atom_names(structure: list[Any]) -> list[tuple[str, str]]:
    """Every atom of a recorded flow structure as (name, kind), in definition order;
    kind is "task", "checkpoint" or "retry"."""
    out: list[tuple[str, str]] = []
    stack = [structure] if structure else []
    while stack:
        node = stack.pop()
        kind = node[0]
        if kind in ("task", "checkpoint"):
            out.append((node[1], kind))
            continue
        if kind == "retry":
            continue
        members = node[2]
        if node[-1] and isinstance(node[-1], list) and node[-1][:1] == ["retry"]:
            out.append((node[1], "retry"))
        stack.extend(reversed([m for m in members if isinstance(m, list)]))
    return out
