"""How far a flow is and when it will end: the pure arithmetic behind ``FlowProgress``.

Both a live run and a flow read back from the journal describe their atoms as
:class:`AtomTiming` rows; :func:`summarize` turns them into a :class:`FlowProgress`.

The ETA of a running flow is built from each unfinished atom's expected remaining time:

* a running atom that reported progress has an observed rate (fraction per second since
  its attempt started), which predicts its remaining time;
* an atom that finished in earlier successful runs of a flow with the same name has a
  typical duration (the median over the last runs, see :func:`learn`), which predicts it
  before it reports anything, and, for a running atom, is blended with the observed rate
  (the observation counts more as the atom gets further);
* an atom known neither way is given the mean duration per unit of weight of the atoms
  of this run that are known;
* typical durations are scaled by this run's pace (:func:`pace`): when the atoms that
  finished took twice their typical time, so will the rest, a belief that grows with the
  share of the flow done (full from half way).

The remaining times are summed and divided by how many atoms ran at once (measured in the
earlier runs, else in this one), and the ETA is never less than the longest single atom's
remaining time. A flow that cannot be estimated (nothing ran or reported yet, and no
history) has no ETA (None).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._progress import AtomProgress, FlowProgress
from ._replay import FlowState, atom_names, replay
from ._states import AtomState, FlowStatus

if TYPE_CHECKING:
    from .journal import Journal

HISTORY_RUNS = 10
"""How many of the latest successful runs of a flow name :func:`load_history` reads."""

_DONE = frozenset({AtomState.SUCCESS, AtomState.IGNORED})
_REPORTING = frozenset(
    {AtomState.RUNNING, AtomState.WAITING, AtomState.SUCCESS, AtomState.FAILURE}
)
"""States whose progress and details stand; in the others an atom is at 0.0, no details."""
_TODO = frozenset({AtomState.PENDING, AtomState.RUNNING, AtomState.RETRYING, AtomState.WAITING})


@dataclass(frozen=True, slots=True)
class AtomTiming:
    """One atom as the ETA sees it: state, progress, weight and when its attempt ran."""

    name: str
    state: AtomState
    fraction: float
    weight: float
    details: Mapping[str, Any] = field(default_factory=dict)
    started: float | None = None
    finished: float | None = None


@dataclass(frozen=True, slots=True)
class History:
    """What earlier successful runs of a flow with the same name took.

    ``durations`` maps an atom to the median duration (seconds) of its successful
    attempt; ``parallelism`` is the median of (sum of atom durations / flow duration),
    that is, how many atoms were busy at once on average; ``runs`` counts the runs used.
    """

    durations: Mapping[str, float]
    parallelism: float | None
    runs: int


def rate(fraction: float, started: float | None, now: float) -> float | None:
    """The observed rate of a running attempt in fraction per second, or None."""
    if started is None or now <= started:
        return None
    return fraction / (now - started)


def learn(runs: Iterable[FlowState]) -> History | None:
    """The typical atom durations of ``runs`` (finished flows); None if there are none."""
    samples: dict[str, list[float]] = {}
    ratios: list[float] = []
    count = 0
    for state in runs:
        count += 1
        busy = 0.0
        for name, record in state.atoms.items():
            if (
                record.state is AtomState.SUCCESS
                and record.started is not None
                and record.finished is not None
            ):
                took = max(record.finished - record.started, 0.0)
                samples.setdefault(name, []).append(took)
                busy += took
        if state.created is not None and state.updated is not None:
            elapsed = state.updated - state.created
            if elapsed > 0 and busy > 0:
                ratios.append(busy / elapsed)
    if not count:
        return None
    import statistics  # here, not at the top: it loads decimal, fractions and random

    return History(
        {name: statistics.median(values) for name, values in samples.items()},
        statistics.median(ratios) if ratios else None,
        count,
    )


async def load_history(
    journal: Journal, name: str, *, exclude: str | None = None, limit: int = HISTORY_RUNS
) -> History | None:
    """Learn from the latest ``limit`` successful runs named ``name`` in ``journal``."""
    summaries = [
        s
        for s in await journal.flows(FlowStatus.SUCCESS)
        if s.name == name and s.flow_id != exclude
    ]
    states = [replay(s.flow_id, await journal.load(s.flow_id)) for s in summaries[-limit:]]
    return learn(states)


def pace(atoms: Sequence[AtomTiming], history: History | None) -> float:
    """How much slower (>1) or faster (<1) than its history this run goes, trusted as the
    evidence grows: the ratio of the finished atoms' durations to their typical ones,
    weighed by the share of the flow's typical time they make (full trust from half way).
    1.0 without history or before any atom with a history finished."""
    if history is None:
        return 1.0
    took = typical_done = typical_all = 0.0
    for atom in atoms:
        typical = history.durations.get(atom.name)
        if typical is None or atom.weight <= 0:
            continue
        typical_all += typical
        if atom.state is AtomState.SUCCESS and atom.started is not None and atom.finished:
            took += max(atom.finished - atom.started, 0.0)
            typical_done += typical
    if typical_done <= 0 or typical_all <= 0:
        return 1.0
    trust = min(1.0, 2.0 * typical_done / typical_all)
    return 1.0 + trust * (took / typical_done - 1.0)


def _remaining(
    atom: AtomTiming, now: float, history: History | None, factor: float = 1.0
) -> tuple[float | None, float | None]:
    """(seconds this atom still needs, its whole expected duration), each None if unknown;
    its typical duration is scaled by this run's pace ``factor``."""
    typical = history.durations.get(atom.name) if history is not None else None
    if typical is not None:
        typical *= factor
    if atom.state is not AtomState.RUNNING or atom.started is None:
        return typical, typical
    elapsed = max(now - atom.started, 0.0)
    f = atom.fraction
    observed = elapsed * (1.0 - f) / f if f > 0 and elapsed > 0 else None
    if typical is None:
        if observed is None:
            return None, None
        return observed, elapsed + observed
    by_history = max(typical - elapsed, 0.0)
    if observed is None:
        return by_history, typical
    left = f * observed + (1.0 - f) * by_history
    return left, elapsed + left


