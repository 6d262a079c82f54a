"""Schedules on every board: a job per tick, exactly once however many conductors run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest

import aioflow
from aioflow.jobs import Conductor, JobBoard, JobState
from aioflow.testing import FakeClock

from .pg import pg_schema, pg_url

__all__ = ["pg_schema", "pg_url"]

START = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
HOUR = 3600.0
FLOW = "tests.test_job_schedules:report_flow"


@aioflow.task(provides="report")
async def make_report(day: int) -> str:
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


def board(url: str, clock: FakeClock) -> JobBoard:
    return JobBoard.open(url, clock=clock.now, sleep=clock.sleep, poll=0.01)


async def test_schedule_list_update_and_remove(board_url: str) -> None:
    clock = FakeClock(START)
    async with board(board_url, clock) as b:
        nightly = await b.schedule("nightly", FLOW, cron="0 3 * * *", inputs={"day": 0})
        assert nightly.next_run == datetime(2026, 12, 5, 3, tzinfo=UTC).timestamp()
        hourly = await b.schedule("hourly", FLOW, every=HOUR, inputs={"day": 1})
        assert hourly.next_run == clock.now() + HOUR
        assert [s.name for s in await b.schedules()] == ["hourly", "nightly"]
        clock.advance(60)
        # The same rule again (a second deploy): the next tick is kept, inputs change.
        again = await b.schedule("hourly", FLOW, every=HOUR, inputs={"day": 2})
        assert again.next_run == hourly.next_run and again.inputs == {"day": 2}
        # Another rule: the next tick follows it.
        moved = await b.schedule("nightly", FLOW, cron="0 4 * * *", timezone="Europe/Berlin")
        assert (
            moved.next_run == datetime(2026, 12, 5, 4, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
        )
        assert await b.unschedule("hourly") is True
        assert await b.unschedule("hourly") is False
        assert [s.name for s in await b.schedules()] == ["nightly"]


async def test_each_tick_posts_one_job_however_many_fire(board_url: str) -> None:
    clock = FakeClock(START)
    async with board(board_url, clock) as one, board(board_url, clock) as two:
        await one.schedule("hourly", FLOW, every=HOUR, inputs={"day": 1})
        for _ in range(24):
            clock.advance(HOUR)
            async with anyio.create_task_group() as tg:
                for b in (one, two, one, two):
                    tg.start_soon(b.fire_due)
        jobs = await one.jobs()
    ticks = sorted(j.name for j in jobs if j.name)
    assert len(jobs) == 24 and len(set(ticks)) == 24
    assert ticks[0] == "hourly@2026-12-04T13:00:00Z"
    assert {j.inputs["day"] for j in jobs} == {1}


async def test_missed_ticks_post_the_latest_or_none(board_url: str) -> None:
    clock = FakeClock(START)
    async with board(board_url, clock) as b:
        await b.schedule("latest", FLOW, every=HOUR, inputs={"day": 1})
        await b.schedule("none", FLOW, every=HOUR, inputs={"day": 2}, catchup="none")
        clock.advance(5.5 * HOUR)  # five ticks missed while no conductor ran
        await b.fire_due()
        names = sorted(str(j.name) for j in await b.jobs())
        assert names == ["latest@2026-12-04T17:00:00Z"]
        clock.advance(0.5 * HOUR + 10)  # on time again: both post
        await b.fire_due()
        names = sorted(str(j.name) for j in await b.jobs())
        assert names == [
            "latest@2026-12-04T17:00:00Z",
            "latest@2026-12-04T18:00:00Z",
            "none@2026-12-04T18:00:00Z",
        ]


async def test_daylight_saving_ticks_follow_the_library() -> None:
    """cronsim's rules: a time that does not exist (spring forward) fires at the first
    minute after the gap; a time that happens twice (fall back) fires once, the first."""
    berlin = ZoneInfo("Europe/Berlin")
    for start, expected in [
        (
            datetime(2026, 3, 28, 12, tzinfo=berlin),
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
        ),
        (
            datetime(2026, 10, 24, 12, tzinfo=berlin),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
        ),
    ]:
        clock = FakeClock(start)
        async with board("memory://", clock) as b:
            await b.schedule("night", FLOW, cron="30 2 * * *", timezone="Europe/Berlin")
            for _ in range(2):
                (s,) = await b.schedules()
                clock.advance(s.next_run - clock.now())
                await b.fire_due()
            fired = [
                datetime.fromisoformat(str(j.name).split("@")[1].replace("Z", "+00:00"))
                for j in await b.jobs()
            ]
        assert sorted(t.astimezone(berlin).isoformat() for t in fired) == expected


async def test_two_conductors_post_each_tick_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    clock = FakeClock(START)
    async with board(url, clock) as first, board(url, clock) as second:
        await first.schedule("hourly", FLOW, every=HOUR, inputs={"day": 7})
        conductors = [
            Conductor(b, aioflow.Engine(url), name=f"c{i}", lease=HOUR * 100)
            for i, b in enumerate((first, second))
        ]
        async with anyio.create_task_group() as tg:
            for c in conductors:
                tg.start_soon(c.run)
            for tick in range(1, 7):
                clock.advance(HOUR)
                with anyio.fail_after(20):  # each tick fired before the next comes
                    while len(await first.jobs()) < tick:
                        await anyio.sleep(0.01)
            with anyio.fail_after(20):
                while len(await first.jobs(JobState.COMPLETE)) < 6:
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
        jobs = await first.jobs()
    assert len(jobs) == 6 and len({j.name for j in jobs}) == 6
    assert {j.state for j in jobs} == {JobState.COMPLETE}


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({}, ValueError, "cron or every"),
        ({"cron": "0 3 * * *", "every": 60}, ValueError, "cron or every"),
        ({"cron": "not a cron"}, ValueError, "invalid cron expression 'not a cron'"),
        ({"cron": "0 0 30 2 *"}, ValueError, "cron expression '0 0 30 2 \\*'"),
        ({"every": 0}, ValueError, "every must be > 0"),
        ({"every": -5}, ValueError, "every must be > 0"),
        ({"every": float("nan")}, ValueError, "every must be > 0"),
        ({"every": timedelta(0)}, ValueError, "every must be > 0"),
        ({"every": "60"}, TypeError, "every is seconds"),
        ({"every": 60, "timezone": "Mars/Olympus"}, ValueError, "unknown timezone 'Mars/Olympus'"),
        ({"every": 60, "catchup": "all"}, ValueError, "catchup is one of"),
    ],
)
async def test_bad_schedules_are_refused_naming_the_problem(
    kwargs: dict[str, object], error: type[Exception], words: str
) -> None:
    async with JobBoard.open("memory://") as b:
        with pytest.raises(error, match=words):
            await b.schedule("s", FLOW, **kwargs)  # type: ignore[arg-type]
        assert await b.schedules() == []


def test_the_cli_schedules_lists_and_unschedules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aioflow.cli import main

    url = f"sqlite:///{tmp_path}/jobs.db"
    args = ["jobs", "schedule", "nightly", FLOW, "--cron", "0 3 * * *", "--journal", url]
    assert main([*args, "--inputs", '{"day": 0}', "--timezone", "Europe/Berlin"]) == 0
    assert "nightly: next run" in capsys.readouterr().out
    assert main(["jobs", "schedules", "--journal", url]) == 0
    listed = capsys.readouterr().out
    assert "nightly" in listed and "cron 0 3 * * *" in listed and "Europe/Berlin" in listed
    assert main(["jobs", "schedule", "bad", FLOW, "--cron", "nope", "--journal", url]) == 2
    assert "invalid cron expression" in capsys.readouterr().err
    assert main(["jobs", "unschedule", "nightly", "--journal", url]) == 0
    assert main(["jobs", "unschedule", "nightly", "--journal", url]) == 1


def test_the_scheduled_report_example_runs() -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "examples" / "scheduled_report.py"
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(": COMPLETE") == 3
