"""Schedules beyond the basics (tests/test_job_schedules.py): exactly once under any
interleaving of firings, conductors on every backend, catch-up after long downtime,
daylight saving on the SQL boards, and a schedule this machine cannot compute."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aioflow
from aioflow.jobs import Conductor, Job, JobBoard, JobState
from aioflow.jobs._schedule import Schedule, due, first_run, next_tick
from aioflow.testing import FakeClock

from .pg import pg_schema, pg_url

__all__ = ["pg_schema", "pg_url"]

START = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
HOUR = 3600.0
FLOW = "tests.test_schedules:report_flow"
BERLIN = ZoneInfo("Europe/Berlin")


@aioflow.task(provides="report")
async def make_report(day: int = 0) -> str:
    return f"report {day}"


def report_flow() -> aioflow.Flow:
    return aioflow.Linear("report", make_report)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def board_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/jobs.db"
    return str(request.getfixturevalue("pg_url"))


def open_board(url: str, clock: FakeClock) -> JobBoard:
    return JobBoard.open(url, clock=clock.now, sleep=clock.sleep, poll=0.01)


def tick_of(job: Job) -> datetime:
    """The tick a schedule's job was posted for, from its name (``name@...Z``)."""
    return datetime.fromisoformat(str(job.name).rpartition("@")[2].replace("Z", "+00:00"))


def ticks_between(cron: str, timezone: str, start: float, end: float) -> list[float]:
    """Every tick of ``cron`` in (start, end], walked one by one: the oracle."""
    probe = Schedule("probe", "m:f", cron=cron, timezone=timezone)
    found, at = [], start
    while (at := next_tick(probe, at)) <= end:
        found.append(at)
    return found


async def until(predicate: object, what: str) -> None:
    """Wait (in real time: the conductors' engines run for real) until ``predicate()``."""
    with anyio.fail_after(30):
        while not await predicate():  # type: ignore[operator]
            await anyio.sleep(0.01)


# ------------------------------------------------------------------ exactly once


WAKES = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2),  # which of three firers wakes
        st.sampled_from([0.0, 1.0, 59.0, 600.0, 1200.0, 1201.0, 3599.0, 3 * HOUR]),
        st.booleans(),  # wake the next one before this one's firing ends
    ),
    min_size=1,
    max_size=25,
)


async def _play(
    url: str, clock: FakeClock, wakes: list[tuple[int, float, bool]]
) -> tuple[float, list[float], list[Job]]:
    boards = [open_board(url, clock) for _ in range(3)] if url != "memory://" else []
    boards = boards or [open_board(url, clock)] * 3
    try:
        await boards[0].schedule("s", FLOW, cron="*/20 * * * *")
        first = (await boards[0].schedules())[0].next_run
        seen: list[float] = []
        async with anyio.create_task_group() as tg:
            for who, step, overlap in wakes:
                clock.advance(step)
                seen.append(clock.now())
                if overlap:
                    tg.start_soon(boards[who].fire_due)
                else:
                    await boards[who].fire_due()
        return first, seen, await boards[0].jobs()
    finally:
        for b in boards:
            await b.close()


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wakes=WAKES)
def test_any_interleaving_of_firings_posts_each_tick_at_most_once_and_the_latest_due(
    backend: str, wakes: list[tuple[int, float, bool]]
) -> None:
    """Three firers (three board objects on one SQLite file: three processes), woken in
    any order, some overlapping: no tick gets two jobs, every job is for a real tick of
    the cron, and once all are done the latest tick due at the last wake-up has its job
    (catchup="latest")."""
    clock = FakeClock(START)
    with tempfile.TemporaryDirectory() as tmp:
        url = "memory://" if backend == "memory" else f"sqlite:///{tmp}/jobs.db"
        first, seen, jobs = anyio.run(_play, url, clock, wakes)
    ticks = [tick_of(j).timestamp() for j in jobs]
    assert len(ticks) == len(set(ticks)), Counter(ticks)
    real = set(ticks_between("*/20 * * * *", "UTC", first - 1, max(seen)))
    assert set(ticks) <= real
    due_at_end = [t for t in real if t <= seen[-1]]
    if due_at_end:
        assert max(due_at_end) in ticks


