"""Progress: the reporter's rules, the state rules, the journal's throttling, flow
progress read live and from the journal, and watching a flow another process runs."""

from __future__ import annotations

import itertools
import math
import sqlite3
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog.testing
from hypothesis import given
from hypothesis import strategies as st

import aioflow
from aioflow import AtomState, EventKind, FlowStatus

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Gate:
    """Lets a test hold a task until it says go, and know when the task got there."""

    reached: anyio.Event
    go: anyio.Event

    @classmethod
    def new(cls) -> Gate:
        return cls(anyio.Event(), anyio.Event())

    async def pass_(self) -> None:
        self.reached.set()
        await self.go.wait()


class Clock:
    """A clock the test (or a task) moves by hand; counts ticks to avoid float drift."""

    def __init__(self, start: float = 1000.0, tick: float = 0.01) -> None:
        self.start = start
        self.tick = tick
        self.ticks = 0

    def __call__(self) -> float:
        return self.start + self.ticks * self.tick

    def advance(self, seconds: float) -> None:
        self.ticks += round(seconds / self.tick)


def path_of(url: str) -> str:
    return url.removeprefix("sqlite:///")


def count_rows(url: str, kind: str, atom: str | None = None) -> int:
    with sqlite3.connect(path_of(url)) as db:
        if atom is None:
            sql, params = "SELECT count(*) FROM aioflow_events WHERE kind = ?", (kind,)
        else:
            sql = "SELECT count(*) FROM aioflow_events WHERE kind = ? AND atom = ?"
            params = (kind, atom)
        return int(db.execute(sql, params).fetchone()[0])


# ------------------------------------------------------------------------ the reporter


class TestReporter:
    @given(st.floats(allow_nan=False))
    def test_any_number_is_clamped_into_zero_one(self, value: float) -> None:
        progress = aioflow.Progress()

        progress(value)

        assert 0.0 <= progress.fraction <= 1.0
        if 0.0 <= value <= 1.0:
            assert progress.fraction == value

    @given(st.integers(min_value=-10, max_value=10_000), st.integers(min_value=1, max_value=5000))
    def test_update_gives_current_over_total_clamped(self, current: int, total: int) -> None:
        progress = aioflow.Progress()

        progress.update(current, total=total)

        assert progress.fraction == min(max(current / total, 0.0), 1.0)
        assert progress.current == current

    @pytest.mark.parametrize("bad", [math.nan, "0.5", None, True, [0.5], complex(1, 0)])
    def test_nan_or_a_non_number_raises_value_error_and_changes_nothing(self, bad: Any) -> None:
        seen: list[float] = []
        progress = aioflow.Progress(lambda f, d: seen.append(f))
        progress(0.3, stage="copy")

        with pytest.raises(ValueError, match="progress"):
            progress(bad)
        with pytest.raises(ValueError, match="progress"):
            progress.update(bad, total=10)
        with pytest.raises(ValueError, match="progress"):
            progress.advance(bad)

        assert progress.fraction == 0.3
        assert seen == [0.3]

    def test_a_nan_total_is_refused(self) -> None:
        with pytest.raises(ValueError, match="NaN"):
            aioflow.Progress().total = math.nan

    def test_advance_without_a_total_names_what_is_missing(self) -> None:
        with pytest.raises(ValueError, match="total"):
            aioflow.Progress().advance()

    def test_infinite_values_clamp(self) -> None:
        progress = aioflow.Progress()

        progress(math.inf)
        assert progress.fraction == 1.0
        progress(-math.inf)
        assert progress.fraction == 0.0

    def test_update_then_advance_counts_on_from_the_update(self) -> None:
        progress = aioflow.Progress()

        progress.update(10, total=40, bytes_done=10)
        progress.advance(10, bytes_done=20)

        assert progress.fraction == 0.5
        assert progress.current == 20
        assert progress.details == {"bytes_done": 20}

    def test_details_handed_out_are_copies(self) -> None:
        progress = aioflow.Progress()
        progress(0.1, stage="copy")

        progress.details["stage"] = "tampered"

        assert progress.details == {"stage": "copy"}

    def test_every_report_reaches_the_reporter_with_a_snapshot_of_details(self) -> None:
        seen: list[tuple[float, dict[str, Any]]] = []
        progress = aioflow.Progress(lambda f, d: seen.append((f, d)))

        progress(0.25, stage="copy")
        progress.update(3, total=4, files=3)

        assert seen == [(0.25, {"stage": "copy"}), (0.75, {"stage": "copy", "files": 3})]

    def test_advances_from_many_threads_all_count(self) -> None:
        seen: list[float] = []
        progress = aioflow.Progress(lambda f, d: seen.append(f))
        progress.total = 16_000

        def work() -> None:
            for _ in range(2000):
                progress.advance()

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        assert progress.current == 16_000
        assert progress.fraction == 1.0
        assert len(seen) == 16_000
        assert seen == sorted(seen)  # reports arrive in the order the values were set


