"""Operators' controls on jobs, on every board: retry a FAILED job, cancel any other one.

The board and the journal share one database (memory, a SQLite file, the real
PostgreSQL), and real conductors run the jobs.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioflow
from aioflow import AioflowError, Conductor, Engine, FlowStatus, JobBoard, JobState, NotFoundError
from aioflow.jobs import Job

from .boards import BACKENDS, Clock, url_for
from .pg import pg_schema, pg_url

__all__ = ["pg_schema", "pg_url"]

FLOW = "tests.test_job_retry_cancel:make_flow"
WAITING_FLOW = "tests.test_job_retry_cancel:waiting_flow"
SECRET = "retry-cancel-test-secret"


# ------------------------------------------------------------------ the flow of the jobs


def _note(workdir: str, line: str) -> None:
    fd = os.open(Path(workdir) / "executions.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def executions(workdir: Path) -> Counter[str]:
    path = workdir / "executions.log"
    return Counter(path.read_text().splitlines()) if path.exists() else Counter()


@aioflow.task(provides="a")
async def first(workdir: str) -> int:
    _note(workdir, "first")
    return 1


@first.revert
async def undo_first(workdir: str) -> None:
    _note(workdir, "first reverted")


@aioflow.task(provides="b")
async def slow(workdir: str, a: int, hold: bool = False) -> int:
    """Runs until a file named ``go`` exists in ``workdir`` (when ``hold``)."""
    _note(workdir, "slow started")
    while hold and not (Path(workdir) / "go").exists():
        await anyio.sleep(0.02)
    return a + 1


@aioflow.task(provides="c")
async def last(workdir: str, b: int) -> int:
    """Fails until a file named ``fixed`` exists in ``workdir``."""
    if not (Path(workdir) / "fixed").exists():
        raise ValueError("not fixed yet")
    _note(workdir, "last")
    return b + 1


def make_flow() -> aioflow.Linear:
    return aioflow.Linear("retried", first, slow, last)


@aioflow.task(provides="approval")
async def ask(external: aioflow.External) -> object:
    return external.wait(timeout=3600)


def waiting_flow() -> aioflow.Linear:
    return aioflow.Linear("approval", ask)




@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return url_for(request, tmp_path)


def make(url: str, **kwargs: Any) -> tuple[JobBoard, Engine]:
    return JobBoard.open(url, poll=0.01, **kwargs), Engine(url, secret=SECRET)


def operator_engine(url: str, engine: Engine) -> Engine:
    """The engine an operator's process would use: its own, except for a memory journal,
    which lives in the conductor's engine object."""
    return engine if url == "memory://" else Engine(url, secret=SECRET)


async def run_jobs(board: JobBoard, engine: Engine, n: int, **kwargs: Any) -> None:
    async with Conductor(board, engine, lease=30, **kwargs) as conductor:
        with anyio.fail_after(60):
            await conductor.run(max_jobs=n)


async def dead_letter(board: JobBoard, engine: Engine, clock: Clock, job: Job) -> Job:
    """Three conductors claimed ``job`` and died; a fourth dead-letters it."""
    for _ in range(3):
        assert await board.claim("dead", 10) is not None
        clock.now += 11
    await run_jobs(board, engine, 1, max_attempts=3)
    dead = await board.get(job.id)
    assert (dead.state, dead.status) == (JobState.FAILED, None)
    assert "dead-lettered" in dead.failures["<conductor>"].message
    return dead


def same_but_generation(a: Job, b: Job) -> bool:
    return {k: v for k, v in vars_of(a).items() if k != "generation"} == {
        k: v for k, v in vars_of(b).items() if k != "generation"
    }


def vars_of(job: Job) -> dict[str, Any]:
    return {f.name: getattr(job, f.name) for f in dataclasses.fields(job)}


# ------------------------------------------------------------------------------ retry