def estimate(
    atoms: Sequence[AtomTiming], now: float, history: History | None = None
) -> tuple[float | None, dict[str, float | None]]:
    """The flow's ETA in seconds (None when it cannot be told) and each atom's."""
    per_atom: dict[str, float | None] = {}
    factor = pace(atoms, history)
    unknown: list[AtomTiming] = []
    per_weight: list[float] = []
    busy = 0.0
    first: float | None = None
    for atom in atoms:
        if atom.weight <= 0:
            continue
        if atom.started is not None and atom.state is not AtomState.PENDING:
            end = atom.finished if atom.finished is not None else now
            busy += max(end - atom.started, 0.0)
            first = atom.started if first is None else min(first, atom.started)
        if atom.state in _DONE:
            per_atom[atom.name] = 0.0
            if (
                atom.state is AtomState.SUCCESS
                and atom.started is not None
                and atom.finished is not None
            ):
                per_weight.append((atom.finished - atom.started) / atom.weight)
            continue
        if atom.state not in _TODO:
            per_atom[atom.name] = None
            continue
        left, whole = _remaining(atom, now, history, factor)
        per_atom[atom.name] = left
        if left is None:
            unknown.append(atom)
        if whole is not None:
            per_weight.append(whole / atom.weight)
    if unknown:
        if not per_weight:
            return None, per_atom
        import statistics

        mean = statistics.fmean(per_weight)
        for atom in unknown:
            per_atom[atom.name] = mean * atom.weight * (1.0 - atom.fraction)
    todo = [v for v in per_atom.values() if v]
    if not todo:
        return 0.0, per_atom
    parallel = history.parallelism if history is not None else None
    if parallel is None and first is not None and now > first:
        parallel = busy / (now - first)
    parallel = max(1.0, min(parallel or 1.0, float(len(todo))))
    return max(max(todo), sum(todo) / parallel), per_atom


