"""Journal.list_flows: pages of flows, newest first, by keyset cursor, on every backend."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import asyncpg
import pytest
from structlog.testing import capture_logs

from aioflow import FlowStatus
from aioflow.journal import FlowSummary, Journal, open_journal, postgres, sqlite
from aioflow.journal._base import flow_cursor, read_cursor
from aioflow.journal.postgres import dsn_from_url

from .pg import pg_schema, pg_url
from .test_journal import flow_start, flow_status
from .test_mailbox_journal import as_role, dml_role, sql

__all__ = ["dml_role", "pg_schema", "pg_url"]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/j.db"
    return str(request.getfixturevalue("pg_url"))


async def fill(journal: Journal, n: int) -> list[str]:
    """``n`` flows, two by two created at the same second (ties are broken by flow id);
    every third one ends SUCCESS and is named "odd"; returns their ids, newest first."""
    ids = []
    for i in range(n):
        flow_id = f"flow-{i:03d}"
        name = "odd" if i % 3 == 0 else "even"
        journal.append(flow_start(flow_id, name=name, at=1000.0 + i // 2))
        if i % 3 == 0:
            journal.append(flow_status(flow_id, 2, FlowStatus.SUCCESS))
        ids.append(flow_id)
    await journal.flush()
    return sorted(ids, key=lambda f: (1000.0 + int(f[5:]) // 2, f), reverse=True)


async def every_page(journal: Journal, limit: int, **filters: object) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    while True:
        found, cursor = await journal.list_flows(limit=limit, before=cursor, **filters)  # type: ignore[arg-type]
        pages.append([s.flow_id for s in found])
        if cursor is None:
            return pages


async def test_pages_walk_every_flow_newest_first_without_repeats(url: str) -> None:
    async with open_journal(url) as journal:
        newest = await fill(journal, 23)
        pages = await every_page(journal, 5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [f for p in pages for f in p] == newest


async def test_a_page_that_ends_exactly_at_the_last_flow_has_no_next(url: str) -> None:
    async with open_journal(url) as journal:
        newest = await fill(journal, 10)
        found, cursor = await journal.list_flows(limit=10)
    assert [s.flow_id for s in found] == newest and cursor is None


async def test_filters_by_status_and_name_page_too(url: str) -> None:
    async with open_journal(url) as journal:
        newest = await fill(journal, 23)
        by_status = await every_page(journal, 3, status=FlowStatus.SUCCESS)
        by_name = await every_page(journal, 4, name="even")
        both = await every_page(journal, 50, status=FlowStatus.RUNNING, name="odd")
        nothing, cursor = await journal.list_flows(name="nobody")
    odd = [f for f in newest if int(f[5:]) % 3 == 0]
    assert [f for p in by_status for f in p] == odd
    assert [f for p in by_name for f in p] == [f for f in newest if f not in odd]
    assert both == [[]]
    assert nothing == [] and cursor is None


async def test_a_summary_in_a_page_is_the_one_summary_gives(url: str) -> None:
    async with open_journal(url) as journal:
        await fill(journal, 4)  # flow-003 is the newest (a tie with flow-002, broken by id)
        found, _ = await journal.list_flows(limit=1)
        assert found == [await journal.summary(found[0].flow_id)]
        assert found[0].name == "odd" and found[0].status is FlowStatus.SUCCESS


async def test_bad_limits_and_cursors_are_refused_by_name(url: str) -> None:
    async with open_journal(url) as journal:
        await fill(journal, 2)
        for limit in (0, -1, 1.5, True):
            with pytest.raises(ValueError, match="limit must be"):
                await journal.list_flows(limit=limit)  # type: ignore[arg-type]
        for cursor in ("", "garbage!", "WzEsMiwzXQ", "WyJhIiwiYiJd", "W05hTiwiYSJd"):
            with pytest.raises(ValueError, match="is not a page cursor"):
                await journal.list_flows(before=cursor)


def test_a_cursor_round_trips_its_key_exactly() -> None:
    summary = FlowSummary("f/é 1", "n", FlowStatus.RUNNING, None, 1733342455.1234567, 0.0, 1)
    assert read_cursor(flow_cursor(summary)) == (1733342455.1234567, "f/é 1")
    assert "=" not in flow_cursor(summary) and "/" not in flow_cursor(summary)


# The index a page is read by ------------------------------------------------------------

FILTERS = [
    (status, name)
    for status in (None, FlowStatus.SUCCESS, FlowStatus.PENDING)
    for name in (None, "odd")
]
"""Every shape of the SQLite list query: no filter, a status (PENDING is two terms), a
name, both."""


def sqlite_plan(path: Path, status: FlowStatus | None, name: str | None, before: str | None) -> str:
    """SQLite's plan for the statement ``list_flows`` runs, one step a line."""
    statement, params = sqlite._list_query(status, name, 5, before)
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("EXPLAIN QUERY PLAN " + statement, params).fetchall()
    return "\n".join(row[-1] for row in rows)


