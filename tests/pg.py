"""A real PostgreSQL for tests: one fresh schema per test, dropped afterwards.

The server is ``AIOFLOW_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``). When it cannot be reached the tests that
need it are skipped with the reason, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

DSN = os.environ.get("AIOFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

T = TypeVar("T")
_reachable: str | None = None  # "" once reached, else why not


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end on a fresh event loop in a thread (usable from any test)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


async def _execute(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def require_postgres() -> None:
    """Skip (or, under CI=true, fail) the calling test when PostgreSQL is unreachable."""
    global _reachable
    if _reachable is None:
        try:
            run_sync(_execute("SELECT 1"))
            _reachable = ""
        except Exception as exc:
            _reachable = f"PostgreSQL at {DSN} is unreachable ({exc}); set AIOFLOW_TEST_POSTGRES"
    if _reachable:
        if os.environ.get("CI") == "true":
            pytest.fail(_reachable)
        pytest.skip(_reachable)


def url_in(schema: str) -> str:
    """The test server's URL with ``schema`` as the search path."""
    return DSN + ("&" if "?" in DSN else "?") + "search_path=" + schema


def new_schema() -> str:
    """Create a schema with a unique name and return the name."""
    schema = "aioflow_t_" + uuid.uuid4().hex[:16]
    run_sync(_execute(f"CREATE SCHEMA {schema}"))
    return schema


def drop_schema(schema: str) -> None:
    run_sync(_execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema on the test server (skips when PostgreSQL is unreachable)."""
    require_postgres()
    schema = new_schema()
    try:
        yield schema
    finally:
        drop_schema(schema)


@pytest.fixture
def pg_url(pg_schema: str) -> str:
    """A ``postgresql://`` URL whose tables land in a fresh schema of their own."""
    return url_in(pg_schema)


@pytest.fixture(params=["sqlite", "postgres"])
def sqlite_or_pg_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file, then a fresh schema on the test PostgreSQL server: one database
    for whatever the test opens on it (a journal, a board, both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("pg_url"))
