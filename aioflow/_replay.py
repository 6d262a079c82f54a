"""Replay: a flow's events folded into its state. A pure function with no I/O.

This is the heart of resumption: whatever the engine does, it records as events, and
:func:`replay` of those events gives back exactly the state the engine had (up to what
the journal kept). Every transition is checked against the one table in
:mod:`aioflow._states`, so a journal the engine could not have written is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import JournalError
from ._events import Event, EventKind
from ._failure import Failure
from ._instruments import EARLIER_RUNS
from ._states import (
    Atoms,
    AtomState,
    FlowStatus,
    IllegalTransitionError,
    check_atom,
    check_flow,
)


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
    weights: dict[str, float] = field(default_factory=dict)
    atoms: dict[str, AtomRecord] = field(default_factory=dict)
    checkpoint: str | None = None
    revert_to: str | None = None
    mail: dict[str, int] = field(default_factory=dict)
    """Topic -> the id of the last message a receive of the flow took."""
    cancel: Failure | None = None
    """Why the flow is being reverted when ``engine.cancel`` asked for it."""
    trace: dict[str, str] = field(default_factory=dict)
    """The trace context recorded where the flow was started (see aioflow.instrument)."""
    spans: list[dict[str, str]] = field(default_factory=list)
    """The carriers its latest runs' instruments returned (at most EARLIER_RUNS)."""
    last_seq: int = 0
    created: float | None = None
    updated: float | None = None


# Plain names for the members apply() tests every event against (an enum's attribute
# costs ~80 ns a lookup on Python 3.11; see aioflow._states.Atoms).
_SNAPSHOT = EventKind.SNAPSHOT
_FLOW = EventKind.FLOW
_ATOM = EventKind.ATOM
_PROGRESS = EventKind.PROGRESS
_CHECKPOINT = EventKind.CHECKPOINT


def apply(state: FlowState, event: Event) -> None:
    """Fold one event into ``state`` (in place)."""
    kind = event.kind
    if kind is _SNAPSHOT:
        if state.last_seq != 0:
            raise JournalError(
                f"flow {state.flow_id}: a snapshot at event {event.seq} follows event"
                f" {state.last_seq}; a snapshot can only be a flow's first event"
            )
        _restore_snapshot(state, event)
        return
    if event.seq != state.last_seq + 1:
        raise JournalError(
            f"flow {state.flow_id}: event {event.seq} follows {state.last_seq};"
            " the journal has a gap"
        )
    state.last_seq = event.seq
    state.updated = event.time
    try:
        if kind is _FLOW:
            _apply_flow(state, event)
        elif kind is _ATOM:
            _apply_atom(state, event)
        elif kind is _PROGRESS:
            record = state.atoms.setdefault(str(event.atom), AtomRecord())
            record.progress = event.progress or 0.0
            record.details = event.details
        elif kind is _CHECKPOINT:
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
        state.weights = {str(k): float(v) for k, v in dict(d.get("weights", {})).items()}
        state.trace = dict(d.get("trace") or {})
        state.created = event.time
    check_flow(state.flow_id, state.status, new)
    state.status = new
    state.revert_to = event.details.get("revert_to")
    migrated = event.details.get("migrated")
    if migrated is not None:  # resumed under a changed definition (see _migrate.py)
        migrate_state(state, migrated)
    cancel = event.details.get("cancel")
    if cancel is not None:
        state.cancel = Failure.from_dict(cancel)
    span = event.details.get("span")
    if span:
        state.spans = [*state.spans[1 - EARLIER_RUNS :], dict(span)]


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
    if new is Atoms.RUNNING:
        record.attempt = event.attempt
        record.started = event.time
        record.failure = None
        record.details = event.details  # a part's deadline, on its controller's
    elif new is Atoms.SUCCESS:
        details = event.details
        record.result = details.get("result")
        record.finished = event.time
        mail = details.get("mail")
        if mail is not None:  # a receive took message (topic, id)
            topic, taken = str(mail[0]), int(mail[1])
            if taken > state.mail.get(topic, 0):
                state.mail[topic] = taken
    elif new in (Atoms.FAILURE, Atoms.REVERT_FAILURE):
        record.failure = Failure.from_dict(event.details["failure"])
        record.finished = event.time
    elif new is Atoms.RETRYING:
        record.retry_until = float(event.details.get("until", 0.0))
    elif new is Atoms.WAITING:
        record.details = event.details  # the wait's deadline, info and token nonce
    elif new is Atoms.PENDING:
        record.result = None
        record.progress = 0.0
    elif new is Atoms.REVERTED:
        record.progress = 0.0
    elif new is Atoms.REVERTING and "failure" in event.details:
        # A part that passed its deadline: its controller carries the part's failure.
        record.failure = Failure.from_dict(event.details["failure"])


