"""Every flow has one owner: leases, joining, takeover, recovery and isolation.

Two engines on one SQLite file stand for two processes; an injected clock stands for time
passing (a lease running out) and for a process frozen past its lease. Real processes
killed with SIGKILL and SIGSTOP are in test_takeover.py, faults of the store in
test_store_faults.py.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

import aioflow
from aioflow import FlowStatus
from aioflow.journal import SqliteJournal, open_journal
from aioflow.journal._base import Fence

from .pg import pg_schema, pg_url  # noqa: F401 - fixtures
from .test_journal import atom_event, flow_start


@pytest.fixture(params=["sqlite", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A journal that engines standing for several processes share."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/journal.db"
    return str(request.getfixturevalue("pg_url"))

RAN: Counter[str] = Counter()
GATES: dict[str, anyio.Event] = {}


def gate(name: str) -> anyio.Event:
    if name not in GATES:
        GATES[name] = anyio.Event()
    return GATES[name]


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()
    GATES.clear()


class Clock:
    """Wall time plus an offset a test can push forward (a clock jump)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@aioflow.task(provides="tag")
async def first(tag: str) -> str:
    RAN[f"{tag} first"] += 1
    return tag


@aioflow.task(provides="held")
async def held(tag: str) -> str:
    RAN[f"{tag} held"] += 1
    await gate(tag).wait()
    return tag


@aioflow.task
async def last(tag: str) -> None:
    RAN[f"{tag} last"] += 1


def gated_flow() -> aioflow.Linear:
    return aioflow.Linear("gated", first, held, last)


GATED = "tests.test_ownership:gated_flow"


@aioflow.task(provides="approval")
async def ask(external: aioflow.External) -> object:
    return external.wait(timeout=3600)


@aioflow.task
async def after(approval: str) -> None:
    RAN[f"after {approval}"] += 1


def approval_flow() -> aioflow.Linear:
    return aioflow.Linear("approval", ask, after)


