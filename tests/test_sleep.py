"""Sleep: a durable timer in the journal, woken by the engine's one timer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

import aioflow
from aioflow import AtomState, FlowStatus
from aioflow.testing import FakeClock

DAY = 24 * 3600.0


def counter() -> tuple[dict[str, int], aioflow.Task, aioflow.Task]:
    ran: dict[str, int] = {}

    @aioflow.task
    async def start_trial() -> None:
        ran["start_trial"] = ran.get("start_trial", 0) + 1

    @aioflow.task(provides="charged")
    async def charge() -> str:
        ran["charge"] = ran.get("charge", 0) + 1
        return "yes"

    return ran, start_trial, charge


async def settle() -> None:
    await anyio.sleep(0.02)


async def finished(engine: aioflow.Engine, flow_id: str) -> aioflow.Outcome:
    """The flow's outcome once it no longer rests WAITING (woken in the background)."""
    with anyio.fail_after(10):
        while True:
            outcome = await engine.wait(flow_id)
            if outcome.status is not FlowStatus.WAITING:
                return outcome
            await anyio.sleep(0.01)


async def test_sleep_wakes_at_its_deadline_and_not_before(journal_url: str) -> None:
    clock = FakeClock()
    ran, start_trial, charge = counter()
    flow = aioflow.Linear("trial", start_trial, aioflow.Sleep("cool_off", seconds=14 * DAY), charge)
    async with aioflow.Engine(journal_url, clock=clock.now, sleep=clock.sleep) as engine:
        handle = await engine.start(flow)
        await settle()
        outcome = await engine.outcome(handle.flow_id)
        assert outcome.status is FlowStatus.WAITING
        assert outcome.atoms["cool_off"].state is AtomState.WAITING
        assert outcome.waiting[0].token == ""  # a sleep hands out no token
        clock.advance(14 * DAY - 1)
        await settle()
        assert not handle.done and "charge" not in ran
        clock.advance(1)
        with anyio.fail_after(5):
            outcome = await handle.wait()
    assert outcome.status is FlowStatus.SUCCESS
    assert outcome.results == {"charged": "yes"}
    assert ran == {"start_trial": 1, "charge": 1}


async def test_other_branches_go_on_while_one_sleeps() -> None:
    clock = FakeClock()
    ran, start_trial, _charge = counter()
    flow = aioflow.Unordered("both", aioflow.Sleep("nap", seconds=60), start_trial)
    engine = aioflow.Engine(clock=clock.now, sleep=clock.sleep)
    outcome = await engine.run(flow)
    # Not entered: the run rests once nothing but the sleep is left.
    assert outcome.status is FlowStatus.WAITING
    assert ran == {"start_trial": 1}
    clock.advance(60)
    outcome = await engine.resume(outcome.flow_id, flow)  # past the deadline: at once
    assert outcome.status is FlowStatus.SUCCESS
    assert ran == {"start_trial": 1}


async def test_a_resume_never_restarts_the_timer(sqlite_url: str) -> None:
    clock = FakeClock()
    ran, start_trial, charge = counter()
    flow = aioflow.Linear("trial", start_trial, aioflow.Sleep("nap", seconds=100), charge)
    async with aioflow.Engine(sqlite_url, clock=clock.now, sleep=clock.sleep) as engine:
        outcome = await engine.run(flow)  # run, unlike a handle, returns once it rests
        assert outcome.status is FlowStatus.WAITING
        deadline = outcome.waiting[0].deadline
        assert deadline == pytest.approx(clock.now() + 100)
    clock.advance(60)
    async with aioflow.Engine(sqlite_url, clock=clock.now, sleep=clock.sleep) as engine:
        outcome = await engine.resume(outcome.flow_id, flow)
        assert outcome.status is FlowStatus.WAITING
        assert outcome.waiting[0].deadline == deadline  # not 100 s from the resume
        clock.advance(40)
        outcome = await finished(engine, outcome.flow_id)
    assert outcome.status is FlowStatus.SUCCESS
    assert ran == {"start_trial": 1, "charge": 1}


async def test_sleep_until_a_datetime_or_a_symbol() -> None:
    clock = FakeClock(datetime(2026, 12, 4, 12, tzinfo=UTC))
    at = datetime(2026, 12, 5, 3, tzinfo=UTC)

    @aioflow.task(provides="when")
    async def pick() -> datetime:
        return at

    async with aioflow.Engine(clock=clock.now, sleep=clock.sleep) as engine:
        fixed = await engine.start(aioflow.Linear("fixed", aioflow.Sleep("s", until=at)))
        named = await engine.start(aioflow.Linear("named", pick, aioflow.Sleep("t", until="when")))
        await settle()
        for handle in (fixed, named):
            outcome = await engine.outcome(handle.flow_id)
            assert outcome.status is FlowStatus.WAITING
            assert outcome.waiting[0].deadline == at.timestamp()
        clock.advance(15 * 3600)
        with anyio.fail_after(5):
            assert (await fixed.wait()).status is FlowStatus.SUCCESS
            assert (await named.wait()).status is FlowStatus.SUCCESS


