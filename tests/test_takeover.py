"""Takeover with real processes, on real SQLite and PostgreSQL: an owner killed with
SIGKILL, an owner frozen with SIGSTOP past its lease and woken after its flow was taken
over, conductors under load with one of them frozen; and a Hypothesis property over the
interleavings of two engines resuming one flow.

What must hold (issue 15, "Tests"):

- a killed owner's flow is busy until the owner's lease runs out, then orphaned, and an
  engine with ``recover=True`` finishes it without running a finished atom again;
- an owner frozen past its lease whose flow was taken over writes not one more event of
  it when it wakes: its run ends with :class:`~aioflow.LeaseLostError`;
- conductors finish every job, exactly once in the journal, when one of them is frozen
  past its lease while it holds jobs, and the frozen one does not spin when it wakes;
- whatever the interleaving of two engines taking, running and stealing one flow, its
  journal replays, its seqs have no gap, and no atom starts again once its SUCCESS is
  committed.

A write of the SQLite journal cancelled while it waited for the file's lock once left
the lock held for good (a conductor cancels its run when it loses a claim); a test pins
that it no longer does.

The children are ``python -m tests.takeover_child``; each is killed at the test's end,
whatever happened.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import aioflow
from aioflow import AtomState, Event, EventKind, FlowStatus, JobBoard, JobState
from aioflow._replay import FlowState, replay
from aioflow.journal import Journal, open_journal

from .pg import DSN, pg_schema, pg_url
from .takeover_child import JOB, JOB_STEPS, STEPS, release_file
from .test_conductor import until

__all__ = ["pg_schema", "pg_url"]

ROOT = Path(__file__).resolve().parent.parent
LEASE = 0.5
"""The children's engine lease in seconds: a dead or frozen owner is orphaned that soon."""


# -------------------------------------------------------------------------- helpers


