"""Tests for the journals: group commit, the memory and SQLite backends, open_journal."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aioflow._errors import JournalError, LeaseLostError, NotFoundError, SerializationError
from aioflow._events import Event, EventKind
from aioflow._states import AtomState, FlowStatus
from aioflow.journal import (
    FlowSummary,
    Journal,
    MemoryJournal,
    SqliteJournal,
    open_journal,
)
from aioflow.journal import sqlite as sqlite_journal
from aioflow.journal._base import Fence
from aioflow.journal._writer import GroupWriter

PROJECT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- helpers


def flow_start(
    flow_id: str,
    seq: int = 1,
    *,
    name: str = "demo",
    ref: str | None = None,
    at: float | None = None,
) -> Event:
    details: dict[str, Any] = {"name": name, "fingerprint": "fp", "inputs": {"x": 1}}
    if ref is not None:
        details["ref"] = ref
    return Event(
        flow_id,
        seq,
        time.time() if at is None else at,
        EventKind.FLOW,
        state=FlowStatus.RUNNING,
        details=details,
    )


def atom_event(flow_id: str, seq: int, atom: str = "a", **details: Any) -> Event:
    return Event(
        flow_id,
        seq,
        time.time(),
        EventKind.ATOM,
        atom=atom,
        state=AtomState.SUCCESS,
        attempt=1,
        details=details,
    )


def flow_status(flow_id: str, seq: int, status: FlowStatus) -> Event:
    return Event(flow_id, seq, time.time(), EventKind.FLOW, state=status)


def a_flow(flow_id: str, n: int) -> list[Event]:
    """A flow start followed by ``n - 1`` atom events."""
    return [flow_start(flow_id)] + [atom_event(flow_id, s, result=s) for s in range(2, n + 1)]


def sqlite_url(path: Path) -> str:
    return "sqlite:///" + str(path)  # absolute path: four slashes


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A journal URL per backend. Tests open the journal themselves: an async fixture's
    setup and teardown may run in different tasks, and the journal's task group must be
    entered and left by one task."""
    return "memory://" if request.param == "memory" else sqlite_url(tmp_path / "j.db")


def file_bytes(path: Path) -> bytes:
    return path.read_bytes()


# ------------------------------------------------------------------------ GroupWriter


class Recorder:
    """A commit callback that records batches and can be told to fail or to hold."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail_on: int | None = None
        self.gate: anyio.Event | None = None
        self.entered = anyio.Event()

    async def __call__(self, batch: list[int]) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        await anyio.sleep(0)
        if self.fail_on is not None and self.fail_on in batch:
            raise OSError("disk on fire")
        self.batches.append(batch)


async def test_writer_batches_in_order_and_commits_all_pending_at_once() -> None:
    rec = Recorder()
    writer: GroupWriter[int] = GroupWriter(rec, name="test")
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        tickets = [writer.append(i) for i in range(1, 101)]
        assert tickets == list(range(1, 101))
        assert writer.durable == 0  # append never waits
        await writer.wait_durable(100)
        assert writer.durable == 100
        assert rec.batches == [list(range(1, 101))]
        rec.gate = anyio.Event()
        rec.entered = anyio.Event()
        writer.append(101)
        await rec.entered.wait()  # the writer now holds 101 in flight
        for i in range(102, 111):
            writer.append(i)  # these queue behind the commit in flight
        rec.gate.set()
        await writer.wait_durable(110)
        assert rec.batches[1:] == [[101], list(range(102, 111))]
        await writer.close()
    assert writer.commits == 3
    await writer.wait_durable(5)  # already durable: returns at once


async def test_writer_failure_is_sticky_and_the_log_stays_a_prefix() -> None:
    rec = Recorder()
    rec.fail_on = 7
    writer: GroupWriter[int] = GroupWriter(rec, name="test")
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        for i in range(1, 5):
            writer.append(i)
        await writer.wait_durable(4)
        for i in range(5, 9):
            writer.append(i)
        with pytest.raises(JournalError, match="disk on fire") as info:
            await writer.wait_durable(5)
        assert isinstance(info.value.__cause__, OSError)
        with pytest.raises(JournalError):
            writer.append(9)
        with pytest.raises(JournalError):
            await writer.wait_durable(8)
        with pytest.raises(JournalError):
            await writer.close()
    assert rec.batches == [[1, 2, 3, 4]]
    assert writer.durable == 4


async def test_writer_many_waiters_share_a_commit() -> None:
    rec = Recorder()
    writer: GroupWriter[int] = GroupWriter(rec, name="test")
    woken = 0

    async def waiter(i: int) -> None:
        nonlocal woken
        await writer.wait_durable(writer.append(i))
        woken += 1

    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        async with anyio.create_task_group() as waiters:
            for i in range(1000):
                waiters.start_soon(waiter, i)
        await writer.close()
    assert woken == 1000
    assert writer.commits <= 3
    assert sorted(x for b in rec.batches for x in b) == list(range(1000))


async def test_a_lingering_writer_gathers_rows_nobody_waits_for() -> None:
    rec = Recorder()
    writer: GroupWriter[int] = GroupWriter(rec, name="test", linger=60.0, linger_rows=10)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        for i in range(1, 4):  # one by one, with the loop running in between
            writer.append(i)
            for _ in range(5):
                await anyio.sleep(0)
        assert rec.batches == []  # gathering: nobody waits for them yet
        with anyio.fail_after(5):  # a waiter ends the linger (it would last a minute)
            await writer.wait_durable(3)
        assert rec.batches == [[1, 2, 3]]
        writer.append(4)
        for _ in range(5):
            await anyio.sleep(0)
        for i in range(5, 14):  # the 10th pending row ends the linger too
            writer.append(i)
        with anyio.fail_after(5):
            while writer.durable < 13:
                await anyio.sleep(0.001)
        assert rec.batches[1] == list(range(4, 14))
        writer.append(14)
        for _ in range(5):
            await anyio.sleep(0)
        with anyio.fail_after(5):  # closing commits what lingers, at once
            await writer.close()
    assert rec.batches[-1] == [14]
    assert writer.commits == 3


class TaskRecorder(Recorder):
    """A Recorder that also notes which task made each commit, and that no two commits
    ever overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[int] = []
        self.inside = 0

    async def __call__(self, batch: list[int]) -> None:
        assert self.inside == 0, "two commits at once"
        self.inside += 1
        try:
            self.tasks.append(anyio.get_current_task().id)
            await super().__call__(batch)
        finally:
            self.inside -= 1


def in_waiter_writer(linger: float = 60.0) -> tuple[TaskRecorder, GroupWriter[int]]:
    """A TaskRecorder, and an ``in_waiter`` writer over it that lets rows nobody waits
    for gather ``linger`` seconds (a minute: each commit is then a waiter's)."""
    rec = TaskRecorder()
    return rec, GroupWriter(rec, name="test", in_waiter=True, linger=linger, linger_rows=1000)