async def test_a_symbol_holding_a_naive_datetime_fails_the_sleep() -> None:
    @aioflow.task(provides="when")
    async def pick() -> datetime:
        return datetime(2026, 12, 5, 3)

    engine = aioflow.Engine()
    with pytest.raises(aioflow.FlowFailedError) as caught:
        await engine.run(aioflow.Linear("naive", pick, aioflow.Sleep("s", until="when")))
    failure = caught.value.outcome.failures["s"]
    assert failure.matches(ValueError) and "aware datetime" in failure.message


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "words"),
    [
        ((-1,), {}, ValueError, ">= 0"),
        ((float("nan"),), {}, ValueError, "finite"),
        ((float("inf"),), {}, ValueError, "finite"),
        (("3",), {}, TypeError, "number of seconds"),
        ((), {}, ValueError, "seconds or until"),
        ((5,), {"until": "x"}, ValueError, "seconds or until"),
        ((), {"until": datetime(2026, 1, 1)}, ValueError, "aware datetime"),
        ((), {"until": 12}, TypeError, "aware datetime"),
    ],
)
def test_bad_sleeps_are_refused_naming_the_problem(
    args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        aioflow.Sleep("nap", *args, **kwargs)  # type: ignore[arg-type]


async def test_zero_seconds_and_a_past_datetime_end_at_once() -> None:
    past = datetime.now(UTC) - timedelta(days=1)
    engine = aioflow.Engine()
    flow = aioflow.Linear("now", aioflow.Sleep("a", seconds=0), aioflow.Sleep("b", until=past))
    async with engine:
        outcome = await (await engine.start(flow)).wait()
    assert outcome.status is FlowStatus.SUCCESS


async def test_ten_thousand_sleeping_flows_cost_one_timer_task() -> None:
    clock = FakeClock()
    flow = aioflow.Linear("nap", aioflow.Sleep("s", seconds=3600))
    async with aioflow.Engine(clock=clock.now, sleep=clock.sleep) as engine:
        handles = [await engine.start(flow) for _ in range(2000)]
        with anyio.fail_after(30):
            while {(await engine.outcome(h.flow_id)).status for h in handles} != {
                FlowStatus.WAITING
            }:
                await anyio.sleep(0.05)
        # The engine's timer keeps them all; no task per sleeping flow.
        assert len(engine._timers) == 2000
        assert len(asyncio.all_tasks()) < 20
        assert clock.sleepers == 1  # the one timer task, sleeping until the earliest
        clock.advance(3600)
        with anyio.fail_after(30):
            outcomes = [await h.wait() for h in handles]
    assert {o.status for o in outcomes} == {FlowStatus.SUCCESS}


async def test_a_process_killed_while_sleeping_never_runs_anything_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = f"sqlite:///{tmp_path / 'sleep.db'}"
    ledger = tmp_path / "ledger"
    monkeypatch.setenv("AIOFLOW_SLEEP_LEDGER", str(ledger))
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.sleep_child", journal, str(ledger), "trial-1"],
        cwd=Path(__file__).parent.parent,
    )
    try:
        with anyio.fail_after(30):
            while True:
                await anyio.sleep(0.05)
                if ledger.exists() and "begin" in ledger.read_text():
                    async with aioflow.Engine(journal) as peek:
                        summary = await peek.journal.summary("trial-1")
                    if summary.status is FlowStatus.WAITING:
                        break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    # A minute later, in another process (this one) whose clock says so.
    clock = FakeClock(time.time() + 61)
    async with aioflow.Engine(journal, clock=clock.now, sleep=clock.sleep) as engine:
        outcome = await engine.resume("trial-1")
    assert outcome.status is FlowStatus.SUCCESS
    assert outcome.results == {"done": "finished"}
    lines = [line.split()[0] for line in ledger.read_text().splitlines()]
    assert lines == ["begin", "finish"]


async def test_an_entered_engine_wakes_a_slept_flow_it_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flow resting WAITING on a sleep that a new process resumes before the deadline
    is woken by that process's timer at the deadline recorded by the first."""
    journal = f"sqlite:///{tmp_path / 'sleep.db'}"
    monkeypatch.setenv("AIOFLOW_SLEEP_LEDGER", str(tmp_path / "ledger"))
    clock = FakeClock()
    async with aioflow.Engine(journal, clock=clock.now, sleep=clock.sleep) as engine:
        outcome = await engine.run("tests.sleep_child:make_trial", flow_id="t")
    assert outcome.status is FlowStatus.WAITING
    clock.advance(30)
    async with aioflow.Engine(journal, clock=clock.now, sleep=clock.sleep) as engine:
        outcome = await engine.resume("t")
        assert outcome.status is FlowStatus.WAITING
        clock.advance(30)
        outcome = await finished(engine, "t")
    assert outcome.status is FlowStatus.SUCCESS