def migrate_state(state: FlowState, record: Mapping[str, Any]) -> None:
    """Fold a migration ``record`` (made by ``aioflow._migrate.plan``) into ``state``: the
    atoms renamed (and those dropped, which never started, forgotten), the new name,
    structure, fingerprint and weights."""
    renames = dict(record.get("renames") or {})
    dropped = set(record.get("dropped") or ())
    state.atoms = {
        renames.get(name, name): atom for name, atom in state.atoms.items() if name not in dropped
    }
    if state.checkpoint is not None:
        state.checkpoint = renames.get(state.checkpoint, state.checkpoint)
    state.fingerprint = str(record["to"])
    structure = record["structure"]
    state.structure = json.loads(structure) if isinstance(structure, str) else list(structure)
    state.name = str(record.get("name") or state.name)
    state.weights = {str(k): float(v) for k, v in dict(record.get("weights") or {}).items()}


def replay(flow_id: str, events: Iterable[Event]) -> FlowState:
    """The state of flow ``flow_id`` after ``events`` (its journal, or a prefix of it)."""
    state = FlowState(flow_id)
    for event in events:
        apply(state, event)
    return state


# Snapshots ---------------------------------------------------------------------------
#
# A snapshot holds everything replay keeps, so that replaying [snapshot, *later events]
# gives exactly the state that replaying the whole log gives.

_RECORD_FIELDS = (
    "attempt",
    "result",
    "progress",
    "details",
    "started",
    "finished",
    "retry_until",
)


def snapshot(state: FlowState, time: float) -> Event:
    """The SNAPSHOT event that stands for every event folded into ``state``."""
    atoms = {}
    for name, record in state.atoms.items():
        saved: dict[str, Any] = {f: getattr(record, f) for f in _RECORD_FIELDS}
        saved["details"] = dict(record.details)
        saved["state"] = record.state.value
        saved["failure"] = None if record.failure is None else record.failure.to_dict()
        atoms[name] = saved
    body = {
        "name": state.name,
        "status": state.status.value,
        "ref": state.ref,
        "fingerprint": state.fingerprint,
        "structure": state.structure,
        "inputs": state.inputs,
        "weights": state.weights,
        "checkpoint": state.checkpoint,
        "revert_to": state.revert_to,
        "mail": state.mail,
        "cancel": None if state.cancel is None else state.cancel.to_dict(),
        "trace": state.trace,
        "spans": state.spans,
        "created": state.created,
        "updated": state.updated,
        "atoms": atoms,
    }
    return Event(state.flow_id, state.last_seq, time, EventKind.SNAPSHOT, details={"state": body})


def _restore_snapshot(state: FlowState, event: Event) -> None:
    try:
        body = event.details["state"]
        state.name = str(body["name"])
        state.status = FlowStatus(body["status"])
        state.ref = body["ref"]
        state.fingerprint = str(body["fingerprint"])
        state.structure = list(body["structure"])
        state.inputs = dict(body["inputs"])
        state.weights = {str(k): float(v) for k, v in dict(body["weights"]).items()}
        state.checkpoint = body["checkpoint"]
        state.revert_to = body["revert_to"]
        state.mail = {str(k): int(v) for k, v in dict(body.get("mail") or {}).items()}
        cancel = body.get("cancel")
        state.cancel = None if cancel is None else Failure.from_dict(cancel)
        state.trace = dict(body.get("trace") or {})
        state.spans = [dict(span) for span in body.get("spans") or []]
        state.created = body["created"]
        state.updated = body["updated"]
        for name, saved in dict(body["atoms"]).items():
            record = AtomRecord(state=AtomState(saved["state"]))
            for f in _RECORD_FIELDS:
                setattr(record, f, saved[f])
            failure = saved["failure"]
            record.failure = None if failure is None else Failure.from_dict(failure)
            state.atoms[name] = record
    except (KeyError, TypeError, ValueError) as exc:
        raise JournalError(
            f"flow {state.flow_id}: snapshot at event {event.seq} is damaged ({exc})"
        ) from exc
    state.last_seq = event.seq