async def test_an_in_waiter_writer_commits_in_the_waiter_one_commit_at_a_time() -> None:
    rec, writer = in_waiter_writer()
    me = anyio.get_current_task().id
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        with anyio.fail_after(5):  # the writer lingers a minute: it is not the one
            await writer.wait_durable(writer.append(1))
        assert rec.batches == [[1]] and rec.tasks == [me]
        # A waiter's commit in flight: later waiters wait for it, then one of them
        # commits what came meanwhile; the log keeps its order.
        rec.gate = anyio.Event()
        rec.entered = anyio.Event()
        done: list[int] = []

        async def waiter(ticket: int) -> None:
            await writer.wait_durable(ticket)
            done.append(ticket)

        tg.start_soon(waiter, writer.append(2))
        await rec.entered.wait()
        for i in range(3, 6):
            tg.start_soon(waiter, writer.append(i))
        for _ in range(5):
            await anyio.sleep(0)
        assert rec.batches == [[1]]  # nothing overtakes the commit in flight
        rec.gate.set()
        rec.gate = None
        with anyio.fail_after(5):
            while len(done) < 4:
                await anyio.sleep(0.001)
        assert rec.batches == [[1], [2], [3, 4, 5]]
        assert writer.durable == 5 and writer.commits == 3
        await writer.close()


async def test_an_in_waiter_commit_outlives_a_cancelled_waiter_and_holds_up_close() -> None:
    rec, writer = in_waiter_writer()

    async def open_gate(gate: anyio.Event) -> None:
        await anyio.sleep(0.1)
        gate.set()

    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        rec.gate = anyio.Event()
        tg.start_soon(open_gate, rec.gate)
        with anyio.fail_after(5), anyio.move_on_after(0.02):
            await writer.wait_durable(writer.append(1))  # commits itself, held 0.1 s
        # The deadline passed while the commit was held: it was not cut short.
        assert rec.batches == [[1]] and writer.durable == 1
        # Closing waits for a waiter's commit in flight.
        rec.gate = anyio.Event()
        rec.entered = anyio.Event()
        tg.start_soon(writer.wait_durable, writer.append(2))
        await rec.entered.wait()
        tg.start_soon(open_gate, rec.gate)
        with anyio.fail_after(5):
            await writer.close()
        assert rec.gate.is_set() and rec.batches == [[1], [2]] and writer.durable == 2
        assert rec.tasks[0] == anyio.get_current_task().id


async def test_an_in_waiter_writer_still_commits_rows_nobody_waits_for() -> None:
    rec, writer = in_waiter_writer(linger=0.01)
    me = anyio.get_current_task().id
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        writer.append(1)
        with anyio.fail_after(5):
            while writer.durable < 1:
                await anyio.sleep(0.001)
        assert rec.batches == [[1]] and rec.tasks[0] != me  # the writer's commit
        await writer.close()


async def test_sqlite_reads_see_rows_the_writer_still_gathers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aioflow.journal.sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "_LINGER", 60.0)
    async with SqliteJournal(tmp_path / "j.db") as j:
        j.append(flow_start("f"))
        j.append(atom_event("f", 2))
        with anyio.fail_after(5):
            assert [e.seq for e in await j.load("f")] == [1, 2]
            assert [f.flow_id for f in await j.flows()] == ["f"]


async def test_writer_unknown_ticket() -> None:
    writer: GroupWriter[int] = GroupWriter(Recorder(), name="test")
    with pytest.raises(ValueError, match="never handed out"):
        await writer.wait_durable(1)


# ------------------------------------------------------------------ both backends


async def test_round_trip(url: str) -> None:
    async with open_journal(url) as journal:
        events = [
            flow_start("f1", ref="order-7"),
            atom_event("f1", 2, "fetch", result={"rows": [1, 2, 3], "pair": (1, "x")}),
            Event(
                "f1",
                3,
                time.time(),
                EventKind.PROGRESS,
                atom="fetch",
                progress=0.5,
                details={"progress": 0.5, "step": "half"},
            ),
            Event(
                "f1",
                4,
                time.time(),
                EventKind.ATOM,
                atom="load",
                state=AtomState.FAILURE,
                attempt=2,
                details={"failure": {"exc_type": "ValueError", "message": "bad"}},
            ),
            Event("f1", 5, time.time(), EventKind.CHECKPOINT, atom="cp"),
            flow_status("f1", 6, FlowStatus.SUCCESS),
        ]
        tickets = [journal.append(e) for e in events]
        assert tickets == [1, 2, 3, 4, 5, 6]
        assert journal.appended == 6
        await journal.flush()
        assert journal.durable == 6
        assert await journal.load("f1") == events
        assert [e async for e in journal.events("f1", after=4)] == events[4:]
        [summary] = await journal.flows()
        assert summary == FlowSummary(
            flow_id="f1",
            name="demo",
            status=FlowStatus.SUCCESS,
            ref="order-7",
            created=events[0].time,
            updated=events[5].time,
            last_seq=6,
        )


async def test_tickets_and_durable(url: str) -> None:
    async with open_journal(url) as journal:
        assert (journal.appended, journal.durable) == (0, 0)
        for e in a_flow("f", 10):
            journal.append(e)
        assert journal.appended == 10
        if isinstance(journal, MemoryJournal):
            assert journal.durable == 10
        else:
            assert journal.durable == 0  # nothing awaited yet, so nothing committed
        await journal.wait_durable(3)
        assert journal.durable >= 3
        await journal.flush()
        assert journal.durable == 10
        await journal.wait_durable(1)  # already durable
        with pytest.raises(ValueError):
            await journal.wait_durable(11)


async def test_events_after_pages(url: str) -> None:
    async with open_journal(url) as journal:
        events = a_flow("big", 2600)
        for e in events:
            journal.append(e)
        await journal.flush()
        assert [e.seq async for e in journal.events("big")] == list(range(1, 2601))
        got = [e async for e in journal.events("big", after=999)]
        assert got == events[999:]
        assert [e async for e in journal.events("big", after=2600)] == []
        assert [e async for e in journal.events("nope")] == []


async def test_flows_status_filter_and_last_seq(url: str) -> None:
    async with open_journal(url) as journal:
        t0 = time.time()
        for i, flow_id in enumerate(["f-a", "f-b", "f-c"]):
            journal.append(flow_start(flow_id, name=f"flow{i}", at=t0 + i))
        journal.append(atom_event("f-a", 2))
        journal.append(flow_status("f-a", 3, FlowStatus.SUCCESS))
        journal.append(atom_event("f-b", 2))
        await journal.flush()
        journal.append(atom_event("f-b", 3))  # a later batch still moves last_seq
        journal.append(Event("orphan", 1, t0, EventKind.ATOM, atom="x", state=AtomState.RUNNING))
        await journal.flush()
        flows = await journal.flows()
        assert [(f.flow_id, f.name, f.status, f.last_seq) for f in flows] == [
            ("f-a", "flow0", FlowStatus.SUCCESS, 3),
            ("f-b", "flow1", FlowStatus.RUNNING, 3),
            ("f-c", "flow2", FlowStatus.RUNNING, 1),
        ]
        assert flows[1].ref is None
        assert flows[1].created == flows[1].updated == t0 + 1
        running = await journal.flows(FlowStatus.RUNNING)
        assert [f.flow_id for f in running] == ["f-b", "f-c"]
        assert await journal.flows(FlowStatus.FAILED) == []


