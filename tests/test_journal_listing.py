"""Journal.list_flows: pages of flows, newest first, by keyset cursor, on every backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from aioflow import FlowStatus
from aioflow.journal import FlowSummary, Journal, open_journal
from aioflow.journal._base import flow_cursor, read_cursor

from .pg import pg_schema, pg_url
from .test_journal import flow_start, flow_status

__all__ = ["pg_schema", "pg_url"]


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
