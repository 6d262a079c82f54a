"""The commands that read or act on a journal's flows: ``flows``, ``show``, ``events``,
``cancel`` and ``check``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, cast

from .._engine import Engine
from .._events import Event, EventKind
from .._failure import CANCEL, Failure
from .._progress import FlowProgress
from .._replay import EXPANDED, FlowState, atom_names, map_count, published, replay
from .._states import AtomState, FlowStatus
from ..journal import FlowSummary, open_journal
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_ORPHANED,
    UsageError,
    _existing_journal,
    _journal_option,
    _orphan_report,
    _rebuild_advice,
    _registry,
    _renames,
)
from ._format import (
    _console,
    _detail,
    _details_text,
    _duration,
    _iso,
    _print_json,
    _quiet_logs,
    _scrub,
    _short,
    _utc,
    _when,
)

# --------------------------------------------------------------------------- flows


async def cmd_flows(args: argparse.Namespace) -> int:
    """List the journal's flows, newest last, with who runs each (ORPHANED when no live
    engine runs a RUNNING or REVERTING flow); ``--json``: one JSON document."""
    from rich.table import Table

    url = _existing_journal(args)
    status = None
    if args.status is not None:
        try:
            status = FlowStatus(args.status.upper())
        except ValueError:
            names = ", ".join(s.value for s in FlowStatus)
            raise UsageError(f"unknown status {args.status!r}; one of {names}") from None
    if args.json:
        _quiet_logs()
    rows: list[tuple[FlowSummary, FlowProgress]] = []
    async with Engine(url) as engine:
        summaries = await engine.journal.flows(status)
        for summary in summaries[-args.limit :] if args.limit else summaries:
            rows.append((summary, await engine.progress(summary.flow_id)))
    if args.json:
        _print_json({"flows": [_summary_document(s, p) for s, p in rows]})
        return EXIT_OK
    table = Table("id", "name", "status", "progress", "started (UTC)", "owner")
    table.columns[0].no_wrap = True
    table.columns[2].no_wrap = True
    for summary, progress in rows:
        mark = _status_mark(summary)
        table.add_row(
            summary.flow_id,
            summary.name,
            summary.status.value + (f" [bold red]{mark}[/]" if mark else ""),
            f"{progress.fraction * 100:.0f}%",
            _when(summary.created),
            summary.owner or "",
        )
    console = _console()
    if not table.rows:
        console.print(f"no flows in {url}")
    else:
        console.print(table)
    return EXIT_OK


def _status_mark(summary: FlowSummary) -> str:
    """What to say next to a flow's status: ORPHANED when no live engine runs it."""
    return "ORPHANED" if summary.orphaned else ""


def _summary_document(summary: FlowSummary, progress: FlowProgress) -> dict[str, Any]:
    """A flow of ``flows --json``."""
    return {
        "flow_id": summary.flow_id,
        "name": summary.name,
        "status": summary.status.value,
        "reference": summary.ref,
        "progress": progress.fraction,
        "eta": progress.eta,
        "created": _iso(summary.created),
        "updated": _iso(summary.updated),
        "owner": summary.owner,
        "orphaned": summary.orphaned,
    }


# ---------------------------------------------------------------------------- show


def _owner_line(summary: FlowSummary, now: float) -> str:
    """Who runs the flow, its generation and the owner's lease, for ``show``."""
    generation = f"  generation {summary.generation}"
    if summary.owner is None:
        return f"owner none{generation}" + (" (no engine runs it)" if summary.orphaned else "")
    if summary.lease_expires is None:
        lease = "no heartbeat on record"
    elif summary.lease_expires <= now:
        lease = (
            f"lease expired at {_utc(summary.lease_expires)}"
            f" ({_duration(now - summary.lease_expires)} ago)"
        )
    else:
        lease = f"lease until {_utc(summary.lease_expires)} unless renewed"
    return f"owner {summary.owner}{generation}  {lease}"