async def test_unencodable_details_name_the_atom(url: str) -> None:
    async with open_journal(url) as journal:
        journal.append(flow_start("f"))
        with pytest.raises(SerializationError, match="'fetch'") as info:
            journal.append(atom_event("f", 2, "fetch", result=object()))
        assert info.value.atom == "fetch"
        assert journal.appended == 1
        journal.append(atom_event("f", 2, "fetch", result=1))  # the seq is still free
        await journal.flush()
        assert [e.seq for e in await journal.load("f")] == [1, 2]


async def test_load_unknown_flow(url: str) -> None:
    async with open_journal(url) as journal:
        with pytest.raises(NotFoundError):
            await journal.load("missing")


async def test_meta(url: str) -> None:
    async with open_journal(url) as journal:
        assert await journal.get_meta("secret") is None
        assert await journal.set_meta_default("secret", "one") == "one"
        assert await journal.set_meta_default("secret", "two") == "one"
        assert await journal.get_meta("secret") == "one"


async def test_memory_journal_conflict_and_closed() -> None:
    j = MemoryJournal()
    with pytest.raises(JournalError, match="not open"):
        j.append(flow_start("f"))
    async with j:
        j.append(flow_start("f"))
        with pytest.raises(JournalError, match="flow f at seq 1"):
            j.append(atom_event("f", 1))
    assert len(await j.load("f")) == 1  # still readable once closed


# ------------------------------------------------------------------------- SQLite


async def test_few_commits_per_flush(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as j:
        for round_ in range(5):
            for e in a_flow(f"f{round_}", 1000):
                j.append(e)
            await j.flush()
        assert j.commits == 5
        # Bigger than one multi-row statement, so the BEGIN/executemany/COMMIT path.
        for e in a_flow("odd", 300):
            j.append(e)
        await j.flush()
        assert j.commits == 6
        assert len(await j.load("odd")) == 300


async def test_a_commit_waits_in_a_thread_while_another_process_holds_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as j:
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # the write lock, as another process would hold it
        try:
            for e in a_flow("f", 300):
                j.append(e)
            async with anyio.create_task_group() as tg:
                tg.start_soon(j.flush)  # inline commits refuse to wait: aiosqlite's thread does
                await anyio.sleep(0.2)
                assert j.durable == 0
                other.execute("COMMIT")
        finally:
            other.close()
        assert j.durable == 300
        assert [e.seq for e in await j.load("f")] == list(range(1, 301))
        assert [(f.flow_id, f.last_seq) for f in await j.flows()] == [("f", 300)]


async def test_the_wal_is_checkpointed_and_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_journal, "_CHECKPOINT_EVERY", 200)
    monkeypatch.setattr(sqlite_journal, "_CATCH_UP_AFTER", 0.0)
    path = tmp_path / "j.db"
    wal = tmp_path / "j.db-wal"
    sizes = []
    async with SqliteJournal(path) as j:
        for round_ in range(20):
            for e in a_flow(f"f{round_}", 300):
                j.append(e)
            await j.flush()
            sizes.append(wal.stat().st_size)
            with anyio.fail_after(5):  # a pause, in which a checkpoint copies the whole WAL
                while j._inline_rows or j._checkpointing:
                    await anyio.sleep(0.005)
        # 6,000 rows went through it; each round's could fill it again from the start.
        assert sizes[-1] <= 2 * max(sizes[:3])
        assert len(await j.load("f19")) == 300


async def test_commits_do_not_wait_for_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_journal, "_CHECKPOINT_EVERY", 100)
    async with SqliteJournal(tmp_path / "j.db") as j:
        async with j._worker_lock:  # a checkpoint that takes long: it waits here
            for e in a_flow("f", 200):
                j.append(e)
            await j.flush()
            with anyio.fail_after(5):
                while not j._checkpointing:  # the writer starts one when next idle
                    await anyio.sleep(0.001)
            for e in a_flow("g", 200):
                j.append(e)
            with anyio.fail_after(5):
                await j.flush()
            assert j.durable == 400
        assert len(await j.load("g")) == 200


def interleaved_flows(n: int) -> list[Event]:
    """``n`` events over three flows, with status changes, in one append order."""
    t0 = time.time()
    events: list[Event] = []
    seqs = {"x": 0, "y": 0, "z": 0}
    for i in range(n):
        flow_id = "xyz"[i % 3]
        seqs[flow_id] += 1
        seq = seqs[flow_id]
        if seq == 1:
            events.append(flow_start(flow_id, name=f"n-{flow_id}", ref=flow_id * 2, at=t0 + i))
        elif seq % 97 == 0:
            status = FlowStatus.SUSPENDED if seq % 2 else FlowStatus.RUNNING
            events.append(Event(flow_id, seq, t0 + i, EventKind.FLOW, state=status))
        else:
            events.append(atom_event(flow_id, seq, result=i))
    return events


