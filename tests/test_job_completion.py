"""A conductor's job completed by the transaction that commits its flow's SUCCESS (see
Journal._complete_job_on_success): on SQLite, on the loop's thread and in aiosqlite's
when the file is locked; on PostgreSQL, beside a flow whose fence no longer holds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from aioflow import FlowStatus, JobBoard, JobState, LeaseLostError
from aioflow.jobs import Job
from aioflow.journal import Journal, open_journal
from aioflow.journal._base import Fence

from .pg import pg_schema, pg_url, sqlite_or_pg_url
from .test_journal import atom_event, flow_start, flow_status

__all__ = ["pg_schema", "pg_url", "sqlite_or_pg_url"]


async def claimed(board: JobBoard) -> Job:
    await board.post("m:f")
    job = await board.claim("c1", 30)
    assert job is not None
    return job


def run_to(journal: Journal, flow_id: str, status: FlowStatus) -> None:
    for event in (flow_start(flow_id), atom_event(flow_id, 2), flow_status(flow_id, 3, status)):
        journal.append(event)


async def test_a_success_completes_the_job_and_nothing_else_does(sqlite_or_pg_url: str) -> None:
    url = sqlite_or_pg_url
    board = JobBoard.open(url)
    async with board, open_journal(url) as journal:
        ok, failed, stale = [await claimed(board) for _ in range(3)]
        for job in (ok, failed, stale):
            assert journal._complete_job_on_success(job.id, job.generation, board._now)
        assert await board.release(stale)  # its claim moves on before its flow ends
        run_to(journal, ok.id, FlowStatus.SUCCESS)
        run_to(journal, failed.id, FlowStatus.REVERTED)
        run_to(journal, stale.id, FlowStatus.SUCCESS)
        await journal.flush()
        assert journal._job_completed(ok.id) is True
        assert journal._job_completed(failed.id) is None  # left to the conductor
        assert journal._job_completed(stale.id) is False
        assert journal._job_completed(ok.id) is None  # said once, then forgotten
        done = await board.get(ok.id)
        assert (done.state, done.status, done.failures) == (
            JobState.COMPLETE,
            FlowStatus.SUCCESS,
            {},
        )
        assert (await board.get(failed.id)).state is JobState.CLAIMED
        assert (await board.get(stale.id)).state is JobState.UNCLAIMED


async def test_a_commit_that_waits_for_a_locked_sqlite_file_completes_the_job_too(
    tmp_path: Path,
) -> None:
    """The loop's thread never waits for the lock: aiosqlite's thread commits, and the
    job's completion goes with it."""
    path = tmp_path / "shared.db"
    url = f"sqlite:///{path}"
    board = JobBoard.open(url)
    async with board, open_journal(url) as journal:
        job = await claimed(board)
        assert journal._complete_job_on_success(job.id, job.generation, board._now)
        locker = sqlite3.connect(path, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")
            run_to(journal, job.id, FlowStatus.SUCCESS)
            async with anyio.create_task_group() as tg:
                tg.start_soon(journal.flush)
                await anyio.sleep(0.2)
                assert journal.durable < journal.appended  # held up by the lock
                locker.execute("ROLLBACK")
        finally:
            locker.close()
        assert journal._job_completed(job.id) is True
        assert (await board.get(job.id)).state is JobState.COMPLETE


async def test_a_lost_fence_beside_it_does_not_lose_the_completion(pg_url: str) -> None:
    """One commit for two flows, one taken over meanwhile: that flow's rows are refused,
    the other's commit (and its job's completion) goes in."""
    board = JobBoard.open(pg_url)
    async with board, open_journal(pg_url) as journal, open_journal(pg_url) as other:
        job = await claimed(board)
        journal.append(flow_start("lost"))
        await journal.flush()
        journal.set_fence("lost", Fence("me", 0))
        await other.take("lost", "thief")  # generation 1 now
        assert journal._complete_job_on_success(job.id, job.generation, board._now)
        ticket = journal.append(atom_event("lost", 2))
        run_to(journal, job.id, FlowStatus.SUCCESS)
        await journal.flush()
        with pytest.raises(LeaseLostError):
            await journal.wait_durable(ticket)
        assert journal._job_completed(job.id) is True
        assert (await board.get(job.id)).state is JobState.COMPLETE
        assert [e.seq for e in await journal.load("lost")] == [1]
