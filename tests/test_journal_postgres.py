"""The PostgreSQL journal: the shared journal tests on a real server, plus its own."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

import aioflow
from aioflow._errors import JournalError, NotFoundError
from aioflow.journal import MemoryJournal, open_journal
from aioflow.journal._base import Fence
from aioflow.journal.postgres import PostgresJournal, dsn_from_url

from . import test_journal as shared
from .pg import pg_schema, pg_url, run_sync
from .test_journal import a_flow, atom_event, flow_start, interleaved_flows

__all__ = ["pg_schema", "pg_url"]

# The backend-independent journal tests, run here against PostgreSQL (their ``url``
# fixture is the one below).
test_round_trip = shared.test_round_trip
test_tickets_and_durable = shared.test_tickets_and_durable
test_events_after_pages = shared.test_events_after_pages
test_flows_status_filter_and_last_seq = shared.test_flows_status_filter_and_last_seq
test_unencodable_details_name_the_atom = shared.test_unencodable_details_name_the_atom
test_load_unknown_flow = shared.test_load_unknown_flow
test_meta = shared.test_meta


@pytest.fixture
def url(pg_url: str) -> str:
    return pg_url


async def sql(url: str, statement: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn_from_url(url))
    try:
        return list(await conn.fetch(statement, *args))
    finally:
        await conn.close()


def test_open_journal_gives_postgres(pg_url: str) -> None:
    journal = open_journal(pg_url)
    assert isinstance(journal, PostgresJournal)
    assert isinstance(open_journal("postgresql+asyncpg://u:secret@h/db"), PostgresJournal)
    assert "secret" not in repr(open_journal("postgresql://u:secret@h/db"))


async def test_one_commit_per_flush_and_same_summaries_as_memory(pg_url: str) -> None:
    events = interleaved_flows(1500)
    memory = MemoryJournal()
    async with memory, PostgresJournal(pg_url) as j:
        k = 0
        for size in (1, 7, 300, 1, 500, 691):  # 1500 events in batches of these sizes
            for e in events[k : k + size]:
                j.append(e)
                memory.append(e)
            k += size
            commits = j.commits
            await j.flush()
            assert j.commits == commits + 1
        assert k == len(events)
        assert await j.flows() == await memory.flows()
        for flow_id in "xyz":
            assert await j.load(flow_id) == await memory.load(flow_id)


async def test_concurrent_waiters_share_commits(pg_url: str) -> None:
    async with PostgresJournal(pg_url) as j:
        j.append(flow_start("f"))

        async def step(seq: int) -> None:
            await j.wait_durable(j.append(atom_event("f", seq)))

        async with anyio.create_task_group() as tg:
            for seq in range(2, 502):
                tg.start_soon(step, seq)
        assert j.commits <= 5
        assert [e.seq for e in await j.load("f")] == list(range(1, 502))


async def test_a_conflict_refuses_only_its_flow(pg_url: str) -> None:
    async with PostgresJournal(pg_url) as first:
        for e in a_flow("f", 10):
            first.append(e)
    async with PostgresJournal(pg_url) as second:
        for e in [atom_event("g", s) for s in range(1, 50)] + [atom_event("f", 5)]:
            second.append(e)
        with pytest.raises(JournalError, match="flow f at seq 5"):
            await second.flush()
    assert [e.seq for e in await PostgresJournal(pg_url).load("g")] == list(range(1, 50))
    assert [e.seq for e in await PostgresJournal(pg_url).load("f")] == list(range(1, 11))


async def test_reading_while_closed_and_from_an_empty_schema(pg_url: str) -> None:
    j = PostgresJournal(pg_url)
    assert await j.flows() == []  # an empty schema reads as empty and stays empty
    assert (
        await sql(
            pg_url, "SELECT * FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        == []
    )
    async with j:
        j.append(flow_start("f"))
    assert [f.flow_id for f in await PostgresJournal(pg_url).flows()] == ["f"]


async def test_another_schema_version_is_refused_and_untouched(pg_url: str) -> None:
    async with PostgresJournal(pg_url) as j:
        j.append(flow_start("f"))
    await sql(pg_url, "UPDATE aioflow_meta SET value = '4' WHERE key = 'schema_version'")
    with pytest.raises(JournalError, match=r"version 4.*version 3.*upgrade aioflow"):
        await PostgresJournal(pg_url).open()
    assert len(await sql(pg_url, "SELECT * FROM aioflow_events")) == 1
    assert await sql(pg_url, "SELECT value FROM aioflow_meta") == [("4",)]


async def test_foreign_tables_are_refused(pg_url: str) -> None:
    await sql(pg_url, "CREATE TABLE aioflow_events(x INT)")
    with pytest.raises(JournalError, match="not an aioflow journal"):
        await PostgresJournal(pg_url).open()
    assert await sql(
        pg_url,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()",
    ) == [(1,)]


async def test_unreachable_server_is_a_journal_error() -> None:
    with pytest.raises(JournalError, match="cannot connect"):
        await PostgresJournal("postgresql://postgres@127.0.0.1:1/none").open()


async def test_two_journals_open_one_empty_schema_at_once(pg_url: str) -> None:
    async with PostgresJournal(pg_url) as one, PostgresJournal(pg_url) as two:
        one.append(flow_start("a"))
        two.append(flow_start("b"))
    assert {f.flow_id for f in await PostgresJournal(pg_url).flows()} == {"a", "b"}


async def test_compact_folds_history_and_replays_the_same(pg_url: str) -> None:
    @aioflow.task(provides="x")
    def one() -> int:
        return 1

    @aioflow.task(provides="y")
    def two(x: int) -> int:
        return x + 1

    @aioflow.task(provides="z")
    def three(y: int) -> int:
        return y + 1

    flow = aioflow.Linear("cp", one, aioflow.Checkpoint("c1"), two, aioflow.Checkpoint("c2"), three)
    memory = MemoryJournal()
    async with aioflow.Engine(memory) as engine:
        outcome = await engine.run(flow)
    events = await memory.load(outcome.flow_id)
    async with PostgresJournal(pg_url) as j:
        for e in events:
            j.append(e)
        await j.flush()
        removed = await j.compact(outcome.flow_id, keep=1)
        assert removed > 0
        assert removed == await memory.compact(outcome.flow_id, keep=1)
        assert await j.load(outcome.flow_id) == await memory.load(outcome.flow_id)
        assert await j.compact(outcome.flow_id, keep=1) == 0
        with pytest.raises(NotFoundError):
            await j.compact("nope")


_OLD_META_AND_EVENTS = (
    "CREATE TABLE aioflow_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE aioflow_events(flow_id TEXT NOT NULL, seq BIGINT NOT NULL,"
    " time DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL, atom TEXT, state TEXT,"
    " attempt INTEGER NOT NULL, progress DOUBLE PRECISION, details TEXT,"
    " PRIMARY KEY(flow_id, seq))",
)
"""Two tables as versions 1 and 2 made them (written out: what an older aioflow left)."""


async def test_a_version_1_schema_is_migrated_once_and_keeps_its_flows(pg_url: str) -> None:
    for statement in (
        *_OLD_META_AND_EVENTS,
        "CREATE TABLE aioflow_flows(flow_id TEXT PRIMARY KEY, name TEXT, status TEXT, ref TEXT,"
        " created DOUBLE PRECISION, updated DOUBLE PRECISION, last_seq BIGINT, ord BIGSERIAL)",
        "INSERT INTO aioflow_meta VALUES ('schema_version', '1')",
        "INSERT INTO aioflow_events VALUES ('old', 1, 1.0, 'FLOW', NULL, 'RUNNING', 0, NULL,"
        " '{\"name\": \"demo\"}')",
        "INSERT INTO aioflow_flows(flow_id, name, status, created, updated, last_seq)"
        " VALUES ('old', 'demo', 'RUNNING', 1.0, 1.0, 1)",
    ):
        await sql(pg_url, statement)
    async with PostgresJournal(pg_url) as one, PostgresJournal(pg_url) as two:
        assert [f.flow_id for f in await two.flows()] == ["old"]
        summary = await one.summary("old")
        # A RUNNING flow of the old schema has no owner: it is orphaned, resumable.
        assert summary.owner is None and summary.orphaned
        assert summary.last_seq == 1
    assert await sql(pg_url, "SELECT value FROM aioflow_meta") == [("3",)]


async def test_a_version_2_schema_loses_last_seq_and_reads_it_from_the_events(
    pg_url: str,
) -> None:
    """Version 3 reads a flow's last seq from its events, so a commit of events without
    a FLOW event rewrites no summary: a version 2 schema's column is dropped when it is
    opened, its flows keep their summaries, and their last seqs are those of their
    events."""
    for statement in (
        *_OLD_META_AND_EVENTS,
        "CREATE TABLE aioflow_flows(flow_id TEXT PRIMARY KEY, name TEXT, status TEXT, ref TEXT,"
        " created DOUBLE PRECISION, updated DOUBLE PRECISION, last_seq BIGINT,"
        " ord BIGSERIAL, owner TEXT, generation BIGINT NOT NULL DEFAULT 0)",
        "CREATE TABLE aioflow_owners(owner TEXT PRIMARY KEY, expires DOUBLE PRECISION NOT NULL)",
        "INSERT INTO aioflow_meta VALUES ('schema_version', '2')",
        "INSERT INTO aioflow_events VALUES ('old', 1, 1.0, 'FLOW', NULL, 'RUNNING', 0, NULL,"
        " '{\"name\": \"demo\"}'), ('old', 2, 2.0, 'ATOM', 'a', 'SUCCESS', 1, 1.0, NULL)",
        "INSERT INTO aioflow_flows(flow_id, name, status, created, updated, last_seq, owner,"
        " generation) VALUES ('old', 'demo', 'RUNNING', 1.0, 1.0, 2, 'gone', 3)",
    ):
        await sql(pg_url, statement)
    async with PostgresJournal(pg_url) as journal:
        summary = await journal.summary("old")
        assert (summary.name, summary.last_seq, summary.generation) == ("demo", 2, 3)
        generation, last_seq = await journal.take("old", "me")
        assert (generation, last_seq) == (4, 2)
        journal.set_fence("old", Fence("me", generation))
        await journal.wait_durable(journal.append(atom_event("old", 3)))
        assert (await journal.summary("old")).last_seq == 3
    assert await sql(pg_url, "SELECT value FROM aioflow_meta") == [("3",)]
    columns = await sql(
        pg_url,
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'aioflow_flows'",
    )
    assert ("last_seq",) not in columns


async def test_a_commit_without_a_flow_event_rewrites_no_summary(pg_url: str) -> None:
    """A fenced commit of atom events leaves the flow's summary row as it was (the same
    tuple: PostgreSQL wrote no new version of it), and its last seq still moves."""
    async with PostgresJournal(pg_url) as journal:
        await journal.wait_durable(journal.append(flow_start("f")))
        generation, _ = await journal.take("f", "me")
        journal.set_fence("f", Fence("me", generation))
        [(before,)] = await sql(pg_url, "SELECT ctid::text FROM aioflow_flows")
        await journal.wait_durable(journal.append(atom_event("f", 2)))
        [(after,)] = await sql(pg_url, "SELECT ctid::text FROM aioflow_flows")
        assert (await journal.summary("f")).last_seq == 2
    assert after == before


async def test_a_commit_of_atom_events_alone_skips_the_summaries_and_keeps_its_fence(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that changes no summary is committed by the shorter statement, which still
    checks the fence: once another owner took the flow, it writes nothing."""
    from aioflow.journal import postgres as module

    chosen: list[str] = []
    statement = PostgresJournal._statement

    def spy(self: PostgresJournal, *args: object, **kwargs: object) -> tuple[str, list[object]]:
        sql, arguments = statement(self, *args, **kwargs)  # type: ignore[arg-type]
        chosen.append("events" if sql is module._COMMIT_EVENTS else "summaries")
        return sql, arguments

    monkeypatch.setattr(PostgresJournal, "_statement", spy)
    async with PostgresJournal(pg_url) as journal, PostgresJournal(pg_url) as other:
        await journal.wait_durable(journal.append(flow_start("f")))
        generation, _ = await journal.take("f", "me")
        journal.set_fence("f", Fence("me", generation))
        await journal.wait_durable(journal.append(atom_event("f", 2)))
        assert chosen == ["summaries", "events"]
        await other.take("f", "you")  # "me" keeps no heartbeat: its lease is over
        with pytest.raises(aioflow.LeaseLostError, match="taken over by engine you"):
            await journal.wait_durable(journal.append(atom_event("f", 3)))
        assert chosen[-1] == "events"
        assert [event.seq for event in await other.load("f")] == [1, 2]