async def test_sqlite_reads_every_page_from_the_created_index_without_sorting(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.db"
    async with open_journal(f"sqlite:///{path}") as journal:
        await fill(journal, 23)
        _, cursor = await journal.list_flows(limit=5)
    assert cursor is not None
    for status, name in FILTERS:
        for before in (None, cursor):
            plan = sqlite_plan(path, status, name, before)
            assert "SCAN f USING INDEX aioflow_flows_created" in plan or (
                "SEARCH f USING INDEX aioflow_flows_created (created<?)" in plan
            ), plan
            assert "TEMP B-TREE" not in plan, plan
    # From the cursor on: a range of the index, not a scan of it from the newest.
    assert "(created<?)" in sqlite_plan(path, None, None, cursor)


async def test_a_sqlite_journal_made_before_the_index_gets_it_when_opened(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.db"
    url = f"sqlite:///{path}"
    async with open_journal(url) as journal:
        newest = await fill(journal, 7)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("DROP INDEX aioflow_flows_created")
    assert "TEMP B-TREE FOR ORDER BY" in sqlite_plan(path, None, None, None)
    # Only read, it lists all the same (by a scan and a sort), and is not changed.
    before = path.read_bytes()
    found, _ = await open_journal(url).list_flows(limit=10)
    assert [s.flow_id for s in found] == newest and path.read_bytes() == before
    async with open_journal(url) as journal:
        found, _ = await journal.list_flows(limit=10)
    assert [s.flow_id for s in found] == newest
    plan = sqlite_plan(path, None, None, None)
    assert "INDEX aioflow_flows_created" in plan and "TEMP B-TREE" not in plan, plan


async def postgres_plan(
    url: str, status: FlowStatus | None, name: str | None, before: str | None
) -> str:
    """PostgreSQL's plan for the statement ``list_flows`` runs, one node a line, with
    sequential scans priced out: a table of a few rows is read whole otherwise, index or
    not, and the question is whether an index serves the order."""
    statement, args = postgres._list_query(status, name, 5, before)
    conn = await asyncpg.connect(dsn_from_url(url))
    try:
        await conn.execute("SET enable_seqscan = off")
        rows = await conn.fetch("EXPLAIN " + statement, *args)
    finally:
        await conn.close()
    return "\n".join(row[0].strip() for row in rows)


async def test_postgres_reads_the_newest_pages_from_the_created_index_without_sorting(
    pg_url: str,
) -> None:
    async with open_journal(pg_url) as journal:
        await fill(journal, 23)
        _, cursor = await journal.list_flows(limit=5)
    assert cursor is not None
    # (With a filter the planner weighs how many rows match, which a table this small
    # does not tell: it may sort what another scan finds.)
    for before in (None, cursor):
        plan = await postgres_plan(pg_url, None, None, before)
        assert "Index Scan Backward using aioflow_flows_created" in plan, plan
        assert not any(line.startswith("Sort") for line in plan.splitlines()), plan
    # The cursor is a condition of the index scan, not a filter of what it reads.
    plan = await postgres_plan(pg_url, None, None, cursor)
    assert "Index Cond: (ROW(created, flow_id) < ROW(" in plan, plan


async def postgres_has_the_index(url: str) -> bool:
    rows = await sql(
        url,
        "SELECT 1 FROM pg_catalog.pg_indexes WHERE schemaname = current_schema()"
        " AND indexname = 'aioflow_flows_created'",
    )
    return bool(rows)


async def test_a_postgres_journal_made_before_the_index_gets_it_when_opened(
    pg_url: str,
) -> None:
    async with open_journal(pg_url) as journal:
        newest = await fill(journal, 7)
    await sql(pg_url, "DROP INDEX aioflow_flows_created")
    assert not await postgres_has_the_index(pg_url)
    async with open_journal(pg_url) as journal:
        found, _ = await journal.list_flows(limit=10)
    assert [s.flow_id for s in found] == newest
    assert await postgres_has_the_index(pg_url)


async def test_a_role_that_may_not_create_the_index_opens_and_lists_all_the_same(
    pg_schema: str, pg_url: str, dml_role: str
) -> None:
    async with open_journal(pg_url) as journal:
        newest = await fill(journal, 7)
    await sql(pg_url, "DROP INDEX aioflow_flows_created")  # as a journal made before it
    for what in ("TABLES", "SEQUENCES"):
        await sql(pg_url, f"GRANT ALL ON ALL {what} IN SCHEMA {pg_schema} TO {dml_role}")
    url = as_role(pg_url, dml_role, "dml")
    try:
        await sql(url, "SELECT 1")
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"cannot log in as a new role on this server: {exc}")

    with capture_logs() as logs:
        async with open_journal(url) as journal:
            pages = await every_page(journal, 3)
    assert [f for p in pages for f in p] == newest
    refused = [log for log in logs if log["event"] == "aioflow.journal_without_flows_index"]
    assert len(refused) == 1 and refused[0]["log_level"] == "warning"
    assert "aioflow_flows" in refused[0]["error"]
    assert not await postgres_has_the_index(pg_url)
    # Once a role that may has opened it, the index is there for everyone.
    async with open_journal(pg_url):
        pass
    assert await postgres_has_the_index(pg_url)
