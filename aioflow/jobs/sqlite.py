"""A jobboard in a SQLite file: several processes on one machine.

Every call opens its own connection (jobs are few and coarse next to a journal's
events), so a board needs no closing and is safe to share between tasks. Claims run in a
``BEGIN IMMEDIATE`` transaction: the file's write lock makes them one at a time across
processes. Conductors poll; there is no wake-up across processes.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aiosqlite
import anyio

from .._errors import JournalError, NotFoundError
from .._failure import Failure
from .._instruments import capture
from .._states import FlowStatus
from ..journal import Journal, SqliteJournal
from ..journal.sqlite import immediate, path_from_url, set_wal
from ._board import (
    COLUMNS,
    Job,
    JobBoard,
    JobState,
    available_from,
    check_claim_count,
    check_post,
    claimed_in_order,
    encode_failures,
    job_from_row,
)
from ._schedule import SCHEDULE_COLUMNS, Schedule, schedule_from_row

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["SCHEMA_VERSION", "SqliteJobBoard"]

SCHEMA_VERSION = 1
"""The jobboard schema version (``schema_version`` in ``aioflow_jobboard``)."""

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS aioflow_jobboard(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS aioflow_jobs(id TEXT PRIMARY KEY, name TEXT, flow TEXT NOT NULL,"
    " inputs TEXT NOT NULL, priority INTEGER NOT NULL, idempotency_key TEXT UNIQUE,"
    " state TEXT NOT NULL, owner TEXT, generation INTEGER NOT NULL, attempts INTEGER NOT NULL,"
    " available_at REAL NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, status TEXT,"
    " failures TEXT)",
    "CREATE INDEX IF NOT EXISTS aioflow_jobs_claim"
    " ON aioflow_jobs(state, available_at, priority DESC, created)",
)

# Schedules came after version 1 and need no version of their own: the table is made
# when a board opens, whatever its version (an older aioflow ignores it).
_SCHEDULES = (
    "CREATE TABLE IF NOT EXISTS aioflow_job_schedules(name TEXT PRIMARY KEY, flow TEXT NOT NULL,"
    " cron TEXT, every REAL, inputs TEXT NOT NULL, timezone TEXT NOT NULL, catchup TEXT NOT NULL,"
    " next_run REAL NOT NULL, last_tick REAL, updated REAL NOT NULL)"
)

# Trace context of jobs posted inside a span (see aioflow.instrument), likewise.
_TRACES = (
    "CREATE TABLE IF NOT EXISTS aioflow_job_traces(id TEXT PRIMARY KEY, carrier TEXT NOT NULL)"
)

# Up to ?4 jobs in one statement (inside the caller's BEGIN IMMEDIATE), with the rowid
# that orders jobs of equal priority and age: RETURNING comes in no particular order.
_CLAIM = f"""
UPDATE aioflow_jobs SET state = 'CLAIMED', owner = ?1, generation = generation + 1,
    attempts = attempts + 1, available_at = ?2 + ?3, updated = ?2
WHERE id IN (SELECT id FROM aioflow_jobs
             WHERE state IN ('UNCLAIMED', 'CLAIMED') AND available_at <= ?2
             ORDER BY priority DESC, created, rowid LIMIT ?4)