async def test_a_retried_dead_letter_goes_back_and_a_conductor_resumes_its_flow(
    url: str, tmp_path: Path
) -> None:
    clock = Clock()
    board, engine = make(url, clock=clock)
    (tmp_path / "fixed").touch()
    inputs = {"workdir": str(tmp_path), "hold": True}
    job = await board.post(FLOW, inputs, name="nightly", priority=2)
    # The flow ran part way (first finished, slow was running) before its conductors died.
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def run_part() -> None:
                await engine.run(FLOW, inputs, flow_id=job.id)

            tg.start_soon(run_part)
            while executions(tmp_path)["slow started"] == 0:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert (await engine.outcome(job.id)).status is FlowStatus.SUSPENDED
    dead = await dead_letter(board, engine, clock, job)

    retried = await board.retry(job.id)

    assert retried.id == job.id
    assert (retried.state, retried.attempts, retried.status, retried.failures, retried.owner) == (
        JobState.UNCLAIMED,
        0,
        None,
        {},
        None,
    )
    assert (retried.flow, retried.inputs, retried.name, retried.priority) == (
        FLOW,
        inputs,
        "nightly",
        2,
    )
    assert retried.generation > dead.generation
    (tmp_path / "go").touch()
    await run_jobs(board, engine, 1, max_attempts=3)
    done = await board.get(job.id)
    assert (done.state, done.status, done.attempts) == (JobState.COMPLETE, FlowStatus.SUCCESS, 1)
    assert executions(tmp_path)["first"] == 1  # resumed: what finished was not run again
    assert executions(tmp_path)["last"] == 1


async def test_a_retried_reverted_job_is_posted_again_as_a_new_job(
    url: str, tmp_path: Path
) -> None:
    board, engine = make(url)
    inputs = {"workdir": str(tmp_path)}
    job = await board.post(FLOW, inputs, name="report", priority=3, idempotency_key="day-1")
    await run_jobs(board, engine, 1)
    failed = await board.get(job.id)
    assert (failed.state, failed.status) == (JobState.FAILED, FlowStatus.REVERTED)
    assert failed.failures["last"].matches(ValueError)

    new = await board.retry(job.id)

    assert new.id != job.id
    assert (new.state, new.flow, new.inputs, new.name, new.priority) == (
        JobState.UNCLAIMED,
        FLOW,
        inputs,
        "report",
        3,
    )
    assert (new.idempotency_key, new.attempts, new.status, new.failures) == (None, 0, None, {})
    old = await board.get(job.id)
    assert same_but_generation(old, failed)  # the old job stays as it was
    assert await board.post(FLOW, inputs, idempotency_key="day-1") == old  # its key too
    (tmp_path / "fixed").touch()
    await run_jobs(board, engine, 1)
    done = await board.get(new.id)
    assert (done.state, done.status) == (JobState.COMPLETE, FlowStatus.SUCCESS)
    assert (await engine.outcome(job.id)).status is FlowStatus.REVERTED
    assert [j.id for j in await board.jobs()] == [job.id, new.id]


async def test_only_a_failed_job_is_retried(url: str, tmp_path: Path) -> None:
    board, engine = make(url)
    (tmp_path / "fixed").touch()
    job = await board.post(FLOW, {"workdir": str(tmp_path)})
    with pytest.raises(AioflowError, match=f"job {job.id} is UNCLAIMED; only a FAILED job"):
        await board.retry(job.id)
    claimed = await board.claim("c1", 30)
    assert claimed is not None
    with pytest.raises(AioflowError, match="is CLAIMED; only a FAILED job"):
        await board.retry(job.id)
    await board.release(claimed)
    await run_jobs(board, engine, 1)
    with pytest.raises(AioflowError, match=r"is COMPLETE; only a FAILED job.*post it again"):
        await board.retry(job.id)
    with pytest.raises(NotFoundError, match="no job nope"):
        await board.retry("nope")
    assert (await board.get(job.id)).state is JobState.COMPLETE
    assert len(await board.jobs()) == 1