# ------------------------------------------------------------------ the state rules


def atom_events(events: list[aioflow.Event], atom: str) -> list[aioflow.Event]:
    return [e for e in events if e.atom == atom and e.kind is EventKind.ATOM]


async def test_state_changes_carry_the_progress_the_rules_give(sqlite_url: str) -> None:
    calls = {"n": 0}

    @aioflow.task(retry=aioflow.Retry.times(2))
    async def flaky(progress: aioflow.Progress) -> None:
        calls["n"] += 1
        progress(0.4 if calls["n"] == 1 else 0.9)
        if calls["n"] == 1:
            raise RuntimeError("first attempt fails")

    @aioflow.task
    async def boom(progress: aioflow.Progress) -> None:
        progress(0.7)
        raise RuntimeError("boom")

    engine = aioflow.Engine(sqlite_url)
    with pytest.raises(aioflow.FlowFailedError) as caught:
        await engine.run(aioflow.Linear("rules", flaky, boom))
    flow_id = caught.value.outcome.flow_id
    async with aioflow.open_journal(sqlite_url) as journal:
        events = await journal.load(flow_id)

    flaky_moves = [(e.state, e.progress) for e in atom_events(events, "flaky")]
    assert flaky_moves == [
        (AtomState.RUNNING, 0.0),
        (AtomState.FAILURE, 0.4),  # FAILURE keeps the last value
        (AtomState.RETRYING, 0.0),
        (AtomState.RUNNING, 0.0),  # a retry starts from 0.0
        (AtomState.SUCCESS, 1.0),
        (AtomState.REVERTING, 0.0),
        (AtomState.REVERTED, 0.0),
    ]
    boom_moves = [(e.state, e.progress) for e in atom_events(events, "boom")]
    assert boom_moves[:2] == [(AtomState.RUNNING, 0.0), (AtomState.FAILURE, 0.7)]
    assert all(p == 0.0 for _, p in boom_moves[2:])


async def test_a_report_after_the_attempt_ended_is_ignored() -> None:
    kept: list[aioflow.Progress] = []

    @aioflow.task
    async def leaky(progress: aioflow.Progress) -> None:
        kept.append(progress)

    seen: list[aioflow.Event] = []
    outcome = await aioflow.Engine(listeners=[seen.append]).run(aioflow.Linear("late", leaky))
    kept[0](0.2)

    assert outcome.atoms["leaky"].progress == 1.0
    assert not [e for e in seen if e.kind is EventKind.PROGRESS]


# -------------------------------------------------------------------- throttling


