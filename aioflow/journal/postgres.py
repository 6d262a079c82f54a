"""The PostgreSQL journal: many machines, group commit over asyncpg.

The same layout as the SQLite journal (``aioflow_meta``, ``aioflow_events``,
``aioflow_flows``), in the first schema of the connection's ``search_path`` (give
``?search_path=name`` in the URL to pick one). A commit of any size is one statement: the
events go in through ``unnest`` of one array per column, and a data-modifying CTE upserts
the flow summaries, so a batch costs one round trip, fenced flows included: the same
statement locks the summary rows of the flows whose owner must still hold them (their
generation), and writes nothing unless all do (see :data:`_COMMIT`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from time import monotonic
from typing import Any, TypeAlias, cast
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
import anyio.lowlevel
import asyncpg

from .._codec import Codec, get_codec
from .._errors import FlowBusyError, JournalError, NotFoundError
from .._events import Event, EventKind
from .._log import get_logger
from .._states import FlowStatus
from ._base import (
    ACTIVE,
    MAIL_BATCH,
    Fence,
    FlowSummary,
    PurgeKey,
    check_keep,
    check_limit,
    encode_message,
    page,
    plan_compaction,
    read_cursor,
    settle_appends,
    taken_over,
)
from ._writer import EventRow, GroupWriter, WriterJournal, encode_row

__all__ = ["SCHEMA_VERSION", "PostgresJournal", "dsn_from_url"]

_LOG = get_logger("aioflow.journal")

SCHEMA_VERSION = 3
"""The schema version this module reads and writes (``schema_version`` in ``aioflow_meta``).

