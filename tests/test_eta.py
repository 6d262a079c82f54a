"""The ETA: from the observed rate of running atoms, and from the journal's earlier runs of
a flow with the same name. Every clock here is injected; nothing sleeps."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aioflow
from aioflow import AtomState, FlowStatus
from aioflow._eta import AtomTiming, History, estimate, learn, load_history, summarize
from aioflow._replay import AtomRecord, FlowState

R, P, S, IGN = AtomState.RUNNING, AtomState.PENDING, AtomState.SUCCESS, AtomState.IGNORED


def timing(
    name: str,
    state: AtomState,
    fraction: float = 0.0,
    *,
    weight: float = 1.0,
    started: float | None = None,
    finished: float | None = None,
) -> AtomTiming:
    return AtomTiming(name, state, fraction, weight, {}, started, finished)


# ---------------------------------------------------------------- from the rate alone


def test_a_running_atom_predicts_its_end_from_its_rate() -> None:
    eta, per_atom = estimate([timing("copy", R, 0.25, started=100.0)], now=110.0)

    assert per_atom["copy"] == pytest.approx(30.0)  # a quarter in 10 s: 30 s to go
    assert eta == pytest.approx(30.0)


def test_pending_atoms_are_priced_at_the_run_s_own_pace_per_weight() -> None:
    atoms = [
        timing("snapshot", S, 1.0, started=0.0, finished=4.0),
        timing("copy", R, 0.5, weight=2, started=4.0),
        timing("upload", P, weight=1),
    ]

    eta, per_atom = estimate(atoms, now=8.0)

    # snapshot took 4 s per weight, copy is on course for 8 s over weight 2: 4 s per weight.
    assert per_atom["snapshot"] == 0.0
    assert per_atom["copy"] == pytest.approx(4.0)
    assert per_atom["upload"] == pytest.approx(4.0)
    assert eta == pytest.approx(8.0)


def test_nothing_known_gives_no_eta() -> None:
    eta, _ = estimate([timing("a", R, 0.0, started=5.0), timing("b", P)], now=6.0)

    assert eta is None


def test_everything_finished_or_ignored_leaves_nothing() -> None:
    atoms = [timing("a", S, 1.0, started=0.0, finished=1.0), timing("b", IGN)]

    assert estimate(atoms, now=9.0)[0] == 0.0


def test_concurrent_atoms_overlap_instead_of_adding_up() -> None:
    atoms = [timing(n, R, 0.5, started=0.0) for n in ("a", "b", "c", "d")]

    eta, _ = estimate(atoms, now=10.0)  # four atoms, each half done after 10 s, together

    assert eta == pytest.approx(10.0)


def test_the_eta_is_never_less_than_the_slowest_atom_s_own_remaining_time() -> None:
    atoms = [
        timing("fast", R, 0.9, started=0.0),
        timing("slow", R, 0.1, started=0.0),
    ]

    eta, per_atom = estimate(atoms, now=10.0)

    assert per_atom["slow"] == pytest.approx(90.0)
    assert eta == pytest.approx(90.0)


@given(
    st.lists(
        st.tuples(st.floats(0.01, 1.0), st.floats(0.0, 100.0), st.floats(0.1, 10.0)),
        min_size=1,
        max_size=6,
    ),
    st.floats(0.1, 1000.0),
)
def test_an_eta_is_never_negative(rows: list[tuple[float, float, float]], later: float) -> None:
    atoms = [
        timing(f"a{k}", R, f, weight=w, started=start) for k, (f, start, w) in enumerate(rows)
    ]

    eta, per_atom = estimate(atoms, now=max(start for _, start, _ in rows) + later)

    assert eta is not None and eta >= 0.0
    assert all(v is not None and v >= 0.0 for v in per_atom.values())


# --------------------------------------------------------------------- from history


def finished_run(flow_id: str, durations: dict[str, float], start: float = 0.0) -> FlowState:
    state = FlowState(flow_id, name="backup", status=FlowStatus.SUCCESS, created=start)
    t = start
    for name, took in durations.items():
        state.atoms[name] = AtomRecord(S, 1, None, None, 1.0, {}, t, t + took)
        t += took
    state.updated = t
    return state


def test_history_keeps_the_median_duration_of_each_atom() -> None:
    runs = [
        finished_run("1", {"snapshot": 1.0, "copy": 100.0}),
        finished_run("2", {"snapshot": 3.0, "copy": 90.0}),
        finished_run("3", {"snapshot": 2.0, "copy": 500.0}),  # one slow outlier
    ]

    history = learn(runs)

    assert history is not None
    assert history.durations == {"snapshot": 2.0, "copy": 100.0}
    assert history.parallelism == pytest.approx(1.0)  # one after another
    assert history.runs == 3


def test_no_runs_teach_nothing() -> None:
    assert learn([]) is None


def test_history_predicts_an_atom_that_has_not_reported_yet() -> None:
    history = History({"snapshot": 2.0, "copy": 100.0, "upload": 20.0}, 1.0, 9)
    atoms = [
        timing("snapshot", S, 1.0, started=0.0, finished=2.0),
        timing("copy", R, 0.0, started=2.0),
        timing("upload", P),
    ]

    eta, per_atom = estimate(atoms, now=12.0, history=history)

    assert per_atom["copy"] == pytest.approx(90.0)  # usually 100 s, 10 s in
    assert eta == pytest.approx(110.0)


def test_the_observed_rate_counts_more_as_the_atom_gets_further() -> None:
    history = History({"copy": 100.0}, 1.0, 5)

    def left(fraction: float) -> float | None:
        # 50 s in: history says 50 s left; the rate says 50 * (1 - f) / f
        return estimate([timing("copy", R, fraction, started=0.0)], 50.0, history)[1]["copy"]

    assert left(0.5) == pytest.approx(0.5 * 50.0 + 0.5 * 50.0)
    slow = left(0.1)  # the rate says 450 s, history 50 s
    assert slow == pytest.approx(0.1 * 450.0 + 0.9 * 50.0)
    nearly = left(0.99)
    assert nearly == pytest.approx(0.99 * 50 * 0.01 / 0.99 + 0.01 * 50.0)


def test_a_run_slower_than_its_history_is_trusted_as_the_evidence_grows() -> None:
    """Four atoms that usually take 1 s each; this run the finished ones took 2 s."""
    history = History({f"a{n}": 1.0 for n in range(4)}, 1.0, 9)

    def eta_after(done: int) -> float | None:
        atoms = [
            timing(f"a{n}", S, 1.0, started=2.0 * n, finished=2.0 * n + 2.0) for n in range(done)
        ]
        atoms += [timing(f"a{n}", P) for n in range(done, 4)]
        return estimate(atoms, now=2.0 * done, history=history)[0]

    assert eta_after(0) == pytest.approx(4.0)  # nothing measured yet: history alone
    assert eta_after(1) == pytest.approx(3 * 1.5)  # a quarter done: half the trust
    assert eta_after(2) == pytest.approx(2 * 2.0)  # half done: the run's own pace
    assert eta_after(3) == pytest.approx(2.0)


def test_a_faster_run_is_trusted_too() -> None:
    history = History({"a": 10.0, "b": 10.0}, 1.0, 9)
    atoms = [timing("a", S, 1.0, started=0.0, finished=5.0), timing("b", P)]
    assert estimate(atoms, now=5.0, history=history)[0] == pytest.approx(5.0)


def test_summary_of_a_resting_flow_has_no_eta_and_a_finished_one_zero() -> None:
    atoms = [timing("a", R, 0.5, started=0.0)]

    assert summarize("f", FlowStatus.SUSPENDED, atoms, 10.0).eta is None
    assert summarize("f", FlowStatus.SUCCESS, [timing("a", S, 1.0)], 10.0).eta == 0.0


# ------------------------------------------------------------- through the engine


class Clock:
    """Whole seconds, moved by the tasks and the test."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backup:
    clock: Clock
    hold: anyio.Event | None = None
    reached: anyio.Event | None = None

    def flow(self) -> aioflow.Linear:
        clock = self.clock

        @aioflow.task(provides="snap")
        async def snapshot() -> str:
            clock.now += 2
            return "s"

        @aioflow.task(provides="copied", weight=10)
        async def copy(snap: str, progress: aioflow.Progress) -> int:
            if self.hold is not None and self.reached is not None:
                self.reached.set()
                await self.hold.wait()
            clock.now += 100
            progress.update(1, total=1)
            return 1

        @aioflow.task
        async def upload(copied: int) -> None:
            clock.now += 20

        return aioflow.Linear("backup", snapshot, copy, upload)