async def test_journal_keeps_one_report_per_interval_and_the_last_before_a_change(
    sqlite_url: str,
) -> None:
    clock = Clock(tick=0.01)
    heard: list[aioflow.Event] = []

    @aioflow.task
    async def copy(progress: aioflow.Progress) -> None:
        for k in range(1, 1001):  # ten seconds of the test's clock
            clock.advance(0.01)
            progress.update(k, total=1000, bytes_done=k * 4096)

    engine = aioflow.Engine(
        sqlite_url, clock=clock, progress_interval=0.5, listeners=[heard.append]
    )
    outcome = await engine.run(aioflow.Linear("throttled", copy))

    reports = [e.progress for e in heard if e.kind is EventKind.PROGRESS]
    assert reports == [k / 1000 for k in range(1, 1001)]  # listeners hear every one, once
    kept = count_rows(sqlite_url, "PROGRESS", "copy")
    assert 20 <= kept <= 21  # one per half second of the clock, plus the last one
    async with aioflow.open_journal(sqlite_url) as journal:
        events = await journal.load(outcome.flow_id)
    progress_events = [e for e in events if e.kind is EventKind.PROGRESS]
    times = [e.time for e in progress_events]
    assert all(b - a >= 0.5 - 1e-9 for a, b in itertools.pairwise(times[:-1]))
    last = progress_events[-1]
    assert last.progress == 1.0 and last.details == {"bytes_done": 4096_000}
    assert events[events.index(last) + 1].state is AtomState.SUCCESS


async def test_a_flood_of_reports_costs_the_journal_a_handful_of_rows(sqlite_url: str) -> None:
    @aioflow.task(name="reporter")
    async def flood(progress: aioflow.Progress) -> None:
        for k in range(100_000):
            progress(k / 100_000)

    clock = Clock()  # never moves: every report after the first falls in one interval
    await aioflow.Engine(sqlite_url, clock=clock).run(aioflow.Linear("flood", flood))

    assert count_rows(sqlite_url, "PROGRESS") == 2  # the first, and the last before SUCCESS


async def test_the_last_report_before_a_failure_is_kept_with_its_details(sqlite_url: str) -> None:
    clock = Clock()

    @aioflow.task
    async def breaks(progress: aioflow.Progress) -> None:
        progress(0.1, stage="start")
        progress(0.6, stage="middle")
        raise OSError("disk full")

    with pytest.raises(aioflow.FlowFailedError):
        await aioflow.Engine(sqlite_url, clock=clock).run(aioflow.Linear("fails", breaks))

    with sqlite3.connect(path_of(sqlite_url)) as db:
        rows = db.execute(
            "SELECT kind, state, progress, details FROM aioflow_events WHERE atom = 'breaks'"
            " ORDER BY seq"
        ).fetchall()
    assert [r[:3] for r in rows[:4]] == [
        ("ATOM", "RUNNING", 0.0),
        ("PROGRESS", None, 0.1),
        ("PROGRESS", None, 0.6),
        ("ATOM", "FAILURE", 0.6),
    ]
    assert "middle" in rows[2][3]


async def test_progress_interval_zero_keeps_every_report(sqlite_url: str) -> None:
    @aioflow.task
    async def steps(progress: aioflow.Progress) -> None:
        for k in range(1, 6):
            progress(k / 5)

    await aioflow.Engine(sqlite_url, progress_interval=0).run(aioflow.Linear("all", steps))

    assert count_rows(sqlite_url, "PROGRESS") == 5


def test_a_negative_progress_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="progress_interval"):
        aioflow.Engine(progress_interval=-1)


# --------------------------------------------------------------- sync tasks, listeners


async def test_a_sync_task_reports_from_its_worker_thread(sqlite_url: str) -> None:
    heard: list[tuple[float | None, int]] = []
    loop_thread = threading.get_ident()
    task_thread: list[int] = []

    @aioflow.task(provides="copied")
    def copy_blocking(progress: aioflow.Progress) -> int:
        task_thread.append(threading.get_ident())
        progress.total = 64
        for _ in range(64):
            progress.advance(1, chunk="x")
        return 64

    def listen(event: aioflow.Event) -> None:
        if event.kind is EventKind.PROGRESS:
            heard.append((event.progress, threading.get_ident()))

    outcome = await aioflow.Engine(sqlite_url, listeners=[listen]).run(
        aioflow.Linear("threaded", copy_blocking)
    )

    assert task_thread and task_thread[0] != loop_thread
    assert [p for p, _ in heard] == [k / 64 for k in range(1, 65)]
    assert {thread for _, thread in heard} == {loop_thread}  # listeners run on the loop
    assert outcome["copied"] == 64
    assert count_rows(sqlite_url, "PROGRESS") >= 1