def test_schema_helper_isolation(pg_schema: str) -> None:
    assert run_sync(sql(pg_url_for(pg_schema), "SELECT current_schema()")) == [(pg_schema,)]


def pg_url_for(schema: str) -> str:
    from .pg import url_in

    return url_in(schema)


# ------------------------------------------------------------ external waits on PostgreSQL

WAIT_TOKENS: list[str] = []


@aioflow.task(provides="approval")
async def ask_for_approval(external: aioflow.External) -> object:
    WAIT_TOKENS.append(external.token)
    return external.wait(timeout=3600)


@aioflow.task(provides="answer")
async def use_approval(approval: str) -> str:
    return f"got {approval}"


def approval_flow() -> aioflow.Linear:
    return aioflow.Linear("approval", ask_for_approval, use_approval)


async def test_of_concurrent_completions_across_engines_exactly_one_wins(pg_url: str) -> None:
    WAIT_TOKENS.clear()
    first = aioflow.Engine(pg_url, secret="s3cret")
    waiting = await first.run("tests.test_journal_postgres:approval_flow")
    assert waiting.status is aioflow.FlowStatus.WAITING
    wins: list[int] = []
    refused: list[int] = []

    async def complete(engine: aioflow.Engine, n: int) -> None:
        try:
            await engine.complete(WAIT_TOKENS[0], f"yes-{n}")
            wins.append(n)
        except aioflow.InvalidTokenError:
            refused.append(n)

    async def one_engine(k: int) -> None:  # as one process of several would
        async with (
            aioflow.Engine(pg_url, secret="s3cret") as engine,
            anyio.create_task_group() as tg,
        ):
            for n in range(k, 12, 4):
                tg.start_soon(complete, engine, n)

    async with anyio.create_task_group() as tg:
        for k in range(4):
            tg.start_soon(one_engine, k)

    assert (len(wins), len(refused)) == (1, 11)
    # The engines closed before waking the flow; the completion is in the journal.
    outcome = await aioflow.Engine(pg_url, secret="s3cret").resume(waiting.flow_id)
    assert outcome.status is aioflow.FlowStatus.SUCCESS
    assert outcome["answer"] == f"got yes-{wins[0]}"