async def test_the_tenth_run_predicts_its_end_before_its_slow_atom_reports(
    sqlite_url: str,
) -> None:
    clock = Clock()
    for _ in range(9):
        await aioflow.Engine(sqlite_url, clock=clock).run(Backup(clock).flow())

    tenth = Backup(clock, anyio.Event(), anyio.Event())
    assert tenth.hold is not None and tenth.reached is not None
    async with aioflow.Engine(sqlite_url, clock=clock) as engine:
        handle = await engine.start(tenth.flow())
        with anyio.fail_after(10):
            await tenth.reached.wait()
        clock.now += 30  # copy has run 30 s without a word
        await engine.journal.flush()
        live = await engine.progress(handle.flow_id)
        other = await aioflow.Engine(sqlite_url, clock=clock).progress(handle.flow_id)
        tenth.hold.set()
        await handle.wait()

    for progress in (live, other):
        assert progress.atoms["copy"].fraction == 0.0
        assert progress.atoms["copy"].eta == pytest.approx(70.0)
        assert progress.eta == pytest.approx(70.0 + 20.0)


async def test_a_first_run_has_no_eta_until_something_reports(sqlite_url: str) -> None:
    clock = Clock()
    backup = Backup(clock, anyio.Event(), anyio.Event())
    assert backup.hold is not None and backup.reached is not None
    async with aioflow.Engine(sqlite_url, clock=clock) as engine:
        handle = await engine.start(backup.flow())
        with anyio.fail_after(10):
            await backup.reached.wait()
        clock.now += 30
        progress = await engine.progress(handle.flow_id)
        backup.hold.set()
        await handle.wait()

    # snapshot took 2 s for weight 1; copy (weight 10) has not reported: priced at that pace
    assert progress.atoms["copy"].eta == pytest.approx(20.0)
    assert progress.eta == pytest.approx(20.0 + 2.0)


async def test_runs_of_other_flows_and_failed_runs_teach_nothing(sqlite_url: str) -> None:
    clock = Clock()

    @aioflow.task(name="copy")
    async def other_copy() -> None:
        clock.now += 5

    @aioflow.task(name="copy")
    async def broken_copy() -> None:
        clock.now += 7
        raise RuntimeError("broken")

    engine = aioflow.Engine(sqlite_url, clock=clock)
    await engine.run(aioflow.Linear("other", other_copy))
    with pytest.raises(aioflow.FlowFailedError):
        await engine.run(aioflow.Linear("backup", broken_copy))

    async with aioflow.open_journal(sqlite_url) as journal:
        assert await load_history(journal, "backup") is None
        other = await load_history(journal, "other")
    assert other is not None and other.durations == {"copy": 5.0}
