"""Retention: ``journal.purge`` and ``board.purge`` on every backend (rows checked in the
storage itself), racing resumes and running flows, and the purge commands."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

import aioflow
from aioflow import FlowStatus, JobState, NotFoundError
from aioflow._events import Event, EventKind
from aioflow.jobs import JobBoard
from aioflow.journal import Journal, MemoryJournal, SqliteJournal, open_journal
from aioflow.journal.postgres import dsn_from_url

from .pg import pg_schema, pg_url
from .test_cli import aioflow_cmd
from .test_journal import atom_event, flow_start

__all__ = ["pg_schema", "pg_url"]

DAY = 86400.0
OLD = time.time() - 40 * DAY


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A journal (and board) URL per backend."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/journal.db"
    return str(request.getfixturevalue("pg_url"))


def ended(flow_id: str, status: FlowStatus = FlowStatus.SUCCESS, *, at: float = OLD) -> list[Event]:
    """A flow that started and came to rest in ``status`` at ``at``, two atoms between."""
    return [
        flow_start(flow_id, at=at),
        atom_event(flow_id, 2, result=2),
        atom_event(flow_id, 3, "b", result=3),
        Event(flow_id, 4, at, EventKind.FLOW, state=status),
    ]


async def write(journal: Journal, *flows: list[Event]) -> None:
    for events in flows:
        for event in events:
            journal.append(event)
    await journal.flush()


class Purger:
    """The journal a purge runs on: another connection to the same storage (as another
    process would have), except in memory, where there is only the one."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal if isinstance(journal, MemoryJournal) else open_journal(journal.url)

    async def __aenter__(self) -> Journal:
        if not self.journal.is_open:
            await self.journal.open()
        return self.journal

    async def __aexit__(self, *exc: object) -> None:
        if not isinstance(self.journal, MemoryJournal):
            await self.journal.close()


async def stored(journal: Journal, flow_id: str) -> dict[str, int]:
    """How many rows of each table belong to ``flow_id``, read from the storage itself."""
    if isinstance(journal, MemoryJournal):
        flow = journal._flows.get(flow_id)
        mail = journal._mail.get(flow_id, {})
        return {
            "events": 0 if flow is None else len(flow.events),
            "flows": int(flow is not None),
            "mailbox": sum(len(kept) for kept in mail.values()),
        }
    counts = {}
    if isinstance(journal, SqliteJournal):
        with sqlite3.connect(journal.path) as conn:
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
            # Events name their flow by its key: the view gives them its id, and no
            # event may outlive its flow's summary (which the view would not show).
            for table in ("flow_events", "flows", "mailbox"):
                counts[table] = 0
                if f"aioflow_{table}" in tables:  # the mailbox is made by the first post
                    (counts[table],) = conn.execute(
                        f"SELECT count(*) FROM aioflow_{table} WHERE flow_id = ?", (flow_id,)
                    ).fetchone()
            counts["events"] = counts.pop("flow_events")
            (unkeyed,) = conn.execute(
                "SELECT count(*) FROM aioflow_events WHERE flow NOT IN"
                " (SELECT key FROM aioflow_flows)"
            ).fetchone()
            assert unkeyed == 0, f"{unkeyed} events outlived their flow's summary"
        return counts
    import asyncpg

    conn = await asyncpg.connect(dsn_from_url(journal.url))
    try:
        for table in ("events", "flows", "mailbox"):
            counts[table] = await conn.fetchval(
                f"SELECT count(*) FROM aioflow_{table} WHERE flow_id = $1", flow_id
            )
    finally:
        await conn.close()
    return counts


GONE = {"events": 0, "flows": 0, "mailbox": 0}


# ------------------------------------------------------------------------ journal.purge