Version 2 added flow ownership (``owner`` and ``generation`` in ``aioflow_flows``, and the
engines' heartbeats in ``aioflow_owners``). Version 3 drops the summary's ``last_seq``: a
flow's last seq is read from its events, so a commit without a FLOW event rewrites no
summary row. A version 1 or 2 schema is migrated when opened."""

_TABLES = ("aioflow_meta", "aioflow_events", "aioflow_flows")
# The mailbox (see Journal.post_message). No schema version of its own: an older aioflow
# ignores a table it does not know, so opening adds it to a journal of any version, when
# it is missing only (CREATE ... IF NOT EXISTS would need the privilege to create in the
# schema, and CREATE INDEX waits for every open write of the table, even when the index
# exists). A role that may not create it opens the journal all the same, without a
# mailbox: reads find no message, and a post says what is missing.
_MAILBOX = (
    "CREATE TABLE IF NOT EXISTS aioflow_mailbox(id BIGSERIAL PRIMARY KEY,"
    " flow_id TEXT NOT NULL, topic TEXT NOT NULL, key TEXT, message TEXT NOT NULL,"
    " sent DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS aioflow_mailbox_topic ON aioflow_mailbox(flow_id, topic, id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS aioflow_mailbox_key ON aioflow_mailbox(flow_id, key)"
    " WHERE key IS NOT NULL",
)
# A post is one statement (one round trip, its own transaction). It finds the flow and
# takes a lock on the schema's mailbox before the sequence hands out the id, and holds it
# until it commits: ids are then handed out in commit order. A sequence alone gives them
# in the order asked, and a reader that took id 8 would skip an id 7 committed after it.
# All posts of a schema take turns on the lock, for as long as one commit. A key already
# used stores nothing (the unique index decides, whichever process came first); the flow
# column tells an unknown flow from a used key. FOR KEY SHARE holds the flow's row until
# the post commits: a purge (which locks the rows it deletes) either skips the flow or
# has removed it, so no message outlives its flow. Only a delete, a take or a fenced
# commit of the same flow (FOR UPDATE) makes a post wait, never an ordinary commit.
_POST = """
WITH flow AS (
    SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.aioflow_mailbox'))
    FROM aioflow_flows WHERE flow_id = $1 FOR KEY SHARE
), added AS (
    INSERT INTO aioflow_mailbox(flow_id, topic, key, message, sent)
    SELECT $1, $2, $3, $4, $5 FROM flow
    ON CONFLICT DO NOTHING RETURNING id
)
SELECT EXISTS (SELECT 1 FROM flow), (SELECT id FROM added)
"""
_OWNERS = "CREATE TABLE aioflow_owners(owner TEXT PRIMARY KEY, expires DOUBLE PRECISION NOT NULL)"
# The order list_flows pages in, newest first. No schema version of its own, as the
# mailbox: opening adds it to a journal made before it, when it is missing only, and a
# role that may not create it (only the table's owner may) opens the journal all the
# same, listing flows by a scan and a sort.
_FLOWS_CREATED = (
    "CREATE INDEX IF NOT EXISTS aioflow_flows_created ON aioflow_flows(created, flow_id)"
)
_MIGRATE_1_TO_2 = (
    "ALTER TABLE aioflow_flows ADD COLUMN owner TEXT",
    "ALTER TABLE aioflow_flows ADD COLUMN generation BIGINT NOT NULL DEFAULT 0",
    _OWNERS,
    "UPDATE aioflow_meta SET value = '2' WHERE key = 'schema_version'",
)
# Version 2 to 3: the column goes (PostgreSQL only marks it dropped: no row is rewritten).
_MIGRATE_2_TO_3 = (
    "ALTER TABLE aioflow_flows DROP COLUMN last_seq",
    "UPDATE aioflow_meta SET value = '3' WHERE key = 'schema_version'",
)
_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
"""What asyncpg raises when the server, the connection or the statement fails."""
_UNSENT = (asyncpg.InterfaceError, asyncpg.InternalClientError)
"""What asyncpg raises before a statement leaves the client (a closed connection, one in
a state that cannot take it)."""
_SCHEMA = (
    "CREATE TABLE aioflow_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE aioflow_events(flow_id TEXT NOT NULL, seq BIGINT NOT NULL,"
    " time DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL, atom TEXT, state TEXT,"
    " attempt INTEGER NOT NULL, progress DOUBLE PRECISION, details TEXT,"
    " PRIMARY KEY(flow_id, seq))",
    "CREATE TABLE aioflow_flows(flow_id TEXT PRIMARY KEY, name TEXT, status TEXT, ref TEXT,"
    " created DOUBLE PRECISION, updated DOUBLE PRECISION,"
    " ord BIGSERIAL, owner TEXT, generation BIGINT NOT NULL DEFAULT 0)",
    "CREATE INDEX aioflow_flows_status ON aioflow_flows(status)",
    _FLOWS_CREATED,
    _OWNERS,
)


def _fenced_insert(fences: int) -> str:
    """The statement's fence and events, the fenced flows and their generations in
    parameters ``fences`` and ``fences + 1``."""
    return f"""
WITH owned AS (
    SELECT f.flow_id FROM aioflow_flows f
    JOIN unnest(${fences}::text[], ${fences + 1}::bigint[]) AS x(flow_id, generation)
        USING (flow_id)
    WHERE f.generation = x.generation
    FOR UPDATE OF f
), held AS (
    SELECT count(*) = cardinality(${fences}::text[]) AS ok FROM owned
), events AS (
    INSERT INTO aioflow_events
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::float8[], $4::text[], $5::text[],
                         $6::text[], $7::int[], $8::float8[], $9::text[])
    WHERE (SELECT ok FROM held)
)"""


# One statement commits a batch: it locks the summary rows of the fenced flows that hold
# their fence's generation ($19, $20: flows the batch does not create), and only when all
# of them do, inserts the events and upserts the summary of each flow it names or moves
# to another status (no other: a flow's last seq is read from its events). A flow's
# summary row is made by the event that names it (as in SQLite); a flow with no row and
# no naming event in the batch keeps having none. A flow that comes to rest gives up its
# owner. The statement returns whether the fences held; when they did not, it wrote
# nothing and the commit finds which flows to leave out.
_COMMIT = (
    _fenced_insert(19)
    + """, flows AS (
    INSERT INTO aioflow_flows AS f
        (flow_id, name, status, ref, created, updated, owner, generation)
    SELECT u.flow_id, u.name, u.status, u.ref, u.created, u.updated, u.owner, u.generation
    FROM unnest($10::text[], $11::text[], $12::text[], $13::text[], $14::float8[],
                $15::float8[], $16::text[], $17::bigint[])
         AS u(flow_id, name, status, ref, created, updated, owner, generation)
    WHERE (SELECT ok FROM held) AND (u.name IS NOT NULL
           OR EXISTS (SELECT 1 FROM aioflow_flows g WHERE g.flow_id = u.flow_id))
    ON CONFLICT (flow_id) DO UPDATE SET
        status = COALESCE(EXCLUDED.status, f.status),
        updated = COALESCE(EXCLUDED.updated, f.updated),
        owner = CASE WHEN EXCLUDED.status = ANY($18::text[]) THEN NULL ELSE f.owner END
)
SELECT ok FROM held
"""
)
# A batch that changes no summary (events of flows it neither names nor moves to another
# status: most commits of a running flow) goes without the summaries' CTE and its
# parameters ($10, $11: the fences): encoding, planning and running the part that wrote
# nothing was a tenth of a strict step on a local server (benchmarks/README.md).
_COMMIT_EVENTS = _fenced_insert(10) + "\nSELECT ok FROM held\n"
# The commit of a batch that brings a conductor's job's flow to SUCCESS completes the job
# too ($21 ids, $22 the claims' generations, $23 the time), if the claim still holds
# (see Journal._complete_job_on_success); it returns the jobs it completed. A statement
# of its own: only a journal whose database holds a board prepares it.
_COMMIT_COMPLETING = _COMMIT.replace(
    "\nSELECT ok FROM held\n",
    """, jobs AS (
    UPDATE aioflow_jobs j SET state = 'COMPLETE', status = 'SUCCESS', failures = NULL,
        updated = $23
    FROM unnest($21::text[], $22::bigint[]) AS c(id, generation)
    WHERE (SELECT ok FROM held) AND j.id = c.id AND j.generation = c.generation
          AND j.state = 'CLAIMED'
    RETURNING j.id
)
SELECT ok, ARRAY(SELECT id FROM jobs) FROM held
""",
)
_LINGER = 0.002
"""Seconds that rows nobody waits for yet may gather before the writer commits them. A
commit is a round trip and a WAL flush; without the wait a one-task flow took three
(its start, its task's result, its end) where one does."""
_KEEP_FOR = 30.0
"""Seconds the writer keeps its connection without a commit before taking one from the
pool again (a connection idle for long may have been closed by the network meanwhile;
the pool recycles its idle ones)."""
_LINGER_ROWS = 1024
"""Rows that end the linger at once (one commit's parameters stay small)."""
_RESTING = sorted(status.value for status in FlowStatus if status.is_resting)
_ACTIVE_VALUES = frozenset(status.value for status in ACTIVE)

_SELECT_EVENTS = (
    "SELECT seq, time, kind, atom, state, attempt, progress, details FROM aioflow_events"
    " WHERE flow_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
)
_LOAD = (
    "SELECT seq, time, kind, atom, state, attempt, progress, details FROM aioflow_events"
    " WHERE flow_id = $1 ORDER BY seq"
)
"""A whole flow, in one statement: one snapshot (pages could straddle a purge)."""
# What makes a flow purgeable (see Journal.purge): $1 the statuses, $2 the cut. ``created
# < cut`` is implied by ``updated < cut`` (a flow changes after it starts) and lets the
# (created, flow_id) index find the candidates, oldest first.
_PURGEABLE = (
    "status = ANY($1::text[]) AND owner IS NULL AND created < $2::float8 AND updated < $2::float8"
)
# One batch of a purge, one statement: it locks the next $3 purgeable flows by (created,
# flow_id) after ($4, $5), skipping rows another transaction holds (a take, a fenced
# commit, a post), and deletes their events, mailbox ({mail}) and summaries; it returns
# how many it removed and the key of the last one, in the database's order. The lock
# re-reads a row changed since the statement began and drops it if it no longer
# qualifies, so a flow taken meanwhile is kept. One transaction: a reader sees each flow
# whole or not at all.
_PURGE = (
    "WITH doomed AS (SELECT flow_id, created FROM aioflow_flows WHERE "
    + _PURGEABLE
    + " {after} ORDER BY created, flow_id LIMIT $3 FOR UPDATE SKIP LOCKED),"
    " events AS (DELETE FROM aioflow_events WHERE flow_id IN (SELECT flow_id FROM doomed)){mail},"
    " gone AS (DELETE FROM aioflow_flows WHERE flow_id IN (SELECT flow_id FROM doomed)"
    " RETURNING 1),"
    " last AS (SELECT created, flow_id FROM doomed ORDER BY created DESC, flow_id DESC LIMIT 1)"
    " SELECT (SELECT count(*) FROM gone), (SELECT created FROM last),"
    " (SELECT flow_id FROM last)"
)
_PURGE_MAIL = (
    ", mail AS (DELETE FROM aioflow_mailbox WHERE flow_id IN (SELECT flow_id FROM doomed))"
)
_PURGE_AFTER = "AND (created, flow_id) > ($4::float8, $5::text)"
_LAST_SEQ = "coalesce((SELECT max(e.seq) FROM aioflow_events e WHERE e.flow_id = f.flow_id), 0)"
"""A flow's last seq, from its events (one step down their primary key)."""
_LAST_SEQ_OF = "SELECT coalesce(max(seq), 0) FROM aioflow_events WHERE flow_id = $1"
_SELECT_FLOWS = (
    "SELECT f.flow_id, f.name, f.status, f.ref, f.created, f.updated, "
    + _LAST_SEQ
    + ", f.owner, f.generation, o.expires FROM aioflow_flows f"
    " LEFT JOIN aioflow_owners o USING (owner)"
)
_OWNERS_KEPT = 3600.0
"""Seconds an expired heartbeat row is kept before a heartbeat deletes it."""
_PAGE = 1000
_KINDS = {kind.value: kind for kind in EventKind}
_FLOW = EventKind.FLOW

_Row: TypeAlias = EventRow


def dsn_from_url(url: str) -> str:
    """The asyncpg DSN of a ``postgresql://``, ``postgres://`` or ``postgresql+...://`` URL."""
    scheme, sep, rest = url.partition("://")
    base = scheme.lower().split("+", 1)[0]
    if not sep or base not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r} (expected postgresql://user@host/db)")
    return "postgresql://" + rest


def _list_query(
    status: FlowStatus | None, name: str | None, limit: int, before: str | None
) -> tuple[str, list[Any]]:
    """The statement :meth:`PostgresJournal.list_flows` runs and its arguments: it reads
    ``limit + 1`` rows in the order of ``aioflow_flows_created``."""
    where: list[str] = []
    args: list[Any] = []
    if status is FlowStatus.PENDING:
        args.append(status.value)
        where.append(f"(f.status IS NULL OR f.status = ${len(args)})")
    elif status is not None:
        args.append(status.value)
        where.append(f"f.status = ${len(args)}")
    if name is not None:
        args.append(name)
        where.append(f"f.name = ${len(args)}")
    if before is not None:
        # Keyset: a row comparison, which a btree index on (created, flow_id) serves.
        args.extend(read_cursor(before))
        where.append(f"(f.created, f.flow_id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    sql = _SELECT_FLOWS + (" WHERE " + " AND ".join(where) if where else "")
    return sql + f" ORDER BY f.created DESC, f.flow_id DESC LIMIT ${len(args)}", args


async def lean_reset(conn: asyncpg.Connection) -> None:
    """What a pool does to a connection given back, beyond what asyncpg always does (it
    rolls back a transaction a cancelled caller left open, and drops listeners): nothing.
    asyncpg's default reset adds a round trip per release (``RESET ALL``, ``UNLISTEN *``,
    unlocking advisory locks) that aioflow never needs: it sets no session state, its
    advisory locks are transaction scoped, and it listens on a connection of its own.
    That round trip was half of a job's (docs/scaling.md)."""


async def _generic_plans(conn: asyncpg.Connection) -> None:
    await conn.execute("SET plan_cache_mode = force_generic_plan")


async def create_pool(dsn: str, size: int) -> asyncpg.Pool:
    """A pool of up to ``size`` connections for a journal or a board.

    Its connections plan each prepared statement once (``plan_cache_mode =
    force_generic_plan``, set when a connection is made, unless the URL sets
    ``plan_cache_mode`` itself). Left to choose, PostgreSQL kept planning the journal's
    commit statement again at every execution (a custom plan, as the generic one's
    estimate looked dearer): 0.25 ms of a 0.7 ms commit. Every statement aioflow
    prepares looks rows up by key, which a generic plan serves as well."""
    query = parse_qs(urlsplit(dsn).query)
    init = None if "plan_cache_mode" in query else _generic_plans
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=size, reset=lean_reset, init=init)
    assert pool is not None
    return pool


class PostgresJournal(WriterJournal):
    """A :class:`Journal` in a PostgreSQL database shared by any number of machines.

    ``url`` is ``postgresql://user:password@host:port/database``; query parameters other
    than asyncpg's own are server settings, so ``?search_path=myschema`` puts the tables
    in schema ``myschema`` (which must exist). ``pool_size`` bounds the connections.
    """

    _completes_jobs = True

    def __init__(self, url: str, *, codec: Codec | str | None = None, pool_size: int = 4) -> None:
        self.url = url
        self._dsn = dsn_from_url(url)
        self.codec = get_codec(codec)
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._writer: GroupWriter[_Row] | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._fences: dict[str, Fence] = {}
        self._retiring: dict[str, tuple[int, Fence]] = {}
        self._completing: dict[str, tuple[int, Callable[[], float]]] = {}
        self._committer: Any = None  # the connection the writer commits on, kept
        self._committed_at = 0.0  # when it last committed (monotonic)
        self._completed: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"PostgresJournal({_redact(self.url)!r})"

    # ------------------------------------------------------------------ open and close

    async def open(self) -> None:
        if self._pool is not None:
            raise JournalError(f"journal {_redact(self.url)} is already open")
        try:
            pool = await create_pool(self._dsn, self._pool_size)
        except _ERRORS as exc:
            raise self._error("cannot connect", exc) from exc
        try:
            async with pool.acquire() as conn:
                await self._ensure_schema(conn)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await pool.close()
            if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
                raise self._error("cannot open", exc) from exc
            raise
        self._pool = pool
        writer = self._new_writer(
            self._commit,
            name=self.label,
            linger=_LINGER,
            linger_rows=_LINGER_ROWS,
            in_waiter=True,
        )
        await self._start_writer(writer, self._close_pool)

    async def close(self) -> None:
        await self._stop_writer(self._close_pool)

    @property
    def label(self) -> str:
        return _redact(self.url)

    async def _close_pool(self) -> None:
        await self._drop_committer()
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.CancelScope(shield=True):
                await pool.close()

    async def _present(self, conn: Any) -> set[str]:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_name = ANY($1::text[])",
            list(_TABLES),
        )
        return {row[0] for row in rows}

    async def _check_schema(self, conn: Any) -> bool:
        """True if the schema holds a journal of our version, False if it holds none.

        Only reads, so tables that are not ours are never touched.
        """
        if await conn.fetchval("SELECT current_schema()") is None:
            raise JournalError(
                f"{_redact(self.url)}: no schema of the search_path exists; create it first"
            )
        names = await self._present(conn)
        if not names:
            return False
        if "aioflow_meta" not in names:
            raise JournalError(
                f"{_redact(self.url)} has {sorted(names)} but no aioflow_meta table: it is "
                "not an aioflow journal; refusing to touch it"
            )
        version = await conn.fetchval("SELECT value FROM aioflow_meta WHERE key = 'schema_version'")
        if version is None:
            raise JournalError(
                f"{_redact(self.url)} has an aioflow_meta table without a schema_version"
            )
        if version in ("1", "2"):
            await self._migrate(conn)
        elif version != str(SCHEMA_VERSION):
            raise JournalError(
                f"{_redact(self.url)} is an aioflow journal with schema version {version}; "
                f"this version of aioflow reads schema version {SCHEMA_VERSION} (and "
                "migrates versions 1 and 2); a newer aioflow wrote it: upgrade aioflow to open it"
            )
        missing = set(_TABLES) - names
        if missing:
            raise JournalError(
                f"{_redact(self.url)} is a damaged aioflow journal: no {sorted(missing)}"
            )
        return True

    async def _migrate(self, conn: Any) -> None:
        """Bring a version 1 or 2 schema to version 3, once for every process opening it
        at once: 1 to 2 adds flow ownership, 2 to 3 drops the summaries' ``last_seq``."""
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.aioflow_journal'))"
            )
            version = await conn.fetchval(
                "SELECT value FROM aioflow_meta WHERE key = 'schema_version'"
            )
            before = version
            if version == "1":
                for statement in _MIGRATE_1_TO_2:
                    await conn.execute(statement)
                version = "2"
            if version == "2":
                for statement in _MIGRATE_2_TO_3:
                    await conn.execute(statement)
                _LOG.info(
                    "aioflow.journal_migrated",
                    journal=self.label,
                    schema_version=SCHEMA_VERSION,
                    was=int(before),
                )

    async def _ensure_schema(self, conn: Any) -> None:
        async with conn.transaction():
            # Two processes opening an empty database at once: one creates, one checks.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.aioflow_journal'))"
            )
            if not await self._check_schema(conn):
                for statement in _SCHEMA:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO aioflow_meta(key, value) VALUES ('schema_version', $1)",
                    str(SCHEMA_VERSION),
                )
            # pg_tables, not information_schema: it lists a table this role may not use.
            if not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables"
                " WHERE schemaname = current_schema() AND tablename = 'aioflow_mailbox')"
            ):
                await self._create_mailbox(conn)
            if not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_indexes WHERE schemaname ="
                " current_schema() AND indexname = 'aioflow_flows_created')"
            ):
                await self._create_flows_created(conn)

    async def _create_flows_created(self, conn: Any) -> None:
        """Add the index list_flows pages by (see :data:`_FLOWS_CREATED`); without the
        privilege to, log why and go on without it."""
        try:
            async with conn.transaction():  # a savepoint: the open goes on if refused
                await conn.execute(_FLOWS_CREATED)
        except asyncpg.InsufficientPrivilegeError as exc:
            _LOG.warning("aioflow.journal_without_flows_index", journal=self.label, error=str(exc))

    async def _create_mailbox(self, conn: Any) -> None:
        """Add the mailbox's table (see :data:`_MAILBOX`); without the privilege to, log
        why and go on without it."""
        try:
            async with conn.transaction():  # a savepoint: the open goes on if refused
                for statement in _MAILBOX:
                    await conn.execute(statement)
        except asyncpg.InsufficientPrivilegeError as exc:
            _LOG.warning("aioflow.journal_without_mailbox", journal=self.label, error=str(exc))

    def _open_pool(self) -> Any:
        """The open journal's connection pool; JournalError when it is not open."""
        if self._pool is None:
            raise JournalError(f"journal {_redact(self.url)} is not open")
        return self._pool

    def _error(self, doing: str, exc: BaseException) -> JournalError:
        return JournalError(f"journal {_redact(self.url)}: {doing}: {exc}")

    # ------------------------------------------------------------------------- writing

    async def append_after(self, flow_id: str, last_seq: int, events: Sequence[Event]) -> bool:
        pool = self._open_pool()
        fence = self._fences.get(flow_id)
        if fence is not None and fence.lost:
            raise fence.error(flow_id)
        batch = [encode_row(event, self.codec) for event in events]  # a refused value keeps nothing
        if not batch:
            return True
        try:
            async with pool.acquire() as conn, conn.transaction():
                # The summary row's lock orders this against a take of the flow.
                owner = await conn.fetchval(
                    "SELECT owner FROM aioflow_flows WHERE flow_id = $1 FOR UPDATE", flow_id
                )
                if owner is not None:
                    return False  # an engine has taken the flow: it may be about to write it
                found = await conn.fetchval(
                    "SELECT max(seq) FROM aioflow_events WHERE flow_id = $1", flow_id
                )
                if (found or 0) != last_seq:
                    return False
                # Two callers expecting the same last_seq both get here; the primary key
                # lets one insert and refuses the other.
                sql, arguments = self._statement(batch, fenced=False)
                await conn.execute(sql, *arguments)
        except asyncpg.UniqueViolationError:
            return False
        except _ERRORS as exc:
            raise self._error(f"cannot append to flow {flow_id}", exc) from exc
        return True

    def _statement(self, batch: list[_Row], *, fenced: bool = True) -> tuple[str, list[Any]]:
        """The statement that commits ``batch``, and its parameters: its events, the
        summaries it changes (of the flows it names or moves to another status: a commit
        of other events rewrites no summary) and the fences it checks. That is
        :data:`_COMMIT_EVENTS` when no summary changes, else :data:`_COMMIT`."""
        columns: list[Any] = [list(column) for column in zip(*batch, strict=True)][:9]
        fences = self._fences if fenced else {}
        # flow_id -> [name, status, ref, created, updated, owner, generation]
        flows: dict[str, list[Any]] = {}
        for row in batch:
            flow_id, when, kind, state, name = row[0], row[2], row[3], row[5], row[9]
            summary = flows.get(flow_id)
            if summary is None:
                summary = flows[flow_id] = [None, None, None, None, None, None, 0]
            if name is not None and summary[0] is None:
                summary[0], summary[2], summary[3] = name, row[10], when
            if kind == "FLOW":
                summary[1], summary[4] = state, when
        checked: list[str] = []
        generations: list[int] = []
        for flow_id, summary in flows.items():
            fence = fences.get(flow_id)
            if fence is None:
                continue
            if summary[0] is None:  # a flow the batch does not create: check its fence
                checked.append(flow_id)
                generations.append(fence.generation)
            elif summary[1] not in _RESTING:  # a new flow is made with its owner
                summary[5], summary[6] = fence.owner, fence.generation
            else:
                summary[6] = fence.generation
        changed = [
            [flow_id, *summary]
            for flow_id, summary in flows.items()
            if summary[0] is not None or summary[1] is not None  # named, or a FLOW event
        ]
        if not changed:
            return _COMMIT_EVENTS, [*columns, checked, generations]
        columns += [list(column) for column in zip(*changed, strict=True)]
        return _COMMIT, [*columns, _RESTING, checked, generations]

    async def _commit(self, batch: list[_Row]) -> dict[str, BaseException] | None:
        """Commit ``batch`` in one statement (the writer's callback), leaving out the
        flows whose fence no longer holds or whose events conflict."""
        pool = self._pool
        assert pool is not None
        refused: dict[str, BaseException] = {}
        conn = self._kept()
        try:
            if conn is not None:
                try:
                    await self._commit_on(conn, batch, refused)
                except _UNSENT:
                    # It died while kept (the server ended it, say) and the client had
                    # not seen it yet; the statement never left, so it goes on a new one.
                    self._discard()
                    conn = None
                    batch = [row for row in batch if row[0] not in refused]
            if conn is None:
                conn = await pool.acquire()
                if self._pool_size > 1:  # else everything else would wait for it
                    # Kept from one commit to the next (never two at once: one writer).
                    self._committer = conn
                await self._commit_on(conn, batch, refused)
        except _ERRORS as exc:
            await self._drop_committer(conn)
            raise self._error(f"cannot commit {len(batch)} events", exc) from exc
        except BaseException:
            await self._drop_committer(conn)  # its state is unknown: the pool resets it
            raise
        if self._committer is None:
            await self._drop_committer(conn)
        self._committed_at = monotonic()
        return refused or None

    async def _commit_on(
        self, conn: Any, batch: list[_Row], refused: dict[str, BaseException]
    ) -> None:
        """Commit ``batch`` on ``conn``, the flows refused left out and added to
        ``refused``. Nothing is committed until the last statement it sends."""
        while batch:
            try:
                jobs = self._completions(batch)
                sql, arguments = self._statement(batch)
                if jobs:
                    # A job completes with its flow's SUCCESS: a FLOW event, so the
                    # statement is _COMMIT, which this one extends.
                    assert sql is _COMMIT
                    ok, done = await conn.fetchrow(
                        _COMMIT_COMPLETING,
                        *arguments,
                        [job[1] for job in jobs],
                        [job[2] for job in jobs],
                        jobs[0][0],
                    )
                    if ok:
                        self._completed_with(jobs, done)
                        return
                elif await conn.fetchval(sql, *arguments):
                    return
                found = await self._lost(conn, batch)
            except asyncpg.UniqueViolationError:
                # A run that lost its flow meets the new owner's events: say so.
                found = await self._lost(conn, batch) or await self._conflicts(conn, batch)
            if not found:
                raise JournalError(f"journal {_redact(self.url)}: a commit was refused for no flow")
            refused.update(found)
            batch = [row for row in batch if row[0] not in found]

    def _kept(self) -> Any:
        """The writer's kept connection, unless it has closed or sat idle too long (it
        may have died unseen: a firewall, a server restart)."""
        conn = self._committer
        if conn is None:
            return None
        try:
            usable = not conn.is_closed() and monotonic() - self._committed_at <= _KEEP_FOR
        except asyncpg.InterfaceError:  # it closed, and its pool took it back
            usable = False
        if not usable:
            self._discard()
        return conn if usable else None

    def _discard(self) -> None:
        """Close the kept connection; its pool connects afresh in its place."""
        conn, self._committer = self._committer, None
        with contextlib.suppress(asyncpg.InterfaceError):  # already back in its pool
            conn.terminate()

    async def _drop_committer(self, conn: Any = None) -> None:
        """Give the writer's connection (or ``conn``, one it took for one commit) back to
        the pool, which replaces it if broken."""
        conn = self._committer if conn is None else conn
        self._committer = None
        pool = self._pool
        if conn is not None and pool is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(*_ERRORS):
                await pool.release(conn)

    async def _lost(self, conn: Any, batch: list[_Row]) -> dict[str, BaseException]:
        """The fenced flows of ``batch`` whose generation moved on, with their errors."""
        fenced = {row[0]: self._fences[row[0]] for row in batch if row[0] in self._fences}
        if not fenced:
            return {}
        rows = await conn.fetch(
            "SELECT flow_id, generation, owner FROM aioflow_flows WHERE flow_id = ANY($1::text[])",
            list(fenced),
        )
        current = {row[0]: (row[1], row[2]) for row in rows}
        lost: dict[str, BaseException] = {}
        created = {row[0] for row in batch if row[9] is not None}
        for flow_id, fence in fenced.items():
            if flow_id in created and flow_id not in current:
                continue
            generation, owner = current.get(flow_id, (None, None))
            if generation != fence.generation:
                lost[flow_id] = taken_over(flow_id, fence, owner)
        return lost

    async def _conflicts(self, conn: Any, batch: list[_Row]) -> dict[str, BaseException]:
        """The flows whose rows in ``batch`` repeat a committed (flow, seq), with errors
        naming the first such seq of each."""
        found: dict[str, BaseException] = {}
        seen: set[tuple[str, int]] = set()
        for row in batch:
            if (row[0], row[1]) in seen:
                found.setdefault(row[0], self._conflict_error(row[0], row[1]))
            seen.add((row[0], row[1]))
        rows = await conn.fetch(
            "SELECT e.flow_id, min(e.seq) FROM aioflow_events e JOIN unnest($1::text[],"
            " $2::bigint[]) AS u(flow_id, seq) USING (flow_id, seq) GROUP BY e.flow_id",
            [row[0] for row in batch],
            [row[1] for row in batch],
        )
        for flow_id, seq in rows:
            found.setdefault(flow_id, self._conflict_error(flow_id, seq))
        return found

    def _conflict_error(self, flow_id: str, seq: int) -> JournalError:
        return JournalError(
            f"conflicting write to flow {flow_id} at seq {seq} in journal "
            f"{_redact(self.url)}: that event is already there (is another engine writing "
            "this flow?)"
        )

    # ------------------------------------------------------------------------- reading

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        """Rows of a query: on the pool when open, else on a temporary connection (an
        empty schema reads as no rows and is not created). A read on the open journal
        first waits until what was appended before it is committed, so that it sees it
        (the writer may be letting rows gather, see :data:`_LINGER`)."""
        try:
            if self._pool is not None:
                await settle_appends(self)
                return list(await self._pool.fetch(sql, *args))
            conn = await asyncpg.connect(self._dsn)
            try:
                if not await self._check_schema(conn):
                    return []
                return list(await conn.fetch(sql, *args))
            finally:
                with anyio.CancelScope(shield=True):
                    await conn.close()
        except _ERRORS as exc:
            raise self._error("cannot read", exc) from exc

    async def flows(self, status: FlowStatus | None = None) -> list[FlowSummary]:
        if status is None:
            rows = await self._fetch(_SELECT_FLOWS + " ORDER BY f.created, f.ord")
        else:
            rows = await self._fetch(
                _SELECT_FLOWS + " WHERE f.status = $1 ORDER BY f.created, f.ord", status.value
            )
        now = self.clock()
        return [FlowSummary.from_row(row, now) for row in rows]

    async def list_flows(
        self,
        *,
        status: FlowStatus | None = None,
        name: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> tuple[list[FlowSummary], str | None]:
        check_limit(limit)
        sql, args = _list_query(status, name, limit, before)
        rows = await self._fetch(sql, *args)
        now = self.clock()
        return page([FlowSummary.from_row(row, now) for row in rows], limit)

    async def summary(self, flow_id: str) -> FlowSummary:
        rows = await self._fetch(_SELECT_FLOWS + " WHERE f.flow_id = $1", flow_id)
        if not rows:
            raise NotFoundError(f"no flow {flow_id} in journal {_redact(self.url)}")
        return FlowSummary.from_row(rows[0], self.clock())

    async def orphans(self) -> list[FlowSummary]:
        now = self.clock()
        rows = await self._fetch(
            _SELECT_FLOWS + " WHERE f.status = ANY($1::text[]) AND (f.owner IS NULL"
            " OR o.expires IS NULL OR o.expires <= $2) ORDER BY f.created, f.ord",
            sorted(_ACTIVE_VALUES),
            now,
        )
        return [FlowSummary.from_row(row, now) for row in rows]

    # ----------------------------------------------------------------------- ownership

    async def take(self, flow_id: str, owner: str) -> tuple[int, int]:
        pool = self._open_pool()
        now = self.clock()
        try:
            async with pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "SELECT f.owner, f.generation, o.expires FROM"
                    " aioflow_flows f LEFT JOIN aioflow_owners o USING (owner)"
                    " WHERE f.flow_id = $1 FOR UPDATE OF f",
                    flow_id,
                )
                if row is None:
                    raise NotFoundError(f"no flow {flow_id} in journal {_redact(self.url)}")
                current, generation, expires = row
                # Read once the row is locked, in a statement of its own (a snapshot of
                # its own): it sees the events of a commit that held the lock before us.
                last_seq = await conn.fetchval(_LAST_SEQ_OF, flow_id)
                if (
                    current is not None
                    and current != owner
                    and expires is not None
                    and expires > now
                ):
                    raise FlowBusyError(flow_id, current, expires)
                await conn.execute(
                    "UPDATE aioflow_flows SET owner = $2, generation = $3 WHERE flow_id = $1",
                    flow_id,
                    owner,
                    generation + 1,
                )
        except _ERRORS as exc:
            raise self._error(f"cannot take flow {flow_id}", exc) from exc
        return generation + 1, last_seq

    async def heartbeat(self, owner: str, expires: float) -> None:
        pool = self._open_pool()
        try:
            async with pool.acquire() as conn:
                await conn.execute(
                    "WITH gone AS (DELETE FROM aioflow_owners WHERE expires < $3)"
                    " INSERT INTO aioflow_owners(owner, expires) VALUES ($1, $2)"
                    " ON CONFLICT (owner) DO UPDATE SET expires = EXCLUDED.expires",
                    owner,
                    expires,
                    self.clock() - _OWNERS_KEPT,
                )
        except _ERRORS as exc:
            raise self._error(f"cannot renew the heartbeat of engine {owner}", exc) from exc

    async def disown(self, flow_id: str, owner: str, generation: int) -> bool:
        pool = self._open_pool()
        try:
            done = await pool.execute(
                "UPDATE aioflow_flows SET owner = NULL WHERE flow_id = $1 AND owner = $2"
                " AND generation = $3",
                flow_id,
                owner,
                generation,
            )
        except _ERRORS as exc:
            raise self._error(f"cannot give up flow {flow_id}", exc) from exc
        return bool(done.endswith(" 1"))

    async def post_message(
        self, flow_id: str, topic: str, message: Any, *, key: str | None = None, time: float
    ) -> int | None:
        text = await encode_message(self.codec, flow_id, topic, message)
        pool = self._open_pool()
        for last_try in (False, True):
            try:
                found, stored = await pool.fetchrow(_POST, flow_id, topic, key, text, time)
            except asyncpg.UndefinedTableError as exc:
                raise JournalError(
                    f"journal {self.label} has no mailbox (no aioflow_mailbox table: the "
                    "roles that opened it may not create one); open it once with a role "
                    "that may create tables in its schema"
                ) from exc
            except _ERRORS as exc:
                raise self._error(f"cannot send to flow {flow_id}", exc) from exc
            if found:
                return None if stored is None else int(stored)
            # A flow this journal was handed is found once its first events are in.
            if last_try or not await settle_appends(self):
                break
        raise NotFoundError(f"no flow {flow_id} in journal {self.label}")

    async def _read_mail(self, sql: str, *args: Any) -> list[Any]:
        """Rows of a query on the mailbox; none when the schema has no mailbox (see
        :data:`_MAILBOX`)."""
        try:
            return await self._fetch(sql, *args)
        except JournalError as exc:
            if isinstance(exc.__cause__, asyncpg.UndefinedTableError):
                return []
            raise

    async def next_message(
        self, flow_id: str, topic: str, after: int = 0
    ) -> tuple[int, Any] | None:
        rows = await self._read_mail(
            "SELECT id, message FROM aioflow_mailbox WHERE flow_id = $1 AND topic = $2"
            " AND id > $3 ORDER BY id LIMIT 1",
            flow_id,
            topic,
            after,
        )
        if not rows:
            return None
        return int(rows[0][0]), self.codec.decode(rows[0][1])

    async def mail_topics(self, flow_id: str, after: Mapping[str, int]) -> set[str]:
        # The newest id of each topic, from the (flow_id, topic, id) index.
        rows = await self._read_mail(
            "SELECT topic, max(id) FROM aioflow_mailbox WHERE flow_id = $1 GROUP BY topic",
            flow_id,
        )
        return {topic for topic, newest in rows if newest > after.get(topic, 0)}

    async def mail_since(self, after: int | None) -> tuple[int, list[tuple[str, str]]]:
        if after is None:
            rows = await self._read_mail("SELECT coalesce(max(id), 0) FROM aioflow_mailbox")
            return (int(rows[0][0]) if rows else 0), []
        rows = await self._read_mail(
            "SELECT id, flow_id, topic FROM aioflow_mailbox WHERE id > $1 ORDER BY id"
            f" LIMIT {MAIL_BATCH}",
            after,
        )
        if not rows:
            return after, []
        return int(rows[-1][0]), [(str(r[1]), str(r[2])) for r in rows]

    async def events(self, flow_id: str, *, after: int = 0) -> AsyncIterator[Event]:
        while True:
            page = await self._fetch(_SELECT_EVENTS, flow_id, after, _PAGE)
            for row in page:
                yield self._event(flow_id, row)
            if len(page) < _PAGE:
                return
            after = page[-1][0]

    async def load(self, flow_id: str) -> list[Event]:
        rows = await self._fetch(_LOAD, flow_id)
        if not rows:
            raise NotFoundError(f"no flow {flow_id} in journal {_redact(self.url)}")
        return [self._event(flow_id, row) for row in rows]

    async def _purge_batch(
        self, statuses: frozenset[FlowStatus], cut: float, after: PurgeKey | None, limit: int
    ) -> tuple[int, PurgeKey | None]:
        values = sorted(status.value for status in statuses)
        args: list[Any] = [values, cut, limit]
        if after is not None:
            args += after
        async with self._connection() as conn:
            if conn is None:
                return 0, None
            mail = _PURGE_MAIL if await self._has_mailbox(conn) else ""
            sql = _PURGE.format(after="" if after is None else _PURGE_AFTER, mail=mail)
            try:
                removed, created, flow_id = await conn.fetchrow(sql, *args)
            except _ERRORS as exc:
                raise self._error("cannot purge flows", exc) from exc
        if removed < limit:
            return removed, None
        return removed, (created, flow_id)

    async def _count_purgeable(self, statuses: frozenset[FlowStatus], cut: float) -> int:
        values = sorted(status.value for status in statuses)
        sql = "SELECT count(*) FROM aioflow_flows WHERE " + _PURGEABLE
        rows = await self._fetch(sql, values, cut)
        return int(rows[0][0]) if rows else 0

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A connection from the open journal's pool, else one of its own; None when
        the schema holds no journal (nothing is created)."""
        try:
            if self._pool is not None:
                async with self._pool.acquire() as conn:
                    yield conn
                return
            conn = await asyncpg.connect(self._dsn)
        except _ERRORS as exc:
            raise self._error("cannot connect", exc) from exc
        try:
            yield conn if await self._check_schema(conn) else None
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()

    async def _has_mailbox(self, conn: Any) -> bool:
        """Whether the schema has the mailbox's table (see :data:`_MAILBOX`)."""
        return bool(await conn.fetchval("SELECT to_regclass('aioflow_mailbox') IS NOT NULL"))

    async def compact(
        self, flow_id: str, *, keep: int | None = 1, before: float | None = None
    ) -> int:
        check_keep(keep, before)
        pool = self._open_pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                # The summary row's lock keeps two compactions of one flow apart (and holds
                # the writer's next commit for this flow until this one is done).
                await conn.execute(
                    "SELECT 1 FROM aioflow_flows WHERE flow_id = $1 FOR UPDATE", flow_id
                )
                rows = await conn.fetch(
                    "SELECT seq, time, kind, atom, state, attempt, progress, details"
                    " FROM aioflow_events WHERE flow_id = $1 ORDER BY seq",
                    flow_id,
                )
                if not rows:
                    raise NotFoundError(f"no flow {flow_id} in journal {_redact(self.url)}")
                events = [self._event(flow_id, row) for row in rows]
                plan = plan_compaction(events, keep, before)
                if plan is None:
                    return 0
                n, folded = plan
                await conn.execute(
                    "DELETE FROM aioflow_events WHERE flow_id = $1 AND seq <= $2",
                    flow_id,
                    folded.seq,
                )
                await conn.execute(
                    "INSERT INTO aioflow_events VALUES ($1, $2, $3, $4, NULL, NULL, 0, NULL, $5)",
                    flow_id,
                    folded.seq,
                    folded.time,
                    folded.kind.value,
                    self.codec.encode(folded.details),
                )
        except _ERRORS as exc:
            raise self._error(f"cannot compact flow {flow_id}", exc) from exc
        return n - 1

    async def get_meta(self, key: str) -> str | None:
        rows = await self._fetch("SELECT value FROM aioflow_meta WHERE key = $1", key)
        return cast("str", rows[0][0]) if rows else None

    async def set_meta_default(self, key: str, value: str) -> str:
        pool = self._open_pool()
        try:
            async with pool.acquire() as conn:
                # Two statements: the SELECT's snapshot must be taken after the INSERT has
                # waited out a concurrent writer of the same key.
                await conn.execute(
                    "INSERT INTO aioflow_meta(key, value) VALUES ($1, $2)"
                    " ON CONFLICT(key) DO NOTHING",
                    key,
                    value,
                )
                stored = await conn.fetchval("SELECT value FROM aioflow_meta WHERE key = $1", key)
        except _ERRORS as exc:
            raise self._error(f"cannot set {key!r}", exc) from exc
        return cast("str", stored)


def _redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"
