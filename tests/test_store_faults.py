"""Faults of the store are survivable: real faults, injected on this machine only.

A SQLite write lock held past ``busy_timeout``, the engine's own PostgreSQL sessions
terminated (picked by their ``application_name``, never another session), a full tmpfs,
and a conductor whose PostgreSQL sessions keep being terminated. In each case the runs
whose events a failed commit held end with :class:`aioflow.JournalError` and leave a
prefix of their events in the journal; the other runs go on; the engine serves new runs
without a restart; and recovery finishes the interrupted flows, running no atom again
whose success was committed.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import math
import os
import sqlite3
import subprocess
import traceback
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

import aioflow
from aioflow import AtomState, Conductor, FlowHandle, FlowStatus, JobBoard, JobState
from aioflow.journal import SqliteJournal

from .pg import DSN, pg_schema, pg_url

__all__ = ["pg_schema", "pg_url"]

FLOW = "tests.test_store_faults:make_flow"
STEPS = 6
LEASE = 3.0
"""The engines' lease: a run that lost events is given up within a third of it."""

RAN: Counter[str] = Counter()
"""How many times each atom of each flow ran: ``"<tag> step<n>"``."""
GATES: dict[str, anyio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()
    GATES.clear()


def gate(tag: str) -> anyio.Event:
    if tag not in GATES:
        GATES[tag] = anyio.Event()
    return GATES[tag]


async def _step(index: int, tag: str, pause: float = 0.0, hold: bool = False, size: int = 0) -> str:
    """One step of a flow: counts itself, waits for its gate (step 2 of a held flow),
    sleeps ``pause`` and returns ``size`` bytes of text."""
    RAN[f"{tag} step{index}"] += 1
    if hold and index == 2:
        await gate(tag).wait()
    await anyio.sleep(pause)
    return "x" * size


def make_flow() -> aioflow.Linear:
    """``step1`` ... ``step6``, one after another."""
    steps = [
        aioflow.task(name=f"step{i}", provides=f"s{i}", inject={"index": i})(_step)
        for i in range(1, STEPS + 1)
    ]
    return aioflow.Linear("faulty", *steps)


Entry = tuple[int, aioflow.EventKind, "str | None", Any]
"""What identifies an event in a log: seq, kind, atom, state."""


class Recorder:
    """A listener keeping every event the engine appended, by flow."""

    def __init__(self) -> None:
        self.events: dict[str, list[Entry]] = {}

    def __call__(self, event: aioflow.Event) -> None:
        self.events.setdefault(event.flow_id, []).append(_entry(event))


def _entry(event: aioflow.Event) -> Entry:
    return (event.seq, event.kind, event.atom, event.state)


async def log_of(journal: aioflow.Journal, flow_id: str) -> list[Entry]:
    return [_entry(event) for event in await journal.load(flow_id)]


async def committed(journal: aioflow.Journal, flow_id: str) -> list[Entry]:
    """The flow's log, empty for a flow that never got a row in."""
    try:
        return await log_of(journal, flow_id)
    except aioflow.NotFoundError:
        return []


def successes(log: list[Entry]) -> Counter[str]:
    return Counter(atom for _, _, atom, state in log if state is AtomState.SUCCESS and atom)


async def until(predicate: Any, seconds: float = 10.0, poll: float = 0.01) -> None:
    with anyio.fail_after(seconds):
        while not await _holds(predicate):
            await anyio.sleep(poll)


async def _holds(predicate: Any) -> bool:
    result = predicate()
    if hasattr(result, "__await__"):
        result = await result
    return bool(result)


async def ends(handles: Mapping[str, FlowHandle]) -> dict[str, object]:
    """How each run ended: its status, or the exception ``wait`` raised."""
    ended: dict[str, object] = {}
    for tag, handle in handles.items():
        try:
            ended[tag] = (await handle.wait()).status
        except Exception as exc:
            ended[tag] = exc
    return ended


def journal_errors(ended: Mapping[str, object]) -> list[str]:
    """The runs that ended with a JournalError; every run must have ended with that or
    with SUCCESS (never an ExceptionGroup, a driver's error or LeaseLostError)."""
    for tag, end in ended.items():
        assert end is FlowStatus.SUCCESS or isinstance(end, aioflow.JournalError), (tag, repr(end))
    return [tag for tag, end in ended.items() if end is not FlowStatus.SUCCESS]


async def orphaned(journal: aioflow.Journal, flow_ids: list[str]) -> bool:
    """Whether all ``flow_ids`` are orphaned now (a read that meets the fault is a no)."""
    try:
        return all([(await journal.summary(flow_id)).orphaned for flow_id in flow_ids])
    except aioflow.JournalError:
        return False


async def check_prefixes(
    journal: aioflow.Journal, recorder: Recorder, flow_ids: list[str]
) -> dict[str, list[Entry]]:
    """Each flow's committed log is a gapless prefix of what its run appended, and it
    replays; returns the logs."""
    logs: dict[str, list[Entry]] = {}
    for flow_id in flow_ids:
        log = logs[flow_id] = await log_of(journal, flow_id)
        assert [entry[0] for entry in log] == list(range(1, len(log) + 1)), flow_id
        assert log == recorder.events[flow_id][: len(log)], flow_id
    return logs


async def check_finished(
    journal: aioflow.Journal, before: Mapping[str, list[Entry]], flow_ids: list[str]
) -> None:
    """Every flow ended SUCCESS with each step's success once; what was committed before
    recovery is still there, and no step whose success was committed ran again."""
    for flow_id in flow_ids:
        log = await log_of(journal, flow_id)
        assert log[-1][1:] == (aioflow.EventKind.FLOW, None, FlowStatus.SUCCESS), flow_id
        assert successes(log) == Counter({f"step{i}": 1 for i in range(1, STEPS + 1)}), flow_id
        kept = before.get(flow_id, [])
        assert log[: len(kept)] == kept, flow_id
        for atom in successes(kept):
            assert RAN[f"{flow_id} {atom}"] == 1, (flow_id, atom)


# ------------------------------------------------------------- a SQLite lock held too long


async def hold_sqlite_lock(path: Path, seconds: float) -> None:
    """Hold the file's write lock for ``seconds`` from a connection of our own, as another
    process would."""
    locker = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
    try:
        await anyio.to_thread.run_sync(locker.execute, "BEGIN IMMEDIATE")
        await anyio.sleep(seconds)
        await anyio.to_thread.run_sync(locker.execute, "ROLLBACK")
    finally:
        locker.close()


async def test_a_sqlite_lock_held_past_busy_timeout_fails_only_the_runs_that_met_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.db"
    url = f"sqlite:///{path}"
    recorder = Recorder()
    busy = [f"busy{n}" for n in range(4)]  # write every 0.1 s: they meet the lock
    idle = [f"idle{n}" for n in range(3)]  # wait at step 2 all along the lock
    with anyio.fail_after(40):
        journal = SqliteJournal(url, busy_timeout=0.2)
        async with aioflow.Engine(journal, lease=LEASE, listeners=[recorder]) as engine:
            handles = {
                tag: await engine.start(FLOW, {"tag": tag, "pause": 0.1}, flow_id=tag)
                for tag in busy
            }
            for tag in idle:
                handles[tag] = await engine.start(FLOW, {"tag": tag, "hold": True}, flow_id=tag)
            await until(lambda: all(RAN[f"{tag} step2"] for tag in busy + idle))
            await journal.flush()

            # Another process takes the write lock for five times the busy timeout.
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold_sqlite_lock, path, 1.0)
                await anyio.sleep(0.6)
                assert not journal.healthy

            ended = await ends({tag: handles[tag] for tag in busy})
            assert sorted(journal_errors(ended)) == busy
            assert all("locked" in str(ended[tag]) for tag in busy), ended
            for tag in idle:
                gate(tag).set()
            assert journal_errors(await ends(handles)) == busy
            assert journal.healthy
            gate("after").set()
            again = await engine.run(FLOW, {"tag": "after"}, flow_id="after")
            assert again.status is FlowStatus.SUCCESS

            before = await check_prefixes(journal, recorder, busy + idle)
            for tag in busy:
                outcome = await engine.outcome(tag)  # it replays
                assert outcome.status is FlowStatus.RUNNING
            # Given up by their engine once the journal took writes again: orphans.
            await until(lambda: orphaned(journal, busy), seconds=2 * LEASE, poll=0.05)

            async with aioflow.Engine(url, lease=LEASE, recover=True) as recovering:
                for tag in busy:
                    outcome = await recovering.wait(tag, timeout=10)
                    assert outcome.status is FlowStatus.SUCCESS
            await check_finished(journal, before, busy + idle + ["after"])