def compaction_cut(events: list[Event], keep: int | None, before: float | None) -> int:
    """How many of ``events`` (a flow's log, in order) compaction folds into a snapshot.

    History is kept from the ``keep``-th last checkpoint event (reached, or reverted
    to) on, and from the last checkpoint event at time ``before`` or earlier on, so that
    nothing newer than ``before`` is folded (whichever keeps more). Nothing is folded
    when that leaves at most one event to fold (it may already be a snapshot).
    """
    reached = [i for i, e in enumerate(events) if e.kind is EventKind.CHECKPOINT]
    if not reached:
        return 0
    cuts = []
    if keep is not None:
        cuts.append(reached[-keep] if keep <= len(reached) else 0)
    if before is not None:
        older = [i for i in reached if events[i].time <= before]
        cuts.append(older[-1] if older else 0)
    cut = min(cuts) if cuts else reached[-1]
    return cut if cut > 1 else 0


UNPACK_ONE = "unpack"
"""Marks, in a flow's recorded structure, a task that provides a tuple of one symbol
(written by compile, read here)."""


EXPANDED = (AtomState.SUCCESS, AtomState.REVERTING, AtomState.REVERTED, AtomState.REVERT_FAILURE)
"""States of a Map's controller whose result is the number of copies it grew."""
_DONE = (AtomState.SUCCESS, AtomState.IGNORED)


def _same(name: str) -> str:
    return name


def _retried(node: list[Any]) -> bool:
    return bool(node[-1]) and isinstance(node[-1], list) and node[-1][:1] == ["retry"]


def map_count(atoms: Mapping[str, AtomRecord] | None, name: str) -> int:
    """How many copies Map ``name`` grew, as its controller journaled (0 before)."""
    record = None if atoms is None else atoms.get(name)
    if record is None or record.state not in EXPANDED or not isinstance(record.result, int):
        return 0
    return record.result


def copy_names(node: list[Any], name: str, i: int) -> Callable[[str], str]:
    """How the atoms of copy ``i`` of Map ``node`` (a recorded ``["map", ...]``, named
    ``name`` once renamed) are named: the member's own atom (a task, or a flow's retry
    controller) ``name[i]``, the others ``name[i].atom``."""
    member = node[5]
    own = member[0] == "task" or (member[0] != "checkpoint" and _retried(member))
    root = member[1] if own else None
    item = f"{name}[{i}]"
    return lambda atom: item if atom == root else f"{item}.{atom}"


def atom_names(
    structure: list[Any], atoms: Mapping[str, AtomRecord] | None = None
) -> list[tuple[str, str]]:
    """Every atom of a recorded flow structure as (name, kind), in definition order;
    kind is "task", "checkpoint", "retry" or "map". With ``atoms`` (the journal's
    records), the copies each Map grew follow it."""
    out: list[tuple[str, str]] = []
    if structure:
        _names(structure, atoms, _same, out)
    return out


def _names(
    node: list[Any],
    atoms: Mapping[str, AtomRecord] | None,
    rename: Callable[[str], str],
    out: list[tuple[str, str]],
) -> None:
    kind = node[0]
    if kind in ("task", "checkpoint"):
        out.append((rename(node[1]), kind))
        return
    if kind == "retry":
        return
    if kind == "map":
        name = rename(node[1])
        out.append((name, "map"))
        for i in range(map_count(atoms, name)):
            _names(node[5], atoms, copy_names(node, name, i), out)
        return
    if _retried(node):
        out.append((rename(node[1]), "retry"))
    for m in node[2]:
        if isinstance(m, list):
            _names(m, atoms, rename, out)


def part_deadlines(state: FlowState) -> list[float]:
    """The deadlines of the parts (flows with ``timeout=``) that started and have not
    finished: when a resting flow must be run to fail such a part."""
    out: list[float] = []
    stack = [state.structure] if state.structure else []
    while stack:
        node = stack.pop()
        if not isinstance(node, list) or len(node) < 3 or node[0] in ("task", "checkpoint"):
            continue
        members = [m for m in node[2] if isinstance(m, list)]
        stack.extend(members)
        if not (isinstance(node[-1], list) and node[-1][:1] == ["retry"]):
            continue
        record = state.atoms.get(str(node[1]))
        deadline = None if record is None else record.details.get("deadline")
        if deadline is None or record is None or record.state is not AtomState.SUCCESS:
            continue
        inside = atom_names(["linear", "", members])
        finished = (AtomState.SUCCESS, AtomState.IGNORED)
        if any(
            (r := state.atoms.get(name)) is None or r.state not in finished for name, _ in inside
        ):
            out.append(float(deadline))
    return out