async def test_listeners_that_raise_on_progress_do_no_harm(sqlite_url: str) -> None:
    async_heard: list[float | None] = []

    def bad_sync(event: aioflow.Event) -> None:
        raise RuntimeError("sync listener broke")

    async def bad_async(event: aioflow.Event) -> None:
        if event.kind is EventKind.PROGRESS:
            async_heard.append(event.progress)
        raise RuntimeError("async listener broke")

    @aioflow.task
    def work(progress: aioflow.Progress) -> None:
        progress(0.5)

    engine = aioflow.Engine(sqlite_url, listeners=[bad_sync, bad_async])
    outcome = await engine.run(aioflow.Linear("listened", work))

    assert outcome.status is FlowStatus.SUCCESS
    assert async_heard == [0.5]


# ------------------------------------------------------------------- flow progress


async def test_flow_progress_is_weighted_and_gives_each_atom_its_rate(sqlite_url: str) -> None:
    clock = Clock(tick=1.0)
    gate = Gate.new()

    @aioflow.task(weight=3)
    async def big(progress: aioflow.Progress) -> None:
        progress(0.5, bytes_done=50)
        await gate.pass_()

    @aioflow.task
    async def small() -> None:
        pass

    @aioflow.task
    async def skipped() -> None:
        pass

    flow = aioflow.Graph("weighted", big, small, skipped).link(
        small, skipped, decider=lambda results: False
    )
    async with aioflow.Engine(sqlite_url, clock=clock) as engine:
        handle = await engine.start(flow)
        with anyio.fail_after(5):
            await gate.reached.wait()
        clock.advance(10)
        await engine.journal.flush()
        live = await engine.progress(handle.flow_id)
        read_back = await aioflow.Engine(sqlite_url, clock=clock).progress(handle.flow_id)
        gate.go.set()
        await handle.wait()

    for progress in (live, read_back):
        assert progress.status == "RUNNING"
        assert progress.fraction == pytest.approx((3 * 0.5 + 1.0) / 4)  # skipped is ignored
        big = progress.atoms["big"]
        assert big.weight == 3.0
        assert big.details == {"bytes_done": 50}
        assert big.rate == pytest.approx(0.5 / 10)
        assert progress.atoms["small"].rate is None
        assert progress.atoms["skipped"].state == "IGNORED"
        assert progress.eta == pytest.approx(10.0)  # half done in 10 s: 10 s to go


async def test_handle_progress_is_none_once_the_run_ended() -> None:
    @aioflow.task
    async def quick() -> None:
        pass

    async with aioflow.Engine() as engine:
        handle = await engine.start(aioflow.Linear("one_quick", quick))
        await handle.wait()
        assert handle.progress is None
        final = await engine.progress(handle.flow_id)

    assert final.fraction == 1.0 and final.eta == 0.0


async def test_progress_of_an_unknown_flow_raises_not_found(sqlite_url: str) -> None:
    engine = aioflow.Engine(sqlite_url)
    await engine.run(aioflow.Linear("one", aioflow.task(lambda: None, name="noop")))

    with pytest.raises(aioflow.NotFoundError):
        await engine.progress("no-such-flow")


# ------------------------------------------------------------- another process

_WORKER = """
import sys, time, pathlib, anyio, aioflow

url, gate, flow_id = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]

@aioflow.task(weight=2)
async def copy(progress: aioflow.Progress) -> None:
    progress.update(1, total=4, bytes_done=1)
    while not gate.exists():
        await anyio.sleep(0.02)
    progress.update(4, total=4, bytes_done=4)

@aioflow.task
async def record() -> None:
    pass

async def main() -> None:
    engine = aioflow.Engine(url, progress_interval=0)
    await engine.run(aioflow.Linear("remote", copy, record), flow_id=flow_id)

anyio.run(main)
"""