async def until(predicate: object, seconds: float = 10.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():  # type: ignore[operator]
            await anyio.sleep(0.005)


# ------------------------------------------------------------------------ the lease


@pytest.mark.parametrize("lease", [0, -1, float("inf"), float("nan"), True, "30"])
def test_a_lease_must_be_a_positive_finite_number(lease: object) -> None:
    with pytest.raises(ValueError, match="lease must be a positive, finite number"):
        aioflow.Engine(lease=lease)  # type: ignore[arg-type]


def test_every_engine_has_its_own_id() -> None:
    ids = {aioflow.Engine().id for _ in range(50)}
    assert len(ids) == 50


async def test_a_running_flow_names_its_owner_and_a_resting_one_has_none(
    journal_url: str,
) -> None:
    async with aioflow.Engine(journal_url) as engine:
        handle = await engine.start(GATED, {"tag": "a"})
        await until(lambda: RAN["a held"])
        summary = await engine.journal.summary(handle.flow_id)
        assert summary.owner == engine.id and not summary.orphaned
        assert summary.lease_expires is not None and summary.lease_expires > time.time()
        gate("a").set()
        outcome = await handle.wait()
        assert (outcome.owner, outcome.orphaned) == (None, False)
        summary = await engine.journal.summary(handle.flow_id)
        assert (summary.owner, summary.orphaned) == (None, False)


# ------------------------------------------------------------------ resume semantics


async def test_resume_in_the_same_engine_joins_the_live_run(journal_url: str) -> None:
    async with aioflow.Engine(journal_url) as engine:
        handle = await engine.start(GATED, {"tag": "j"})
        await until(lambda: RAN["j held"])
        outcomes: list[aioflow.Outcome] = []

        async def join() -> None:
            outcomes.append(await engine.resume(handle.flow_id))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(join)
            await anyio.sleep(0.05)
            gate("j").set()
        assert [o.status for o in outcomes] == [FlowStatus.SUCCESS] * 3
        assert (await handle.wait()).status is FlowStatus.SUCCESS
    assert Counter({"j first": 1, "j held": 1, "j last": 1}) == RAN


async def test_resume_of_a_flow_a_live_engine_runs_elsewhere_is_busy(shared_url: str) -> None:
    async with aioflow.Engine(shared_url) as a, aioflow.Engine(shared_url) as b:
        handle = await a.start(GATED, {"tag": "b"})
        await until(lambda: RAN["b held"])
        await a.journal.flush()  # the held atom's RUNNING, which nobody waits for
        before = await b.journal.summary(handle.flow_id)
        with pytest.raises(aioflow.FlowBusyError, match=a.id) as info:
            await b.resume(handle.flow_id)
        assert info.value.owner == a.id and info.value.flow_id == handle.flow_id
        assert info.value.expires is not None and info.value.expires > time.time()
        after_ = await b.journal.summary(handle.flow_id)
        assert (after_.owner, after_.generation, after_.last_seq) == (
            before.owner,
            before.generation,
            before.last_seq,
        )
        gate("b").set()
        assert (await b.wait(handle.flow_id, timeout=10)).status is FlowStatus.SUCCESS
    assert RAN["b held"] == 1


async def test_an_orphan_is_taken_over_and_its_old_owner_writes_nothing_more(
    shared_url: str,
) -> None:
    """A's clock jumps ahead, as if A had been frozen past its lease: B takes the flow
    over (a new generation) and finishes it; A's run ends with LeaseLostError once its
    task returns, and not one event of A's is kept after the takeover."""
    clock = Clock()
    async with (
        aioflow.Engine(shared_url, lease=5) as a,
        aioflow.Engine(shared_url, lease=5, clock=clock) as b,
    ):
        handle = await a.start(GATED, {"tag": "t"})
        await until(lambda: RAN["t held"])
        clock.offset = 60  # for B, A's lease ran out long ago
        summary = await b.journal.summary(handle.flow_id)
        assert summary.orphaned and summary.owner == a.id
        outcomes: list[aioflow.Outcome] = []

        async def resume() -> None:
            outcomes.append(await b.resume(handle.flow_id))

        async with anyio.create_task_group() as tg:
            tg.start_soon(resume)
            await until(lambda: RAN["t held"] == 2)  # B took the flow and runs held again
            assert (await b.journal.summary(handle.flow_id)).owner == b.id
            gate("t").set()  # both runs' held atoms return now
        assert outcomes[0].status is FlowStatus.SUCCESS
        with pytest.raises(aioflow.LeaseLostError, match=r"took the flow over|taken over"):
            await handle.wait()
        events = await b.journal.load(handle.flow_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    successes = Counter(e.atom for e in events if e.state is aioflow.AtomState.SUCCESS)
    assert successes == Counter({"first": 1, "held": 1, "last": 1})
    assert events[-1].state is FlowStatus.SUCCESS


async def test_one_refused_flow_of_twenty_leaves_the_others_and_the_engine_going(
    shared_url: str,
) -> None:
    tags = [f"f{n}" for n in range(20)]
    async with aioflow.Engine(shared_url) as engine:
        handles = [await engine.start(GATED, {"tag": tag}) for tag in tags]
        await until(lambda: all(RAN[f"{tag} held"] for tag in tags))
        # Another process, whose clock is far ahead, takes flow f7 from under this engine.
        intruder = open_journal(shared_url)
        intruder.clock = lambda: time.time() + 3600
        async with intruder:
            await intruder.take(handles[7].flow_id, "intruder")
        for tag in tags:
            gate(tag).set()
        results: dict[str, object] = {}
        for tag, handle in zip(tags, handles, strict=True):
            try:
                results[tag] = (await handle.wait()).status
            except Exception as exc:
                results[tag] = type(exc)
        assert results.pop("f7") is aioflow.LeaseLostError
        assert set(results.values()) == {FlowStatus.SUCCESS}
        gate("later").set()
        again = await engine.run(GATED, {"tag": "later"})
        assert again.status is FlowStatus.SUCCESS
    assert RAN["f7 last"] == 0


async def test_concurrent_completions_and_a_resume_in_one_engine_run_the_rest_once(
    sqlite_url: str,
) -> None:
    """The design question of delegated tasks: many delayed answers at once, and a resume
    on top. One completion wins, the flow wakes once, the resume joins that run."""
    async with aioflow.Engine(sqlite_url, secret="s" * 32) as engine:
        outcome = await engine.run("tests.test_ownership:approval_flow")
        assert outcome.status is FlowStatus.WAITING
        token = outcome.waiting[0].token
        won: list[int] = []
        refused: list[int] = []

        async def complete(n: int) -> None:
            try:
                await engine.complete(token, f"r{n}")
                won.append(n)
            except aioflow.InvalidTokenError:
                refused.append(n)

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(complete, n)
        resumed = await engine.resume(outcome.flow_id)
        assert resumed.status is FlowStatus.SUCCESS
        assert len(won) == 1 and len(refused) == 19
        final = await engine.wait(outcome.flow_id, timeout=10)
        assert final.status is FlowStatus.SUCCESS
        events = await engine.journal.load(outcome.flow_id)
    assert Counter({f"after r{won[0]}": 1}) == RAN
    assert sum(1 for e in events if e.details.get("woken")) == 1


# -------------------------------------------------------------------------- waiting


async def test_wait_follows_a_flow_run_by_another_engine(shared_url: str) -> None:
    async with aioflow.Engine(shared_url) as a, aioflow.Engine(shared_url) as b:
        handle = await a.start(GATED, {"tag": "w"})
        await until(lambda: RAN["w held"])
        with pytest.raises(TimeoutError):
            await b.wait(handle.flow_id, timeout=0.2)
        gate("w").set()
        outcome = await b.wait(handle.flow_id, timeout=10)
        assert outcome.status is FlowStatus.SUCCESS and outcome["tag"] == "w"
        with pytest.raises(aioflow.NotFoundError):
            await b.wait("no-such-flow", timeout=1)


@aioflow.task
async def explode() -> None:
    raise RuntimeError("boom")


async def test_wait_raises_as_run_would_for_a_failed_flow(journal_url: str) -> None:
    async with aioflow.Engine(journal_url) as engine:
        with pytest.raises(aioflow.FlowFailedError):
            await engine.run(aioflow.Linear("bad", explode), flow_id="bad")
        with pytest.raises(aioflow.FlowFailedError, match="boom"):
            await engine.wait("bad", timeout=5)


# ------------------------------------------------------------------------- recovery


async def make_orphans(url: str, count: int) -> list[str]:
    """Flows started from a reference by an engine that died at once: RUNNING, owned by
    an engine without a heartbeat."""
    ids = [f"orphan{n}" for n in range(count)]
    maker = aioflow.Engine()
    async with open_journal(url) as journal:
        for flow_id in ids:
            journal.set_fence(flow_id, Fence("dead-engine", 1))
            _, start = maker._prepare(GATED, {"tag": flow_id}, flow_id, None)
            journal.append(
                aioflow.Event(
                    flow_id,
                    1,
                    time.time(),
                    aioflow.EventKind.FLOW,
                    None,
                    FlowStatus.RUNNING,
                    0,
                    None,
                    start,
                )
            )
        await journal.flush()
    return ids


async def test_recover_finishes_the_orphans_of_a_dead_engine(shared_url: str) -> None:
    ids = await make_orphans(shared_url, 3)
    for flow_id in ids:
        gate(flow_id).set()
    async with aioflow.Engine(shared_url, recover=True) as engine:
        for flow_id in ids:
            assert (await engine.wait(flow_id, timeout=10)).status is FlowStatus.SUCCESS
    assert all(RAN[f"{flow_id} last"] == 1 for flow_id in ids)


async def test_two_recovering_engines_take_each_orphan_once(shared_url: str) -> None:
    ids = await make_orphans(shared_url, 10)
    for flow_id in ids:
        gate(flow_id).set()
    async with (
        aioflow.Engine(shared_url, recover=True) as a,
        aioflow.Engine(shared_url, recover=True) as b,
    ):
        for flow_id in ids:
            assert (await a.wait(flow_id, timeout=10)).status is FlowStatus.SUCCESS
        journal = b.journal
        for flow_id in ids:
            events = await journal.load(flow_id)
            assert sum(1 for e in events if e.details.get("resumed")) == 1
    assert all(RAN[f"{flow_id} first"] == 1 for flow_id in ids)


async def test_an_orphan_no_engine_can_build_is_left_alone(sqlite_url: str) -> None:
    async with open_journal(sqlite_url) as journal:
        journal.set_fence("object-flow", Fence("dead-engine", 1))
        journal.append(flow_start("object-flow"))  # no reference: only its object knows it
        await journal.flush()
    async with aioflow.Engine(sqlite_url, recover=True) as engine:
        await anyio.sleep(0.1)
        summary = await engine.journal.summary("object-flow")
        assert summary.orphaned and summary.owner == "dead-engine"


# --------------------------------------------------------------------- the schema


def make_version_1(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE aioflow_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE aioflow_events(flow_id TEXT, seq INTEGER, time REAL, kind TEXT,"
            " atom TEXT, state TEXT, attempt INTEGER, progress REAL, details TEXT,"
            " PRIMARY KEY(flow_id, seq)) WITHOUT ROWID;"
            "CREATE TABLE aioflow_flows(flow_id TEXT PRIMARY KEY, name TEXT, status TEXT,"
            " ref TEXT, created REAL, updated REAL, last_seq INTEGER);"
            "INSERT INTO aioflow_meta VALUES ('schema_version', '1');"
        )
    db.close()


async def test_a_version_1_journal_is_migrated_and_its_running_flows_are_orphans(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    make_version_1(path)
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO aioflow_events VALUES ('old', 1, 1.0, 'FLOW', NULL, 'RUNNING', 0, NULL,"
            ' \'{"name": "demo"}\')'
        )
        db.execute("INSERT INTO aioflow_flows VALUES ('old', 'demo', 'RUNNING', NULL, 1.0, 1.0, 1)")
    db.close()
    async with SqliteJournal(path) as journal, SqliteJournal(path) as again:
        summary = await journal.summary("old")
        assert summary.owner is None and summary.orphaned
        assert [f.flow_id for f in await again.orphans()] == ["old"]
        journal.append(flow_start("new"))
        await journal.flush()
    with sqlite3.connect(path) as db:
        # Migrated through version 2 (ownership) to 3 (integer flow keys).
        assert db.execute("SELECT value FROM aioflow_meta").fetchall() == [("4",)]
    db.close()


async def test_journal_take_names_an_unknown_flow(journal_url: str) -> None:
    async with open_journal(journal_url) as journal:
        with pytest.raises(aioflow.NotFoundError, match="nope"):
            await journal.take("nope", "me")
        journal.append(flow_start("f"))
        journal.append(atom_event("f", 2))
        await journal.flush()
        assert await journal.take("f", "me") == (1, 2)
        assert await journal.take("f", "me") == (2, 2)  # its owner may take it again
        assert await journal.disown("f", "me", 1) is False  # an old generation
        assert await journal.disown("f", "me", 2) is True
        assert (await journal.summary("f")).owner is None