async def test_the_engine_whose_run_lost_events_resumes_the_flow_itself(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with anyio.fail_after(20):
        journal = SqliteJournal(f"sqlite:///{path}", busy_timeout=0.2)
        async with aioflow.Engine(journal, lease=LEASE) as engine:
            handle = await engine.start(FLOW, {"tag": "a", "pause": 0.1}, flow_id="a")
            await until(lambda: RAN["a step2"])
            await hold_sqlite_lock(path, 0.6)
            with pytest.raises(aioflow.JournalError, match="locked"):
                await handle.wait()
            await until(lambda: orphaned(journal, ["a"]), seconds=2 * LEASE, poll=0.05)
            try:
                resumed: object = (await engine.resume("a")).status
            except aioflow.JournalError as exc:
                resumed = exc
            summary = await journal.summary("a")
            # A commit that succeeds, so that leaving the engine does not raise the
            # writer's last failure over this test's own verdict.
            gate("b").set()
            await engine.run(FLOW, {"tag": "b"}, flow_id="b")
            assert resumed is FlowStatus.SUCCESS, (
                f"resume raised {resumed!r}; the flow is left with owner {summary.owner} "
                f"(this engine: {engine.id}), generation {summary.generation}"
            )
        async with aioflow.Engine(f"sqlite:///{path}") as reader:
            log = await log_of(reader.journal, "a")
    assert successes(log) == Counter({f"step{i}": 1 for i in range(1, STEPS + 1)})


# ------------------------------------------------ PostgreSQL: the engine's sessions killed


def named(url: str) -> tuple[str, str]:
    """``url`` with an ``application_name`` of its own (asyncpg sends unknown query
    parameters as server settings), and that name."""
    name = "aioflow_faults_" + uuid.uuid4().hex[:12]
    return f"{url}&application_name={name}", name


async def sessions(admin: Any, name: str, where: str = "") -> int:
    return int(
        await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1" + where, name
        )
    )


