"""Properties of scheduling, resumption, replay and reverting, checked on random flows.

Every flow here is a random DAG from :func:`tests.strategies.dags`: task ``t{i}``
provides ``s{i}``, needs some earlier symbols, is linked after some earlier tasks, and
returns ``i + sum(inputs)``, so the right answer is a sequential evaluation in index
order. Each task records when it starts, ends, raises and is reverted.
"""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Any

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

import aioflow
from aioflow import AtomState, FlowStatus
from aioflow._replay import AtomRecord, replay
from aioflow.journal import MemoryJournal
from tests.strategies import DagSpec, cut_journal, dags

FLOW_ID = "prop-flow"
SETTINGS = settings(max_examples=60, deadline=None)


class Boom(Exception):
    """What a failing task raises; its message is the task's name."""


class Recorder:
    """What the tasks of one flow object did, in order: (what, atom name) pairs."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    def positions(self, what: str) -> dict[str, int]:
        return {name: k for k, (w, name) in enumerate(self.log) if w == what}

    def count(self, what: str) -> Counter[str]:
        return Counter(name for w, name in self.log if w == what)


def _name(i: int) -> str:
    return f"t{i}"


def _symbol_task(
    name: str,
    provides: str,
    needs: list[str],
    compute: Any,
    delay: float,
    fails: bool,
    rec: Recorder,
) -> aioflow.Task:
    """A task named ``name`` whose parameters are exactly the symbols in ``needs``."""

    async def execute(**inputs: int) -> int:
        rec.log.append(("start", name))
        await anyio.sleep(delay)
        if fails:
            rec.log.append(("raise", name))
            raise Boom(name)
        rec.log.append(("end", name))
        return compute(inputs)  # type: ignore[no-any-return]

    execute.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(s, inspect.Parameter.KEYWORD_ONLY) for s in needs]
    )
    t = aioflow.task(name=name, provides=provides)(execute)

    @t.revert
    async def undo(result: object) -> None:
        rec.log.append(("revert", name))

    return t


def build_flow(spec: DagSpec, rec: Recorder) -> aioflow.Flow:
    """The flow ``spec`` describes, its tasks recording into ``rec``."""
    tasks = [
        _symbol_task(
            _name(i),
            f"s{i}",
            [f"s{j}" for j in spec.data[i]],
            lambda inputs, i=i: i + sum(inputs.values()),
            spec.delays[i],
            i in spec.failing,
            rec,
        )
        for i in range(spec.n)
    ]
    final = _symbol_task(
        "final",
        "total",
        [f"s{i}" for i in spec.sinks],
        lambda inputs: sum(inputs.values()),
        0.0,
        False,
        rec,
    )
    if spec.layout in ("graph", "graph+final"):
        graph = aioflow.Graph("g", *tasks)
        for j, i in spec.links:
            graph.link(tasks[j], tasks[i])
        return graph if spec.layout == "graph" else aioflow.Linear("root", graph, final)
    members: list[aioflow.Flow] = []
    for k, chunk in enumerate(spec.chunks):
        inside = [tasks[i] for i in chunk.members]
        if chunk.kind == "linear":
            members.append(aioflow.Linear(f"c{k}", *inside))
        elif chunk.kind == "unordered":
            members.append(aioflow.Unordered(f"c{k}", *inside))
        else:
            sub = aioflow.Graph(f"c{k}", *inside)
            for j, i in spec.links:
                if j >= chunk.start and i < chunk.stop:
                    sub.link(tasks[j], tasks[i])
            members.append(sub)
    return aioflow.Linear("root", *members, final)


def atom_names(spec: DagSpec) -> list[str]:
    return [_name(i) for i in range(spec.n)] + (["final"] if spec.has_final else [])


async def run_once(
    spec: DagSpec, rec: Recorder
) -> tuple[aioflow.Outcome, aioflow.FlowFailedError | None, list[aioflow.Event]]:
    """Run ``spec`` on a fresh memory journal; the outcome, the error, and the journal."""
    engine = aioflow.Engine(durability="strict", max_concurrency=spec.max_concurrency)
    error = None
    try:
        outcome = await engine.run(build_flow(spec, rec), flow_id=FLOW_ID)
    except aioflow.FlowFailedError as exc:
        error = exc
        outcome = exc.outcome
    events = [e async for e in engine.journal.events(FLOW_ID)]
    return outcome, error, events


def run_spec(
    spec: DagSpec, rec: Recorder
) -> tuple[aioflow.Outcome, aioflow.FlowFailedError | None, list[aioflow.Event]]:
    return anyio.run(run_once, spec, rec)


# ----------------------------------------------------------------------- 1. scheduling


@SETTINGS
@given(spec=dags())
def test_every_task_starts_only_after_everything_it_depends_on_ended(spec: DagSpec) -> None:
    rec = Recorder()
    outcome, error, _ = run_spec(spec, rec)
    assert error is None
    assert outcome.status is FlowStatus.SUCCESS
    names = atom_names(spec)
    assert rec.count("start") == Counter(names)
    assert rec.count("end") == Counter(names)
    start, end = rec.positions("start"), rec.positions("end")
    for i in range(spec.n):
        late = [_name(j) for j in spec.must_precede[i] if end[_name(j)] > start[_name(i)]]
        assert not late, f"t{i} started before {late} ended"
    if spec.has_final:
        assert all(end[_name(i)] < start["final"] for i in range(spec.n))


@SETTINGS
@given(spec=dags())
def test_results_equal_a_sequential_evaluation(spec: DagSpec) -> None:
    outcome, error, _ = run_spec(spec, Recorder())
    assert error is None
    for i in range(spec.n):
        assert outcome[f"s{i}"] == spec.expected[i]
        assert outcome.atoms[_name(i)].state is AtomState.SUCCESS
        assert outcome.atoms[_name(i)].result == spec.expected[i]
    if spec.has_final:
        assert outcome["total"] == spec.expected_final
    assert set(outcome.atoms) == set(atom_names(spec))


@SETTINGS
@given(spec=dags(min_tasks=2).filter(lambda s: s.max_concurrency is not None))
def test_max_concurrency_bounds_the_tasks_running_at_once(spec: DagSpec) -> None:
    rec = Recorder()
    outcome, _, _ = run_spec(spec, rec)
    assert outcome.status is FlowStatus.SUCCESS
    running = peak = 0
    for what, _ in rec.log:
        running += 1 if what == "start" else -1 if what == "end" else 0
        peak = max(peak, running)
    assert spec.max_concurrency is not None
    assert peak <= spec.max_concurrency


# ---------------------------------------------------------------- 2. resume from a cut


@SETTINGS
@given(spec=dags(), data=st.data())
def test_resuming_from_any_prefix_of_the_journal_finishes_without_rerunning_committed_atoms(
    spec: DagSpec, data: st.DataObject
) -> None:
    async def scenario() -> None:
        first = Recorder()
        outcome, error, events = await run_once(spec, first)
        assert error is None and outcome.status is FlowStatus.SUCCESS
        prefix, committed = cut_journal(data, events)
        k = len(prefix)
        journal = MemoryJournal()
        async with journal:
            for event in prefix:
                journal.append(event)
            second = Recorder()
            engine = aioflow.Engine(journal, max_concurrency=spec.max_concurrency)
            resumed = await engine.resume(FLOW_ID, build_flow(spec, second))
            logged = await journal.load(FLOW_ID)

        assert resumed.status is FlowStatus.SUCCESS
        assert dict(resumed.results) == dict(outcome.results)
        for name in atom_names(spec):
            assert resumed.atoms[name].state is AtomState.SUCCESS
            assert resumed.atoms[name].result == outcome.atoms[name].result
        runs = second.count("start")
        assert not {a: runs[a] for a in committed if runs[a]}, "committed atoms ran again"
        assert runs == Counter(set(atom_names(spec)) - committed)
        # The journal kept the prefix and went on from it; it replays to the same end.
        assert logged[:k] == prefix
        assert [e.seq for e in logged] == list(range(1, len(logged) + 1))
        state = replay(FLOW_ID, logged)
        assert state.status is FlowStatus.SUCCESS
        assert {n: r.result for n, r in state.atoms.items()} == {
            n: a.result for n, a in resumed.atoms.items()
        }

    anyio.run(scenario)


# ---------------------------------------------------------------------------- 3. replay


@SETTINGS
@given(spec=st.one_of(dags(), dags(failures=True)))
def test_replay_of_a_finished_run_gives_every_atom_the_state_the_outcome_reports(
    spec: DagSpec,
) -> None:
    outcome, _, events = run_spec(spec, Recorder())
    state = replay(FLOW_ID, events)
    assert state.status is outcome.status
    assert state.last_seq == len(events)
    assert set(state.atoms) <= set(outcome.atoms)
    for name, atom in outcome.atoms.items():
        record = state.atoms.get(name, AtomRecord())
        assert record.state is atom.state, name
        assert record.attempt == atom.attempts, name
        assert record.progress == atom.progress, name
        assert record.failure == atom.failure, name
        if atom.failure is None:
            assert record.result == atom.result, name


@SETTINGS
@given(spec=st.one_of(dags(), dags(failures=True)))
def test_replay_is_repeatable_and_accepts_every_prefix(spec: DagSpec) -> None:
    _, _, events = run_spec(spec, Recorder())
    assert replay(FLOW_ID, events) == replay(FLOW_ID, list(events))
    for k in range(len(events) + 1):
        state = replay(FLOW_ID, events[:k])
        assert state.last_seq == k
        assert replay(FLOW_ID, events[:k]) == state


# -------------------------------------------------------------------------- 4. failures


@SETTINGS
@given(spec=dags(failures=True))
def test_a_failed_run_reverts_what_ran_dependents_first_and_leaves_the_rest_pending(
    spec: DagSpec,
) -> None:
    rec = Recorder()
    outcome, error, _ = run_spec(spec, rec)
    assert error is not None, "a task raised but the run did not fail"
    assert outcome.status is FlowStatus.REVERTED
    started = set(rec.count("start"))
    raised = set(rec.count("raise"))
    succeeded = set(rec.count("end"))
    reverts = rec.count("revert")
    reverted_at = rec.positions("revert")
    assert raised, "no failing task ran"
    assert raised <= {_name(i) for i in spec.failing}

    for name in atom_names(spec):
        state = outcome.atoms[name].state
        if name in started:
            assert state is AtomState.REVERTED, name
            assert reverts[name] == 1, name
        else:
            assert state is AtomState.PENDING, name
            assert reverts[name] == 0, name
    assert succeeded <= set(reverts)

    for i in range(spec.n):
        if _name(i) not in reverted_at:
            continue
        for j in spec.ancestors(i):
            assert _name(j) in reverted_at, f"t{i} ran but its dependency t{j} was not reverted"
            assert reverted_at[_name(i)] < reverted_at[_name(j)], (
                f"t{j} was reverted before its dependent t{i}"
            )

    assert set(error.failures) == raised
    for name, failure in error.failures.items():
        assert failure.matches(Boom)
        assert failure.message == name
    first = next(name for what, name in rec.log if what == "raise")
    assert isinstance(error.__cause__, Boom)
    assert str(error.__cause__) == first