async def test_a_connection_given_back_mid_transaction_is_rolled_back(pg_url: str) -> None:
    """The pools skip asyncpg's reset (a round trip per release) but still roll back a
    transaction a cancelled caller left open."""
    from aioflow.journal.postgres import PostgresJournal

    journal = open_journal(pg_url)
    assert isinstance(journal, PostgresJournal)
    async with journal:
        pool = journal._open_pool()
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE left_open(x int)")
            assert conn.is_in_transaction()
            pid = conn.get_server_pid()
        async with pool.acquire() as again:
            assert again.get_server_pid() == pid  # the one idle connection, given again
            assert not again.is_in_transaction()
            exists = await again.fetchval("SELECT to_regclass('pg_temp.left_open')")
            assert exists is None  # rolled back, not committed


async def test_pools_plan_statements_once_unless_the_url_says_otherwise(pg_url: str) -> None:
    """A custom plan for every execution of the commit statement cost 0.25 ms of each
    commit: the journal's and the board's connections use generic plans, unless the URL
    sets ``plan_cache_mode`` itself (a server setting, as any query parameter)."""
    from aioflow.jobs.postgres import PostgresJobBoard

    joiner = "&" if "?" in pg_url else "?"
    for url, expected in (
        (pg_url, "force_generic_plan"),
        (f"{pg_url}{joiner}plan_cache_mode=force_custom_plan", "force_custom_plan"),
    ):
        journal = open_journal(url)
        assert isinstance(journal, PostgresJournal)
        async with journal:
            async with journal._open_pool().acquire() as conn:
                assert await conn.fetchval("SHOW plan_cache_mode") == expected
            board = PostgresJobBoard(url)
            async with board:
                pool = await board._get_pool()
                async with pool.acquire() as conn:
                    assert await conn.fetchval("SHOW plan_cache_mode") == expected