async def terminate(admin: Any, name: str) -> int:
    """Terminate the sessions named ``name`` (only those), waiting until they are gone;
    how many there were."""
    killed = await admin.fetch(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
        " WHERE application_name = $1 AND pid <> pg_backend_pid()",
        name,
    )
    # An operation racing the kill fails (with a JournalError); what this file tests is
    # the engine afterwards, once its client has seen the connections close.
    await anyio.sleep(0.05)
    return sum(1 for (done,) in killed if done)


async def kill_mid_commit(pg_url: str, admin: Any, name: str, patience: float = 10.0) -> int:
    """Terminate the sessions named ``name`` while a commit of theirs is under way: a
    session of our own locks the events table until a commit waits for it (for up to
    ``patience`` seconds, then they are terminated all the same), then the sessions are
    terminated and the lock released. Returns how many were terminated."""
    locker = await asyncpg.connect(pg_url, timeout=5)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE aioflow_events IN EXCLUSIVE MODE")
            with anyio.move_on_after(patience):
                await until(
                    lambda: sessions(admin, name, " AND wait_event_type = 'Lock'"),
                    seconds=math.inf,
                    poll=0.005,
                )
            return await terminate(admin, name)
    finally:
        await locker.close()


async def test_terminated_postgres_sessions_fail_only_the_runs_whose_commit_they_held(
    pg_url: str,
) -> None:
    url, name = named(pg_url)
    recorder = Recorder()
    idle = [f"idle{n}" for n in range(3)]  # wait at step 2 through every kill
    interrupted: list[str] = []
    went_on: list[str] = []
    admin = await asyncpg.connect(DSN, timeout=5)
    try:
        with anyio.fail_after(40):
            async with aioflow.Engine(url, lease=LEASE, listeners=[recorder]) as engine:
                journal = engine.journal
                assert await sessions(admin, name) >= 1  # the name reached the server
                handles = {
                    tag: await engine.start(FLOW, {"tag": tag, "hold": True}, flow_id=tag)
                    for tag in idle
                }
                for round_ in range(3):
                    busy = [f"r{round_}busy{n}" for n in range(3)]
                    for tag in busy:
                        handles[tag] = await engine.start(
                            FLOW, {"tag": tag, "pause": 0.05}, flow_id=tag
                        )
                    await until(lambda: all(RAN[f"{tag} step2"] for tag in busy))  # noqa: B023
                    assert await kill_mid_commit(pg_url, admin, name) >= 1
                    await terminate(admin, name)  # and the new ones, idle
                    lost = journal_errors(await ends({tag: handles[tag] for tag in busy}))
                    assert lost, f"round {round_}: no run met the terminated commit"
                    interrupted += lost
                    went_on += [tag for tag in busy if tag not in lost]
                for tag in idle:
                    gate(tag).set()
                assert sorted(journal_errors(await ends(handles))) == sorted(interrupted)
                # The pool reconnects: the engine runs a new flow without a restart.
                again = await engine.run(FLOW, {"tag": "after"}, flow_id="after")
                assert again.status is FlowStatus.SUCCESS
                flows = interrupted + went_on + idle
                before = await check_prefixes(journal, recorder, flows)
                for tag in interrupted:
                    assert (await engine.outcome(tag)).status is FlowStatus.RUNNING
                await until(lambda: orphaned(journal, interrupted), seconds=2 * LEASE, poll=0.05)
                async with aioflow.Engine(pg_url, lease=LEASE, recover=True) as recovering:
                    for tag in interrupted:
                        outcome = await recovering.wait(tag, timeout=10)
                        assert outcome.status is FlowStatus.SUCCESS
                await check_finished(journal, before, [*flows, "after"])
    finally:
        await admin.close()