async def test_two_sqlite_boards_firing_in_any_order_post_each_tick_once(tmp_path: Path) -> None:
    """The same property on one SQLite file opened twice (two processes' connections),
    over a week of hourly ticks fired by both at once."""
    url = f"sqlite:///{tmp_path}/jobs.db"
    clock = FakeClock(START)
    async with open_board(url, clock) as one, open_board(url, clock) as two:
        await one.schedule("hourly", FLOW, every=HOUR)
        for _ in range(7 * 24):
            clock.advance(HOUR)
            async with anyio.create_task_group() as tg:
                for b in (one, two, two, one):
                    tg.start_soon(b.fire_due)
        jobs = await two.jobs()
    assert len(jobs) == 7 * 24
    assert len({j.name for j in jobs}) == 7 * 24


async def test_two_conductors_on_their_own_boards_post_each_tick_once(board_url: str) -> None:
    """Two conductors, each with its own board object (on SQLite and PostgreSQL: its own
    connections, as in two processes), run a day of hourly ticks: one job per tick, each
    run once."""
    clock = FakeClock(START)
    same = board_url == "memory://"
    first = open_board(board_url, clock)
    second = first if same else open_board(board_url, clock)
    async with first, second:
        await first.schedule("hourly", FLOW, every=HOUR, inputs={"day": 1})
        conductors = [
            Conductor(b, aioflow.Engine(board_url), name=f"c{i}", lease=100 * HOUR)
            for i, b in enumerate((first, second))
        ]
        async with anyio.create_task_group() as tg:
            for c in conductors:
                tg.start_soon(c.run)
            for tick in range(1, 25):
                await until(lambda: _sleeping(clock, 2), "both tickers asleep")
                clock.advance(HOUR)
                await until(lambda t=tick: _count(first, t), f"tick {tick}'s job")
            await until(lambda: _count(first, 24, JobState.COMPLETE), "24 jobs complete")
            tg.cancel_scope.cancel()
        jobs = await first.jobs()
    assert len(jobs) == 24 and len({j.name for j in jobs}) == 24
    assert {j.state for j in jobs} == {JobState.COMPLETE}
    assert {j.attempts for j in jobs} == {1}


async def _sleeping(clock: FakeClock, n: int) -> bool:
    return clock.sleepers >= n


async def _count(board: JobBoard, n: int, state: JobState | None = None) -> bool:
    return len(await board.jobs(state)) >= n


# ------------------------------------------------------------------------ catch-up


@pytest.mark.parametrize("cron", ["* * * * *", "*/7 3-5 * * 1-5", "30 2 * * *"])
@pytest.mark.parametrize("timezone", ["UTC", "Europe/Berlin"])
@pytest.mark.parametrize("down", [50.0, HOUR, 3 * 24 * HOUR, 200 * 24 * HOUR])
def test_catching_up_picks_the_latest_missed_tick_and_the_next_after_now(
    cron: str, timezone: str, down: float
) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    schedule = Schedule(
        "s", "m:f", cron=cron, timezone=timezone, next_run=first_run(cron, None, timezone, start)
    )
    now = schedule.next_run + down
    tick, following = due(schedule, now)
    assert tick is not None and schedule.next_run <= tick <= now < following
    assert next_tick(schedule, tick - 1) == tick  # a tick of the cron...
    assert next_tick(schedule, tick) == following  # ...the last before now...
    assert following == next_tick(schedule, now)  # ...and the next one after it


def test_a_minutely_cron_down_for_three_years_catches_up_to_its_latest_minute() -> None:
    """More missed ticks than any walk should take: the latest is still the one posted."""
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    schedule = Schedule("s", "m:f", cron="* * * * *", next_run=start + 60)
    now = start + 3 * 365 * 24 * HOUR + 30
    tick, following = due(schedule, now)
    assert (tick, following) == (now - 30, now + 30)


def test_catchup_none_skips_what_was_missed_and_keeps_the_next_tick() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    schedule = Schedule("s", "m:f", cron="0 * * * *", catchup="none", next_run=start + HOUR)
    assert due(schedule, start + HOUR + 5) == (start + HOUR, start + 2 * HOUR)  # on time
    assert due(schedule, start + HOUR + 120) == (None, start + 2 * HOUR)  # late
    assert due(schedule, start + 30 * HOUR) == (None, start + 31 * HOUR)  # missed many


# --------------------------------------------------------------- daylight saving