RETURNING {COLUMNS}, rowid
"""
_HELD = " WHERE id = ? AND generation = ? AND state = 'CLAIMED'"
_MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
"""The most values one statement may take (SQLite's limit)."""


class SqliteJobBoard(JobBoard):
    """A :class:`JobBoard` in a SQLite file (``sqlite:///path.db``), WAL mode.

    Put the journal in the same file for fenced writes (:meth:`shares_database`).
    """

    def __init__(self, url: str, *, busy_timeout: float = 30.0, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.path = path_from_url(url)
        self._uri = Path(self.path).absolute().as_uri()
        self._busy_timeout = busy_timeout
        self._ready = False

    def __repr__(self) -> str:
        return f"SqliteJobBoard({self.url!r})"

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[aiosqlite.Connection]:
        try:
            db = await aiosqlite.connect(
                self._uri + "?mode=rwc", uri=True, isolation_level=None, timeout=self._busy_timeout
            )
        except sqlite3.Error as exc:
            raise JournalError(f"jobboard {self.url}: cannot open: {exc}") from exc
        try:
            if not self._ready:
                await self._ensure_schema(db)
                self._ready = True
            yield db
        except sqlite3.Error as exc:
            raise JournalError(f"jobboard {self.url}: {exc}") from exc
        finally:
            with anyio.CancelScope(shield=True):
                await db.close()

    async def _ensure_schema(self, db: aiosqlite.Connection) -> None:
        await set_wal(db)
        await db.execute("BEGIN IMMEDIATE")
        try:
            found = await db.execute_fetchall(
                "SELECT name FROM sqlite_master WHERE name = 'aioflow_jobboard'"
            )
            if found:
                rows = list(
                    await db.execute_fetchall(
                        "SELECT value FROM aioflow_jobboard WHERE key = 'schema_version'"
                    )
                )
                version = rows[0][0] if rows else None
                if version != str(SCHEMA_VERSION):
                    raise JournalError(
                        f"{self.path} holds an aioflow jobboard with schema version {version};"
                        f" this version of aioflow reads version {SCHEMA_VERSION} and does not"
                        " migrate jobboards"
                    )
            else:
                for statement in _SCHEMA:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO aioflow_jobboard VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            await db.execute(_SCHEDULES)
            await db.execute(_TRACES)
            await db.execute("COMMIT")
        except BaseException:
            with anyio.CancelScope(shield=True):
                if db.in_transaction:
                    await db.execute("ROLLBACK")
            raise

    async def _one(self, sql: str, params: tuple[Any, ...]) -> Job | None:
        async with self._connect() as db:
            rows = list(await db.execute_fetchall(sql, params))
        return job_from_row(rows[0], self.codec) if rows else None

    async def _update(self, sql: str, params: tuple[Any, ...]) -> bool:
        async with self._connect() as db:
            cursor = await db.execute(sql, params)
            return cursor.rowcount == 1

    async def post(
        self,
        flow: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        priority: int = 0,
        idempotency_key: str | None = None,
        delay: float | None = None,
        run_at: datetime | None = None,
    ) -> Job:
        text = self.codec.encode(check_post(flow, inputs, priority))
        now = self._now()
        available = available_from(now, delay, run_at)
        job_id = uuid.uuid4().hex
        trace = capture()
        async with self._connect() as db:
            cursor = await db.execute(
                "INSERT INTO aioflow_jobs(id, name, flow, inputs, priority, idempotency_key,"
                " state, generation, attempts, available_at, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, 'UNCLAIMED', 0, 0, ?, ?, ?)"
                " ON CONFLICT(idempotency_key) DO NOTHING",
                (job_id, name, flow, text, priority, idempotency_key, available, now, now),
            )
            if trace and cursor.rowcount == 1:
                await db.execute(
                    "INSERT INTO aioflow_job_traces VALUES (?, ?)", (job_id, json.dumps(trace))
                )
            if idempotency_key is None:
                where, key = "id = ?", job_id
            else:
                where, key = "idempotency_key = ?", idempotency_key
            rows = list(
                await db.execute_fetchall(
                    f"SELECT {COLUMNS} FROM aioflow_jobs WHERE {where}", (key,)
                )
            )
        return job_from_row(rows[0], self.codec)

    async def trace_of(self, job_id: str) -> dict[str, str]:
        async with self._connect() as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT carrier FROM aioflow_job_traces WHERE id = ?", (job_id,)
                )
            )
        return dict(json.loads(rows[0][0])) if rows else {}

    async def get(self, job_id: str) -> Job:
        job = await self._one(f"SELECT {COLUMNS} FROM aioflow_jobs WHERE id = ?", (job_id,))
        if job is None:
            raise NotFoundError(f"no job {job_id} on {self.url}")
        return job

    async def jobs(self, state: JobState | None = None) -> list[Job]:
        sql = f"SELECT {COLUMNS} FROM aioflow_jobs"
        params: tuple[Any, ...] = ()
        if state is not None:
            sql, params = sql + " WHERE state = ?", (state.value,)
        async with self._connect() as db:
            rows = await db.execute_fetchall(sql + " ORDER BY created, rowid", params)
        return [job_from_row(row, self.codec) for row in rows]

    async def trash(self, job_id: str) -> None:
        if not await self._update("DELETE FROM aioflow_jobs WHERE id = ?", (job_id,)):
            raise NotFoundError(f"no job {job_id} on {self.url}")
        await self._update("DELETE FROM aioflow_job_traces WHERE id = ?", (job_id,))

    async def _purge_batch(
        self, states: frozenset[JobState], cut: float, after: str | None, limit: int
    ) -> tuple[int, str | None]:
        values = sorted(state.value for state in states)
        where = "state IN (" + ", ".join("?" * len(values)) + ") AND updated < ?"
        limit = min(limit, _MAX_VARIABLES - len(values) - 2)
        async with self._connect() as db:
            # The candidates are read holding no lock (WAL); the write transaction checks
            # each again, so the write lock is held for the deletes only.
            rows = await db.execute_fetchall(
                f"SELECT id FROM aioflow_jobs WHERE id > ? AND {where} ORDER BY id LIMIT ?",
                (after or "", *values, cut, limit),
            )
            ids = [job_id for (job_id,) in rows]
            if not ids:
                return 0, None
            in_ids = "id IN (" + ", ".join("?" * len(ids)) + ")"

            async def remove(db: aiosqlite.Connection) -> int:
                cursor = await db.execute(
                    f"DELETE FROM aioflow_jobs WHERE {in_ids} AND {where}", (*ids, *values, cut)
                )
                await db.execute(
                    f"DELETE FROM aioflow_job_traces WHERE {in_ids} AND NOT EXISTS"
                    " (SELECT 1 FROM aioflow_jobs j WHERE j.id = aioflow_job_traces.id)",
                    ids,
                )
                return int(cursor.rowcount)

            removed: int = await immediate(db, remove)
        return removed, (ids[-1] if len(ids) == limit else None)

    async def _count_purgeable(self, states: frozenset[JobState], cut: float) -> int:
        values = sorted(state.value for state in states)
        marks = ", ".join("?" * len(values))
        async with self._connect() as db:
            rows = list(
                await db.execute_fetchall(
                    f"SELECT count(*) FROM aioflow_jobs WHERE state IN ({marks}) AND updated < ?",
                    (*values, cut),
                )
            )
        return int(rows[0][0])

    async def claim(self, owner: str, lease: float) -> Job | None:
        jobs = await self.claim_many(owner, lease, 1)
        return jobs[0] if jobs else None

    async def claim_many(self, owner: str, lease: float, n: int) -> list[Job]:
        check_claim_count(n)

        async def claim(db: aiosqlite.Connection) -> list[Any]:
            return list(await db.execute_fetchall(_CLAIM, (owner, self._now(), lease, n)))

        async with self._connect() as db:
            rows = await immediate(db, claim)
        return claimed_in_order(rows, self.codec)

    async def renew(self, job: Job, lease: float) -> bool:
        now = self._now()
        return await self._update(
            "UPDATE aioflow_jobs SET available_at = ?, updated = ?" + _HELD,
            (now + lease, now, job.id, job.generation),
        )

    async def renew_many(self, jobs: Sequence[Job], lease: float) -> set[str]:
        if not jobs:
            return set()
        now = self._now()

        async def renew(db: aiosqlite.Connection) -> set[str]:
            renewed: set[str] = set()
            for job in jobs:
                cursor = await db.execute(
                    "UPDATE aioflow_jobs SET available_at = ?, updated = ?" + _HELD,
                    (now + lease, now, job.id, job.generation),
                )
                if cursor.rowcount == 1:
                    renewed.add(job.id)
            return renewed

        async with self._connect() as db:
            return cast("set[str]", await immediate(db, renew))

    async def release(self, job: Job, delay: float = 0.0) -> bool:
        now = self._now()
        return await self._update(
            "UPDATE aioflow_jobs SET state = 'UNCLAIMED', owner = NULL,"
            " generation = generation + 1, attempts = max(attempts - 1, 0), available_at = ?,"
            " updated = ?" + _HELD,
            (now + max(delay, 0.0), now, job.id, job.generation),
        )

    async def finish(
        self,
        job: Job,
        state: JobState,
        status: FlowStatus | None,
        failures: Mapping[str, Failure] | None = None,
    ) -> bool:
        if not state.is_final:
            raise ValueError(f"a job finishes COMPLETE or FAILED, not {state.value}")
        return await self._update(
            "UPDATE aioflow_jobs SET state = ?, status = ?, failures = ?, updated = ?" + _HELD,
            (
                state.value,
                None if status is None else status.value,
                encode_failures(failures or {}, self.codec),
                self._now(),
                job.id,
                job.generation,
            ),
        )

    async def park(self, job: Job) -> bool:
        return await self._update(
            "UPDATE aioflow_jobs SET state = 'WAITING', owner = NULL,"
            " generation = generation + 1, updated = ?" + _HELD,
            (self._now(), job.id, job.generation),
        )

    async def unpark(self, job_id: str) -> bool:
        now = self._now()
        return await self._update(
            "UPDATE aioflow_jobs SET state = 'UNCLAIMED', available_at = ?, updated = ?"
            " WHERE id = ? AND state = 'WAITING'",
            (now, now, job_id),
        )

    async def _requeue(self, job: Job) -> bool:
        now = self._now()
        return await self._update(
            "UPDATE aioflow_jobs SET state = 'UNCLAIMED', owner = NULL,"
            " generation = generation + 1, attempts = 0, status = NULL, failures = NULL,"
            " available_at = ?, updated = ?"
            " WHERE id = ? AND generation = ? AND state = 'FAILED' AND status IS NULL",
            (now, now, job.id, job.generation),
        )

    async def _repost(self, job: Job) -> Job | None:
        now = self._now()
        new_id = uuid.uuid4().hex
        async def repost(db: aiosqlite.Connection) -> list[Any]:
            cursor = await db.execute(
                "UPDATE aioflow_jobs SET generation = generation + 1"
                " WHERE id = ? AND generation = ? AND state = 'FAILED'",
                (job.id, job.generation),
            )
            if cursor.rowcount != 1:
                return []
            return list(
                await db.execute_fetchall(
                    "INSERT INTO aioflow_jobs(id, name, flow, inputs, priority,"
                    " idempotency_key, state, generation, attempts, available_at,"
                    " created, updated) SELECT ?, name, flow, inputs, priority, NULL,"
                    " 'UNCLAIMED', 0, 0, ?, ?, ? FROM aioflow_jobs WHERE id = ?"
                    f" RETURNING {COLUMNS}",
                    (new_id, now, now, now, job.id),
                )
            )

        async with self._connect() as db:
            rows = await immediate(db, repost)
        return job_from_row(rows[0], self.codec) if rows else None

    async def _cancel_unstarted(self, job: Job, failures: Mapping[str, Failure]) -> bool:
        now = self._now()
        return await self._update(
            "UPDATE aioflow_jobs SET state = 'FAILED', owner = NULL,"
            " generation = generation + 1, status = NULL, failures = ?, updated = ?"
            " WHERE id = ? AND generation = ?"
            " AND (state = 'UNCLAIMED' OR (state = 'CLAIMED' AND available_at <= ?))",
            (encode_failures(failures, self.codec), now, job.id, job.generation, now),
        )

    def _table_in(self, journal: Journal) -> bool:
        return self.shares_database(journal)

    def shares_database(self, journal: Journal) -> bool:
        if not isinstance(journal, SqliteJournal):
            return False
        return Path(journal.path).resolve() == Path(self.path).resolve()

    async def _load_schedules(self) -> list[Schedule]:
        async with self._connect() as db:
            rows = await db.execute_fetchall(
                f"SELECT {SCHEDULE_COLUMNS} FROM aioflow_job_schedules ORDER BY name"
            )
        return [schedule_from_row(row, self.codec.decode) for row in rows]

    async def _save_schedule(self, schedule: Schedule, inputs: str, now: float) -> None:
        s = schedule
        async with self._connect() as db:
            await db.execute(
                f"INSERT INTO aioflow_job_schedules({SCHEDULE_COLUMNS}, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET"
                " flow = excluded.flow, cron = excluded.cron, every = excluded.every,"
                " inputs = excluded.inputs, timezone = excluded.timezone,"
                " catchup = excluded.catchup, next_run = excluded.next_run,"
                " updated = excluded.updated",
                (s.name, s.flow, s.cron, s.every, inputs, s.timezone, s.catchup, s.next_run,
                 s.last_tick, now),
            )

    async def _drop_schedule(self, name: str) -> bool:
        return await self._update("DELETE FROM aioflow_job_schedules WHERE name = ?", (name,))

    async def _move_schedule(
        self, name: str, old: float, new: float, tick: float | None, now: float
    ) -> bool:
        return await self._update(
            "UPDATE aioflow_job_schedules SET next_run = ?, last_tick = coalesce(?, last_tick),"
            " updated = ? WHERE name = ? AND next_run = ?",
            (new, tick, now, name, old),
        )
