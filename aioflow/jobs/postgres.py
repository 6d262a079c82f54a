"""A jobboard in PostgreSQL: conductors on many machines.

A claim is one statement: ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)``,
so concurrent conductors never wait on each other's candidate rows. Posts and give-backs
send ``NOTIFY aioflow_jobs``; a conductor waiting for work ``LISTEN``s on it and still
looks every ``poll`` seconds (a lease that runs out sends no notification).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg

from .._errors import JournalError, NotFoundError
from .._failure import Failure
from .._instruments import capture
from .._states import FlowStatus
from ..journal import Journal
from ..journal.postgres import PostgresJournal, _redact, create_pool, dsn_from_url
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

__all__ = ["SCHEMA_VERSION", "PostgresJobBoard"]

SCHEMA_VERSION = 1
"""The jobboard schema version (``schema_version`` in ``aioflow_jobboard``)."""

CHANNEL = "aioflow_jobs"
"""The NOTIFY channel of posts and give-backs."""

# Schedules came after version 1 and need no version of their own: the table is made
# when a board opens, whatever its version (an older aioflow ignores it).
_SCHEDULES = (
    "CREATE TABLE IF NOT EXISTS aioflow_job_schedules(name TEXT PRIMARY KEY, flow TEXT NOT NULL,"
    " cron TEXT, every DOUBLE PRECISION, inputs TEXT NOT NULL, timezone TEXT NOT NULL,"
    " catchup TEXT NOT NULL, next_run DOUBLE PRECISION NOT NULL, last_tick DOUBLE PRECISION,"
    " updated DOUBLE PRECISION NOT NULL)"
)
# Trace context of jobs posted inside a span (see aioflow.instrument), likewise.
_TRACES = (
    "CREATE TABLE IF NOT EXISTS aioflow_job_traces(id TEXT PRIMARY KEY, carrier TEXT NOT NULL)"
)
_SCHEMA = (
    "CREATE TABLE aioflow_jobboard(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE aioflow_jobs(id TEXT PRIMARY KEY, name TEXT, flow TEXT NOT NULL,"
    " inputs TEXT NOT NULL, priority INTEGER NOT NULL, idempotency_key TEXT UNIQUE,"
    " state TEXT NOT NULL, owner TEXT, generation BIGINT NOT NULL, attempts INTEGER NOT NULL,"
    " available_at DOUBLE PRECISION NOT NULL, created DOUBLE PRECISION NOT NULL,"
    " updated DOUBLE PRECISION NOT NULL, status TEXT, failures TEXT, ord BIGSERIAL)",
    "CREATE INDEX aioflow_jobs_claim ON aioflow_jobs(priority DESC, created, ord)"
    " WHERE state IN ('UNCLAIMED', 'CLAIMED')",
)

_CLAIM = f"""
UPDATE aioflow_jobs SET state = 'CLAIMED', owner = $1, generation = generation + 1,
    attempts = attempts + 1, available_at = $2 + $3, updated = $2
FROM (SELECT id AS claimed FROM aioflow_jobs
      WHERE state IN ('UNCLAIMED', 'CLAIMED') AND available_at <= $2
      ORDER BY priority DESC, created, ord LIMIT 1 FOR UPDATE SKIP LOCKED) AS best
WHERE id = best.claimed
RETURNING {COLUMNS}
"""
# Up to $4 jobs in one statement. The ids are chosen by an ARRAY subquery, which runs
# once (an InitPlan), so a join can never run the locking LIMIT twice; ord orders jobs of
# equal priority and age, as RETURNING comes in no particular order.
_CLAIM_MANY = f"""
UPDATE aioflow_jobs SET state = 'CLAIMED', owner = $1, generation = generation + 1,
    attempts = attempts + 1, available_at = $2 + $3, updated = $2
WHERE id = ANY(ARRAY(SELECT id FROM aioflow_jobs
                     WHERE state IN ('UNCLAIMED', 'CLAIMED') AND available_at <= $2
                     ORDER BY priority DESC, created, ord LIMIT $4 FOR UPDATE SKIP LOCKED))
RETURNING {COLUMNS}, ord
"""
_HELD = " WHERE id = $1 AND generation = $2 AND state = 'CLAIMED'"
# Every claim of a conductor renewed at once ($3 ids, $4 their generations); the ids
# renewed come back (a stale claim matches no row).
_RENEW_MANY = """
UPDATE aioflow_jobs j SET available_at = $1, updated = $2
FROM unnest($3::text[], $4::bigint[]) AS h(id, generation)
WHERE j.id = h.id AND j.generation = h.generation AND j.state = 'CLAIMED'
RETURNING j.id
"""
# One batch of a purge, one statement: it locks the next $3 finished jobs by id after $4
# (the primary key's order: no index of its own on the claim path's tables), skipping
# rows another transaction holds, and deletes them with their trace context; it returns
# how many it removed and the last id, in the database's order. The lock re-reads a row
# changed since the statement began and drops it if it no longer qualifies (a job
# retried meanwhile is kept).
_PURGE = """
WITH doomed AS (
    SELECT id FROM aioflow_jobs
    WHERE id > $4 AND state = ANY($1::text[]) AND updated < $2
    ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED
), traces AS (
    DELETE FROM aioflow_job_traces WHERE id IN (SELECT id FROM doomed)
), gone AS (
    DELETE FROM aioflow_jobs WHERE id IN (SELECT id FROM doomed) RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT max(id) FROM doomed)