@pytest.mark.parametrize("batch", [1, 7, 256, 257, 5000])
async def test_both_commit_paths_keep_the_same_summaries(tmp_path: Path, batch: int) -> None:
    events = interleaved_flows(1500)
    memory = MemoryJournal()
    async with memory, SqliteJournal(tmp_path / "j.db") as j:
        for k in range(0, len(events), batch):
            for e in events[k : k + batch]:
                j.append(e)
                memory.append(e)
            await j.flush()
        assert j.commits == -(-len(events) // batch)
        assert await j.flows() == await memory.flows()
        for flow_id in "xyz":
            assert await j.load(flow_id) == await memory.load(flow_id)


@pytest.mark.parametrize("batch", [2, 400])
async def test_a_conflict_refuses_only_its_flow_in_either_commit_path(
    tmp_path: Path, batch: int
) -> None:
    """A conflicting event refuses its flow's rows and nothing else: the other flow's rows
    of the same batch are committed, whole, and the journal goes on taking rows."""
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as first:
        for e in a_flow("f", 10):
            first.append(e)
    async with SqliteJournal(path) as second:
        events = [atom_event("g", s) for s in range(1, batch)] + [atom_event("f", 5)]
        for e in events:
            second.append(e)
        with pytest.raises(JournalError, match="flow f at seq 5"):
            await second.flush()
        with pytest.raises(JournalError, match="flow f at seq 5"):
            second.append(atom_event("f", 11))  # refused for good
        await second.wait_durable(second.append(atom_event("g", batch)))
    assert [e.seq for e in await SqliteJournal(path).load("g")] == list(range(1, batch + 1))
    assert [e.seq for e in await SqliteJournal(path).load("f")] == list(range(1, 11))


async def test_concurrent_waiters_on_sqlite(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as j:
        j.append(flow_start("f"))

        async def step(seq: int) -> None:
            await j.wait_durable(j.append(atom_event("f", seq)))
            assert j.durable >= seq - 1

        async with anyio.create_task_group() as tg:
            for seq in range(2, 502):
                tg.start_soon(step, seq)
        assert j.commits <= 3
        assert [e.seq for e in await j.load("f")] == list(range(1, 502))


async def test_close_flushes(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as j:
        for e in a_flow("f", 100):
            j.append(e)
    assert not j.is_open
    assert len(await SqliteJournal(path).load("f")) == 100


async def test_close_flushes_when_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    j = SqliteJournal(path)
    after_close = False
    with anyio.CancelScope() as scope:
        await j.open()
        for e in a_flow("f", 50):
            j.append(e)
        scope.cancel()
        await j.close()
        after_close = True  # pragma: no cover - the cancellation must reach us
    assert scope.cancelled_caught and not after_close
    assert not j.is_open
    assert len(await SqliteJournal(path).load("f")) == 50


async def test_reading_an_unopened_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with open_journal(sqlite_url(path)) as j:
        for e in a_flow("f", 30):
            j.append(e)
        await j.set_meta_default("k", "v")
    closed = open_journal(sqlite_url(path))
    assert not closed.is_open
    assert [f.flow_id for f in await closed.flows()] == ["f"]
    assert len(await closed.load("f")) == 30
    assert [e.seq async for e in closed.events("f", after=28)] == [29, 30]
    assert await closed.get_meta("k") == "v"
    with pytest.raises(NotFoundError):
        await closed.load("nope")
    with pytest.raises(JournalError, match="not open"):
        await closed.set_meta_default("k", "w")
    with pytest.raises(JournalError, match="not open"):
        closed.append(atom_event("f", 31))
    with pytest.raises(JournalError, match="no journal"):
        await SqliteJournal(tmp_path / "missing.db").flows()
    assert not (tmp_path / "missing.db").exists()
    empty = tmp_path / "empty.db"
    empty.touch()
    assert await SqliteJournal(empty).flows() == []
    assert empty.stat().st_size == 0


async def test_second_connection_reads_while_first_writes(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as writer, SqliteJournal(path) as reader:
        writer.append(flow_start("f"))
        await writer.flush()
        seen: dict[str, list[int]] = {"reader": [], "writer": [], "unopened": []}

        async def write() -> None:
            for seq in range(2, 2001):
                writer.append(atom_event("f", seq, result=seq))
                if seq % 50 == 0:
                    await writer.flush()
                    await anyio.sleep(0.001)  # let the reader in between commits

        async def read() -> None:
            while min(counts[-1] if counts else 0 for counts in seen.values()) < 2000:
                for name, source in [
                    ("reader", reader),
                    ("writer", writer),
                    ("unopened", SqliteJournal(path)),
                ]:
                    seqs = [e.seq async for e in source.events("f")]
                    assert seqs == list(range(1, len(seqs) + 1))  # a prefix, no gap
                    seen[name].append(len(seqs))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(write)
                tg.start_soon(read)
        for counts in seen.values():
            assert counts == sorted(counts)
            assert any(1 < n < 2000 for n in counts)  # it did read while writes went on
        [summary] = await reader.flows()
        assert summary.last_seq == 2000


async def test_conflicting_seq(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as first:
        for e in a_flow("f", 3):
            first.append(e)
        await first.flush()
        second = SqliteJournal(path)
        await second.open()
        second.append(atom_event("f", 4))
        second.append(atom_event("f", 3))
        waiter_errors: list[BaseException] = []

        async def wait(ticket: int) -> None:
            try:
                await second.wait_durable(ticket)
            except JournalError as exc:
                waiter_errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, 1)
            tg.start_soon(wait, 2)
        assert len(waiter_errors) == 2
        assert "flow f at seq 3" in str(waiter_errors[0])
        with pytest.raises(JournalError, match="seq 3"):
            second.append(atom_event("f", 5))
        await second.close()  # only flow f was refused: the journal itself is sound
        assert not second.is_open
        first.append(atom_event("f", 4))  # the first writer is unaffected
        await first.flush()
    assert [e.seq for e in await SqliteJournal(path).load("f")] == [1, 2, 3, 4]


async def test_set_meta_default_is_atomic_across_journals(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as one, SqliteJournal(path) as two:
        results: list[str] = []

        async def claim(j: Journal, value: str) -> None:
            results.append(await j.set_meta_default("owner", value))

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(claim, one if i % 2 else two, f"v{i}")
        assert len(set(results)) == 1
        assert await one.get_meta("owner") == await two.get_meta("owner") == results[0]


def make_sqlite_file(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as db:
        for statement in statements:
            db.execute(statement)
    db.close()


@pytest.mark.parametrize(
    ("statements", "message"),
    [
        (
            [
                "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)",
                "INSERT INTO users VALUES (1, 'ada')",
            ],
            "not an aioflow journal",
        ),
        (
            [
                "CREATE TABLE aioflow_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                "INSERT INTO aioflow_meta VALUES ('schema_version', '5')",
            ],
            r"version 5.*version 4.*upgrade aioflow",
        ),
    ],
    ids=["other-tables", "other-version"],
)
async def test_foreign_sqlite_files_are_refused_and_untouched(
    tmp_path: Path, statements: list[str], message: str
) -> None:
    path = tmp_path / "other.db"
    make_sqlite_file(path, *statements)
    before = file_bytes(path)
    with pytest.raises(JournalError, match=message):
        await SqliteJournal(path).open()
    with pytest.raises(JournalError, match=message):
        await SqliteJournal(path).flows()
    assert file_bytes(path) == before


async def test_not_sqlite_at_all(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    before = file_bytes(path)
    with pytest.raises(JournalError, match="not a SQLite database") as info:
        await SqliteJournal(path).open()
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(JournalError):
        await SqliteJournal(path).load("f")
    assert file_bytes(path) == before


async def test_schema_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as j:
        j.append(flow_start("f"))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute(
            "SELECT value FROM aioflow_meta WHERE key='schema_version'"
        ).fetchone() == ("4",)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {
            "aioflow_meta",
            "aioflow_events",
            "aioflow_flows",
            "aioflow_owners",
            "sqlite_sequence",  # the flows' keys are never handed out twice
        }
        # Events name their flow by its integer key; a view gives them their flow's id.
        assert db.execute("SELECT typeof(flow) FROM aioflow_events").fetchone() == ("integer",)
        assert db.execute("SELECT flow_id, seq FROM aioflow_flow_events").fetchall() == [("f", 1)]
        # Details are the codec's text: plain JSON that SQLite can query.
        assert db.execute(
            "SELECT json_extract(details, '$.name') FROM aioflow_events"
        ).fetchone() == ("demo",)
    db.close()
    async with SqliteJournal(path) as j:  # reopening a journal of our version
        assert len(await j.load("f")) == 1


# ------------------------------------------------------------------- open_journal


def test_open_journal_urls(tmp_path: Path) -> None:
    assert isinstance(open_journal("memory://"), MemoryJournal)
    j = open_journal("sqlite:///rel/dir/j.db")
    assert isinstance(j, SqliteJournal) and j.path == "rel/dir/j.db"
    j = open_journal("sqlite:////abs/j.db", codec="pickle")
    assert isinstance(j, SqliteJournal) and j.path == "/abs/j.db"
    assert j.codec.name == "pickle"
    assert open_journal(j) is j
    assert type(open_journal("postgresql://localhost/db")).__name__ == "PostgresJournal"
    with pytest.raises(ValueError, match="sqlite:///"):
        open_journal("redis://localhost")
    with pytest.raises(ValueError):
        open_journal("j.db")


async def test_relative_sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with open_journal("sqlite:///sub.db") as j:
        j.append(flow_start("f"))
    assert (tmp_path / "sub.db").exists()


# --------------------------------------------------------------------- crash safety

CHILD = textwrap.dedent(
    """
    import random, sys, time, anyio
    from pathlib import Path
    from aioflow._events import Event, EventKind
    from aioflow._states import AtomState, FlowStatus
    from aioflow.journal import SqliteJournal

    async def main():
        async with SqliteJournal(Path(sys.argv[1])) as j:
            j.append(Event("f", 1, time.time(), EventKind.FLOW, state=FlowStatus.RUNNING,
                           details={"name": "crash"}))
            seq, rounds = 1, 0
            while True:
                rounds += 1
                # Both commit paths: one multi-row INSERT, or BEGIN/executemany/COMMIT.
                for _ in range(random.randint(1, 600)):
                    seq += 1
                    j.append(Event("f", seq, time.time(), EventKind.ATOM, atom="a",
                                   state=AtomState.SUCCESS, details={"result": "x" * 200}))
                if rounds % 3 == 0:
                    await j.flush()
                    print(seq, flush=True)
                else:
                    await anyio.sleep(0)

    anyio.run(main)
    """
)


@pytest.mark.slow
def test_sigkill_loses_at_most_a_suffix(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    flushed = 0
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 60
        while flushed < 5000 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            flushed = int(line)
        time.sleep(0.2)  # the child goes on appending: kill it in the middle of that
    finally:
        os.kill(child.pid, signal.SIGKILL)
        _, err = child.communicate()
    assert flushed >= 5000, err
    with sqlite3.connect(path) as db:
        seqs = [
            r[0]
            for r in db.execute(
                "SELECT seq FROM aioflow_flow_events WHERE flow_id = 'f' ORDER BY seq"
            )
        ]
    db.close()
    assert seqs == list(range(1, len(seqs) + 1))  # a prefix: no gap
    assert len(seqs) >= flushed  # everything reported flushed is there


def test_the_engines_plain_copy_of_the_atom_states_holds_every_member() -> None:
    """The kernel reads atom states through ``Atoms`` (plain attributes, cheaper than an
    enum's on Python 3.11): a state added to AtomState must be added there too."""
    from aioflow._states import Atoms

    copied = {name: value for name, value in vars(Atoms).items() if name.isupper()}
    assert copied == dict(AtomState.__members__)
    assert all(value is AtomState[name] for name, value in copied.items())


async def test_a_lone_waiter_commits_in_place_and_one_among_others_lets_them_join() -> None:
    """A waiter with a way to commit at once (``commit_now``, SQLite's inline commit)
    yields first only when something else is ready to run, so that what it appends
    shares the commit; alone, it commits without a turn of the event loop (a strict
    chain's every step would pay one)."""
    rec = Recorder()
    now: list[list[int]] = []

    def commit_now(batch: list[int]) -> bool:
        now.append(list(batch))
        return True

    writer: GroupWriter[int] = GroupWriter(
        rec, name="test", commit_now=commit_now, linger=60.0, linger_rows=1000
    )

    async def append(i: int) -> None:
        writer.append(i)

    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        writer.append(1)
        for _ in range(5):
            await anyio.sleep(0)  # the writer wakes, and lingers over the row
        step = writer.wait_durable(writer.append(2))
        with pytest.raises(StopIteration):  # done without suspending once
            step.send(None)
        assert now == [[1, 2]]
        ticket = writer.append(3)
        tg.start_soon(append, 4)  # ready to run: it gets its turn first
        await writer.wait_durable(ticket)
        assert now[-1] == [3, 4]
        await writer.close()
    assert rec.batches == []


def test_whether_others_are_ready_is_read_from_asyncios_own_loop() -> None:
    from aioflow.journal._writer import _others_ready

    async def main() -> tuple[bool, bool]:
        alone = _others_ready()
        asyncio.get_running_loop().call_soon(lambda: None)
        return alone, _others_ready()

    assert asyncio.run(main()) == (False, True)
    assert _others_ready()  # no loop at all: it cannot tell, so it says yes


def test_stored_state_names_decode_to_their_members_and_unknown_ones_are_refused() -> None:
    from aioflow._events import decode_state

    for state in AtomState:
        assert decode_state(EventKind.ATOM, state.value) is state
    for status in FlowStatus:
        assert decode_state(EventKind.FLOW, status.value) is status
    assert decode_state(EventKind.PROGRESS, None) is None
    with pytest.raises(ValueError, match="BOGUS"):
        decode_state(EventKind.ATOM, "BOGUS")
    with pytest.raises(ValueError, match="SUCCESSFUL"):
        decode_state(EventKind.FLOW, "SUCCESSFUL")


@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8, 255, 256, 257, 300, 513, 1000])
def test_a_commits_events_go_in_by_statements_of_prepared_sizes_in_order(rows: int) -> None:
    """The events of a SQLite commit are split into multi-row INSERTs of the sizes the
    journal prepares (powers of two up to 256), largest first, every row once, in order."""
    batch = [
        ("f", seq, 0.0, "ATOM", "a", "RUNNING", 1, None, None, None, None) for seq in range(rows)
    ]
    sizes: list[int] = []
    seqs: list[int] = []
    for statement, executions in sqlite_journal._event_steps(batch, {"f": 1}):
        size = next(k for k, text in sqlite_journal._INSERT_EVENTS.items() if text == statement)
        for values in executions:
            assert len(values) == 9 * size
            sizes.append(size)
            seqs.extend(values[1::9])
    assert seqs == list(range(rows))
    assert sizes == sorted(sizes, reverse=True)
    assert sizes.count(256) == rows // 256  # then each smaller size at most once
    assert len(set(sizes) - {256}) == len(sizes) - sizes.count(256)


# ------------------------------------------------------------- schema 2 -> 3


_VERSION_2 = (
    "CREATE TABLE aioflow_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE aioflow_events(flow_id TEXT, seq INTEGER, time REAL, kind TEXT,"
    " atom TEXT, state TEXT, attempt INTEGER, progress REAL, details TEXT,"
    " PRIMARY KEY(flow_id, seq)) WITHOUT ROWID",
    "CREATE TABLE aioflow_flows(flow_id TEXT PRIMARY KEY, name TEXT, status TEXT, ref TEXT,"
    " created REAL, updated REAL, last_seq INTEGER, owner TEXT,"
    " generation INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX aioflow_flows_created ON aioflow_flows(created, flow_id)",
    "CREATE TABLE aioflow_owners(owner TEXT PRIMARY KEY, expires REAL NOT NULL)",
    "INSERT INTO aioflow_meta VALUES ('schema_version', '2')",
    # Two flows as version 2 wrote them: one ended, one owned by an engine.
    "INSERT INTO aioflow_flows VALUES ('done', 'demo', 'SUCCESS', 'm:f', 1.0, 3.0, 3, NULL, 1)",
    "INSERT INTO aioflow_flows VALUES ('busy', 'demo', 'RUNNING', NULL, 2.0, 2.0, 2, 'e1', 4)",
    "INSERT INTO aioflow_owners VALUES ('e1', 1.0)",
    "INSERT INTO aioflow_events VALUES ('done', 1, 1.0, 'FLOW', NULL, 'RUNNING', 0, NULL,"
    ' \'{"name": "demo", "ref": "m:f"}\')',
    "INSERT INTO aioflow_events VALUES ('done', 2, 2.0, 'ATOM', 'a', 'SUCCESS', 1, NULL,"
    ' \'{"result": 7}\')',
    "INSERT INTO aioflow_events VALUES ('done', 3, 3.0, 'FLOW', NULL, 'SUCCESS', 0, NULL, NULL)",
    "INSERT INTO aioflow_events VALUES ('busy', 1, 2.0, 'FLOW', NULL, 'RUNNING', 0, NULL,"
    ' \'{"name": "demo"}\')',
    "INSERT INTO aioflow_events VALUES ('busy', 2, 2.5, 'ATOM', 'a', 'RUNNING', 1, NULL, NULL)",
    # Events with no summary (an appender's own): kept, and still not listed.
    "INSERT INTO aioflow_events VALUES ('loose', 1, 0.5, 'ATOM', 'x', 'RUNNING', 1, NULL, NULL)",
)


async def test_a_version_2_journal_is_migrated_to_integer_flow_keys_with_nothing_lost(
    tmp_path: Path,
) -> None:
    """Opening a version 2 file moves it to version 3 in one transaction, every event and
    summary as it was (the same events load, the same flows list, the owner and its
    generation kept), and the journal goes on: a new flow, and the owned flow taken over
    and continued. Two journals opening it at once migrate it once."""
    path = tmp_path / "v2.db"
    make_sqlite_file(path, *_VERSION_2)
    async with SqliteJournal(path) as journal, SqliteJournal(path) as again:
        assert [(e.seq, e.kind, e.atom, e.details) for e in await journal.load("done")] == [
            (1, EventKind.FLOW, None, {"name": "demo", "ref": "m:f"}),
            (2, EventKind.ATOM, "a", {"result": 7}),
            (3, EventKind.FLOW, None, {}),
        ]
        assert [e.seq for e in await again.load("busy")] == [1, 2]
        assert [e.atom for e in await journal.load("loose")] == ["x"]
        flows = {f.flow_id: f for f in await journal.flows()}
        assert sorted(flows) == ["busy", "done"]  # 'loose' never started
        assert (flows["done"].status, flows["done"].ref, flows["done"].last_seq) == (
            FlowStatus.SUCCESS,
            "m:f",
            3,
        )
        assert (flows["busy"].owner, flows["busy"].generation, flows["busy"].last_seq) == (
            "e1",
            4,
            2,
        )
        assert flows["busy"].orphaned  # its owner's heartbeat expired long ago
        assert await journal.take("busy", "e2") == (5, 2)
        journal.append(atom_event("busy", 3))
        journal.append(flow_start("new"))
        await journal.flush()
        assert [e.seq for e in await again.load("busy")] == [1, 2, 3]
        assert (await again.summary("new")).last_seq == 1
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM aioflow_meta").fetchall() == [("4",)]
        columns = [row[1] for row in db.execute("PRAGMA table_info(aioflow_events)")]
        assert (columns[0], columns[-1]) == ("flow", "started")
        # The keys follow the order the flows were made in; no table of the copy is left.
        keys = db.execute("SELECT flow_id FROM aioflow_flows ORDER BY key").fetchall()
        assert keys == [("done",), ("busy",), ("loose",), ("new",)]
        names = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        assert not any(name.endswith("_v3") for name in names)
        assert "aioflow_flows_created" in names
    db.close()


async def test_events_of_a_flow_the_journal_does_not_know_are_refused_when_it_is_fenced(
    tmp_path: Path,
) -> None:
    """An owned flow's events name it by the key read in their commit: when its summary
    is gone (purged by another process), the commit refuses them, naming the flow, and
    keeps nothing of them."""
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as journal:
        journal.append(flow_start("f"))
        await journal.flush()
        generation, _ = await journal.take("f", "me")
        journal.set_fence("f", Fence("me", generation))
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM aioflow_flows WHERE flow_id = 'f'")
        db.close()
        journal.append(atom_event("f", 2))
        with pytest.raises(LeaseLostError, match="flow f"):
            await journal.flush()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT seq FROM aioflow_events").fetchall() == [(1,)]
    db.close()


def spy_on_alone(monkeypatch: pytest.MonkeyPatch) -> list[bool | None]:
    """What each call of ``SqliteJournal._commit_alone`` answered."""
    answers: list[bool | None] = []
    real = SqliteJournal._commit_alone

    def spy(self: SqliteJournal, inline: sqlite3.Connection, batch: list[Any]) -> bool | None:
        answer = real(self, inline, batch)
        answers.append(answer)
        return answer

    monkeypatch.setattr(SqliteJournal, "_commit_alone", spy)
    return answers


async def test_a_commit_of_one_statement_keeps_the_fence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few events of one owned flow commit in one statement, which checks the flow's
    generation itself: once another journal took the flow over, that statement keeps
    nothing, and the writer's path refuses the events with LeaseLostError."""
    path = tmp_path / "j.db"
    answers = spy_on_alone(monkeypatch)
    async with SqliteJournal(path) as mine, SqliteJournal(path) as theirs:
        mine.append(flow_start("f"))
        await mine.flush()
        generation, _ = await mine.take("f", "me")
        mine.set_fence("f", Fence("me", generation))
        mine.append(atom_event("f", 2))
        mine.append(atom_event("f", 3))
        await mine.flush()
        assert answers[-1] is True  # committed by the one statement
        await theirs.take("f", "them")
        mine.append(atom_event("f", 4))
        mine.append(atom_event("f", 5))
        with pytest.raises(LeaseLostError, match="flow f"):
            await mine.flush()
        assert False in answers  # the statement saw the fence fail
        assert [e.seq for e in await theirs.load("f")] == [1, 2, 3]


async def test_a_commit_of_one_statement_waits_out_another_process_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When another connection holds the file's write lock, the one-statement commit
    does not wait on the loop's thread: it hands the batch to the writer, which commits
    it once the lock is released."""
    path = tmp_path / "j.db"
    answers = spy_on_alone(monkeypatch)
    async with SqliteJournal(path) as journal:
        journal.append(flow_start("f"))
        await journal.flush()
        generation, _ = await journal.take("f", "me")
        journal.set_fence("f", Fence("me", generation))
        locker = sqlite3.connect(path, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")
            journal.append(atom_event("f", 2))
            journal.append(atom_event("f", 3))
            with anyio.move_on_after(0.3):
                await journal.flush()
            assert journal.durable < journal.appended  # it waits for the lock
            locker.execute("ROLLBACK")
        finally:
            locker.close()
        await journal.flush()
        assert False in answers  # the lock sent it to the writer's path
        assert [e.seq for e in await journal.load("f")] == [1, 2, 3]


async def test_append_after_commits_only_after_the_seq_it_names(url: str) -> None:
    """``append_after`` keeps its events only when the flow's last seq is the one it
    names and no engine has taken the flow; a flow it starts (after seq 0) is listed
    like any other."""
    async with open_journal(url) as journal:
        journal.append(flow_start("f"))
        await journal.flush()
        assert await journal.append_after("f", 1, [atom_event("f", 2)]) is True
        assert await journal.append_after("f", 1, [atom_event("f", 2, "b")]) is False
        assert [e.atom for e in await journal.load("f")] == [None, "a"]
        await journal.take("f", "an-engine")
        assert await journal.append_after("f", 2, [atom_event("f", 3)]) is False
        assert await journal.append_after("g", 0, [flow_start("g", name="late")]) is True
        assert await journal.append_after("g", 0, [flow_start("g")]) is False
        summary = await journal.summary("g")
        assert (summary.name, summary.status, summary.last_seq) == ("late", FlowStatus.RUNNING, 1)


_MIGRATE_AND_FREEZE = """
import asyncio, sys, time
from pathlib import Path
from aioflow.journal import SqliteJournal
from aioflow.journal import sqlite as sqlite_journal

real = sqlite_journal.immediate

async def frozen(db, steps):
    async def then_freeze(db):
        await steps(db)
        version = await db.execute_fetchall("SELECT value FROM aioflow_meta")
        print("migrated", version[0][0], flush=True)
        time.sleep(60)  # inside the transaction, before its COMMIT: killed here
    return await real(db, then_freeze)

sqlite_journal.immediate = frozen

async def main():
    async with SqliteJournal(Path(sys.argv[1])):
        pass

asyncio.run(main())
"""


def test_a_migration_killed_before_its_commit_leaves_version_2_whole(tmp_path: Path) -> None:
    """A process killed (SIGKILL) after every statement of the move to version 4 ran but
    before it committed leaves the file at version 2, every event there; the next open
    migrates it."""
    path = tmp_path / "v2.db"
    make_sqlite_file(path, *_VERSION_2)
    child = subprocess.Popen(
        [sys.executable, "-c", _MIGRATE_AND_FREEZE, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "migrated 4", line + child.stderr.read()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM aioflow_meta").fetchall() == [("2",)]
        assert db.execute("SELECT count(*) FROM aioflow_events").fetchone() == (6,)
    db.close()

    async def reopen() -> list[int]:
        async with SqliteJournal(path) as journal:
            return [e.seq for e in await journal.load("done")]

    assert anyio.run(reopen) == [1, 2, 3]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM aioflow_meta").fetchall() == [("4",)]
        assert db.execute("SELECT count(*) FROM aioflow_flow_events").fetchone() == (6,)
    db.close()


async def test_a_sqlite_journal_forgets_the_keys_of_flows_that_rested(tmp_path: Path) -> None:
    """A process that runs flow after flow keeps no key per flow it ever ran: a flow's
    key is forgotten once it rests, and looked up again if it moves on."""
    async with SqliteJournal(tmp_path / "j.db") as journal:
        for flow_id in ("a", "b", "c"):
            journal.append(flow_start(flow_id))
            journal.append(atom_event(flow_id, 2))
            await journal.flush()
            assert flow_id in journal._keys
            journal.append(flow_status(flow_id, 3, FlowStatus.SUCCESS))
            await journal.flush()
            assert flow_id not in journal._keys
        journal.append(atom_event("b", 4))  # moved on after resting: found again
        await journal.flush()
        assert [e.seq for e in await journal.load("b")] == [1, 2, 3, 4]
        assert list(journal._keys) == ["b"]


# ------------------------------------------------------- schema 4: paired starts


def start_of(
    flow_id: str, seq: int, atom: str = "a", *, attempt: int = 1, progress: float = 0.0
) -> Event:
    """An atom's RUNNING, as the engine writes it when the atom starts."""
    return Event(
        flow_id, seq, time.time(), EventKind.ATOM, atom, AtomState.RUNNING, attempt, progress
    )


async def owned(journal: SqliteJournal, flow_id: str) -> None:
    """Start ``flow_id`` in ``journal`` and take it, so that its commits are fenced."""
    await journal.wait_durable(journal.append(flow_start(flow_id)))
    generation, _ = await journal.take(flow_id, "me")
    journal.set_fence(flow_id, Fence("me", generation))


def stored_pairs(path: Path, flow_id: str) -> list[int]:
    """The seqs of the rows of ``flow_id`` that hold a start with the event after it."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT e.seq FROM aioflow_events e JOIN aioflow_flows f ON f.key = e.flow"
            " WHERE f.flow_id = ? AND e.started IS NOT NULL ORDER BY e.seq",
            (flow_id,),
        ).fetchall()
    db.close()
    return [seq for (seq,) in rows]


async def test_an_atoms_start_and_the_event_after_it_share_a_row_and_read_back_as_two(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An owned flow's RUNNING followed in one commit by its atom's next event (same
    attempt) is stored as one row, and every read gives back both events as they were
    appended: load, events after any seq, another journal, and the view for people."""
    path = tmp_path / "j.db"
    answers = spy_on_alone(monkeypatch)
    async with SqliteJournal(path) as journal:
        await owned(journal, "f")
        events = [
            start_of("f", 2),
            atom_event("f", 3, result=7),  # pairs with 2
            start_of("f", 4, "b"),
            start_of("f", 5, "c", attempt=2),  # after another atom's start: 4 alone
            atom_event("f", 6, "c"),  # another attempt: 5 alone
            start_of("f", 7, "d", progress=0.5),  # a start with progress: alone
            atom_event("f", 8, "d"),
            start_of("f", 9, "e"),  # the last of its commit: alone
        ]
        for event in events:
            journal.append(event)
        await journal.flush()
        tail = [atom_event("f", 10, "e"), start_of("f", 11), atom_event("f", 12, result=8)]
        for event in tail:
            journal.append(event)
        await journal.flush()
        journal.append(start_of("f", 13, "g"))
        journal.append(atom_event("f", 14, "g"))
        await journal.flush()
        assert answers[-1] is True  # two events, one paired row: the one-statement path
        events = [*(await journal.load("f"))[:1], *events, *tail]
        events += [start_of("f", 13, "g"), atom_event("f", 14, "g")]
        loaded = await journal.load("f")
        assert [(e.seq, e.atom, e.state, e.attempt, e.progress, e.details) for e in loaded] == [
            (e.seq, e.atom, e.state, e.attempt, e.progress, e.details) for e in events
        ]
        assert loaded[1:] == (await journal.load("f"))[1:]
        for after in (0, 1, 2, 3, 10, 11, 13):
            assert [e.seq async for e in journal.events("f", after=after)] == list(
                range(after + 1, 15)
            )
    assert stored_pairs(path, "f") == [3, 12, 14]
    async with SqliteJournal(path) as other:
        assert await other.load("f") == loaded
    with sqlite3.connect(path) as db:
        viewed = db.execute(
            "SELECT seq, time, atom, state, attempt, progress, details FROM aioflow_flow_events"
            " WHERE flow_id = 'f' ORDER BY seq"
        ).fetchall()
    db.close()
    assert [
        (seq, when, atom, state, attempt) for seq, when, atom, state, attempt, _, _ in viewed
    ] == [(e.seq, e.time, e.atom, e.state.value if e.state else None, e.attempt) for e in loaded]
    assert viewed[1][5:] == (0.0, None)  # the start a row shares: progress 0, no details


async def test_a_flow_that_no_fence_guards_keeps_one_row_an_event(tmp_path: Path) -> None:
    """Events appended without taking their flow are never paired: anyone may append to
    such a flow, and each event keeps a key of its own to collide on."""
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as journal:
        journal.append(flow_start("f"))
        journal.append(start_of("f", 2))
        journal.append(atom_event("f", 3))
        await journal.flush()
        assert [e.seq for e in await journal.load("f")] == [1, 2, 3]
    assert stored_pairs(path, "f") == []


@pytest.mark.parametrize("seq", [2, 3])
async def test_an_event_at_either_seq_of_a_pair_conflicts(tmp_path: Path, seq: int) -> None:
    """A paired row holds two seqs but one key: an event another journal appends at
    either of them is refused as a conflict, naming that seq, and the log is unchanged;
    one after the last is taken."""
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as owner, SqliteJournal(path) as other:
        await owned(owner, "f")
        owner.append(start_of("f", 2))
        owner.append(atom_event("f", 3))
        await owner.flush()
        other.append(atom_event("f", seq, "x"))
        with pytest.raises(JournalError, match=f"flow f at seq {seq}"):
            await other.flush()
        assert [e.atom for e in await owner.load("f")] == [None, "a", "a"]
    async with SqliteJournal(path) as late:
        await late.wait_durable(late.append(atom_event("f", 4, "x")))
        assert [e.seq for e in await late.load("f")] == [1, 2, 3, 4]


async def test_a_compaction_that_cuts_a_pair_keeps_the_event_after_the_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were a compaction to fold a paired row's start but not the event after it (a cut
    is at a checkpoint event, which pairs with nothing; this forces one between), the
    row keeps that event alone: no seq is read twice."""
    import aioflow.journal._base as journal_base

    path = tmp_path / "j.db"
    async with SqliteJournal(path) as journal:
        await owned(journal, "f")
        journal.append(start_of("f", 2))
        journal.append(atom_event("f", 3))
        await journal.flush()
        assert stored_pairs(path, "f") == [3]
        monkeypatch.setattr(journal_base, "compaction_cut", lambda events, keep, before: 2)
        assert await journal.compact("f") == 1
        loaded = await journal.load("f")
        assert [(e.seq, e.kind) for e in loaded] == [
            (2, EventKind.SNAPSHOT),
            (3, EventKind.ATOM),
        ]
    assert stored_pairs(path, "f") == []


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["start", "start+", "end", "other", "progress"]),
            st.sampled_from("ab"),
            st.integers(1, 2),
            st.booleans(),  # a commit after it
        ),
        max_size=40,
    )
)
def test_whatever_is_paired_every_event_reads_back_as_appended(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, str, int, bool]]
) -> None:
    """Any run of starts, ends, progress reports and other events of an owned flow, in
    commits of any size, reads back event for event (and through the view) as the
    memory journal gives it."""
    path = tmp_path_factory.mktemp("pairs") / "j.db"

    def event_of(seq: int, what: str, atom: str, attempt: int) -> Event:
        if what == "start":
            return start_of("f", seq, atom, attempt=attempt)
        if what == "start+":
            return start_of("f", seq, atom, attempt=attempt, progress=0.25)
        if what == "progress":
            return Event("f", seq, time.time(), EventKind.PROGRESS, atom, None, attempt, 0.5)
        if what == "other":
            return Event("f", seq, time.time(), EventKind.CHECKPOINT, details={"name": atom})
        return Event(
            "f",
            seq,
            time.time(),
            EventKind.ATOM,
            atom,
            AtomState.SUCCESS,
            attempt,
            1.0,
            {"result": seq},
        )

    async def run() -> None:
        memory = MemoryJournal()
        async with memory, SqliteJournal(path) as journal:
            await owned(journal, "f")
            memory.append((await journal.load("f"))[0])
            for seq, (what, atom, attempt, commit) in enumerate(steps, start=2):
                event = event_of(seq, what, atom, attempt)
                journal.append(event)
                memory.append(event)
                if commit:
                    await journal.flush()
            await journal.flush()
            expected = await memory.load("f")
            assert await journal.load("f") == expected
            assert [e.seq async for e in journal.events("f", after=1)] == [
                e.seq for e in expected[1:]
            ]
        with sqlite3.connect(path) as db:
            seqs = db.execute("SELECT seq FROM aioflow_flow_events ORDER BY seq").fetchall()
        db.close()
        assert [seq for (seq,) in seqs] == [e.seq for e in expected]

    anyio.run(run)


async def test_events_for_a_flow_purged_under_a_key_remembered_go_under_a_new_one(
    tmp_path: Path,
) -> None:
    """A journal that remembers a flow's key, when another one ended and purged that
    flow meanwhile, takes the events it is then given for it as those of a flow it does
    not know (under a new summary, as events appended without a start are), and never
    stores them under the key of the purged flow."""
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as mine, SqliteJournal(path) as theirs:
        for event in a_flow("f", 3):
            mine.append(event)
        await mine.flush()  # mine now knows the flow's key
        await theirs.wait_durable(theirs.append(flow_status("f", 4, FlowStatus.SUCCESS)))
        assert await theirs.purge(older_than=0) == 1
        await mine.wait_durable(mine.append(atom_event("f", 5)))
        assert [e.seq for e in await theirs.load("f")] == [5]
    with sqlite3.connect(path) as db:
        [(key, name)] = db.execute("SELECT key, name FROM aioflow_flows").fetchall()
        assert key != 1 and name is None  # the purged flow's key was 1
        assert db.execute("SELECT DISTINCT flow FROM aioflow_events").fetchall() == [(key,)]
    db.close()