# ---------------------------------------------------------------------------- a full disk


DISK = "4M"
"""The tmpfs's size: room for the journal's file and WAL through the whole test."""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of a few megabytes of its own, unmounted afterwards. Mounting needs root:
    without it the test is skipped, except under CI=true, where it fails."""
    where = tmp_path / "small"
    where.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            check=False,
        )
        failed = mounted.stderr.strip() or str(mounted.returncode) if mounted.returncode else ""
    except OSError as exc:
        failed = str(exc)
    if failed:
        why = f"cannot mount a tmpfs to fill ({failed}); the full-disk tests need root"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield where
    finally:
        unmount(where)


def unmount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode:
        # A closed journal may still hold its files open until the garbage collector
        # frees a failed commit's traceback (see test_a_closed_journal_holds_no_file_open).
        gc.collect()
        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(where)], check=True)


def fill(path: Path) -> int:
    """Write ``path`` until the disk is full; how many bytes it took."""
    written = 0
    with path.open("wb", buffering=0) as filler:
        for chunk in (1 << 16, 1 << 12, 1 << 9):
            while True:
                try:
                    written += filler.write(b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


async def test_a_full_disk_fails_only_the_runs_that_wrote_and_the_engine_goes_on(
    small_disk: Path,
) -> None:
    url = f"sqlite:///{small_disk}/journal.db"
    recorder = Recorder()
    busy = [f"busy{n}" for n in range(3)]  # each step's result takes 8 kB: they meet it
    idle = [f"idle{n}" for n in range(2)]  # wait at step 2 while the disk is full
    filler = small_disk / "filler"
    with anyio.fail_after(40):
        journal = SqliteJournal(url)
        async with aioflow.Engine(journal, lease=LEASE, listeners=[recorder]) as engine:
            handles = {
                tag: await engine.start(FLOW, {"tag": tag, "hold": True}, flow_id=tag)
                for tag in idle
            }
            for tag in busy:
                handles[tag] = await engine.start(
                    FLOW, {"tag": tag, "pause": 0.1, "size": 8192}, flow_id=tag
                )
            await until(lambda: all(RAN[f"{tag} step2"] for tag in busy + idle))
            await journal.flush()
            try:
                await anyio.to_thread.run_sync(fill, filler)
                # A flow started now: not one row of it is kept.
                newborn = await engine.start(FLOW, {"tag": "newborn"}, flow_id="newborn")
                ended = await ends({tag: handles[tag] for tag in busy})
                with pytest.raises(aioflow.JournalError, match="database or disk is full"):
                    await newborn.wait()
                assert not journal.healthy
            finally:
                filler.unlink()
            assert sorted(journal_errors(ended)) == busy
            assert all("database or disk is full" in str(ended[tag]) for tag in busy), ended
            with pytest.raises(aioflow.NotFoundError):
                await journal.load("newborn")

            for tag in idle:
                gate(tag).set()
            assert sorted(journal_errors(await ends(handles))) == busy
            again = await engine.run(FLOW, {"tag": "after", "size": 8192}, flow_id="after")
            assert again.status is FlowStatus.SUCCESS
            assert journal.healthy

            before = await check_prefixes(journal, recorder, busy + idle)
            await until(lambda: orphaned(journal, busy), seconds=2 * LEASE, poll=0.05)
            async with aioflow.Engine(url, lease=LEASE, recover=True) as recovering:
                for tag in busy:
                    outcome = await recovering.wait(tag, timeout=10)
                    assert outcome.status is FlowStatus.SUCCESS
            await check_finished(journal, before, [*busy, *idle, "after"])


def open_files(where: Path) -> list[str]:
    """The files under ``where`` that this process holds open."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(str(where)):
                found.append(target)
    return found