@pytest.fixture(params=["sqlite", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A journal (and job board) that the children and the test process share."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/journal.db"
    return str(request.getfixturevalue("pg_url"))


def tagged(url: str, app: str) -> str:
    """``url`` with which a child's PostgreSQL sessions can be told apart from every
    other session on the server (their ``application_name``); a SQLite URL as it is."""
    if not url.startswith("postgresql"):
        return url
    return url + ("&" if "?" in url else "?") + "application_name=" + app


@dataclass
class Child:
    """One ``python -m tests.takeover_child`` process; stdout and stderr go to a file."""

    proc: subprocess.Popen[bytes]
    out: Path
    app: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.out.read_text() if self.out.exists() else ""

    def lines(self, word: str) -> list[str]:
        return [line for line in self.output().splitlines() if line.split(" ", 1)[0] == word]

    async def said(self, word: str, timeout: float = 30.0) -> str:
        """The rest of the first line that begins with ``word`` once there is one."""
        await until(lambda: self.lines(word) or self.proc.poll() is not None, f"{word!r}", timeout)
        found = self.lines(word)
        assert found, f"the child ended (rc {self.proc.returncode}) without {word!r}:\n" + (
            self.output()
        )
        return found[0].partition(" ")[2]

    async def exited(self, timeout: float = 30.0) -> int:
        await until(lambda: self.proc.poll() is not None, "the child to exit", timeout)
        return self.proc.returncode

    def stopped(self) -> bool:
        """True once the process is stopped (SIGSTOP has landed)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] == "T"


class Children:
    """The children a test starts; all killed at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.all: list[Child] = []

    def start(self, name: str, *args: str) -> Child:
        out = self.tmp_path / f"{name}.out"
        with open(out, "wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.takeover_child", *args],
                cwd=ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        child = Child(proc, out, name)
        self.all.append(child)
        return child

    def stop(self) -> None:
        for child in self.all:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGCONT)
                child.proc.kill()
            child.proc.wait(timeout=30)


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    group = Children(tmp_path)
    try:
        yield group
    finally:
        group.stop()


def ledger(path: Path) -> list[tuple[str, str, str, int]]:
    """The ledger's lines as (what, atom, tag, pid)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        what, atom, tag, pid = line.split()
        out.append((what, atom, tag, int(pid)))
    return out


def starts(lines: list[tuple[str, str, str, int]], tag: str) -> Counter[str]:
    return Counter(atom for what, atom, t, _ in lines if what == "start" and t == tag)


def successes(events: list[Event]) -> Counter[str]:
    """How many SUCCESS events each atom has in the log."""
    return Counter(
        e.atom
        for e in events
        if e.atom is not None and e.kind is EventKind.ATOM and e.state is AtomState.SUCCESS
    )


def valid_log(flow_id: str, events: list[Event]) -> FlowState:
    """The replayed state of a log that must be whole: seqs 1..n with no gap."""
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1)), f"flow {flow_id}: seqs {seqs}"
    return replay(flow_id, events)


async def holds_write_lock(url: str, app: str) -> bool:
    """True when a stopped child may be holding a write lock of the journal: SQLite's
    file lock, or an open PostgreSQL transaction of one of its sessions. A process
    frozen there would block the takeover itself, which is not the case under test."""
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            db.close()
    import asyncpg

    conn = await asyncpg.connect(DSN, timeout=5)
    try:
        busy: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state <> 'idle'",
            app,
        )
        return busy > 0
    finally:
        await conn.close()


async def freeze(child: Child, url: str) -> None:
    """SIGSTOP ``child`` at a moment it holds no write lock of the journal."""
    for attempt in range(100):
        child.proc.send_signal(signal.SIGSTOP)
        await until(child.stopped, "SIGSTOP to land", 5)
        await anyio.sleep(0.02)  # what its server sessions were doing ends meanwhile
        if not await holds_write_lock(url, child.app):
            return
        child.proc.send_signal(signal.SIGCONT)
        await anyio.sleep(0.01 + 0.02 * (attempt % 5))
    pytest.fail("could not stop the child outside a write transaction")


# ------------------------------------------------------------------- SIGKILL mid-flow


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_sigkill_mid_flow_busy_then_orphaned_then_recovered_without_rerunning_finished_atoms(
    shared_url: str, tmp_path: Path, children: Children
) -> None:
    path = tmp_path / "ledger"
    flow_id = "killed"
    child = children.start("owner", "run", shared_url, flow_id, str(path), "0.25", "", str(LEASE))
    # Opened before the kill: the busy check below must land inside the dead owner's lease.
    async with aioflow.Engine(shared_url, lease=LEASE) as probe:
        owner = await child.said("engine")
        await until(lambda: starts(ledger(path), flow_id)["s4"], "the child to start s4")

        async def lease_left() -> bool:
            summary = await probe.journal.summary(flow_id)
            return (summary.lease_expires or 0) - time.time() >= 0.6 * LEASE

        await until(lease_left, "a fresh heartbeat of the child", 5)
        child.proc.kill()
        child.proc.wait(timeout=10)
        killed = time.time()

        with pytest.raises(aioflow.FlowBusyError) as busy:
            await probe.resume(flow_id)
        assert (busy.value.flow_id, busy.value.owner) == (flow_id, owner)
        assert f":{child.pid}:" in owner and owner in str(busy.value)
        assert busy.value.expires is not None and busy.value.expires > killed
        summary = await probe.journal.summary(flow_id)
        assert (summary.status, summary.owner, summary.orphaned) == (
            FlowStatus.RUNNING,
            owner,
            False,
        )

        at_kill = ledger(path)
        left = await probe.journal.load(flow_id)
        done_at_kill = set(successes(left))
        running_at_kill = set(starts(at_kill, flow_id)) - done_at_kill
        assert {"s1", "s2", "s3"} <= done_at_kill
        assert len(running_at_kill) <= 1  # a Linear runs one step at a time

        async def orphaned() -> bool:
            return (await probe.journal.summary(flow_id)).orphaned

        await until(orphaned, "the flow to be orphaned", LEASE + 5)
        assert time.time() - killed <= LEASE + 2.0
        assert [s.flow_id for s in await probe.journal.orphans()] == [flow_id]
        summary = await probe.journal.summary(flow_id)
        assert (summary.status, summary.owner, summary.generation) == (
            FlowStatus.RUNNING,
            owner,
            1,
        )

    async with aioflow.Engine(shared_url, lease=LEASE, recover=True) as rescuer:
        outcome = await rescuer.wait(flow_id, timeout=30)
        events = await rescuer.journal.load(flow_id)
        summary = await rescuer.journal.summary(flow_id)
    assert outcome.status is FlowStatus.SUCCESS
    assert (summary.owner, summary.orphaned, summary.generation) == (None, False, 2)
    state = valid_log(flow_id, events)
    assert state.status is FlowStatus.SUCCESS
    assert successes(events) == Counter(dict.fromkeys(STEPS, 1))
    assert sum(1 for e in events if e.kind is EventKind.FLOW and e.details.get("resumed")) == 1
    # No finished atom ran again; only the one running at the kill may have.
    ran = starts(ledger(path), flow_id)
    for atom in STEPS:
        assert ran[atom] == (2 if atom in running_at_kill else 1), (atom, ledger(path))
    assert {pid for _, atom, _, pid in ledger(path) if atom in done_at_kill} == {child.pid}


# ------------------------------------------------------- SIGSTOP past the lease, SIGCONT


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_an_owner_frozen_past_its_lease_and_taken_over_writes_nothing_after_sigcont(
    shared_url: str, tmp_path: Path, children: Children
) -> None:
    path = tmp_path / "ledger"
    flow_id = "frozen"
    app = f"aioflow_takeover_{uuid.uuid4().hex[:8]}"
    child = children.start(
        app, "run", tagged(shared_url, app), flow_id, str(path), "0.02", "s3", str(LEASE)
    )
    async with aioflow.Engine(shared_url, lease=5.0) as taker:
        zombie = await child.said("engine")
        await until(lambda: starts(ledger(path), flow_id)["s3"], "the child to start s3")

        async def s3_running() -> bool:
            events = await taker.journal.load(flow_id)
            return any(e.atom == "s3" and e.state is AtomState.RUNNING for e in events)

        await until(s3_running, "the child to record s3 RUNNING")
        await freeze(child, shared_url)

        async def orphaned() -> bool:
            return (await taker.journal.summary(flow_id)).orphaned

        await until(orphaned, "the frozen owner's flow to be orphaned", LEASE + 5)
        assert (await taker.journal.summary(flow_id)).owner == zombie

        outcomes: list[aioflow.Outcome] = []

        async def take_over() -> None:
            outcomes.append(await taker.resume(flow_id))

        async with anyio.create_task_group() as tg:
            tg.start_soon(take_over)
            mine = os.getpid()
            await until(
                lambda: ("start", "s3", flow_id, mine) in ledger(path), "the takeover to run s3"
            )
            summary = await taker.journal.summary(flow_id)
            assert (summary.owner, summary.generation) == (taker.id, 2)
            before = await taker.journal.load(flow_id)
            resumed = [e for e in before if e.kind is EventKind.FLOW and e.details.get("resumed")]
            assert len(resumed) == 1

            # Wake the zombie, and let its s3 return: it tries to write its SUCCESS.
            release_file(str(path), child.pid).touch()
            child.proc.send_signal(signal.SIGCONT)
            assert await child.exited(30) == 0, child.output()
            assert child.lines("error") and child.lines("error")[0].split()[1] == (
                "LeaseLostError"
            ), child.output()
            assert ("done", "s3", flow_id, child.pid) in ledger(path)  # it did run to its end
            after = await taker.journal.load(flow_id)
            assert after == before  # and not one of its events was kept

            release_file(str(path), mine).touch()
        events = await taker.journal.load(flow_id)

    assert [o.status for o in outcomes] == [FlowStatus.SUCCESS]
    state = valid_log(flow_id, events)
    assert state.status is FlowStatus.SUCCESS
    assert successes(events) == Counter(dict.fromkeys(STEPS, 1))
    # Every event after the takeover is the new run's: it ran s3 to s6 and nothing else.
    later = events[len(before) :]
    assert {e.atom for e in later if e.kind is EventKind.ATOM} == {"s3", "s4", "s5", "s6"}
    lines = ledger(path)
    assert {pid for what, atom, _, pid in lines if atom in ("s4", "s5", "s6")} == {mine}
    assert starts(lines, flow_id) == Counter({"s1": 1, "s2": 1, "s3": 2, "s4": 1, "s5": 1, "s6": 1})


# ------------------------------------------------------ conductors with one frozen


BUG_SIGN = "cannot start a transaction within a transaction"
"""What a conductor logged when a cancelled write had left the SQLite lock held."""

JOBS = 300
FREEZE = 3.0
"""How long the victim conductor stays frozen, in leases."""


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_three_conductors_finish_every_job_once_with_one_frozen_past_its_lease(
    shared_url: str, tmp_path: Path, children: Children
) -> None:
    lease = 1.0
    path = tmp_path / "ledger"
    board = JobBoard.open(shared_url, poll=0.05)
    try:
        jobs = [
            await board.post(JOB, {"ledger": str(path), "pause": 0.1, "hold": "", "tag": f"t{i}"})
            for i in range(JOBS)
        ]
        names = [f"c{n}_{uuid.uuid4().hex[:8]}" for n in range(3)]
        conductors = [
            children.start(name, "conductor", tagged(shared_url, name), name, str(lease))
            for name in names
        ]
        for conductor in conductors:
            await conductor.said("ready")
        victim = conductors[2]

        async def victim_holds_jobs() -> bool:
            held = [j for j in await board.jobs(JobState.CLAIMED) if j.owner == victim.app]
            return len(held) >= 2

        for _ in range(20):
            await until(victim_holds_jobs, "the victim to hold jobs", 30)
            await freeze(victim, shared_url)
            frozen = [j for j in await board.jobs(JobState.CLAIMED) if j.owner == victim.app]
            if frozen:  # it did not finish them between the look and the stop
                break
            victim.proc.send_signal(signal.SIGCONT)
        claims_before = len(victim.lines("claimed"))
        await anyio.sleep(FREEZE * lease)
        left = len(await board.jobs(JobState.UNCLAIMED))
        woke_at = len(victim.output().splitlines())
        victim.proc.send_signal(signal.SIGCONT)

        deadline = time.monotonic() + 60
        while not all(j.state.is_final for j in await board.jobs()):
            if any(BUG_SIGN in c.output() for c in conductors):
                pytest.fail(
                    "a write left the SQLite lock held:\n" + await stuck(board, conductors)
                )
            if time.monotonic() > deadline:
                pytest.fail("jobs left unfinished:\n" + await stuck(board, conductors))
            await anyio.sleep(0.2)
        done = [await board.get(job.id) for job in jobs]
        final = {j.id: j for j in await board.jobs()}
        async with open_journal(shared_url) as journal:
            logs = {job.id: await journal.load(job.id) for job in jobs}
    finally:
        await board.close()

    assert Counter(j.state for j in done) == Counter({JobState.COMPLETE: JOBS}), [
        (j.id, j.state, j.failures) for j in done if j.state is not JobState.COMPLETE
    ]
    assert all(j.state is JobState.COMPLETE for j in final.values())
    for job in jobs:
        state = valid_log(job.id, logs[job.id])
        assert state.status is FlowStatus.SUCCESS, job.id
        assert successes(logs[job.id]) == Counter(dict.fromkeys(JOB_STEPS, 1)), job.id
    # Every step of every job ran; a step ran twice only in a job claimed more than once
    # (the frozen conductor's, or one whose claim lapsed under load).
    lines = ledger(path)
    for i, job in enumerate(jobs):
        ran = starts(lines, f"t{i}")
        assert set(ran) == set(JOB_STEPS), (job.id, ran)
        if final[job.id].attempts == 1:
            assert max(ran.values()) == 1, (job.id, ran)
    # The frozen conductor woke without spinning: a bounded number of claims, and it
    # went on running jobs when some were left.
    claims = {c.app: len(c.lines("claimed")) for c in conductors}
    woken = victim.output().splitlines()[woke_at:]
    woken_claims = claims[victim.app] - claims_before
    woken_completions = sum("aioflow.job_complete" in line for line in woken)
    assert frozen and all(final[j.id].state is JobState.COMPLETE for j in frozen)
    assert JOBS <= sum(claims.values()) <= JOBS + 30, claims
    assert woken_claims <= woken_completions + 2 * 4, (woken_claims, woken_completions)
    if left > 2 * 4:  # more than the two others could have held
        assert woken_completions >= 1, (left, "\n".join(woken))


async def test_a_journal_write_cancelled_while_waiting_for_the_sqlite_lock_leaves_it_unlocked(
    sqlite_url: str,
) -> None:
    """Another process holds the file's write lock while an engine renews its heartbeat;
    the renewal's caller is cancelled (a conductor that lost a claim stops its run).
    Once the other process lets go, the file must be free and the journal usable."""
    async with open_journal(sqlite_url) as journal:
        await journal.heartbeat("me", time.time() + 60)
        other = sqlite3.connect(
            sqlite_url.removeprefix("sqlite:///"), timeout=0, check_same_thread=False
        )
        try:
            other.execute("BEGIN IMMEDIATE")
            # The other process lets go half a second later, on its own.
            threading.Timer(0.5, other.execute, ("ROLLBACK",)).start()
            started = time.monotonic()
            with anyio.move_on_after(0.2) as scope:
                await journal.heartbeat("me", time.time() + 60)
            # The write was cancelled, and ended its transaction before it let go.
            assert scope.cancelled_caught
            assert time.monotonic() - started < 5
        finally:
            await anyio.sleep(0.6)
            other.close()
        await journal.heartbeat("me", time.time() + 60)
        assert not await holds_write_lock(sqlite_url, ""), "the journal kept the write lock"


async def stuck(board: JobBoard, conductors: list[Child]) -> str:
    """What a failure report says of the jobs that did not finish: the board's view,
    the journal's, and what the conductors logged about them."""
    report = [f"conductor {c.app}: pid {c.pid}, engine {c.lines('ready')}" for c in conductors]
    async with open_journal(board.url) as journal:
        for job in [j for j in await board.jobs() if not j.state.is_final][:20]:
            try:
                summary = await journal.summary(job.id)
            except aioflow.NotFoundError:
                report.append(f"job {job.id}: {job.state.value}, its flow never started")
                continue
            report.append(
                f"job {job.id}: {job.state.value} owner {job.owner} attempts {job.attempts};"
                f" flow {summary.status.value} owner {summary.owner} generation"
                f" {summary.generation} orphaned {summary.orphaned}"
            )
            for conductor in conductors:
                said = [line for line in conductor.output().splitlines() if job.id in line]
                report += [f"  {conductor.app} (pid {conductor.pid}): {line}" for line in said]
    return "\n".join(report)


# ------------------------------------------- Hypothesis: two engines, one flow


H_LEASE = 1.0
H_FLOW = "contested"
WHO: ContextVar[str] = ContextVar("who", default="?")
"""Which engine the current task runs for ("A" or "B"): set by the driver that called it."""


@dataclass
class Model:
    """What the gated atoms of one Hypothesis example share with the example."""

    reader: Journal
    waiting: dict[str, tuple[str, anyio.Event] | None] = field(
        default_factory=lambda: {"A": None, "B": None}
    )
    started: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)