async def test_two_retries_of_a_dead_letter_at_once_requeue_it_once(
    url: str, tmp_path: Path
) -> None:
    clock = Clock()
    board, engine = make(url, clock=clock)
    job = await board.post(FLOW, {"workdir": str(tmp_path)})
    dead = await dead_letter(board, engine, clock, job)
    results: list[Job | BaseException] = []

    async def retry() -> None:
        try:
            results.append(await board.retry(job.id))
        except AioflowError as exc:
            results.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(retry)
        tg.start_soon(retry)

    jobs = [r for r in results if isinstance(r, Job)]
    errors = [r for r in results if not isinstance(r, Job)]
    assert len(jobs) == 1 and len(errors) == 1, results
    assert "is UNCLAIMED; only a FAILED job" in str(errors[0])
    now = await board.get(job.id)
    assert (now.state, now.generation) == (JobState.UNCLAIMED, dead.generation + 1)
    # Two callers that read the dead letter at the same time: one of them changes it.
    board2 = JobBoard.open(url, clock=clock) if url != "memory://" else board
    done = await board.claim("c", 30)
    assert done is not None
    await board.finish(done, JobState.FAILED, None)
    stale = await board.get(job.id)
    outcomes: list[bool] = []

    async def requeue(b: JobBoard) -> None:
        outcomes.append(await b._requeue(stale))

    async with anyio.create_task_group() as tg:
        tg.start_soon(requeue, board)
        tg.start_soon(requeue, board2)
    assert sorted(outcomes) == [False, True]
    await board2.close()


async def test_two_retries_of_a_reverted_job_read_at_once_post_one_new_job(
    url: str, tmp_path: Path
) -> None:
    board, engine = make(url)
    job = await board.post(FLOW, {"workdir": str(tmp_path)})
    await run_jobs(board, engine, 1)
    failed = await board.get(job.id)
    assert failed.status is FlowStatus.REVERTED
    board2 = JobBoard.open(url) if url != "memory://" else board
    posted: list[Job | None] = []

    async def repost(b: JobBoard) -> None:
        posted.append(await b._repost(failed))  # both read the job before either wrote

    async with anyio.create_task_group() as tg:
        tg.start_soon(repost, board)
        tg.start_soon(repost, board2)
    await board2.close()

    assert sum(p is not None for p in posted) == 1, posted
    assert len(await board.jobs()) == 2
    assert same_but_generation(await board.get(job.id), failed)


# ----------------------------------------------------------------------------- cancel


async def test_cancel_of_an_unclaimed_job_fails_it_at_once(url: str, tmp_path: Path) -> None:
    board, engine = make(url)
    (tmp_path / "fixed").touch()
    job = await board.post(FLOW, {"workdir": str(tmp_path)})

    cancelled = await board.cancel(job.id, engine=operator_engine(url, engine))

    assert (cancelled.state, cancelled.status, cancelled.owner) == (JobState.FAILED, None, None)
    failure = cancelled.failures["<cancel>"]
    assert failure.matches(aioflow.FlowCancelledError)
    assert failure.message == "cancelled by an operator"
    assert await board.claim("c1", 30) is None  # nothing left to run
    with pytest.raises(AioflowError, match=f"job {job.id} has ended .FAILED.; there is nothing"):
        await board.cancel(job.id, engine=engine)
    with pytest.raises(NotFoundError):
        await board.cancel("nope", engine=engine)
    # Retried, it runs after all (its flow never started: same id).
    assert (await board.retry(job.id)).id == job.id
    await run_jobs(board, engine, 1)
    assert (await board.get(job.id)).state is JobState.COMPLETE


async def test_cancel_of_a_job_whose_claim_lapsed_before_its_flow_started(
    url: str, tmp_path: Path
) -> None:
    clock = Clock()
    board, engine = make(url, clock=clock)
    job = await board.post(FLOW, {"workdir": str(tmp_path)})
    held = await board.claim("dead", 10)
    assert held is not None
    clock.now += 11  # its conductor died before starting the flow

    cancelled = await board.cancel(job.id, engine=operator_engine(url, engine))

    assert cancelled.state is JobState.FAILED and "<cancel>" in cancelled.failures
    assert not await board.finish(held, JobState.COMPLETE, FlowStatus.SUCCESS)  # fenced


