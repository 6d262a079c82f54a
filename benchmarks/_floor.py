"""The floor: the same shapes of work in plain asyncio (and anyio), with no engine at all.

Each function times one sample and returns seconds. Creating the coroutines is inside
the timing, as it is for the engine, which makes its coroutines while it runs.
"""

from __future__ import annotations

import asyncio
import time

import anyio


async def _noop() -> None:
    return None


async def _source() -> int:
    return 1


async def _middle(seed: int) -> None:
    return None


async def _nap(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def gather(n: int) -> float:
    """``asyncio.gather`` of ``n`` no-op coroutines (each becomes a task)."""
    t0 = time.perf_counter()
    await asyncio.gather(*[_noop() for _ in range(n)])
    return time.perf_counter() - t0


async def task_group(n: int) -> float:
    """An anyio task group that starts ``n`` no-op tasks (what aioflow runs on)."""
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(_noop)
    return time.perf_counter() - t0


async def chain(n: int) -> float:
    """``n`` no-op coroutines awaited one after another (no task per step)."""
    t0 = time.perf_counter()
    for _ in range(n):
        await _noop()
    return time.perf_counter() - t0


async def diamond(n: int) -> float:
    """A source, ``n`` gathered coroutines that take its value, then a sink."""
    t0 = time.perf_counter()
    seed = await _source()
    await asyncio.gather(*[_middle(seed) for _ in range(n)])
    await _noop()
    return time.perf_counter() - t0


async def sleeps(n: int, seconds: float) -> float:
    """``asyncio.gather`` of ``n`` coroutines that each sleep ``seconds``."""
    t0 = time.perf_counter()
    await asyncio.gather(*[_nap(seconds) for _ in range(n)])
    return time.perf_counter() - t0


async def sqlite_commits(n: int) -> float:
    """``n`` one-row transactions, ``BEGIN; INSERT; COMMIT`` each, on a WAL file with
    ``synchronous=NORMAL``, by plain ``sqlite3`` on this thread: what a strict SQLite
    chain step (one event committed before the next step starts) cannot beat."""
    import os
    import sqlite3
    import tempfile

    with tempfile.TemporaryDirectory(prefix="aioflow-floor-") as tmp:
        conn = sqlite3.connect(os.path.join(tmp, "floor.db"), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE events(flow_id TEXT, seq INTEGER, details TEXT,"
                         " PRIMARY KEY(flow_id, seq))")
            row = '{"result": null}'
            t0 = time.perf_counter()
            for i in range(n):
                conn.execute("BEGIN")
                conn.execute("INSERT INTO events VALUES(?, ?, ?)", ("f", i, row))
                conn.execute("COMMIT")
            return time.perf_counter() - t0
        finally:
            conn.close()


async def postgres_inserts(n: int, url: str, *, transaction: bool = True) -> float:
    """``n`` one-row INSERT transactions by asyncpg on one connection to ``url``: what a
    strict PostgreSQL chain step (its events committed before the next step starts)
    cannot beat. With ``transaction``, each is ``BEGIN; INSERT; COMMIT`` (three round
    trips, the floor issue 20 names); without, a lone INSERT that commits itself (one
    round trip, the strictest floor there is). A real table: a temporary one skips the
    WAL."""
    import asyncpg

    conn = await asyncpg.connect(url)
    table = f"aioflow_floor_{time.monotonic_ns()}"
    try:
        await conn.execute(
            f"CREATE TABLE {table}(flow_id TEXT, seq BIGINT, details TEXT,"
            " PRIMARY KEY(flow_id, seq))"
        )
        insert = await conn.prepare(f"INSERT INTO {table} VALUES($1, $2, $3)")
        row = '{"result": null}'
        t0 = time.perf_counter()
        if transaction:
            for i in range(n):
                async with conn.transaction():
                    await insert.fetch("f", i, row)
        else:
            for i in range(n):
                await insert.fetch("f", i, row)
        return time.perf_counter() - t0
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
