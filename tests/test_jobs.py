"""Jobboards on every backend: posting, claiming under leases, fencing, waiting."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import aioflow
from aioflow import Failure, FlowStatus, LeaseLostError, NotFoundError
from aioflow.jobs import Job, JobBoard, JobState, MemoryJobBoard, SqliteJobBoard
from aioflow.journal import open_journal
from aioflow.journal._base import Fence

from .boards import BACKENDS, Clock, url_for
from .pg import pg_schema, pg_url
from .test_journal import atom_event, flow_start

__all__ = ["pg_schema", "pg_url"]




@pytest.fixture(params=BACKENDS)
def board_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return url_for(request, tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def open_board(url: str, clock: Clock) -> JobBoard:
    return JobBoard.open(url, clock=clock, poll=0.01)


async def test_post_get_list_and_trash(board_url: str, clock: Clock) -> None:
    async with open_board(board_url, clock) as board:
        job = await board.post("pkg.mod:flow", {"volume_id": "v1"}, name="backup")
        assert job.state is JobState.UNCLAIMED
        assert (job.flow, job.inputs, job.name, job.attempts) == (
            "pkg.mod:flow",
            {"volume_id": "v1"},
            "backup",
            0,
        )
        assert job.flow_id == job.id
        assert await board.get(job.id) == job
        clock.now += 1
        other = await board.post("pkg.mod:other")
        assert [j.id for j in await board.jobs()] == [job.id, other.id]
        assert await board.jobs(JobState.COMPLETE) == []
        await board.trash(job.id)
        with pytest.raises(NotFoundError, match=job.id):
            await board.get(job.id)
        with pytest.raises(NotFoundError):
            await board.trash(job.id)
        assert [j.id for j in await board.jobs(JobState.UNCLAIMED)] == [other.id]


async def test_a_second_post_with_the_same_key_returns_the_first_job(
    board_url: str, clock: Clock
) -> None:
    async with open_board(board_url, clock) as board:
        first = await board.post("pkg.mod:flow", {"n": 1}, idempotency_key="order-7")
        again = await board.post("pkg.mod:flow", {"n": 2}, idempotency_key="order-7")
        assert again == first
        assert again.inputs == {"n": 1}
        assert len(await board.jobs()) == 1


async def test_bad_posts_are_refused(board_url: str, clock: Clock) -> None:
    async with open_board(board_url, clock) as board:
        with pytest.raises(TypeError, match="inputs"):
            await board.post("pkg.mod:flow", ["x"])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="priority"):
            await board.post("pkg.mod:flow", priority="high")  # type: ignore[arg-type]
        with pytest.raises(aioflow.SerializationError):
            await board.post("pkg.mod:flow", {"x": object()})
        assert await board.jobs() == []


async def test_claims_take_priority_then_age(board_url: str, clock: Clock) -> None:
    async with open_board(board_url, clock) as board:
        old = await board.post("m:f", name="old")
        clock.now += 1
        urgent = await board.post("m:f", name="urgent", priority=5)
        clock.now += 1
        newer = await board.post("m:f", name="newer")
        order = [await board.claim("c1", 30.0) for _ in range(3)]
        assert [j.id for j in order if j] == [urgent.id, old.id, newer.id]
        assert await board.claim("c1", 30.0) is None
        first = order[0]
        assert first is not None
        assert (first.state, first.owner, first.generation, first.attempts) == (
            JobState.CLAIMED,
            "c1",
            1,
            1,
        )
        assert first.available_at == clock.now + 30.0


async def test_renew_many_extends_the_current_claims_and_leaves_stale_ones_out(
    board_url: str, clock: Clock
) -> None:
    async with open_board(board_url, clock) as board:
        assert await board.renew_many([], 10.0) == set()
        for n in range(3):
            await board.post("m:f", {"n": n})
        a, b, c = await board.claim_many("c1", 10.0, 3)
        assert await board.release(b)  # b's claim is stale now
        done = await board.claim("c2", 10.0)
        assert done is not None and done.id == b.id
        assert await board.finish(done, JobState.COMPLETE, FlowStatus.SUCCESS)
        clock.now += 9
        assert await board.renew_many([a, b, c], 10.0) == {a.id, c.id}
        clock.now += 9
        assert await board.claim("c3", 10.0) is None  # a and c renewed: still c1's
        for held in (a, c):
            job = await board.get(held.id)
            assert (job.state, job.owner, job.available_at) == (
                JobState.CLAIMED,
                "c1",
                clock.now - 9 + 10.0,
            )
        assert (await board.get(b.id)).state is JobState.COMPLETE  # untouched


async def test_an_expired_lease_is_claimable_again_and_the_old_claim_is_stale(
    board_url: str, clock: Clock
) -> None:
    async with open_board(board_url, clock) as board:
        await board.post("m:f")
        held = await board.claim("c1", 10.0)
        assert held is not None
        clock.now += 9
        assert await board.renew(held, 10.0)
        clock.now += 9
        assert await board.claim("c2", 10.0) is None  # renewed: still c1's
        clock.now += 2
        taken = await board.claim("c2", 10.0)
        assert taken is not None and taken.id == held.id
        assert (taken.owner, taken.generation, taken.attempts) == ("c2", 2, 2)
        assert not await board.renew(held, 10.0)
        assert not await board.release(held)
        assert not await board.finish(held, JobState.COMPLETE, FlowStatus.SUCCESS)
        assert await board.finish(taken, JobState.COMPLETE, FlowStatus.SUCCESS)
        done = await board.get(held.id)
        assert (done.state, done.status, done.owner) == (
            JobState.COMPLETE,
            FlowStatus.SUCCESS,
            "c2",
        )
        clock.now += 100
        assert await board.claim("c3", 10.0) is None  # finished jobs are never claimed


async def test_release_gives_the_job_back_without_counting_the_attempt(
    board_url: str, clock: Clock
) -> None:
    async with open_board(board_url, clock) as board:
        await board.post("m:f")
        held = await board.claim("c1", 60.0)
        assert held is not None
        assert await board.release(held)
        back = await board.get(held.id)
        assert (back.state, back.owner, back.attempts) == (JobState.UNCLAIMED, None, 0)
        again = await board.claim("c2", 60.0)
        assert again is not None and (again.generation, again.attempts) == (3, 1)


async def test_failed_jobs_keep_status_and_failures(board_url: str, clock: Clock) -> None:
    async with open_board(board_url, clock) as board:
        job = await board.post("m:f")
        held = await board.claim("c1", 60.0)
        assert held is not None
        failure = Failure.from_exception(ValueError("bad volume"))
        assert await board.finish(held, JobState.FAILED, FlowStatus.REVERTED, {"fetch": failure})
        failed = await board.wait(job.id, timeout=5)
        assert failed.state is JobState.FAILED and failed.status is FlowStatus.REVERTED
        assert failed.failures["fetch"].message == "bad volume"
        assert failed.failures["fetch"].matches(ValueError)
        with pytest.raises(ValueError, match="COMPLETE or FAILED"):
            await board.finish(held, JobState.CLAIMED, None)


async def test_park_and_unpark(board_url: str, clock: Clock) -> None:
    async with open_board(board_url, clock) as board:
        job = await board.post("m:f")
        held = await board.claim("c1", 60.0)
        assert held is not None and await board.park(held)
        assert (await board.get(job.id)).state is JobState.WAITING
        assert await board.claim("c2", 60.0) is None
        assert await board.unpark(job.id)
        assert not await board.unpark(job.id)
        again = await board.claim("c2", 60.0)
        assert again is not None and again.id == job.id


async def test_wait_times_out_and_returns_when_done(board_url: str, clock: Clock) -> None:
    async with open_board(board_url, clock) as board:
        job = await board.post("m:f")
        with pytest.raises(TimeoutError):
            await board.wait(job.id, timeout=0.05)

        async def finish() -> None:
            held = await board.claim("c", 60.0)
            assert held is not None
            await board.finish(held, JobState.COMPLETE, FlowStatus.SUCCESS)

        async with anyio.create_task_group() as tg:
            tg.start_soon(finish)
            done = await board.wait(job.id, timeout=10)
        assert done.state is JobState.COMPLETE
        with pytest.raises(NotFoundError):
            await board.wait("nope", timeout=1)


async def test_concurrent_claims_never_share_a_job(board_url: str, clock: Clock) -> None:
    boards = [open_board(board_url, clock) for _ in range(3)]
    if board_url == "memory://":
        boards = [boards[0]] * 3
    posted = {(await boards[0].post("m:f")).id for _ in range(30)}
    got: list[Job] = []

    async def conductor(board: JobBoard, name: str) -> None:
        while (job := await board.claim(name, 60.0)) is not None:
            got.append(job)

    async with anyio.create_task_group() as tg:
        for i, board in enumerate(boards):
            tg.start_soon(conductor, board, f"c{i}")
    for board in boards:
        await board.close()
    assert sorted(j.id for j in got) == sorted(posted)


@pytest.mark.parametrize("kind", ["memory", "postgres"])
async def test_wait_for_work_wakes_on_a_post(
    kind: str, clock: Clock, request: pytest.FixtureRequest
) -> None:
    """Memory boards wake at once, PostgreSQL ones by NOTIFY (SQLite boards just poll)."""
    board_url = "memory://" if kind == "memory" else str(request.getfixturevalue("pg_url"))
    async with open_board(board_url, clock) as board, open_board(board_url, clock) as poster:
        if board_url == "memory://":
            poster = board
        await board.wait_for_work(0.01)  # starts listening
        woke = anyio.Event()

        async def waiter() -> None:
            await board.wait_for_work(60)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.05)
            await poster.post("m:f")
            with anyio.fail_after(10):
                await woke.wait()


@pytest.mark.parametrize("seen", [True, False], ids=["end-seen", "end-unseen"])
async def test_a_board_listens_again_after_its_listening_connection_ends(
    pg_url: str, clock: Clock, seen: bool
) -> None:
    """The connection that LISTENs is ended by the server (a restart, an idle timeout,
    an operator): the waiter looks at once (posts made meanwhile were not heard), and
    the next wait listens on a new connection, so posts wake it by NOTIFY again rather
    than at its next poll. Whether the client had seen the end yet or not."""
    import asyncpg

    from aioflow.journal.postgres import dsn_from_url

    async with open_board(pg_url, clock) as board, open_board(pg_url, clock) as poster:
        await board.wait_for_work(0.01)  # starts listening
        first = board._listener  # type: ignore[attr-defined]
        assert first is not None
        if not seen:  # the board is not told: it finds the connection closed
            first.remove_termination_listener(board._listener_lost)  # type: ignore[attr-defined]
        admin = await asyncpg.connect(dsn_from_url(pg_url))
        try:  # our own session, by its pid
            pid = first.get_server_pid()
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        if seen:
            with anyio.fail_after(10):  # woken by the end itself
                await board.wait_for_work(60)
        else:
            with anyio.fail_after(10):
                while not first.is_closed():
                    await anyio.sleep(0.01)
            assert board._listener is first  # type: ignore[attr-defined]
        await board.wait_for_work(0.01)  # listens again
        again = board._listener  # type: ignore[attr-defined]
        assert again is not None and again is not first and not again.is_closed()
        woke = anyio.Event()

        async def waiter() -> None:
            await board.wait_for_work(60)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.05)
            await poster.post("m:f")
            with anyio.fail_after(10):
                await woke.wait()


def test_open_refuses_unknown_schemes() -> None:
    assert isinstance(JobBoard.open("memory://"), MemoryJobBoard)
    assert isinstance(JobBoard.open("sqlite:///x.db"), SqliteJobBoard)
    with pytest.raises(ValueError, match="postgresql://"):
        JobBoard.open("redis://localhost")


async def test_sqlite_board_of_another_version_is_refused(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "jobs.db"
    board = SqliteJobBoard(f"sqlite:///{path}")
    await board.post("m:f")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE aioflow_jobboard SET value = '9'")
    db.close()
    with pytest.raises(aioflow.JournalError, match="schema version 9"):
        await SqliteJobBoard(f"sqlite:///{path}").jobs()


# --------------------------------------------------------------------------- fencing


async def test_a_flow_taken_over_refuses_its_old_owners_events(board_url: str) -> None:
    """Fencing: once another engine takes a flow, its old owner's appends are refused, in
    the commit's own transaction, and only those: another flow of the same batch is kept."""
    async with open_journal(board_url) as journal:
        lost: list[BaseException] = []
        fence = Fence("engine-a", 1, on_lost=lost.append)
        journal.set_fence("f", fence)
        journal.append(flow_start("f"))
        journal.append(flow_start("unfenced"))
        await journal.flush()
        assert (await journal.summary("f")).owner == "engine-a"
        # Engine A has no heartbeat: B may take its flow (generation 2).
        assert await journal.take("f", "engine-b") == (2, 1)
        try:
            journal.append(atom_event("f", 2))
        except LeaseLostError:
            assert board_url == "memory://"  # refused at once; others at the commit
        journal.append(atom_event("unfenced", 2))
        await journal.flush()
        assert len(lost) == 1 and isinstance(lost[0], LeaseLostError)
        with pytest.raises(LeaseLostError, match="taken over by engine engine-b"):
            journal.append(atom_event("f", 3))
        assert [e.seq for e in await journal.load("f")] == [1]
        assert [e.seq for e in await journal.load("unfenced")] == [1, 2]
        summary = await journal.summary("f")
        assert (summary.owner, summary.generation) == ("engine-b", 2)


async def test_a_conductor_may_keep_its_journal_apart_from_its_board(tmp_path: Path) -> None:
    """Fencing is the flow's ownership, checked by the journal alone: the board and the
    journal need not share a database."""
    board = JobBoard.open(f"sqlite:///{tmp_path}/jobs.db", poll=0.01)
    engine = aioflow.Engine(f"sqlite:///{tmp_path}/other.db")
    job = await board.post("tests.test_jobs:one_step_flow")
    async with board, aioflow.Conductor(board, engine) as conductor:
        with anyio.fail_after(20):
            await conductor.run(max_jobs=1)
    done = await board.get(job.id)
    assert done.state is JobState.COMPLETE


@aioflow.task
async def one_step() -> str:
    return "done"


def one_step_flow() -> aioflow.Linear:
    return aioflow.Linear("one-step", one_step)