MODEL: Model | None = None


@aioflow.task
async def gated(context: aioflow.TaskContext) -> None:
    """Counts its start, checks that the journal holds no SUCCESS of it yet, and waits
    until the example releases it."""
    model = MODEL
    assert model is not None
    who = WHO.get()
    committed = successes(await model.reader.load(H_FLOW))
    if committed[context.atom]:
        model.violations.append(f"{context.atom} started in {who} after its SUCCESS was committed")
    model.started[context.atom] += 1
    entry = (context.atom, anyio.Event())
    model.waiting[who] = entry
    try:
        await entry[1].wait()
    finally:
        if model.waiting[who] is entry:
            model.waiting[who] = None


def make_contested() -> aioflow.Linear:
    return aioflow.Linear("contested", *(gated.using(f"a{n}") for n in range(1, 4)))


CONTESTED = "tests.test_takeover:make_contested"


class Clock:
    """Wall time plus an offset the example pushes forward past the other's lease."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


Op = tuple[str, str]
OPS = st.lists(
    st.tuples(
        st.sampled_from(["release", "steal", "resume", "release", "advance"]),
        st.sampled_from(["A", "B"]),
    ),
    min_size=1,
    max_size=16,
)
"""What an example does, in order, as (what, engine): ``resume`` the flow there (unless
that engine runs it already), ``release`` the atom held there, ``advance`` that engine's
clock past every lease written so far, or ``steal`` (advance, then resume)."""


class Contest:
    """Engines A and B on one SQLite file playing a list of operations on one flow,
    with the journal checked after each."""

    hosts: TaskGroup
    """Where the engines live, each in a task of its own."""
    drivers: TaskGroup
    """Where the runs and resumes are called."""

    def __init__(self, url: str, reader: Journal) -> None:
        self.url = url
        self.reader = reader
        self.model = Model(reader)
        self.clocks = {"A": Clock(), "B": Clock()}
        self.engines: dict[str, aioflow.Engine] = {}
        self.stops: dict[str, anyio.Event] = {}
        self.live = {"A": False, "B": False}
        self.unexpected: list[BaseException] = []
        self.frozen: dict[str, int] = {}

    async def host(self, who: str, *, task_status: Any) -> None:
        """Keep ``who``'s engine entered, in a task of its own, until told to stop (an
        engine replaced while the other lives must not exit the other's task group)."""
        stop = self.stops[who] = anyio.Event()
        async with aioflow.Engine(self.url, lease=H_LEASE, clock=self.clocks[who]) as engine:
            self.engines[who] = engine
            task_status.started()
            await stop.wait()

    async def drive(self, who: str, first: bool) -> None:
        WHO.set(who)
        engine = self.engines[who]
        try:
            if first:
                await engine.run(CONTESTED, flow_id=H_FLOW)
            else:
                await engine.resume(H_FLOW)
        except aioflow.FlowBusyError:
            event("a resume was refused: the other engine owns the flow")
        except aioflow.LeaseLostError:
            event("a run lost its flow to the other engine")
        except Exception as exc:
            self.unexpected.append(exc)
        finally:
            self.live[who] = False

    async def start(self, who: str, first: bool = False) -> None:
        """Run (or resume) the flow in ``who`` unless it runs there already."""
        if self.live[who]:
            return
        self.live[who] = True
        self.drivers.start_soon(self.drive, who, first)

    def release(self, who: str) -> None:
        """Let the atom held in ``who`` return."""
        entry = self.model.waiting[who]
        if entry is not None:
            self.model.waiting[who] = None
            entry[1].set()

    def advance(self, who: str) -> None:
        """Push ``who``'s clock past every lease written so far."""
        self.clocks[who].offset = max(c.offset for c in self.clocks.values()) + 1.5 * H_LEASE

    async def settle(self) -> list[Event]:
        """Wait until each engine's run is held at a gate or has ended and what it wrote
        is committed; then check the journal, and return it."""
        model, live = self.model, self.live
        with anyio.fail_after(20):
            while any(live[w] and model.waiting[w] is None for w in live):
                await anyio.sleep(0.001)
        for engine in self.engines.values():
            with suppress(aioflow.JournalError, aioflow.LeaseLostError):
                await engine.journal.flush()
        assert not self.unexpected, self.unexpected
        assert not model.violations, model.violations
        events = await self.reader.load(H_FLOW)
        valid_log(H_FLOW, events)  # replays, no gap
        done = successes(events)
        assert max(done.values(), default=0) <= 1, done
        for atom in done:  # an atom whose SUCCESS is committed never starts again
            assert model.started[atom] == self.frozen.setdefault(atom, model.started[atom])
        return events

    async def play(self, ops: list[Op]) -> None:
        await self.start("A", first=True)
        await self.settle()
        for op, who in ops:
            if op == "release":
                self.release(who)
            elif op == "resume":
                await self.start(who)
            else:
                self.advance(who)
                if op == "steal":
                    await self.start(who)
            await self.settle()
        # Let everything go; finish the flow by taking it over from whoever holds it.
        for round_ in range(12):
            for who in self.live:
                self.release(who)
            events = await self.settle()
            if not any(self.live.values()):
                if replay(H_FLOW, events).status is FlowStatus.SUCCESS:
                    break
                who = "AB"[round_ % 2]
                self.advance(who)
                await self.start(who)
                await self.settle()
        else:
            summary = await self.reader.summary(H_FLOW)
            raise AssertionError(
                f"the flow never finished: {[(e.atom, e.state) for e in events]}; owner"
                f" {summary.owner} (A is {self.engines['A'].id}, B is {self.engines['B'].id}),"
                f" generation {summary.generation}"
            )
        assert successes(events) == Counter({"a1": 1, "a2": 1, "a3": 1})
        event(f"taken {(await self.reader.summary(H_FLOW)).generation} times")