"""
_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


class PostgresJobBoard(JobBoard):
    """A :class:`JobBoard` in PostgreSQL (``postgresql://...``; ``?search_path=`` picks
    the schema). Put the journal in the same database and schema for fenced writes."""

    def __init__(self, url: str, *, pool_size: int = 4, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._dsn = dsn_from_url(url)
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._opening = anyio.Lock()
        self._listener: Any = None
        self._wake = anyio.Event()

    def __repr__(self) -> str:
        return f"PostgresJobBoard({_redact(self.url)!r})"

    async def _get_pool(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is None:
                try:
                    pool = await create_pool(self._dsn, self._pool_size)
                    try:
                        async with pool.acquire() as conn:
                            await self._ensure_schema(conn)
                    except BaseException:
                        with anyio.CancelScope(shield=True):
                            await pool.close()
                        raise
                except _ERRORS as exc:
                    raise JournalError(f"jobboard {_redact(self.url)}: cannot open: {exc}") from exc
                self._pool = pool
            return self._pool

    async def _ensure_schema(self, conn: Any) -> None:
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.aioflow_jobboard'))"
            )
            present = await conn.fetchval(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema ="
                " current_schema() AND table_name = 'aioflow_jobboard'"
            )
            if present:
                version = await conn.fetchval(
                    "SELECT value FROM aioflow_jobboard WHERE key = 'schema_version'"
                )
                if version != str(SCHEMA_VERSION):
                    raise JournalError(
                        f"{_redact(self.url)} holds an aioflow jobboard with schema version "
                        f"{version}; this version of aioflow reads version {SCHEMA_VERSION}"
                        " and does not migrate jobboards"
                    )
            else:
                for statement in _SCHEMA:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO aioflow_jobboard VALUES ('schema_version', $1)",
                    str(SCHEMA_VERSION),
                )
            await conn.execute(_SCHEDULES)
            await conn.execute(_TRACES)

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        pool, self._pool = self._pool, None
        with anyio.CancelScope(shield=True):
            if listener is not None:
                await listener.close()
            if pool is not None:
                await pool.close()

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        pool = await self._get_pool()
        try:
            return list(await pool.fetch(sql, *args))
        except _ERRORS as exc:
            raise JournalError(f"jobboard {_redact(self.url)}: {exc}") from exc

    async def _update(self, sql: str, *args: Any) -> bool:
        pool = await self._get_pool()
        try:
            result = await pool.execute(sql, *args)
        except _ERRORS as exc:
            raise JournalError(f"jobboard {_redact(self.url)}: {exc}") from exc
        return str(result).endswith(" 1")

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
        pool = await self._get_pool()
        try:
            async with pool.acquire() as conn:
                inserted = await conn.fetchval(
                    "INSERT INTO aioflow_jobs(id, name, flow, inputs, priority, idempotency_key,"
                    " state, generation, attempts, available_at, created, updated)"
                    " VALUES ($1, $2, $3, $4, $5, $6, 'UNCLAIMED', 0, 0, $8, $7, $7)"
                    " ON CONFLICT(idempotency_key) DO NOTHING RETURNING id",
                    job_id,
                    name,
                    flow,
                    text,
                    priority,
                    idempotency_key,
                    now,
                    available,
                )
                if inserted is not None:
                    if trace:
                        await conn.execute(
                            "INSERT INTO aioflow_job_traces VALUES ($1, $2)",
                            job_id,
                            json.dumps(trace),
                        )
                    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, job_id)
                    where, key = "id = $1", job_id
                else:
                    where, key = "idempotency_key = $1", str(idempotency_key)
                row = await conn.fetchrow(f"SELECT {COLUMNS} FROM aioflow_jobs WHERE {where}", key)
        except _ERRORS as exc:
            raise JournalError(f"jobboard {_redact(self.url)}: cannot post: {exc}") from exc
        return job_from_row(row, self.codec)

    async def trace_of(self, job_id: str) -> dict[str, str]:
        rows = await self._fetch("SELECT carrier FROM aioflow_job_traces WHERE id = $1", job_id)
        return dict(json.loads(rows[0][0])) if rows else {}

    async def get(self, job_id: str) -> Job:
        rows = await self._fetch(f"SELECT {COLUMNS} FROM aioflow_jobs WHERE id = $1", job_id)
        if not rows:
            raise NotFoundError(f"no job {job_id} on {_redact(self.url)}")
        return job_from_row(rows[0], self.codec)

    async def jobs(self, state: JobState | None = None) -> list[Job]:
        if state is None:
            rows = await self._fetch(f"SELECT {COLUMNS} FROM aioflow_jobs ORDER BY created, ord")
        else:
            rows = await self._fetch(
                f"SELECT {COLUMNS} FROM aioflow_jobs WHERE state = $1 ORDER BY created, ord",
                state.value,
            )
        return [job_from_row(row, self.codec) for row in rows]

    async def trash(self, job_id: str) -> None:
        if not await self._update("DELETE FROM aioflow_jobs WHERE id = $1", job_id):
            raise NotFoundError(f"no job {job_id} on {_redact(self.url)}")
        await self._update("DELETE FROM aioflow_job_traces WHERE id = $1", job_id)

    async def _purge_batch(
        self, states: frozenset[JobState], cut: float, after: str | None, limit: int
    ) -> tuple[int, str | None]:
        values = sorted(state.value for state in states)
        rows = await self._fetch(_PURGE, values, cut, limit, after or "")
        removed, last = rows[0]
        return removed, (last if removed == limit else None)

    async def _count_purgeable(self, states: frozenset[JobState], cut: float) -> int:
        rows = await self._fetch(
            "SELECT count(*) FROM aioflow_jobs WHERE state = ANY($1::text[]) AND updated < $2",
            sorted(state.value for state in states),
            cut,
        )
        return int(rows[0][0])

    async def claim(self, owner: str, lease: float) -> Job | None:
        rows = await self._fetch(_CLAIM, owner, self._now(), float(lease))
        return job_from_row(rows[0], self.codec) if rows else None

    async def claim_many(self, owner: str, lease: float, n: int) -> list[Job]:
        check_claim_count(n)
        rows = await self._fetch(_CLAIM_MANY, owner, self._now(), float(lease), n)
        return claimed_in_order(rows, self.codec)

    async def renew(self, job: Job, lease: float) -> bool:
        return await self._update(
            "UPDATE aioflow_jobs SET available_at = $3, updated = $4" + _HELD,
            job.id,
            job.generation,
            self._now() + lease,
            self._now(),
        )

    async def renew_many(self, jobs: Sequence[Job], lease: float) -> set[str]:
        if not jobs:
            return set()
        now = self._now()
        ids, generations = [job.id for job in jobs], [job.generation for job in jobs]
        rows = await self._fetch(_RENEW_MANY, now + lease, now, ids, generations)
        return {row[0] for row in rows}

    async def release(self, job: Job, delay: float = 0.0) -> bool:
        now = self._now()
        released = await self._update(
            "WITH n AS (SELECT pg_notify($4, $1))"
            " UPDATE aioflow_jobs SET state = 'UNCLAIMED', owner = NULL,"
            " generation = generation + 1, attempts = GREATEST(attempts - 1, 0),"
            " available_at = $5, updated = $3 FROM n" + _HELD,
            job.id,
            job.generation,
            now,
            CHANNEL,
            now + max(delay, 0.0),
        )
        return released

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
            "UPDATE aioflow_jobs SET state = $3, status = $4, failures = $5, updated = $6" + _HELD,
            job.id,
            job.generation,
            state.value,
            None if status is None else status.value,
            encode_failures(failures or {}, self.codec),
            self._now(),
        )

    async def park(self, job: Job) -> bool:
        return await self._update(
            "UPDATE aioflow_jobs SET state = 'WAITING', owner = NULL,"
            " generation = generation + 1, updated = $3" + _HELD,
            job.id,
            job.generation,
            self._now(),
        )

    async def unpark(self, job_id: str) -> bool:
        woken = await self._update(
            "UPDATE aioflow_jobs SET state = 'UNCLAIMED', available_at = $2, updated = $2"
            " WHERE id = $1 AND state = 'WAITING'",
            job_id,
            self._now(),
        )
        if woken:
            await self._fetch("SELECT pg_notify($1, $2)", CHANNEL, job_id)
        return woken

    async def _requeue(self, job: Job) -> bool:
        requeued = await self._update(
            "UPDATE aioflow_jobs SET state = 'UNCLAIMED', owner = NULL,"
            " generation = generation + 1, attempts = 0, status = NULL, failures = NULL,"
            " available_at = $3, updated = $3"
            " WHERE id = $1 AND generation = $2 AND state = 'FAILED' AND status IS NULL",
            job.id,
            job.generation,
            self._now(),
        )
        if requeued:
            await self._fetch("SELECT pg_notify($1, $2)", CHANNEL, job.id)
        return requeued

    async def _repost(self, job: Job) -> Job | None:
        # One statement: the old job's row lock orders two at once, and the second finds
        # its generation moved, so it inserts nothing.
        rows = await self._fetch(
            "WITH old AS (UPDATE aioflow_jobs SET generation = generation + 1"
            " WHERE id = $1 AND generation = $2 AND state = 'FAILED'"
            " RETURNING name, flow, inputs, priority)"
            " INSERT INTO aioflow_jobs(id, name, flow, inputs, priority, idempotency_key,"
            " state, generation, attempts, available_at, created, updated)"
            " SELECT $3, name, flow, inputs, priority, NULL, 'UNCLAIMED', 0, 0, $4, $4, $4"
            f" FROM old RETURNING {COLUMNS}",
            job.id,
            job.generation,
            uuid.uuid4().hex,
            self._now(),
        )
        if not rows:
            return None
        new = job_from_row(rows[0], self.codec)
        await self._fetch("SELECT pg_notify($1, $2)", CHANNEL, new.id)
        return new

    async def _cancel_unstarted(self, job: Job, failures: Mapping[str, Failure]) -> bool:
        return await self._update(
            "UPDATE aioflow_jobs SET state = 'FAILED', owner = NULL,"
            " generation = generation + 1, status = NULL, failures = $3, updated = $4"
            " WHERE id = $1 AND generation = $2"
            " AND (state = 'UNCLAIMED' OR (state = 'CLAIMED' AND available_at <= $4))",
            job.id,
            job.generation,
            encode_failures(failures, self.codec),
            self._now(),
        )

    def _table_in(self, journal: Journal) -> bool:
        return self.shares_database(journal)

    def shares_database(self, journal: Journal) -> bool:
        return isinstance(journal, PostgresJournal) and dsn_from_url(journal.url) == self._dsn

    def _notified(self, *args: object) -> None:
        self._wake.set()

    def _listener_lost(self, listener: object) -> None:
        """The listening connection closed (a server restart, an idle timeout, an
        operator): posts made since were not heard, so the waiter looks now, and the next
        wait listens on a new connection."""
        if self._listener is listener:
            self._listener = None
        self._wake.set()

    async def wait_for_work(self, seconds: float) -> None:
        listener = self._listener
        if listener is not None and listener.is_closed():
            self._listener = listener = None  # ended before its end was seen: listen anew
        if listener is None:
            try:
                listener = await asyncpg.connect(self._dsn)
                await listener.add_listener(CHANNEL, self._notified)
                listener.add_termination_listener(self._listener_lost)
            except _ERRORS:
                if listener is not None:
                    listener.terminate()
                listener = None  # polling still works; try listening again next time
            self._listener = listener
        with anyio.move_on_after(seconds):
            await self._wake.wait()
        self._wake = anyio.Event()

    async def _load_schedules(self) -> list[Schedule]:
        rows = await self._fetch(
            f"SELECT {SCHEDULE_COLUMNS} FROM aioflow_job_schedules ORDER BY name"
        )
        return [schedule_from_row(tuple(row), self.codec.decode) for row in rows]

    async def _save_schedule(self, schedule: Schedule, inputs: str, now: float) -> None:
        s = schedule
        await self._execute(
            f"INSERT INTO aioflow_job_schedules({SCHEDULE_COLUMNS}, updated)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT(name) DO UPDATE SET"
            " flow = excluded.flow, cron = excluded.cron, every = excluded.every,"
            " inputs = excluded.inputs, timezone = excluded.timezone,"
            " catchup = excluded.catchup, next_run = excluded.next_run,"
            " updated = excluded.updated",
            s.name, s.flow, s.cron, s.every, inputs, s.timezone, s.catchup, s.next_run,
            s.last_tick, now,
        )

    async def _drop_schedule(self, name: str) -> bool:
        done = await self._execute("DELETE FROM aioflow_job_schedules WHERE name = $1", name)
        return done.endswith(" 1")

    async def _move_schedule(
        self, name: str, old: float, new: float, tick: float | None, now: float
    ) -> bool:
        done = await self._execute(
            "UPDATE aioflow_job_schedules SET next_run = $1,"
            " last_tick = coalesce($2, last_tick), updated = $3"
            " WHERE name = $4 AND next_run = $5",
            new, tick, now, name, old,
        )
        return done.endswith(" 1")

    async def _execute(self, sql: str, *args: Any) -> str:
        pool = await self._get_pool()
        try:
            return str(await pool.execute(sql, *args))
        except _ERRORS as exc:
            raise JournalError(f"jobboard {_redact(self.url)}: {exc}") from exc