async def test_purge_removes_old_ended_flows_whole_and_keeps_every_other(url: str) -> None:
    async with open_journal(url) as journal:
        await write(
            journal,
            ended("ok"),
            ended("undone", FlowStatus.REVERTED),
            ended("broken", FlowStatus.FAILED),
            ended("young", at=time.time() - 60),
            [flow_start("running", at=OLD)],
            ended("suspended", FlowStatus.SUSPENDED),
            ended("waiting", FlowStatus.WAITING),
            ended("owned"),
        )
        await journal.take("owned", "engine-elsewhere")  # a final flow someone holds
        for flow_id in ("ok", "undone", "broken", "young", "suspended"):
            await journal.post_message(flow_id, "note", {"to": flow_id}, key="k", time=OLD)
        kept = ["young", "running", "suspended", "waiting", "owned"]

        async with Purger(journal) as purger:
            assert await purger.purge(30 * DAY) == 3

        for flow_id in ("ok", "undone", "broken"):
            assert await stored(journal, flow_id) == GONE
            with pytest.raises(NotFoundError):
                await journal.load(flow_id)
            with pytest.raises(NotFoundError):
                await journal.post_message(flow_id, "note", 1, time=time.time())
        for flow_id in kept:
            assert (await stored(journal, flow_id))["events"] > 0
            assert (await stored(journal, flow_id))["flows"] == 1
        assert (await stored(journal, "young"))["mailbox"] == 1
        assert {s.flow_id for s in await journal.flows()} == set(kept)
        _, mail = await journal.mail_since(0)
        assert sorted(flow_id for flow_id, _ in mail) == ["suspended", "young"]
        assert await journal.purge(30 * DAY) == 0


async def test_status_narrows_a_purge_to_the_final_statuses_it_names(url: str) -> None:
    async with open_journal(url) as journal:
        await write(
            journal,
            ended("ok"),
            ended("undone", FlowStatus.REVERTED),
            ended("broken", FlowStatus.FAILED),
        )
        assert await journal.purge(timedelta(days=30), FlowStatus.FAILED) == 1
        assert {s.flow_id for s in await journal.flows()} == {"ok", "undone"}
        assert await journal.purge(30 * DAY, [FlowStatus.REVERTED, FlowStatus.FAILED]) == 1
        assert [s.flow_id for s in await journal.flows()] == ["ok"]


async def test_a_dry_run_counts_what_a_purge_would_remove_and_removes_nothing(url: str) -> None:
    async with open_journal(url) as journal:
        await write(
            journal, ended("ok"), ended("broken", FlowStatus.FAILED), ended("new", at=time.time())
        )
        assert await journal.purge(30 * DAY, dry_run=True) == 2
        assert await journal.purge(30 * DAY, FlowStatus.FAILED, dry_run=True) == 1
        assert len(await journal.flows()) == 3
        assert await stored(journal, "ok") == {"events": 4, "flows": 1, "mailbox": 0}


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"status": FlowStatus.SUSPENDED}, ValueError, "may still be resumed"),
        ({"status": [FlowStatus.SUCCESS, FlowStatus.WAITING]}, ValueError, "external completion"),
        ({"status": FlowStatus.RUNNING}, ValueError, "not RUNNING ones"),
        ({"status": []}, ValueError, "names no status"),
        ({"status": "SUCCESS"}, TypeError, "'SUCCESS'"),
        ({"older_than": -1}, ValueError, "older_than must be"),
        ({"older_than": float("nan")}, ValueError, "older_than must be"),
        ({"older_than": "30d"}, TypeError, "datetime.timedelta"),
    ],
)
async def test_a_purge_refuses_flows_that_may_still_move_and_bad_ages(
    kwargs: dict[str, Any], error: type[Exception], words: str
) -> None:
    async with open_journal("memory://") as journal:
        await write(journal, ended("suspended", FlowStatus.SUSPENDED))
        with pytest.raises(error, match=words):
            await journal.purge(**{"older_than": 0, **kwargs})
        assert len(await journal.flows()) == 1


async def test_a_purge_works_in_batches_of_purge_batch_flows(url: str) -> None:
    async with open_journal(url) as journal:
        await write(
            journal, *(ended(f"f{i:04}") for i in range(1100)), ended("new", at=time.time())
        )
        async with Purger(journal) as purger:
            with capture_logs() as logs:
                assert await purger.purge(30 * DAY) == 1100
        batches = [log["flows"] for log in logs if log["event"] == "aioflow.journal_purge_batch"]
        assert batches == [500, 500, 100]
        assert [s.flow_id for s in await journal.flows()] == ["new"]
        assert await stored(journal, "f0500") == GONE

        journal.purge_batch = 3
        await write(journal, *(ended(f"g{i}") for i in range(7)))
        with capture_logs() as logs:
            assert await journal.purge(30 * DAY) == 7
        assert [log["flows"] for log in logs if "flows" in log][:3] == [3, 3, 1]