async def contest(ops: list[Op], directory: str) -> None:
    global MODEL
    async with open_journal(f"sqlite:///{directory}/journal.db") as reader:
        game = Contest(reader.url, reader)
        MODEL = game.model
        try:
            async with anyio.create_task_group() as game.hosts:
                try:
                    for who in game.clocks:
                        await game.hosts.start(game.host, who)
                    async with anyio.create_task_group() as game.drivers:
                        await game.play(ops)
                        game.drivers.cancel_scope.cancel()
                finally:
                    for stop in game.stops.values():
                        stop.set()
        finally:
            MODEL = None


def play(ops: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        try:
            anyio.run(contest, ops, directory)
        except BaseExceptionGroup as group:
            raise first_error(group) from group


def first_error(error: BaseException) -> BaseException:
    """The first error a (nested) exception group holds: what Hypothesis shrinks on."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


LOSER_TAKES_AGAIN: list[Op] = [("steal", "B"), ("release", "A"), ("steal", "A")]
"""B takes the flow from A; A's run then loses it; A takes it back from B. (Before
c6b88dc A's journal writer kept refusing the flow, and A's resume failed.)"""


@pytest.mark.timeout(240)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(ops=LOSER_TAKES_AGAIN)
@given(ops=OPS)
def test_two_engines_taking_one_flow_in_any_order_keep_its_journal_valid_and_run_atoms_once(
    ops: list[Op],
) -> None:
    play(ops)


async def test_an_engine_that_lost_a_flow_can_take_it_over_again_later(sqlite_url: str) -> None:
    """A's run loses the flow to B (A was paused past its lease); later B's lease runs
    out in turn, and A takes the flow back with a new generation: that run must go on."""
    global MODEL
    clocks = {"A": Clock(), "B": Clock()}
    results: dict[str, Any] = {}
    try:
        async with (
            open_journal(sqlite_url) as reader,
            aioflow.Engine(sqlite_url, lease=H_LEASE, clock=clocks["A"]) as a,
            aioflow.Engine(sqlite_url, lease=H_LEASE, clock=clocks["B"]) as b,
            anyio.create_task_group() as tg,
        ):
            model = MODEL = Model(reader)

            async def drive(who: str, call: Any) -> None:
                WHO.set(who)
                try:
                    results[who] = await call()
                except Exception as exc:
                    results[who] = exc

            def held(who: str) -> bool:
                return model.waiting[who] is not None

            def release(who: str) -> None:
                entry = model.waiting[who]
                if entry is not None:
                    model.waiting[who] = None
                    entry[1].set()

            tg.start_soon(drive, "A", partial(a.run, CONTESTED, flow_id=H_FLOW))
            await until(lambda: held("A"), "A to run a1", 10)
            clocks["B"].offset = 1.5 * H_LEASE  # for B, A's lease has run out
            tg.start_soon(drive, "B", partial(b.resume, H_FLOW))
            await until(lambda: held("B"), "B to take the flow over and run a1", 10)
            release("A")  # A's a1 returns; its SUCCESS is refused
            await until(lambda: "A" in results, "A's run to end", 10)
            assert isinstance(results.pop("A"), aioflow.LeaseLostError)

            clocks["A"].offset = 3 * H_LEASE  # and now, for A, B's lease has run out
            tg.start_soon(drive, "A", partial(a.resume, H_FLOW))
            await until(lambda: held("A") or "A" in results, "A to take the flow back", 10)
            summary = await reader.summary(H_FLOW)
            assert (summary.owner, summary.generation) == (a.id, 3)
            taken_back: Any = results.get("A")
            release("B")  # B's a1 returns; its SUCCESS is refused in turn
            await until(lambda: "B" in results, "B's run to end", 10)
            assert isinstance(results["B"], aioflow.LeaseLostError)
            if taken_back is None:
                for atom in ("a1", "a2", "a3"):
                    await until(lambda: held("A"), f"A to run {atom}", 10)
                    release("A")
                await until(lambda: "A" in results, "A's run to end", 10)
                taken_back = results["A"]
            tg.cancel_scope.cancel()
    finally:
        MODEL = None
    if isinstance(taken_back, Exception):
        raise taken_back  # before c6b88dc: the LeaseLostError of A's first run
    assert taken_back.status is FlowStatus.SUCCESS
