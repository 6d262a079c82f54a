"""Batch claims: ``board.claim_many`` on every backend, and a conductor that claims up to
its free capacity in one statement."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioflow
from aioflow import Conductor, Engine, FlowStatus, JobState
from aioflow.jobs import Job, JobBoard

from .boards import BACKENDS, Clock, url_for
from .pg import pg_schema, pg_url

__all__ = ["pg_schema", "pg_url"]

FLOW = "tests.test_claim_many:one_step"


@aioflow.task(provides="done")
async def step(n: int) -> int:
    return n


def one_step() -> aioflow.Linear:
    return aioflow.Linear("one-step", step)




@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return url_for(request, tmp_path)


def open_board(url: str, clock: Clock | None = None) -> JobBoard:
    if clock is None:
        return JobBoard.open(url, poll=0.01)
    return JobBoard.open(url, clock=clock, poll=0.01)


def count_claims(board: JobBoard, sizes: list[int]) -> None:
    """Record the size of each batch ``board.claim_many`` returns (the claim itself is
    the board's own)."""
    real: Callable[[str, float, int], Awaitable[list[Job]]] = board.claim_many

    async def claim_many(owner: str, lease: float, n: int) -> list[Job]:
        jobs = await real(owner, lease, n)
        sizes.append(len(jobs))
        return jobs

    board.claim_many = claim_many  # type: ignore[method-assign]


# --------------------------------------------------------------------- the board


async def test_claim_many_takes_the_best_jobs_in_claim_order(url: str) -> None:
    clock = Clock()
    async with open_board(url, clock) as board:
        posted: list[Job] = []
        for priority in (0, 5, 0, 5, 1, 0):
            posted.append(await board.post(FLOW, {"n": len(posted)}, priority=priority))
            clock.now += 1
        # Highest priority first, then the oldest.
        order = [posted[i].id for i in (1, 3, 4, 0, 2, 5)]
        jobs = await board.claim_many("c1", 30, 4)
        assert [j.id for j in jobs] == order[:4]
        for job in jobs:
            assert (job.state, job.owner, job.generation, job.attempts) == (
                JobState.CLAIMED,
                "c1",
                1,
                1,
            )
            assert job.available_at == clock.now + 30
            assert await board.get(job.id) == job
        # More than are left: the rest, in order; then none.
        rest = await board.claim_many("c2", 30, 10)
        assert [j.id for j in rest] == order[4:]
        assert await board.claim_many("c3", 30, 10) == []
        assert await board.claim("c3", 30) is None


async def test_claim_many_of_one_is_what_claim_takes(url: str) -> None:
    clock = Clock()
    async with open_board(url, clock) as board:
        low = await board.post(FLOW, {"n": 0})
        high = await board.post(FLOW, {"n": 1}, priority=3)
        [first] = await board.claim_many("c1", 30, 1)
        second = await board.claim("c1", 30)
        assert (first.id, second and second.id) == (high.id, low.id)


async def test_delayed_jobs_are_not_claimed_before_their_time(url: str) -> None:
    clock = Clock()
    async with open_board(url, clock) as board:
        later = await board.post(FLOW, {"n": 0}, delay=60, priority=9)
        now = [await board.post(FLOW, {"n": i}) for i in range(1, 3)]
        assert [j.id for j in await board.claim_many("c1", 300, 10)] == [j.id for j in now]
        assert (await board.get(later.id)).state is JobState.UNCLAIMED
        clock.now += 59
        assert await board.claim_many("c1", 300, 10) == []
        clock.now += 1
        assert [j.id for j in await board.claim_many("c1", 300, 10)] == [later.id]


async def test_claims_whose_lease_ran_out_are_claimed_again(url: str) -> None:
    clock = Clock()
    async with open_board(url, clock) as board:
        a = await board.post(FLOW, {"n": 0})
        clock.now += 1
        b = await board.post(FLOW, {"n": 1})
        assert len(await board.claim_many("dead", 10, 2)) == 2
        clock.now += 5
        assert await board.claim_many("c2", 10, 2) == []  # still held
        clock.now += 6
        again = await board.claim_many("c2", 10, 2)
        assert [(j.id, j.owner, j.generation, j.attempts) for j in again] == [
            (a.id, "c2", 2, 2),
            (b.id, "c2", 2, 2),
        ]


@pytest.mark.parametrize("n", [0, -1, True, 1.5, "2"])
async def test_claim_many_refuses_a_count_that_is_not_a_whole_number_from_one(
    url: str, n: Any
) -> None:
    async with open_board(url) as board:
        await board.post(FLOW, {"n": 0})
        with pytest.raises(ValueError, match="claim_many takes a whole number of jobs >= 1"):
            await board.claim_many("c1", 30, n)
        assert (await board.jobs())[0].state is JobState.UNCLAIMED


async def test_concurrent_claimers_never_claim_the_same_job(url: str) -> None:
    clock = Clock()
    poster = open_board(url, clock)
    # Separate board objects (connections) for the database boards, as separate
    # conductors have; the memory board is one process's own.
    claimers = [poster if url == "memory://" else open_board(url, clock) for _ in range(4)]
    rng = random.Random(20)
    try:
        for round_ in range(8):
            posted = {(await poster.post(FLOW, {"n": i})).id for i in range(40)}
            got: list[tuple[int, Job]] = []

            async def claimer(i: int, board: JobBoard, got: list[tuple[int, Job]]) -> None:
                while jobs := await board.claim_many(f"c{i}", 30, rng.randint(1, 6)):
                    got.extend((i, job) for job in jobs)
                    await anyio.sleep(0)

            async with anyio.create_task_group() as tg:
                for i, board in enumerate(claimers):
                    tg.start_soon(claimer, i, board, got)
            ids = Counter(job.id for _, job in got)
            assert set(ids) == posted, f"round {round_}"
            assert max(ids.values()) == 1, f"round {round_}: claimed twice"
            for i, job in got:
                stored = await poster.get(job.id)
                assert (stored.owner, stored.generation) == (f"c{i}", 1)
    finally:
        for board in {id(b): b for b in [poster, *claimers]}.values():
            await board.close()


# --------------------------------------------------------------------- conductors


async def test_a_conductor_claims_its_free_capacity_at_once_and_completes_every_job(
    url: str,
) -> None:
    board = open_board(url)
    events: list[tuple[str, str]] = []

    class Jobs:
        def job(self, event: str, job: Job) -> None:
            events.append((event, job.id))

    engine = Engine(url, instruments=[Jobs()])
    posted = [await board.post(FLOW, {"n": i}) for i in range(20)]
    sizes: list[int] = []
    count_claims(board, sizes)
    async with Conductor(board, engine, name="c1", lease=30, capacity=8) as conductor:
        with anyio.fail_after(60):
            await conductor.run(max_jobs=20)
    for job in posted:
        done = await board.get(job.id)
        assert (done.state, done.status, done.owner) == (
            JobState.COMPLETE,
            FlowStatus.SUCCESS,
            "c1",
        )
    assert sizes[0] == 8  # the whole free capacity in the first claim
    assert sum(sizes) == 20 and len(sizes) < 20
    assert Counter(e for e, _ in events) == {"claimed": 20, "completed": 20}
    assert {j for _, j in events} == {j.id for j in posted}
    await board.close()


async def test_a_batch_dead_letters_each_job_that_ran_out_of_attempts(url: str) -> None:
    clock = Clock()
    board = open_board(url, clock)
    engine = Engine(url)
    tired = await board.post(FLOW, {"n": 0}, priority=1)
    for _ in range(3):  # three conductors claimed it and died
        assert (await board.claim("dead", 10)) is not None
        clock.now += 11
    fresh = [await board.post(FLOW, {"n": i}) for i in range(1, 4)]
    sizes: list[int] = []
    count_claims(board, sizes)
    async with Conductor(board, engine, lease=10, capacity=8, max_attempts=3) as conductor:
        with anyio.fail_after(60):
            await conductor.run(max_jobs=4)
    assert sizes[0] == 4
    failed = await board.get(tired.id)
    assert (failed.state, failed.attempts) == (JobState.FAILED, 4)
    assert "dead-lettered" in failed.failures["<conductor>"].message
    assert [(await board.get(j.id)).state for j in fresh] == [JobState.COMPLETE] * 3
    await board.close()


@pytest.mark.parametrize("when", ["during", "after"])
async def test_cancelling_a_conductor_at_a_batch_claim_gives_every_job_back(
    url: str, when: str
) -> None:
    """Cancelled while its claim commits ("during") or as the claim returns ("after"):
    every job of the batch is given back (UNCLAIMED, attempt not counted), none waits
    out its lease as CLAIMED, and the next conductor runs them all."""
    board = open_board(url)
    engine = Engine(url)
    posted = [await board.post(FLOW, {"n": i}) for i in range(8)]
    real = board.claim_many
    sizes: list[int] = []
    async with Conductor(board, engine, name="c1", lease=30, capacity=8) as conductor:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:

                async def claim_many(owner: str, lease: float, n: int) -> list[Job]:
                    if when == "during":
                        tg.cancel_scope.cancel()
                    jobs = await real(owner, lease, n)
                    sizes.append(len(jobs))
                    if when == "after":
                        tg.cancel_scope.cancel()
                    return jobs

                board.claim_many = claim_many  # type: ignore[method-assign]
                tg.start_soon(conductor.run)
        assert sizes == [8]
        assert conductor.running == {}
    for job in posted:
        back = await board.get(job.id)
        assert (back.state, back.owner, back.attempts) == (JobState.UNCLAIMED, None, 0)
    board.claim_many = real  # type: ignore[method-assign]
    async with Conductor(board, engine, name="c2", lease=30, capacity=8) as conductor:
        with anyio.fail_after(60):
            await conductor.run(max_jobs=8)
    assert [(await board.get(j.id)).state for j in posted] == [JobState.COMPLETE] * 8
    await board.close()
