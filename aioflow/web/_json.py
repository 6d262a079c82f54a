"""What the app shows: the JSON forms of flows, events and jobs.

None shows what only the engine may see (a flow's inputs, a wait's token or its nonce;
only ``GET /jobs/{id}`` shows a job's inputs), and every value is made something a
browser can parse.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._events import Event, EventKind
from .._failure import CANCEL, Failure
from .._kernel.waits import wait_fields
from .._progress import FlowProgress
from .._replay import EXPANDED, FlowState, atom_names, map_count, published
from .._states import AtomState, FlowStatus
from ..journal import FlowSummary

if TYPE_CHECKING:
    from ..jobs import Job


def _json_value(value: Any) -> Any:
    """``value`` made JSON-able for a response: what JSON cannot hold becomes text, and
    a NaN or infinity (which no browser parses) becomes null."""
    return json.loads(json.dumps(value, default=str), parse_constant=lambda _: None)


def iso(seconds: float | None) -> str | None:
    """A time in seconds since the epoch as ISO 8601 text in UTC (None stays None)."""
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")


def _public_details(event: Event) -> dict[str, Any]:
    """An event's details without what only the engine may see: a wait's token nonce, a
    flow's inputs (in its first event, and in a snapshot)."""
    details = {k: v for k, v in event.details.items() if k not in ("nonce", "token")}
    if event.kind is EventKind.FLOW:
        details.pop("inputs", None)
    elif event.kind is EventKind.SNAPSHOT and isinstance(details.get("state"), Mapping):
        body = {k: v for k, v in details["state"].items() if k != "inputs"}
        atoms = body.get("atoms")
        if isinstance(atoms, Mapping):
            body["atoms"] = {name: _without_nonce(saved) for name, saved in atoms.items()}
        details["state"] = body
    return details


def _without_nonce(saved: Any) -> Any:
    if not isinstance(saved, Mapping) or not isinstance(saved.get("details"), Mapping):
        return saved
    inner = {k: v for k, v in saved["details"].items() if k not in ("nonce", "token")}
    return {**saved, "details": inner}


def event_json(event: Event) -> dict[str, Any]:
    """The JSON form of an event, as ``/flows/{id}/events`` sends it (no inputs, no
    nonce)."""
    return {
        "flow_id": event.flow_id,
        "seq": event.seq,
        "time": event.time,
        "kind": event.kind.value,
        "atom": event.atom,
        "state": None if event.state is None else event.state.value,
        "attempt": event.attempt,
        "progress": event.progress,
        "details": _json_value(_public_details(event)),
    }


def summary_json(summary: FlowSummary) -> dict[str, Any]:
    """One flow of ``GET /flows``."""
    return {
        "flow_id": summary.flow_id,
        "name": summary.name,
        "status": summary.status.value,
        "created": iso(summary.created),
        "updated": iso(summary.updated),
        "owner": summary.owner,
        "orphaned": summary.orphaned,
    }


def failure_json(failure: Failure) -> dict[str, Any]:
    return {"type": failure.exc_type, "message": failure.message, "traceback": failure.traceback}


def job_json(job: Job, *, inputs: bool = False) -> dict[str, Any]:
    """A job as ``GET /jobs`` lists it; with ``inputs``, as ``GET /jobs/{id}`` shows it."""
    shown: dict[str, Any] = {
        "id": job.id,
        "name": job.name,
        "flow": job.flow,
        "state": job.state.value,
        "priority": job.priority,
        "owner": job.owner,
        "attempts": job.attempts,
        "created": iso(job.created),
        "updated": iso(job.updated),
        "available_at": iso(job.available_at),
        "status": None if job.status is None else job.status.value,
        "failures": {key: failure_json(f) for key, f in job.failures.items()},
    }
    if inputs:
        shown["inputs"] = job.inputs
    return _json_value(shown)  # type: ignore[no-any-return]