async def wait_for_atom(url: str, flow_id: str, atom: str, state: AtomState) -> None:
    engine = aioflow.Engine(url)
    while True:
        try:
            progress = await engine.progress(flow_id)
        except (aioflow.NotFoundError, aioflow.JournalError):
            progress = None
        if progress is not None and progress.atoms[atom].state == state.value:
            return
        await anyio.sleep(0.02)


@pytest.mark.slow
async def test_progress_and_watch_follow_a_flow_another_process_runs(
    sqlite_url: str, tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    flow_id = "remote-1"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, sqlite_url, str(gate), flow_id], cwd=ROOT
    )
    try:
        with anyio.fail_after(30):
            await wait_for_atom(sqlite_url, flow_id, "copy", AtomState.RUNNING)
            engine = aioflow.Engine(sqlite_url)
            while (await engine.progress(flow_id)).atoms["copy"].fraction < 0.25:
                await anyio.sleep(0.02)
            halfway = await engine.progress(flow_id)
            seen: list[aioflow.Event] = []
            async for event in engine.watch(flow_id):
                seen.append(event)
                if event.kind is EventKind.PROGRESS and event.progress == 0.25:
                    gate.touch()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()

    assert halfway.status == "RUNNING"
    assert halfway.fraction == pytest.approx(2 * 0.25 / 3)
    assert halfway.atoms["copy"].details == {"bytes_done": 1}
    assert halfway.atoms["copy"].rate is not None
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert seen[-1].kind is EventKind.FLOW and seen[-1].state is FlowStatus.SUCCESS
    assert [e.progress for e in seen if e.kind is EventKind.PROGRESS] == [0.25, 1.0]
    final = await aioflow.Engine(sqlite_url).progress(flow_id)
    assert final.fraction == 1.0 and final.eta == 0.0


async def test_watch_of_a_live_flow_sees_every_report_then_ends(sqlite_url: str) -> None:
    gate = Gate.new()

    @aioflow.task
    async def steps(progress: aioflow.Progress) -> None:
        await gate.pass_()
        for k in range(1, 11):
            progress(k / 10)

    clock = Clock()  # frozen: the journal keeps only the first and last report
    async with aioflow.Engine(sqlite_url, clock=clock) as engine:
        handle = await engine.start(aioflow.Linear("watched", steps))
        seen: list[aioflow.Event] = []
        watching = anyio.Event()
        with anyio.fail_after(10):
            await gate.reached.wait()
            async with anyio.create_task_group() as tg:

                async def collect() -> None:
                    async for event in engine.watch(handle.flow_id):
                        watching.set()  # registered before the first event is yielded
                        seen.append(event)

                tg.start_soon(collect)
                await watching.wait()
                gate.go.set()
        await handle.wait()

    reports = [e.progress for e in seen if e.kind is EventKind.PROGRESS]
    assert reports == [k / 10 for k in range(1, 11)]
    assert seen[-1].state is FlowStatus.SUCCESS
    assert count_rows(sqlite_url, "PROGRESS") == 2


async def test_progress_details_the_codec_cannot_store_are_dropped_not_fatal() -> None:
    @aioflow.task(provides="done")
    async def reporter(progress: aioflow.Progress) -> bool:
        progress(0.5, handle=object())
        return True

    with structlog.testing.capture_logs() as logs:
        outcome = await aioflow.Engine(progress_interval=0).run(aioflow.Linear("f", reporter))

    assert outcome["done"] is True
    assert any(entry["event"] == "aioflow.progress_details_dropped" for entry in logs)


def test_the_volume_backup_example_prints_progress_and_eta() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "volume_backup.py"
    done = subprocess.run(
        [sys.executable, str(script), "--size-mb", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ETA" in done.stdout and "MB/s" in done.stdout
    assert done.stdout.rstrip().endswith("SUCCESS: backup-of-vol-7@snap-20971520")