async def test_a_one_task_flow_commits_twice(pg_url: str) -> None:
    """Rows nobody waits for linger (up to 2 ms) until a waiter comes: a strict one-task
    flow commits its start (before its atom runs) and then the rest in one commit."""
    first = aioflow.task(name="only")(_nothing)
    async with aioflow.Engine(pg_url) as engine:
        commits = engine.journal.commits  # type: ignore[attr-defined]
        outcome = await engine.run(aioflow.Linear("one", first))
        assert outcome.status is aioflow.FlowStatus.SUCCESS
        assert engine.journal.commits == commits + 2  # type: ignore[attr-defined]
        events = await engine.journal.load(outcome.flow_id)
        kinds = [(e.kind.value, e.state and e.state.value) for e in events]
        assert kinds == [
            ("FLOW", "RUNNING"),
            ("ATOM", "RUNNING"),
            ("ATOM", "SUCCESS"),
            ("FLOW", "SUCCESS"),
        ]


async def _nothing() -> None:
    return None


async def test_a_read_sees_what_was_appended_before_it(pg_url: str) -> None:
    """Rows nobody waits for may linger before their commit; a read on the open journal
    waits for them first, as on SQLite."""
    async with PostgresJournal(pg_url) as journal:
        for n in range(20):
            journal.append(flow_start(f"f{n}"))
            assert (await journal.summary(f"f{n}")).flow_id == f"f{n}"
            journal.append(atom_event(f"f{n}", 2))
            assert [e.seq for e in await journal.load(f"f{n}")] == [1, 2]