async def test_a_purge_of_a_journal_that_is_not_open_reads_and_deletes_all_the_same(
    url: str,
) -> None:
    if url == "memory://":
        pytest.skip("a memory journal is only ever the one object")
    async with open_journal(url) as journal:
        await write(journal, ended("ok"), ended("new", at=time.time()))
    closed = open_journal(url)
    assert await closed.purge(30 * DAY, dry_run=True) == 1
    assert await closed.purge(30 * DAY) == 1
    assert [s.flow_id for s in await closed.flows()] == ["new"]


# ---------------------------------------------------------------------- purge and engines


@aioflow.task
async def tick() -> None:
    pass


WIDE = aioflow.Unordered("wide", *(tick.using(name=f"t{i}") for i in range(600)))
"""A flow of 1,200 odd events: more than one page of a paged read."""


async def test_a_purge_racing_a_resume_of_the_same_ended_flow_never_shows_half_of_it(
    url: str,
) -> None:
    rounds = 4 if url == "memory://" else 24
    async with aioflow.Engine(url) as engine:
        template = await engine.run(WIDE)
        events = await engine.journal.load(template.flow_id)
        assert len(events) > 1000
        found: dict[str, int] = {"outcome": 0, "loaded": 0, "gone": 0}
        async with Purger(engine.journal) as purger:
            for n in range(rounds):
                flow_id = f"copy-{n}"
                await write(
                    engine.journal, [dataclasses.replace(e, flow_id=flow_id) for e in events]
                )

                async def resume(flow_id: str = flow_id, wait: int = n % 4) -> None:
                    await anyio.sleep(wait / 1000)  # before, with or after the purge
                    try:
                        outcome = await engine.resume(flow_id, WIDE)
                    except NotFoundError:
                        found["gone"] += 1
                    else:
                        assert outcome.status is FlowStatus.SUCCESS
                        found["outcome"] += 1

                async def load(flow_id: str = flow_id, wait: int = n % 3) -> None:
                    await anyio.sleep(wait / 1000)
                    try:
                        loaded = await engine.journal.load(flow_id)
                    except NotFoundError:
                        found["gone"] += 1
                    else:
                        assert len(loaded) == len(events)  # all of it, never a part
                        found["loaded"] += 1

                async with anyio.create_task_group() as tg:
                    tg.start_soon(purger.purge, 0)
                    tg.start_soon(resume)
                    tg.start_soon(load)
                assert await stored(engine.journal, flow_id) == GONE
        assert sum(found.values()) == 2 * rounds


GATES: dict[str, anyio.Event] = {}


@aioflow.task(provides="opened")
async def wait_at_gate(gate: str) -> str:
    await GATES[gate].wait()
    return gate


@aioflow.task(provides="done")
async def after_gate(opened: str) -> str:
    return opened + " done"


GATED = aioflow.Linear("gated", wait_at_gate, after_gate)


async def test_a_purge_never_touches_a_running_flow(url: str) -> None:
    gate = f"gate-{url}"
    GATES[gate] = anyio.Event()
    async with aioflow.Engine(url) as engine, Purger(engine.journal) as purger:
        handles = [await engine.start(GATED, {"gate": gate}) for _ in range(3)]
        await write(engine.journal, ended("old"))
        assert await purger.purge(0) == 1  # only the old one: the others run
        for handle in handles:
            summary = await engine.journal.summary(handle.flow_id)
            assert summary.status is FlowStatus.RUNNING
            assert summary.owner == engine.id

        ran: list[aioflow.Outcome] = []

        async def finish() -> None:
            GATES[gate].set()
            for handle in handles:
                ran.append(await handle.wait())
            tg.cancel_scope.cancel()

        async def purge_all_along() -> None:
            while True:
                await purger.purge(0)
                await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(purge_all_along)
            tg.start_soon(finish)
        assert [o.status for o in ran] == [FlowStatus.SUCCESS] * 3
        assert [o["done"] for o in ran] == [f"{gate} done"] * 3