def innermost_frame(failure: Failure) -> str:
    """Where ``failure`` was raised: its traceback's last frame (``File "...", line N, in
    f``), or "" without a traceback."""
    frames = [
        line.strip() for line in failure.traceback.splitlines() if line.strip().startswith('File "')
    ]
    return frames[-1] if frames else ""


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptFailure:
    """One failed attempt of an atom, a revert that failed, or the flow's cancellation
    (atom ``"<cancel>"``), as ``show`` reports it."""

    atom: str
    attempt: int
    time: float | None
    what: str
    """``failed``, ``revert failed`` or ``cancelled``."""
    failure: Failure

    @property
    def where(self) -> str:
        return innermost_frame(self.failure)

    def document(self) -> dict[str, Any]:
        return {
            "atom": self.atom,
            "attempt": self.attempt,
            "time": _iso(self.time),
            "what": self.what,
            "type": self.failure.exc_type,
            "message": self.failure.message,
            "traceback": self.failure.traceback,
        }


def attempt_failures(state: FlowState, events: Iterable[Event]) -> list[AttemptFailure]:
    """Every failure the journal holds, in the order they happened: each failed attempt
    of each atom, each failed revert, and a cancellation. History that a compaction
    folded keeps only each atom's last failure, which is reported with its end time."""
    found: list[AttemptFailure] = []
    seen: set[tuple[str, int, str]] = set()

    def add(atom: str, attempt: int, time: float | None, what: str, data: object) -> None:
        key = (atom, attempt, what)
        if key not in seen:
            seen.add(key)
            failure = data if isinstance(data, Failure) else Failure.from_dict(cast(Any, data))
            found.append(AttemptFailure(atom, attempt, time, what, failure))

    folded: list[AttemptFailure] = []
    for event in events:
        if event.kind is EventKind.ATOM and event.atom is not None:
            data = event.details.get("failure")
            if isinstance(data, Mapping):
                what = "revert failed" if event.state is AtomState.REVERT_FAILURE else "failed"
                add(event.atom, event.attempt, event.time, what, data)
        elif event.kind is EventKind.FLOW and isinstance(event.details.get("cancel"), Mapping):
            add(CANCEL, 0, event.time, "cancelled", event.details["cancel"])
        elif event.kind is EventKind.SNAPSHOT:
            before = len(found)
            for name, record in state.atoms.items():
                if record.failure is not None:
                    what = "revert failed" if record.state is AtomState.REVERT_FAILURE else "failed"
                    add(name, record.attempt, record.finished, what, record.failure)
            if state.cancel is not None:
                add(CANCEL, 0, None, "cancelled", state.cancel)
            folded, found[before:] = found[before:], []
    # What a snapshot folded is older than any event after it; it is put first.
    return folded + found