async def test_a_pool_of_one_connection_is_not_kept_by_the_writer(pg_url: str) -> None:
    """The writer keeps a connection between commits only when the pool has others: with
    one, a run's reads, heartbeats and takes would wait for it forever."""
    first = aioflow.task(name="only")(_nothing)
    with anyio.fail_after(20):
        async with aioflow.Engine(PostgresJournal(pg_url, pool_size=1)) as engine:
            for _ in range(3):
                outcome = await engine.run(aioflow.Linear("one", first))
                assert (await engine.journal.summary(outcome.flow_id)).status is (
                    aioflow.FlowStatus.SUCCESS
                )


@pytest.mark.parametrize("idle", [0, 60], ids=["just-now", "a-minute-ago"])
async def test_a_kept_connection_the_server_ended_is_not_the_next_commits(
    pg_url: str, idle: float
) -> None:
    """The writer keeps its connection between commits. When the server ends it while
    idle (a restart, an idle timeout, an operator), the next commit still goes in, on a
    new connection, whether the client has yet seen the end or not (the race that made
    this test flaky: asyncpg may still hold the connection as open, half-way through
    reading the server's last message). A connection idle for long is not trusted at
    all."""
    for flow_id in ("a", "b", "c", "d", "e"):  # the race goes either way
        async with PostgresJournal(pg_url) as journal:
            journal.append(flow_start(flow_id))
            await journal.flush()
            kept = journal._committer
            assert kept is not None
            admin = await asyncpg.connect(dsn_from_url(pg_url))
            try:  # our own session, by its pid
                pid = kept.get_server_pid()
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            finally:
                await admin.close()
            journal._committed_at -= idle
            journal.append(atom_event(flow_id, 2))
            await journal.flush()
            assert journal._committer is not None
            assert journal._committer.get_server_pid() != pid
            assert [e.seq for e in await journal.load(flow_id)] == [1, 2]