# --------------------------------------------------------------------------- board.purge


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def finished_job(
    board: JobBoard, state: JobState, priority: int = 0, *, dead: bool = False
) -> str:
    """A job posted, claimed and finished in ``state`` (``dead``: as a dead letter, whose
    flow never ended)."""
    job = await board.post("pkg.mod:flow", {"n": 1}, priority=priority)
    claimed = await board.claim("conductor", 30)
    assert claimed is not None and claimed.id == job.id
    status = FlowStatus.SUCCESS if state is JobState.COMPLETE else FlowStatus.FAILED
    assert await board.finish(claimed, state, None if dead else status)
    return job.id


async def traces(url: str, job_id: str) -> int:
    """Rows of ``aioflow_job_traces`` for ``job_id``, read from the storage itself."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            (count,) = conn.execute(
                "SELECT count(*) FROM aioflow_job_traces WHERE id = ?", (job_id,)
            ).fetchone()
        return int(count)
    import asyncpg

    conn = await asyncpg.connect(dsn_from_url(url))
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM aioflow_job_traces WHERE id = $1", job_id)
        )
    finally:
        await conn.close()


async def test_board_purge_removes_old_finished_jobs_and_their_traces_only(url: str) -> None:
    from opentelemetry import propagate  # noqa: F401 - jobs posted in a span keep its context
    from opentelemetry.sdk.trace import TracerProvider

    clock = Clock()
    tracer = TracerProvider().get_tracer("test")
    async with JobBoard.open(url, clock=clock, poll=0.01) as board:
        with tracer.start_as_current_span("request"):
            complete = await finished_job(board, JobState.COMPLETE)
        failed = await finished_job(board, JobState.FAILED)
        unclaimed = (await board.post("pkg.mod:flow", priority=-1)).id
        waiting = (await board.post("pkg.mod:flow")).id
        held = await board.claim("conductor", 30)
        assert held is not None and held.id == waiting
        assert await board.park(held)
        claimed = await board.post("pkg.mod:flow")
        assert (await board.claim("conductor", 100 * DAY)).id == claimed.id  # type: ignore[union-attr]
        clock.now += 40 * DAY
        with tracer.start_as_current_span("request"):
            young = await finished_job(board, JobState.COMPLETE, priority=1)
        assert await board.trace_of(complete) != {}
        if url != "memory://":
            assert await traces(url, complete) == 1

        assert await board.purge(30 * DAY, dry_run=True) == 2
        assert await board.purge(timedelta(days=30)) == 2

        for job_id in (complete, failed):
            with pytest.raises(NotFoundError):
                await board.get(job_id)
        assert await board.trace_of(complete) == {}
        if url != "memory://":
            assert await traces(url, complete) == 0
            assert await traces(url, young) == 1
        assert {j.id: j.state for j in await board.jobs()} == {
            unclaimed: JobState.UNCLAIMED,
            waiting: JobState.WAITING,
            claimed.id: JobState.CLAIMED,
            young: JobState.COMPLETE,
        }
        assert await board.purge(30 * DAY) == 0


async def test_board_purge_narrows_to_states_refuses_live_ones_and_works_in_batches(
    url: str,
) -> None:
    clock = Clock()
    async with JobBoard.open(url, clock=clock, poll=0.01) as board:
        done = [await finished_job(board, JobState.COMPLETE) for _ in range(7)]
        failed = await finished_job(board, JobState.FAILED)
        clock.now += 2 * DAY
        with pytest.raises(ValueError, match="not WAITING ones"):
            await board.purge(DAY, [JobState.COMPLETE, JobState.WAITING])
        with pytest.raises(TypeError, match="JobState"):
            await board.purge(DAY, "COMPLETE")  # type: ignore[arg-type]
        assert await board.purge(DAY, JobState.FAILED) == 1
        board.purge_batch = 3
        with capture_logs() as logs:
            assert await board.purge(DAY) == 7
        assert [log["jobs"] for log in logs if log["event"] == "aioflow.jobs_purge_batch"] == [
            3,
            3,
            1,
        ]
        assert await board.jobs() == []
        assert failed not in done


async def test_a_board_purge_racing_a_retry_keeps_the_job_or_finds_it_gone(url: str) -> None:
    clock = Clock()
    async with JobBoard.open(url, clock=clock, poll=0.01) as board:
        for _ in range(5):
            # A dead letter: a retry puts it back UNCLAIMED under its own id.
            job_id = await finished_job(board, JobState.FAILED, dead=True)
            clock.now += 2 * DAY
            retried: list[str] = []

            async def retry(job_id: str = job_id, retried: list[str] = retried) -> None:
                try:
                    retried.append((await board.retry(job_id)).state.value)
                except NotFoundError:
                    retried.append("gone")

            async with anyio.create_task_group() as tg:
                tg.start_soon(retry)
                tg.start_soon(board.purge, DAY)
            jobs = {j.id: j for j in await board.jobs()}
            if retried == ["gone"]:
                assert job_id not in jobs
            else:
                assert retried == ["UNCLAIMED"]
                assert jobs[job_id].state is JobState.UNCLAIMED
                await board.trash(job_id)


# --------------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_aioflow_purge_and_aioflow_jobs_purge_as_a_user_runs_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/flows.db"

    async def prepare() -> None:
        async with open_journal(url) as journal:
            await write(
                journal,
                ended("ok"),
                ended("broken", FlowStatus.FAILED),
                ended("suspended", FlowStatus.SUSPENDED),
                ended("new", at=time.time()),
            )
        async with JobBoard.open(url, clock=lambda: OLD) as board:
            await finished_job(board, JobState.COMPLETE)

    anyio.run(prepare)

    counted = aioflow_cmd("purge", "--older-than", "30d", "--journal", url, "--dry-run")
    assert counted.returncode == 0, counted.stderr
    assert "would remove 2 flows (SUCCESS, REVERTED, FAILED)" in counted.stdout
    assert "nothing removed" in counted.stdout

    only_failed = aioflow_cmd(
        "purge", "--older-than", "720h", "--status", "failed", "--journal", url
    )
    assert only_failed.returncode == 0, only_failed.stderr
    assert only_failed.stdout.startswith("removed 1 flow (FAILED) that ended before ")

    purged = aioflow_cmd("purge", "--older-than", "2592000s", "--journal", url, "--json")
    assert purged.returncode == 0, purged.stderr
    assert '"flows": 1' in purged.stdout and '"dry_run": false' in purged.stdout

    with sqlite3.connect(tmp_path / "flows.db") as conn:
        # A purged flow's events go with it: none is left without its summary (None).
        left = {
            flow_id
            for (flow_id,) in conn.execute(
                "SELECT f.flow_id FROM aioflow_events e"
                " LEFT JOIN aioflow_flows f ON f.key = e.flow"
            )
        }
    assert left == {"suspended", "new"}

    jobs = aioflow_cmd("jobs", "purge", "--older-than", "30d", "--journal", url)
    assert jobs.returncode == 0, jobs.stderr
    assert jobs.stdout.startswith("removed 1 job (COMPLETE, FAILED) that finished before ")

    for args, words in [
        (("purge", "--older-than", "30x"), ["'30x' is not a duration", "30d, 12h, 90m"]),
        (("purge", "--older-than", "30"), ["'30' is not a duration"]),
        (("purge", "--older-than", "1d", "--status", "SUSPENDED"), ["may still be resumed"]),
        (("purge", "--older-than", "1d", "--status", "DONE"), ["unknown status 'DONE'"]),
        (("jobs", "purge", "--older-than", "1d", "--state", "CLAIMED"), ["not CLAIMED ones"]),
    ]:
        result = aioflow_cmd(*args, "--journal", url)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("aioflow: error: "), result.stderr
        for word in words:
            assert word in lines[0]