async def cmd_show(args: argparse.Namespace) -> int:
    """Show one flow: who runs it (its owner, generation and lease; ORPHANED when no live
    engine does), its atoms, their states, attempts, progress and durations, the
    checkpoints it reached, and each failed attempt's error; ``--json``: one document."""
    from rich.table import Table

    url = _existing_journal(args)
    if args.json:
        _quiet_logs()
    async with Engine(url) as engine:
        events = await engine.journal.load(args.flow_id)
        progress = await engine.progress(args.flow_id)
        summary = await engine.journal.summary(args.flow_id)
    state = replay(args.flow_id, events)
    now = time.time()
    atoms: list[dict[str, Any]] = []
    for name, kind in atom_names(state.structure, state.atoms):
        record = state.atoms.get(name)
        atom = progress.atoms.get(name)
        if record is None or atom is None:
            atoms.append(
                {
                    "name": name,
                    "kind": kind,
                    "state": "PENDING",
                    "attempts": 0,
                    "progress": 0.0,
                    "started": None,
                    "finished": None,
                    "duration": None,
                    "details": {},
                }
            )
            continue
        took = None
        if record.started is not None and atom.state not in ("PENDING", "IGNORED"):
            running = atom.state in ("RUNNING", "WAITING")
            end = now if running or record.finished is None else record.finished
            took = end - record.started
        atoms.append(
            {
                "name": name,
                "kind": kind,
                "state": atom.state,
                "attempts": record.attempt,
                "progress": atom.fraction,
                "started": _iso(record.started),
                "finished": _iso(record.finished),
                "duration": took,
                "details": (
                    {"copies": map_count(state.atoms, name)}
                    if kind == "map" and record.state in EXPANDED
                    else _scrub(atom.details)
                ),
            }
        )
    reached = [
        (str(e.details["reached"]), e.time)
        for e in events
        if e.kind is EventKind.CHECKPOINT and e.details.get("reached")
    ]
    failures = attempt_failures(state, events)
    if args.json:
        _print_json(
            {
                "flow_id": state.flow_id,
                "name": state.name,
                "status": state.status.value,
                "reference": state.ref,
                "created": _iso(state.created),
                "updated": _iso(state.updated),
                "owner": summary.owner,
                "generation": summary.generation,
                "lease_expires": _iso(summary.lease_expires),
                "orphaned": summary.orphaned,
                "progress": {"fraction": progress.fraction, "eta": progress.eta},
                "atoms": atoms,
                "checkpoints": [{"name": n, "time": _iso(t)} for n, t in reached],
                "failures": [f.document() for f in failures],
                "results": published(state) if state.status is FlowStatus.SUCCESS else None,
            }
        )
        return EXIT_OK
    console = _console()
    mark = _status_mark(summary)
    console.print(
        f"flow {state.flow_id}  {state.name}  {state.status.value}" + (f"  {mark}" if mark else ""),
        markup=False,
    )
    console.print(
        f"  started {_when(state.created)}  updated {_when(state.updated)}"
        f"  progress {progress.fraction * 100:.0f}%"
        + (f"  ETA {_duration(progress.eta)}" if progress.eta and not summary.orphaned else ""),
        markup=False,
    )
    console.print(f"  {_owner_line(summary, now)}", markup=False, soft_wrap=True)
    if summary.orphaned:
        for line in _orphan_report(args, summary, now)[1:]:
            console.print(f"  {line}", markup=False, soft_wrap=True)
    if state.ref:
        console.print(f"  reference {state.ref}", markup=False)
    table = Table("atom", "kind", "state", "attempts", "progress", "duration", "details")
    for row in atoms:
        table.add_row(
            row["name"],
            row["kind"],
            row["state"],
            str(row["attempts"]),
            f"{row['progress'] * 100:.0f}%",
            _duration(row["duration"]),
            _details_text(row["details"]),
        )
    console.print(table)
    if reached:
        console.print("checkpoints reached:")
        for name, at in reached:
            console.print(f"  {name}  at {_when(at)}", markup=False)
    if failures:
        console.print("failures:")
    for f in failures:
        attempt = f"  attempt {f.attempt}" if f.atom != CANCEL else ""
        when = f" at {_when(f.time)}" if f.time is not None else ""
        console.print(f"  {f.atom}{attempt}  {f.what}{when}", markup=False, soft_wrap=True)
        console.print(f"    {f.failure}", markup=False, soft_wrap=True)
        if args.traceback and f.failure.traceback:
            for line in f.failure.traceback.rstrip().splitlines():
                console.print(f"      {line}", markup=False, soft_wrap=True, highlight=False)
        elif f.where:
            console.print(f"    {f.where}", markup=False, soft_wrap=True, highlight=False)
    if failures and not args.traceback and any(f.failure.traceback for f in failures):
        console.print("  (--traceback shows the full tracebacks)")
    return EXIT_OK


# -------------------------------------------------------------------------- events


def _event_document(event: Event) -> dict[str, Any]:
    """An event of ``events --json``: every field, the time in UTC, no token nonces."""
    state = event.state
    return {
        "flow_id": event.flow_id,
        "seq": event.seq,
        "time": _iso(event.time),
        "kind": event.kind.value,
        "atom": event.atom,
        "state": None if state is None else state.value,
        "attempt": event.attempt,
        "progress": event.progress,
        "details": _scrub(event.details),
    }


_NOT_SHOWN = ("structure", "fingerprint", "weights", "exc_types")


def _event_details(event: Event) -> str:
    """The gist of an event's details on one line: a failure's type and message, a
    result, input names (not values), progress; never a nonce or token."""
    details = dict(_scrub(event.details))
    parts: list[str] = []
    if event.kind is EventKind.PROGRESS and event.progress is not None:
        parts.append(f"{event.progress * 100:.0f}%")
    if event.kind is EventKind.SNAPSHOT:
        body = details.get("state")
        status = body.get("status") if isinstance(body, Mapping) else None
        return f"history folded (status then {status})"
    for key in ("failure", "cancel"):
        data = details.pop(key, None)
        if isinstance(data, Mapping):
            parts.append(f"{data.get('exc_type')}: {data.get('message')}")
    for key in _NOT_SHOWN:
        details.pop(key, None)
    inputs = details.pop("inputs", None)
    if isinstance(inputs, Mapping) and inputs:
        parts.append("inputs=" + ",".join(str(k) for k in inputs))
    if "result" in details:
        parts.append(f"result={_short(repr(details.pop('result')), 40)}")
    parts.extend(f"{k}={_detail(k, v)}" for k, v in details.items() if v is not None)
    return _short("  ".join(parts), 160)


