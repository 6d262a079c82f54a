"""Deadlines on parts of a flow: ``timeout=`` on Linear, Unordered and Graph."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

import aioflow
from aioflow import AtomState, FlowStatus
from aioflow.testing import FakeClock


def steps(clock: FakeClock, undone: list[str]) -> tuple[aioflow.Task, aioflow.Task]:
    @aioflow.task(provides="made")
    async def make() -> str:
        return "made"

    @make.revert
    async def unmake() -> None:
        undone.append("make")

    @aioflow.task
    async def slow() -> None:
        await clock.sleep(3600)

    @slow.revert
    async def unslow(result: object) -> None:
        undone.append(f"slow:{type(result).__name__}")

    return make, slow


async def run_with(clock: FakeClock, flow: aioflow.Flow, advance: float) -> aioflow.Outcome:
    async with aioflow.Engine(clock=clock.now, sleep=clock.sleep) as engine:
        handle = await engine.start(flow)
        await anyio.sleep(0.02)
        clock.advance(advance)
        with anyio.fail_after(5):
            try:
                return await handle.wait()
            except aioflow.FlowFailedError as exc:
                return exc.outcome


@pytest.mark.parametrize("kind", [aioflow.Linear, aioflow.Graph])
async def test_a_part_past_its_deadline_is_cancelled_and_reverted(kind: type[aioflow.Flow]) -> None:
    clock = FakeClock()
    undone: list[str] = []
    make, slow = steps(clock, undone)
    flow = aioflow.Linear("outer", kind("part", make, slow, timeout=60))
    outcome = await run_with(clock, flow, 61)
    assert outcome.status is FlowStatus.REVERTED
    assert outcome.failures["part"].matches(aioflow.DeadlineExceededError)
    assert outcome.failures["part"].matches(TimeoutError)
    assert "passed its deadline" in outcome.failures["part"].message
    assert outcome.failures["slow"].matches(aioflow.DeadlineExceededError)
    assert undone == ["slow:Failure", "make"]  # dependents first, the cancelled one too
    assert outcome.atoms["slow"].state is AtomState.REVERTED


async def test_an_unordered_part_cancels_every_running_member() -> None:
    clock = FakeClock()
    undone: list[str] = []
    make, slow = steps(clock, undone)
    slower = slow.using("slower")
    outcome = await run_with(clock, aioflow.Unordered("part", make, slow, slower, timeout=10), 11)
    assert outcome.status is FlowStatus.REVERTED
    assert outcome.failures["slow"].matches(aioflow.DeadlineExceededError)
    assert outcome.failures["slower"].matches(aioflow.DeadlineExceededError)
    assert sorted(undone) == ["make", "slow:Failure", "slow:Failure"]


async def test_a_part_that_finishes_in_time_is_untouched() -> None:
    clock = FakeClock()
    undone: list[str] = []
    make, _ = steps(clock, undone)
    flow = aioflow.Linear("outer", aioflow.Linear("part", make, timeout=60))
    outcome = await run_with(clock, flow, 120)
    assert outcome.status is FlowStatus.SUCCESS and undone == []
    assert outcome.results == {"made": "made"}


async def test_the_parts_retry_runs_it_again_with_a_new_deadline() -> None:
    clock = FakeClock()
    attempts: list[int] = []

    @aioflow.task
    async def sometimes_slow() -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            await clock.sleep(3600)

    flow = aioflow.Linear(
        "outer",
        aioflow.Linear(
            "part", sometimes_slow, retry=aioflow.Retry.times(3), timeout=timedelta(seconds=60)
        ),
    )
    outcome = await run_with(clock, flow, 61)
    assert outcome.status is FlowStatus.SUCCESS
    assert attempts == [1, 2]
    assert outcome.atoms["part"].attempts == 2


async def test_an_outer_retry_takes_a_deadline_of_a_part_without_one() -> None:
    clock = FakeClock()
    attempts: list[int] = []

    @aioflow.task
    async def sometimes_slow() -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            await clock.sleep(3600)

    inner = aioflow.Linear("inner", sometimes_slow, timeout=30)
    flow = aioflow.Linear("outer", inner, retry=aioflow.Retry.times(2))
    outcome = await run_with(clock, flow, 31)
    assert outcome.status is FlowStatus.SUCCESS
    assert attempts == [1, 2]


async def test_a_thread_task_in_a_late_part_is_abandoned() -> None:
    clock = FakeClock()
    release = threading.Event()

    @aioflow.task
    def blocking() -> None:
        release.wait(10)

    try:
        outcome = await run_with(clock, aioflow.Linear("part", blocking, timeout=5), 6)
    finally:
        release.set()
    assert outcome.status is FlowStatus.REVERTED
    assert outcome.failures["blocking"].matches(aioflow.DeadlineExceededError)


async def test_a_waiting_atom_in_a_late_part_is_abandoned() -> None:
    clock = FakeClock()
    flow = aioflow.Linear(
        "outer", aioflow.Linear("part", aioflow.Receive("answer", "answers"), timeout=60)
    )
    async with aioflow.Engine(clock=clock.now, sleep=clock.sleep) as engine:
        handle = await engine.start(flow)
        await anyio.sleep(0.02)
        assert (await engine.outcome(handle.flow_id)).status is FlowStatus.WAITING
        clock.advance(61)
        with anyio.fail_after(5), pytest.raises(aioflow.FlowFailedError) as caught:
            await handle.wait()
    assert caught.value.outcome.failures["part"].matches(aioflow.DeadlineExceededError)


async def test_the_deadline_is_kept_in_the_journal(sqlite_url: str) -> None:
    """A run interrupted inside a part is resumed with the deadline set when the part
    started, not a new one."""
    clock = FakeClock()
    undone: list[str] = []
    make, slow = steps(clock, undone)
    flow = aioflow.Linear("outer", aioflow.Linear("part", make, slow, timeout=60))
    async with aioflow.Engine(sqlite_url, clock=clock.now, sleep=clock.sleep) as engine:
        handle = await engine.start(flow)
        await anyio.sleep(0.05)
        handle.cancel()  # the process stops here, mid-part
        with pytest.raises(BaseException):  # noqa: B017 - cancelled
            await handle.wait()
    clock.advance(50)
    async with aioflow.Engine(sqlite_url, clock=clock.now, sleep=clock.sleep) as engine:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def resume() -> None:
                    with pytest.raises(aioflow.FlowFailedError) as caught:
                        await engine.resume(handle.flow_id, flow)
                    failures = caught.value.outcome.failures
                    assert failures["part"].matches(aioflow.DeadlineExceededError)

                tg.start_soon(resume)
                await anyio.sleep(0.05)
                clock.advance(11)  # 61 s after the part started, 11 s after the resume


@pytest.mark.parametrize(
    ("timeout", "error", "words"),
    [
        (0, ValueError, "> 0"),
        (-1, ValueError, "> 0"),
        (float("nan"), ValueError, "finite"),
        ("1m", TypeError, "seconds or a timedelta"),
    ],
)
def test_bad_timeouts_are_refused_naming_the_part(
    timeout: object, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=f"flow 'part': timeout.*{words}"):
        aioflow.Linear("part", timeout=timeout)  # type: ignore[arg-type]


def test_a_deadline_alone_adds_the_parts_atom_but_its_value_is_not_structure() -> None:
    @aioflow.task
    async def a() -> None:
        pass

    plain = aioflow.compile_flow(aioflow.Linear("o", aioflow.Linear("p", a)))
    short = aioflow.compile_flow(aioflow.Linear("o", aioflow.Linear("p", a, timeout=5)))
    long = aioflow.compile_flow(aioflow.Linear("o", aioflow.Linear("p", a, timeout=50)))
    assert "p" not in plain.index and "p" in short.index
    assert short.fingerprint == long.fingerprint != plain.fingerprint


async def test_a_flow_resting_in_a_part_is_woken_at_the_parts_deadline(sqlite_url: str) -> None:
    clock = FakeClock()
    flow = aioflow.Linear(
        "outer", aioflow.Linear("part", aioflow.Sleep("nap", seconds=3600), timeout=60)
    )
    async with aioflow.Engine(sqlite_url, clock=clock.now, sleep=clock.sleep) as engine:
        outcome = await engine.run(flow)
        assert outcome.status is FlowStatus.WAITING
        clock.advance(61)
        with anyio.fail_after(10):
            while (await engine.outcome(outcome.flow_id)).status is FlowStatus.WAITING:
                await anyio.sleep(0.01)
            with pytest.raises(aioflow.FlowFailedError) as caught:
                await engine.wait(outcome.flow_id)
    failures = caught.value.outcome.failures
    assert failures["part"].matches(aioflow.DeadlineExceededError)
    assert caught.value.outcome.atoms["nap"].state is AtomState.REVERTED


def parked_part_flow() -> aioflow.Flow:
    return aioflow.Linear(
        "job", aioflow.Linear("part", aioflow.Sleep("nap", seconds=3600), timeout=60)
    )


async def test_a_jobs_flow_parked_in_a_part_fails_it_at_the_deadline(tmp_path: Path) -> None:
    from aioflow.jobs import Conductor, JobBoard, JobState

    url = f"sqlite:///{tmp_path}/jobs.db"
    clock = FakeClock()
    async with JobBoard.open(url, clock=clock.now, sleep=clock.sleep, poll=0.01) as board:
        job = await board.post("tests.test_deadlines:parked_part_flow")
        engine = aioflow.Engine(url, clock=clock.now, sleep=clock.sleep)
        conductor = Conductor(board, engine, name="c", lease=1e6)
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            with anyio.fail_after(10):
                while (await board.get(job.id)).state is not JobState.WAITING:
                    await anyio.sleep(0.01)
            clock.advance(61)  # the part's deadline, long before the sleep's
            with anyio.fail_after(10):
                while not (done := await board.get(job.id)).state.is_final:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert done.state is JobState.FAILED and done.status is FlowStatus.REVERTED
    assert done.failures["part"].matches(aioflow.DeadlineExceededError)