@pytest.mark.parametrize(
    ("cron", "start", "expected"),
    [
        # Spring forward (02:00 -> 03:00): 02:30 does not exist; it fires at 03:00, once.
        ("30 2 * * *", datetime(2026, 3, 28, 12, tzinfo=BERLIN), ["03-29T03:00+0200"]),
        # Fall back (03:00 -> 02:00): 02:30 happens twice; it fires once, the first.
        ("30 2 * * *", datetime(2026, 10, 24, 12, tzinfo=BERLIN), ["10-25T02:30+0200"]),
        # A cron finer than an hour fires in both 02:30s (Debian cron's rule too).
        (
            "30 * * * *",
            datetime(2026, 10, 25, 1, 45, tzinfo=BERLIN),
            ["10-25T02:30+0200", "10-25T02:30+0100"],
        ),
    ],
)
async def test_daylight_saving_transitions_fire_as_cron_does_on_every_board(
    board_url: str, cron: str, start: datetime, expected: list[str]
) -> None:
    clock = FakeClock(start)
    end = start.timestamp() + 24 * HOUR if len(expected) == 1 else start.timestamp() + 2 * HOUR
    async with open_board(board_url, clock) as b:
        await b.schedule("night", FLOW, cron=cron, timezone="Europe/Berlin")
        while True:
            (s,) = await b.schedules()
            if s.next_run > end:
                break
            clock.advance(s.next_run - clock.now())
            await b.fire_due()
        fired = [tick_of(j).astimezone(BERLIN).strftime("%m-%dT%H:%M%z") for j in await b.jobs()]
    assert sorted(fired) == sorted(expected)


# ------------------------------------------------------------ what can go wrong


async def test_a_schedule_made_while_a_conductor_runs_fires_at_its_first_tick() -> None:
    """A schedule added in this process reaches the conductor's sleeping ticker at once,
    not at its next look at the board."""
    clock = FakeClock(START)
    board = open_board("memory://", clock)
    conductor = Conductor(board, aioflow.Engine("memory://"), name="c", lease=100 * HOUR)
    async with conductor, anyio.create_task_group() as tg:
        tg.start_soon(conductor.run)
        await until(lambda: _sleeping(clock, 1), "the ticker asleep")
        await board.schedule("often", FLOW, every=10)
        await until(lambda: _sleeping(clock, 1), "the ticker asleep again")
        clock.advance(10)
        await until(lambda: _count(board, 1), "the first tick's job")
        tg.cancel_scope.cancel()


async def test_a_schedule_this_machine_cannot_compute_leaves_the_others_firing(
    tmp_path: Path,
) -> None:
    """A schedule stored by another machine in a timezone this one does not know is left
    alone (and logged); the board's other schedules still fire, and no conductor dies."""
    url = f"sqlite:///{tmp_path}/jobs.db"
    clock = FakeClock(START)
    async with open_board(url, clock) as b:
        await b.schedule("elsewhere", FLOW, every=HOUR)
        await b.schedule("here", FLOW, every=HOUR)
        with sqlite3.connect(tmp_path / "jobs.db") as db:
            db.execute(
                "UPDATE aioflow_job_schedules SET timezone = 'Nowhere/Atlantis',"
                " cron = '0 * * * *', every = NULL WHERE name = 'elsewhere'"
            )
        clock.advance(HOUR)
        await b.fire_due()
        assert [str(j.name).partition("@")[0] for j in await b.jobs()] == ["here"]


def test_interval_schedules_need_no_timezone_database(tmp_path: Path) -> None:
    """`every=` in UTC works on a machine with neither a system timezone database nor the
    tzdata package (Windows, slim containers without the cron extra)."""
    script = textwrap.dedent(
        """
        import sys, zoneinfo
        sys.modules["tzdata"] = None
        zoneinfo.reset_tzpath([])
        import anyio
        from aioflow.jobs import JobBoard

        async def main():
            board = JobBoard.open("memory://")
            schedule = await board.schedule("s", "m:f", every=60)
            print(schedule.timezone, schedule.every)

        anyio.run(main)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["UTC", "60.0"]


def test_every_ticks_are_whole_multiples_of_the_interval_after_the_first() -> None:
    start = START.timestamp() + 0.25
    schedule = Schedule("s", "m:f", every=90.0, next_run=first_run(None, 90.0, "UTC", start))
    tick, following = due(schedule, schedule.next_run + 1000)
    assert tick is not None and math.isclose((tick - schedule.next_run) % 90.0, 0, abs_tol=1e-6)
    assert tick <= schedule.next_run + 1000 < following == tick + 90.0