def summarize(
    flow_id: str,
    status: FlowStatus,
    atoms: Sequence[AtomTiming],
    now: float,
    history: History | None = None,
) -> FlowProgress:
    """The :class:`FlowProgress` of a flow whose atoms are ``atoms``, at time ``now``.

    ``fraction`` is weighted by the atoms' weights over the atoms that are not IGNORED
    (an ignored atom counts as finished by being left out); a flow with no weight at all
    is 1.0 once it succeeded, else 0.0. The ETA is 0.0 for a successful flow and None for
    one that is not running (suspended, waiting, reverting or failed).
    """
    total = done = 0.0
    for atom in atoms:
        if atom.state is not AtomState.IGNORED:
            total += atom.weight
            done += atom.weight * atom.fraction
    fraction = done / total if total else 1.0 if status is FlowStatus.SUCCESS else 0.0
    per_atom: Mapping[str, float | None] = {}
    eta: float | None = None
    if status is FlowStatus.SUCCESS:
        eta = 0.0
    elif status is FlowStatus.RUNNING:
        eta, per_atom = estimate(atoms, now, history)
    out = {
        atom.name: AtomProgress(
            atom.state.value,
            atom.fraction,
            dict(atom.details) if atom.state in _REPORTING else {},
            rate(atom.fraction, atom.started, now)
            if atom.state is AtomState.RUNNING
            else None,
            atom.weight,
            per_atom.get(atom.name),
        )
        for atom in atoms
    }
    return FlowProgress(flow_id, status.value, fraction, out, eta)


def weight_of(weights: Mapping[str, float], name: str) -> float:
    """Atom ``name``'s weight as recorded: its own, or (a Map's copy) its member's."""
    weight = weights.get(name)
    if weight is None and "[" in name:
        weight = weights.get(_COPY.sub("[*]", name))
    return 1.0 if weight is None else weight


_COPY = re.compile(r"\[\d+\]")


def from_state(
    state: FlowState,
    weights: Mapping[str, float],
    now: float,
    history: History | None = None,
) -> FlowProgress:
    """The progress of a flow read back from its journal (``weights``: the non-default
    task weights recorded when it started)."""
    atoms = []
    for name, kind in atom_names(state.structure, state.atoms):
        record = state.atoms.get(name)
        weight = float(weight_of(weights, name)) if kind == "task" else 0.0
        if record is None:
            atoms.append(AtomTiming(name, AtomState.PENDING, 0.0, weight))
            continue
        running = record.state in (AtomState.RUNNING, AtomState.WAITING)
        atoms.append(
            AtomTiming(
                name,
                record.state,
                record.progress,
                weight,
                record.details,  # summarize() copies what it hands out
                record.started,
                None if running else record.finished,
            )
        )
    return summarize(state.flow_id, state.status, atoms, now, history)


def settled(report: FlowProgress) -> bool:
    """True when ``report`` can no longer change by itself: its flow is final and none of
    its atoms is running, so neither the clock nor the history enters it. Only an event
    appended later (a flow run again) changes it."""
    return FlowStatus(report.status).is_final and all(
        a.rate is None for a in report.atoms.values()
    )


def copy_progress(report: FlowProgress) -> FlowProgress:
    """``report`` with a mapping of atoms of its own, for handing out a cached report."""
    return FlowProgress(
        report.flow_id, report.status, report.fraction, dict(report.atoms), report.eta
    )


async def appended_since(journal: Journal, flow_id: str, seq: int) -> bool:
    """True when flow ``flow_id`` has an event past ``seq`` in ``journal``."""
    events = journal.events(flow_id, after=seq)
    try:
        async for _ in events:
            return True
        return False
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