async def test_cancel_of_a_running_job_reverts_its_flow_and_fails_the_job(
    url: str, tmp_path: Path
) -> None:
    board, engine = make(url)
    job = await board.post(FLOW, {"workdir": str(tmp_path), "hold": True})
    async with Conductor(board, engine, name="c1", lease=3) as conductor:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(conductor.run, max_jobs=1))
                while executions(tmp_path)["slow started"] == 0:
                    await anyio.sleep(0.01)

                returned = await board.cancel(job.id, engine=operator_engine(url, engine))

                assert returned.id == job.id and returned.state is JobState.CLAIMED
                done = await board.wait(job.id)
    assert (done.state, done.status) == (JobState.FAILED, FlowStatus.REVERTED)
    assert done.failures["<cancel>"].matches(aioflow.FlowCancelledError)
    assert executions(tmp_path)["first reverted"] == 1
    assert (await engine.outcome(job.id)).status is FlowStatus.REVERTED
    # A cancelled flow that ended: a retry posts a new job.
    assert (await board.retry(job.id)).id != job.id


async def test_cancel_of_a_job_given_back_with_its_flow_suspended(url: str, tmp_path: Path) -> None:
    board, engine = make(url)
    job = await board.post(FLOW, {"workdir": str(tmp_path), "hold": True})
    async with Conductor(board, engine, name="c1", lease=30) as conductor:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                while executions(tmp_path)["slow started"] == 0:
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()  # a graceful shutdown gives the job back
    back = await board.get(job.id)
    assert (back.state, back.attempts) == (JobState.UNCLAIMED, 0)  # the attempt uncounted

    await board.cancel(job.id, engine=operator_engine(url, engine))

    await run_jobs(board, engine, 1)
    done = await board.get(job.id)
    assert (done.state, done.status) == (JobState.FAILED, FlowStatus.REVERTED)
    assert "<cancel>" in done.failures
    assert executions(tmp_path)["first reverted"] == 1


async def test_cancel_of_a_waiting_job_unparks_it_and_a_conductor_concludes_it(url: str) -> None:
    board, engine = make(url)
    job = await board.post(WAITING_FLOW)
    await run_jobs(board, engine, 1)
    assert (await board.get(job.id)).state is JobState.WAITING

    returned = await board.cancel(job.id, engine=operator_engine(url, engine))

    assert returned.state is JobState.UNCLAIMED
    await run_jobs(board, engine, 1)
    done = await board.get(job.id)
    assert (done.state, done.status) == (JobState.FAILED, FlowStatus.REVERTED)
    assert done.failures["<cancel>"].matches(aioflow.FlowCancelledError)


async def test_cancel_of_a_claimed_job_whose_flow_is_starting_waits_for_the_flow(
    url: str, tmp_path: Path
) -> None:
    board, engine = make(url)
    inputs = {"workdir": str(tmp_path), "hold": True}
    job = await board.post(FLOW, inputs)
    assert await board.claim("c1", 30) is not None  # its conductor is about to start it
    returned: list[Job] = []

    async def cancel() -> None:
        returned.append(await board.cancel(job.id, engine=operator_engine(url, engine)))

    with anyio.fail_after(60):
        async with engine, anyio.create_task_group() as tg:
            tg.start_soon(cancel)
            with pytest.raises(aioflow.FlowFailedError) as failed:
                await engine.run(FLOW, inputs, flow_id=job.id)  # what the conductor runs

    assert failed.value.outcome.status is FlowStatus.REVERTED
    assert "<cancel>" in failed.value.outcome.failures
    assert [j.state for j in returned] == [JobState.CLAIMED]  # its conductor settles it