_EVENT_HEADER = (
    f"{'SEQ':>5}  {'TIME (UTC)':29}  {'KIND':10}  {'ATOM':20}  {'STATE':14}  ATT  DETAILS"
)


def _event_line(event: Event) -> str:
    state = "-" if event.state is None else event.state.value
    return (
        f"{event.seq:>5}  {_iso(event.time):29}  {event.kind.value:10}  {event.atom or '-':20}"
        f"  {state:14}  {event.attempt:>3}  {_event_details(event)}"
    ).rstrip()


async def cmd_events(args: argparse.Namespace) -> int:
    """Print a flow's events from its journal, one a line (``--json``: JSON lines);
    with ``--follow``, then the new ones as they come, until the flow rests (status 3
    when it is orphaned: nothing will move it on)."""
    url = _existing_journal(args)
    _quiet_logs()
    engine = Engine(url)

    async def committed() -> AsyncIterator[Event]:
        for event in await engine.journal.load(args.flow_id):
            yield event

    header = not args.json
    async with engine.journal:
        source = engine.watch(args.flow_id) if args.follow else committed()
        async for event in source:
            if header:
                print(_EVENT_HEADER)
                header = False
            if args.json:
                _print_json(_event_document(event), lines=True)
            else:
                print(_event_line(event), flush=True)
        summary = await engine.journal.summary(args.flow_id)
    if args.follow and summary.orphaned:
        for line in _orphan_report(args, summary, time.time()):
            print(line, file=sys.stderr)
        return EXIT_ORPHANED
    return EXIT_OK


# ---------------------------------------------------------------- cancel and check


async def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a flow for good: it is stopped wherever it runs and reverted. Status 0 once
    it is reverted or its owner was asked to; 1 when a revert failed or the flow had
    already ended; 2 for an unknown flow."""
    url = _existing_journal(args)
    _quiet_logs()
    engine = Engine(url, registry=_registry(args))
    # Not entered: a resting flow this engine can build is reverted before cancel returns.
    await engine.cancel(args.flow_id)
    async with open_journal(url) as journal:
        summary = await journal.summary(args.flow_id)
    flow_id, status = args.flow_id, summary.status
    if status is FlowStatus.REVERTED:
        print(f"flow {flow_id} cancelled: REVERTED (what it had done was undone)")
        return EXIT_OK
    if status is FlowStatus.FAILED:
        print(
            f"flow {flow_id} cancelled, but a revert failed: FAILED; see  aioflow show"
            f" {flow_id}{_journal_option(args)}"
        )
        return EXIT_FAILED
    if summary.owner is not None and not summary.orphaned:
        print(
            f"flow {flow_id}: cancel requested; engine {summary.owner}, which runs it, reverts"
            f" it within seconds. Follow it with  aioflow watch {flow_id}{_journal_option(args)}"
        )
    else:
        why, how = _rebuild_advice(args, flow_id, summary.ref)
        print(
            f"flow {flow_id}: cancel requested. It is {status.value} and {why}, so this"
            f" command cannot rebuild it to revert it; its next resume does:  {how}"
        )
    return EXIT_OK


async def cmd_check(args: argparse.Namespace) -> int:
    """Whether a flow can be migrated to the definition REF (``resume --migrate``): status
    0 when it can, 1 (listing every conflict) when it cannot."""
    url = _existing_journal(args)
    _quiet_logs()
    renames = _renames(args)
    engine = Engine(url, registry=_registry(args))
    conflicts = await engine.check_migration(args.flow_id, args.ref, renames=renames or None)
    if not conflicts:
        print(f"flow {args.flow_id} can be migrated to {args.ref}")
        return EXIT_OK
    print(f"flow {args.flow_id} cannot be migrated to {args.ref}:")
    for line in conflicts:
        print(f"  - {line}")
    return EXIT_FAILED