async def test_a_closed_journal_holds_no_file_open(small_disk: Path) -> None:
    url = f"sqlite:///{small_disk}/journal.db"
    filler = small_disk / "filler"
    with anyio.fail_after(20):
        async with aioflow.Engine(url, lease=LEASE) as engine:
            await engine.run(FLOW, {"tag": "first"}, flow_id="first")
            try:
                await anyio.to_thread.run_sync(fill, filler)
                with pytest.raises(aioflow.JournalError, match="disk is full") as failed:
                    await engine.run(FLOW, {"tag": "full", "size": 8192}, flow_id="full")
            finally:
                filler.unlink()
            await engine.run(FLOW, {"tag": "later"}, flow_id="later")
    assert failed.value is not None  # the caller keeps the error it was given
    assert open_files(small_disk) == []


# ----------------------------------------------------- a conductor whose store goes away


async def test_a_conductor_whose_store_keeps_going_away_neither_spins_nor_fails_jobs(
    pg_url: str,
) -> None:
    url, name = named(pg_url)
    board = JobBoard.open(url, poll=0.05)
    engine = aioflow.Engine(url, lease=LEASE)
    claimed: Counter[str] = Counter()  # job id -> claims that got it
    refused = 0  # claims that met the fault
    claim_many = board.claim_many  # what a conductor claims with

    async def counted(owner: str, lease: float, n: int) -> list[aioflow.Job]:
        nonlocal refused
        try:
            jobs = await claim_many(owner, lease, n)
        except aioflow.JournalError:
            refused += 1
            raise
        claimed.update(job.id for job in jobs)
        return jobs

    board.claim_many = counted  # type: ignore[method-assign]
    admin = await asyncpg.connect(DSN, timeout=5)
    leaving = False
    crashed: Exception | None = None  # what ended conductor.run()
    closing: Exception | None = None  # what leaving the conductor raised
    capacity = 2
    try:
        with anyio.fail_after(30):
            try:
                async with board, Conductor(board, engine, lease=2, capacity=capacity) as conductor:
                    posted = [
                        await board.post(FLOW, {"tag": f"job{n}", "pause": 0.05}) for n in range(8)
                    ]
                    try:
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(conductor.run)
                            # The first kill waits for a commit to meet; the next ones come
                            # every 0.1-0.3 s for two seconds, whatever the conductor does.
                            kills = [await kill_mid_commit(pg_url, admin, name)]
                            start = anyio.current_time()
                            while anyio.current_time() - start < 2.0:
                                kills.append(
                                    await kill_mid_commit(pg_url, admin, name, patience=0.2)
                                )
                                await anyio.sleep(0.1)
                            with anyio.move_on_after(10):
                                for job in posted:
                                    await board.wait(job.id)
                            tg.cancel_scope.cancel()
                    except Exception as exc:  # the conductor (or a kill) broke down
                        crashed = exc
                    jobs = await board.jobs()
                    logs = {job.id: await committed(engine.journal, job.id) for job in jobs}
                    leaving = True
            except aioflow.JournalError as exc:
                if not leaving:
                    raise
                closing = exc  # said last, so that it does not hide what went wrong first
    finally:
        await admin.close()
    assert crashed is None, "".join(traceback.format_exception(crashed))
    assert kills[0] >= 1
    assert claimed.total() >= len(posted)  # the count sees the conductor's claims
    # Not spinning: a job is claimed again only after a run of it met a kill (each kill
    # stops at most `capacity` runs in their commit, and as many again on a connection the
    # client has not yet seen closed), and claims that meet the fault back off. A spinning
    # conductor claims hundreds of times.
    assert claimed.total() <= len(posted) + 2 * capacity * len(kills), (
        f"{claimed.total()} claims of {len(posted)} jobs for {len(kills)} kills"
    )
    assert refused <= len(kills), refused
    for job in jobs:
        assert job.state is JobState.COMPLETE, (job.state, job.attempts, job.failures)
        assert successes(logs[job.id]) == Counter({f"step{i}": 1 for i in range(1, STEPS + 1)})
    assert closing is None, f"leaving the conductor raised {closing!r}"