def provided(
    structure: list[Any], *, controllers: bool = True
) -> list[tuple[str, list[str], bool]]:
    """What each atom of a recorded structure provides, in definition order: (name, the
    symbols, whether it unpacks its result). Tasks, and (with ``controllers``) the retry
    controllers of parts with ``Retry.for_each`` (their value under its symbol)."""
    order: list[tuple[str, list[str], bool]] = []
    stack = [structure] if structure else []
    while stack:
        node = stack.pop()
        if not isinstance(node, list) or not node:
            continue
        kind = node[0]
        if kind == "task":
            provides = [str(p) for p in node[3]]
            # One symbol is unpacked only when marked so (provides=("x",)), see compile.
            unpack = len(provides) > 1 or node[4:] == [UNPACK_ONE]
            order.append((str(node[1]), provides, unpack))
        elif kind in ("linear", "unordered", "graph") and len(node) > 2:
            last = node[-1]
            is_retry = isinstance(last, list) and last[:1] == ["retry"]
            if controllers and is_retry and last[2:3] and last[2]:
                order.append((str(node[1]), [str(p) for p in last[2]], False))
            stack.extend(reversed([m for m in node[2] if isinstance(m, list)]))
    return order


def published(state: FlowState) -> dict[str, Any]:
    """The symbols the flow's finished tasks published, read from the recorded structure
    (a task that provides a tuple of symbols unpacks its result, from a mapping or a
    sequence; a symbol provided twice takes the later provider's value; a Map whose
    copies all finished, the list of their results)."""
    return _published(state.structure, state.atoms, _same)


def _published(
    structure: list[Any], atoms: Mapping[str, AtomRecord], rename: Callable[[str], str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, provides, unpack in provided(structure, controllers=False):
        record = atoms.get(rename(name))
        if record is None or record.state is not AtomState.SUCCESS or not provides:
            continue
        out.update(_unpacked(record.result, provides, unpack))
    for node in maps_of(structure):
        name = rename(node[1])
        record = atoms.get(name)
        if node[4] is None or record is None or record.state is not AtomState.SUCCESS:
            continue
        values: list[Any] = []
        for i in range(map_count(atoms, name)):
            names = copy_names(node, name, i)
            inside: list[tuple[str, str]] = []
            _names(node[5], atoms, names, inside)
            if any((r := atoms.get(n)) is None or r.state not in _DONE for n, _ in inside):
                break
            member = node[5]
            if member[0] == "task":
                own = atoms[names(member[1])]
                provides = [str(p) for p in member[3]]
                unpack = len(provides) > 1 or member[4:] == [UNPACK_ONE]
                if own.state is not AtomState.SUCCESS:
                    values.append(None)
                elif unpack:
                    values.append(_unpacked(own.result, provides, True))
                else:
                    values.append(own.result)
                continue
            symbols = _published(member, atoms, names)
            given = _gives(member)
            if len(given) == 1:
                values.append(symbols.get(given[0]))
            else:
                values.append({s: symbols[s] for s in given if s in symbols} or None)
        else:
            out[node[4]] = values
    return out


def _unpacked(result: Any, provides: list[str], unpack: bool) -> dict[str, Any]:
    if not unpack:
        return {provides[0]: result}
    if isinstance(result, Mapping):
        return {p: result[p] for p in provides if p in result}
    if isinstance(result, list | tuple) and len(result) == len(provides):
        return dict(zip(provides, result, strict=True))
    return {}


def maps_of(structure: list[Any]) -> list[list[Any]]:
    """The Maps of a recorded structure, those inside Maps' members left out."""
    out: list[list[Any]] = []
    stack = [structure] if structure else []
    while stack:
        node = stack.pop()
        if not isinstance(node, list) or not node:
            continue
        if node[0] == "map":
            out.append(node)
        elif node[0] in ("linear", "unordered", "graph") and len(node) > 2:
            stack.extend(reversed([m for m in node[2] if isinstance(m, list)]))
    return out


def _gives(member: list[Any]) -> list[str]:
    """The symbols a recorded member provides, in the order it provides them."""
    symbols = [s for _, provides, _ in provided(member, controllers=False) for s in provides]
    symbols += [str(node[4]) for node in maps_of(member) if node[4] is not None]
    return list(dict.fromkeys(symbols))