def _failure_history(
    state: FlowState, events: Sequence[Event]
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """(failures, attempts): the failure each atom holds now with its attempt (and a
    cancelled flow's under ``"<cancel>"``), and every failed attempt the journal still
    has (a compaction folds older ones away), oldest first."""
    attempts: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        found = _failure_in(event)
        if found is not None:
            key, failure = found
            attempts.setdefault(key, []).append(
                {
                    "attempt": event.attempt if event.atom is not None else None,
                    "state": None if event.state is None else event.state.value,
                    "time": iso(event.time),
                    **failure_json(failure),
                }
            )
    failures: dict[str, Any] = {}
    held: list[tuple[str, Failure, int | None, str]] = [
        (name, r.failure, r.attempt, r.state.value)
        for name, r in state.atoms.items()
        if r.failure is not None
    ]
    if state.cancel is not None:
        held.append((CANCEL, state.cancel, None, FlowStatus.REVERTING.value))
    for key, failure, attempt, where in held:
        failures[key] = {**failure_json(failure), "attempt": attempt}
        seen = attempts.setdefault(key, [])
        if not any(a["attempt"] == attempt for a in seen):  # its event was compacted
            seen.append({"attempt": attempt, "state": where, "time": None, **failure_json(failure)})
    return failures, attempts


def _failure_in(event: Event) -> tuple[str, Failure] | None:
    """The failure an event records, with its key: an atom's failed attempt (or
    revert), or the cancel of the whole flow."""
    if event.kind is EventKind.ATOM and event.atom is not None:
        data, key = event.details.get("failure"), event.atom
    elif event.kind is EventKind.FLOW:
        data, key = event.details.get("cancel"), CANCEL
    else:
        return None
    if not isinstance(data, Mapping):
        return None
    return key, Failure.from_dict(data)


def flow_json(
    state: FlowState,
    events: Sequence[Event],
    summary: FlowSummary,
    progress: FlowProgress,
) -> dict[str, Any]:
    """What ``GET /flows/{id}`` shows of a flow (never its inputs, a token or a nonce)."""
    names = atom_names(state.structure, state.atoms)
    maps = {name for name, kind in names if kind == "map"}
    atoms = {}
    for name, atom in progress.atoms.items():
        record = state.atoms.get(name)
        started = None if record is None else record.started
        ended = None if record is None else record.finished
        if started is not None and ended is not None and ended < started:
            ended = None  # the end of an earlier attempt: this one runs
        atoms[name] = {
            "state": atom.state,
            "fraction": atom.fraction,
            "eta": atom.eta,
            "details": {k: v for k, v in atom.details.items() if k not in ("nonce", "token")},
            "attempt": 0 if record is None else record.attempt,
            "started": iso(started),
            "ended": iso(ended),
            "duration": None if started is None or ended is None else ended - started,
        }
        if name in maps:  # how many copies the Map grew (None before it read its list)
            atoms[name]["copies"] = (
                map_count(state.atoms, name)
                if record is not None and record.state in EXPANDED
                else None
            )
    waiting = []
    for name, record in state.atoms.items():
        if record.state is AtomState.WAITING:
            _, deadline, info = wait_fields(record.details)
            waiting.append({"atom": name, "deadline": deadline, "info": info})
    failures, attempts = _failure_history(state, events)
    checkpoints = [name for name, kind in names if kind == "checkpoint"]
    shown = {
        "flow_id": state.flow_id,
        "name": summary.name or state.name,
        "status": state.status.value,
        "created": iso(summary.created),
        "updated": iso(summary.updated),
        "owner": summary.owner,
        "orphaned": summary.orphaned,
        "progress": {"fraction": progress.fraction, "eta": progress.eta, "atoms": atoms},
        "waiting": waiting,
        "results": published(state) if state.status.is_final else None,
        "failures": failures,
        "attempts": attempts,
        "checkpoints": checkpoints,
        "checkpoint": state.checkpoint,
        "structure": state.structure,
    }
    return _json_value(shown)  # type: ignore[no-any-return]

