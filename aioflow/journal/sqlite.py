"""The SQLite journal: one file, several processes, group commit over aiosqlite.

The file is in WAL mode, so readers (in this process or another) never block the writer.
Events go to ``aioflow_events``, naming their flow by its integer key;
``aioflow_flows`` keeps one summary row per flow, changed in the same transaction as the
events that change it. The schema is described in ``docs/journal.md``.

Commits are made on the event loop's thread by a second connection when they can (see
:meth:`SqliteJournal._commit_inline`; a few events of one flow are one statement,
:meth:`SqliteJournal._commit_alone`); when the file is locked by another process, or a
flow of the batch is refused, they go to aiosqlite's thread, where they wait for the
lock and find out which flows to refuse. Both run the same transaction
(:meth:`SqliteJournal._plan`, then :meth:`SqliteJournal._inserts`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Container,
    Iterable,
    Mapping,
    Sequence,
)
from pathlib import Path
from time import monotonic, sleep
from typing import Any, NamedTuple, TypeAlias, cast

import aiosqlite
import anyio
import anyio.abc
import anyio.lowlevel

from .._codec import Codec, get_codec
from .._errors import FlowBusyError, JournalError, LeaseLostError, NotFoundError
from .._events import Event, EventKind, decode_state
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
from ._writer import (
    CommitError,
    EventRow,
    GroupWriter,
    WriterJournal,
    encode_row,
    stored_event,
)

__all__ = ["SqliteJournal"]

_LOG = get_logger("aioflow.journal")

SCHEMA_VERSION = 4
"""The schema version this module reads and writes (``schema_version`` in ``aioflow_meta``).

Version 2 added flow ownership (``owner`` and ``generation`` in ``aioflow_flows``, and the
engines' heartbeats in ``aioflow_owners``). Version 3 keys events by the flow's integer
``key`` instead of its 32-letter id (a smaller row and a cheaper index a row), and stops
rewriting the flow's summary at every commit (its last seq is read from its events).
Version 4 lets one row hold an atom's start with the event that follows it (a ``started``
column, see :data:`_EVENTS_TABLE`). A version 1, 2 or 3 file is migrated when opened."""

_OWNERS = "CREATE TABLE aioflow_owners(owner TEXT PRIMARY KEY, expires REAL NOT NULL)"
# The order list_flows pages in, newest first. No schema version of its own: an older
# aioflow ignores it, and open() adds it to a journal made before it (one scan of the
# flows' summaries, once). A read-only journal, which open() refuses, is read all the
# same without it, by a scan and a sort.
_FLOWS_CREATED = (
    "CREATE INDEX IF NOT EXISTS aioflow_flows_created ON aioflow_flows(created, flow_id)"
)
# AUTOINCREMENT: a key is never handed out twice, so a key this process remembers for a
# flow that another one purged names no other flow.
_FLOWS_TABLE = (
    "CREATE TABLE aioflow_flows(key INTEGER PRIMARY KEY AUTOINCREMENT, flow_id TEXT NOT NULL"
    " UNIQUE, name TEXT, status TEXT, ref TEXT, created REAL, updated REAL, owner TEXT,"
    " generation INTEGER NOT NULL DEFAULT 0)"
)
_EVENTS_TABLE_3 = (
    "CREATE TABLE aioflow_events(flow INTEGER, seq INTEGER, time REAL, kind TEXT,"
    " atom TEXT, state TEXT, attempt INTEGER, progress REAL, details TEXT,"
    " PRIMARY KEY(flow, seq)) WITHOUT ROWID"
)
"""The events' table of version 3 (what the migration from version 2 makes)."""
_STARTED = "ALTER TABLE aioflow_events ADD COLUMN started REAL"
_EVENTS_TABLE = _EVENTS_TABLE_3.replace(" details TEXT,", " details TEXT, started REAL,", 1)
"""One row an event, except that a row whose ``started`` is not NULL also holds the
event before it: its atom's RUNNING, at ``seq - 1`` and time ``started``, with the same
kind, atom and attempt, progress 0 and no details. A flow's events come in pairs like
that only when they were committed together by the flow's owner (see :func:`_values`):
an atom that finished in the turn it started writes one row, not two."""
# For people reading the file with sqlite3: the events with their flow's id, one row an
# event (the second part opens the rows that hold two). aioflow itself never reads it.
_EVENTS_VIEW = (
    "CREATE VIEW IF NOT EXISTS aioflow_flow_events AS SELECT f.flow_id, e.seq, e.time, e.kind,"
    " e.atom, e.state, e.attempt, e.progress, e.details FROM aioflow_events e"
    " JOIN aioflow_flows f ON f.key = e.flow UNION ALL SELECT f.flow_id, e.seq - 1,"
    " e.started, e.kind, e.atom, 'RUNNING', e.attempt, 0.0, NULL FROM aioflow_events e"
    " JOIN aioflow_flows f ON f.key = e.flow WHERE e.started IS NOT NULL"
)
_SCHEMA = (
    "CREATE TABLE aioflow_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    _EVENTS_TABLE,
    _FLOWS_TABLE,
    _FLOWS_CREATED,
    _OWNERS,
    _EVENTS_VIEW,
)
# The mailbox (see Journal.post_message). No schema version of its own: an older aioflow
# opening the file ignores a table it does not know, and this one reads a file without
# the table as an empty mailbox. The table is made by the first post (in that post's
# transaction), not when the journal is opened: reading never writes, so a read-only
# journal (which open() refuses, and which is read without opening it) stays readable,
# and an older file is changed only once something is sent to it. AUTOINCREMENT: an id
# is never handed out twice, even after the newest rows were deleted.
_MAILBOX = (
    "CREATE TABLE IF NOT EXISTS aioflow_mailbox(id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " flow_id TEXT NOT NULL, topic TEXT NOT NULL, key TEXT, message TEXT NOT NULL,"
    " sent REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS aioflow_mailbox_topic ON aioflow_mailbox(flow_id, topic, id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS aioflow_mailbox_key ON aioflow_mailbox(flow_id, key)"
    " WHERE key IS NOT NULL",
)
# One statement: it stores nothing for an unknown flow or a key already used (only a
# uniqueness conflict is ignored), and the rare caller that stored nothing asks which.
_POST = (
    "INSERT INTO aioflow_mailbox(flow_id, topic, key, message, sent) SELECT ?1, ?2, ?3, ?4, ?5"
    " WHERE EXISTS (SELECT 1 FROM aioflow_flows WHERE flow_id = ?1) ON CONFLICT DO NOTHING"
)
_MIGRATE_1_TO_2 = (
    "ALTER TABLE aioflow_flows ADD COLUMN owner TEXT",
    "ALTER TABLE aioflow_flows ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",
    _OWNERS,
    "UPDATE aioflow_meta SET value = '2' WHERE key = 'schema_version'",
)
# Version 2 to 3 in one transaction: the flows get integer keys (in the order they were
# made), and the events are copied under them. Events of a flow with no summary row (none
# should exist) are kept, under a summary of their own with no status.
_MIGRATE_2_TO_3 = (
    _FLOWS_TABLE.replace("aioflow_flows(", "aioflow_flows_v3(", 1),
    "INSERT INTO aioflow_flows_v3(flow_id, name, status, ref, created, updated, owner,"
    " generation) SELECT flow_id, name, status, ref, created, updated, owner, generation"
    " FROM aioflow_flows ORDER BY created, rowid",
    "INSERT INTO aioflow_flows_v3(flow_id, created, updated) SELECT flow_id, min(time),"
    " max(time) FROM aioflow_events WHERE flow_id NOT IN (SELECT flow_id FROM aioflow_flows)"
    " GROUP BY flow_id ORDER BY min(time)",
    _EVENTS_TABLE_3.replace("aioflow_events(", "aioflow_events_v3(", 1),
    "INSERT INTO aioflow_events_v3 SELECT f.key, e.seq, e.time, e.kind, e.atom, e.state,"
    " e.attempt, e.progress, e.details FROM aioflow_events e JOIN aioflow_flows_v3 f"
    " USING (flow_id) ORDER BY f.key, e.seq",
    "DROP TABLE aioflow_events",
    "DROP TABLE aioflow_flows",
    "ALTER TABLE aioflow_flows_v3 RENAME TO aioflow_flows",
    "ALTER TABLE aioflow_events_v3 RENAME TO aioflow_events",
    _FLOWS_CREATED,
    "UPDATE aioflow_meta SET value = '3' WHERE key = 'schema_version'",
)
# Version 3 to 4: a column added at the end (SQLite rewrites no row for it), and the view
# that reads it.
_MIGRATE_3_TO_4 = (
    _STARTED,
    "DROP VIEW IF EXISTS aioflow_flow_events",
    _EVENTS_VIEW,
    "UPDATE aioflow_meta SET value = '4' WHERE key = 'schema_version'",
)

_PRAGMAS = "PRAGMA synchronous=NORMAL;"
"""Per connection: a commit survives a crash of the process without an fsync (WAL)."""

# Up to 256 rows (2304 parameters) where SQLite allows 32766 parameters (3.32+), else 64
# (576, under the old limit of 999).
_ONE_STATEMENT = 256 if sqlite3.sqlite_version_info >= (3, 32, 0) else 64
"""The most rows one multi-row INSERT takes."""

_INLINE_ROWS = 512
"""Commits are made on the event loop's thread in transactions of up to this many events
(about 50 us plus 1.5-2 us a row, and one row holds two events of an atom that finished
in the turn it started: a millisecond at most), yielding to the loop between two of
them. A wide flow's commits of 512 instead of 256 cost 2.6k instructions a task less
(benchmarks/README.md)."""

_LINGER = 0.002
"""Seconds that rows nobody waits for yet may gather before the writer commits them (a
commit costs ~40 us besides its rows; a waiter commits at once, see GroupWriter)."""

_CHECKPOINT_EVERY = 4096
"""After this many rows committed inline, a passive WAL checkpoint starts in a worker
thread, on a connection of its own (the inline connection's automatic checkpoints are
off: they fsync, which must not block the loop). Neither the writer nor the inline
commits wait for it: a passive checkpoint takes no lock that a writer needs."""

_CATCH_UP_AFTER = 0.1
"""Seconds between two tries to catch up with a WAL that checkpoints left behind (see
:meth:`SqliteJournal._maintain`)."""

# The statements of every commit (inline or in aiosqlite's thread). Events go in by
# multi-row INSERTs of a power of two rows each, up to _ONE_STATEMENT: one statement of
# 256 rows costs a third less a row than 256 executions of a one-row INSERT, and nine
# sizes are few enough to stay prepared.
# A NULL is bound as '' and turned back by NULLIF: the sqlite3 module binds None through
# its adapter lookup (an AttributeError made and cleared), a fifth of a row's whole cost;
# no stored text is ever ''.
_ROW = "(?, ?, ?, ?, NULLIF(?, ''), NULLIF(?, ''), ?, NULLIF(?, ''), NULLIF(?, ''), NULL)"
"""The values of one event's row: 9 (see :func:`_values`)."""
_PAIR = "(?, ?, ?, 'ATOM', ?, ?, ?, ?, ?, ?)"
"""The values of a row that holds an atom's RUNNING and the event after it: 9, the last
being ``started``. A pair is always of an ATOM event, and its progress and details are
bound as they are: most have both (a SUCCESS), and a None among them costs the sqlite3
module's adapter lookup but no NULLIF for every row (0.2 us a row less, with the kind
written in the statement)."""


def _statements(row: str, most: int, suffix: str = "") -> dict[int, str]:
    """Multi-row INSERTs of ``row``'s form, by their number of rows (powers of two up to
    ``most``); with a ``suffix``, the rows are selected from their VALUES under it."""
    sizes = (1 << k for k in range(most.bit_length()))
    if suffix:
        head, tail = "INSERT INTO aioflow_events SELECT * FROM (VALUES ", ") " + suffix
    else:
        head, tail = "INSERT INTO aioflow_events VALUES ", ""
    return {size: head + ", ".join([row] * size) + tail for size in sizes}


_INSERT_EVENTS = _statements(_ROW, _ONE_STATEMENT)
_INSERT_PAIRS = _statements(_PAIR, _ONE_STATEMENT)
_INSERT_EVENT = _INSERT_EVENTS[1]
_ALONE_ROWS = 16
"""The most rows a commit makes in one fenced statement (see
:meth:`SqliteJournal._commit_alone`); a larger batch pays more for reading its rows
through a subquery than the separate statements it saves."""
# One statement that commits a batch of one flow by itself (autocommit), if and only if
# the flow's generation is still the fence's: SQLite reads the generation and takes the
# write lock within the statement, so no claim can come between.
_FENCE = "WHERE (SELECT generation FROM aioflow_flows WHERE key = ?) = ?"
_INSERT_FENCED = _statements(_ROW, _ALONE_ROWS, _FENCE)
_INSERT_FENCED_PAIRS = _statements(_PAIR, _ALONE_ROWS, _FENCE)
_INLINE_STATEMENTS = (
    *_INSERT_EVENTS.values(),
    *_INSERT_PAIRS.values(),
    *_INSERT_FENCED.values(),
    *_INSERT_FENCED_PAIRS.values(),
)
"""The statements of events that the inline connection prepares when it opens, and
keeps: the largest of them, 256 rows, costs SQLite ~1 ms to prepare again, so its cache
holds them all, and the few other statements of a commit besides."""
_CREATE_FLOW = (
    "INSERT INTO aioflow_flows(flow_id, name, status, ref, created, updated, owner,"
    " generation) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(flow_id) DO NOTHING"
)
# A flow that comes to rest gives its owner up in the same transaction (?3).
_SET_STATUS = (
    "UPDATE aioflow_flows SET status = ?1, updated = ?2,"
    " owner = CASE WHEN ?3 THEN NULL ELSE owner END WHERE key = ?4"
)
"""The summary update of a commit holding FLOW events (the last one's status); a commit
without one changes no summary."""
_HEARTBEAT = (
    "INSERT INTO aioflow_owners(owner, expires) VALUES (?, ?)"
    " ON CONFLICT(owner) DO UPDATE SET expires = excluded.expires"
)
_LAST_SEQ = "coalesce((SELECT max(seq) FROM aioflow_events e WHERE e.flow = f.key), 0)"
"""A flow's last seq, from its events (one step down the primary key)."""
# A flow's key, generation, owner and last seq, read in a commit's transaction.
_FIND = "SELECT key, flow_id, generation, owner, " + _LAST_SEQ + " FROM aioflow_flows f WHERE "
_FIND_BY = {column: _FIND + column + " IN " for column in ("key", "flow_id")}
_FIND_ONE = {column: _FIND + column + " = ?" for column in ("key", "flow_id")}
_FIND_FENCED = "SELECT key, flow_id, generation, owner, 0 FROM aioflow_flows WHERE key = ?"
"""The lookup of a commit's one fenced flow: the fence needs no last seq (see
:meth:`SqliteJournal._refusals`), so the commit most runs make reads none."""
_FIND_CHUNK = 1024
"""The most flows one lookup of :meth:`SqliteJournal._finds` names."""
_KEYS_KEPT = 100_000
"""The most flow keys a journal remembers; past it, it forgets them all (a commit looks
up a key it does not know, at the cost of one read)."""
_COMPLETE_JOB = (
    "UPDATE aioflow_jobs SET state = 'COMPLETE', status = 'SUCCESS', failures = NULL,"
    " updated = ? WHERE id = ? AND generation = ? AND state = 'CLAIMED'"
)
"""A conductor's job completed in the transaction that commits its flow's SUCCESS, if
its claim still holds (see Journal._complete_job_on_success)."""
_RESTING = frozenset(status.value for status in FlowStatus if status.is_resting)
_ACTIVE_VALUES = frozenset(status.value for status in ACTIVE)


_PAGE = 1000
"""Events read per query by :meth:`SqliteJournal.events`."""

_JOBBOARD_NAMES = ("aioflow_job", "sqlite_autoindex_aioflow_job")
"""Prefixes of the names of a jobboard's tables and indexes (``aioflow.jobs.sqlite``)."""

_SELECT_EVENTS = (
    "SELECT seq, time, kind, atom, state, attempt, progress, details, started"
    " FROM aioflow_events"
    " WHERE flow = (SELECT key FROM aioflow_flows WHERE flow_id = ?) AND seq > ?"
    " ORDER BY seq LIMIT ?"
)
_LOAD = (
    "SELECT seq, time, kind, atom, state, attempt, progress, details, started"
    " FROM aioflow_events"
    " WHERE flow = (SELECT key FROM aioflow_flows WHERE flow_id = ?) ORDER BY seq"
)
_LOAD_KEY = (
    "SELECT seq, time, kind, atom, state, attempt, progress, details, started"
    " FROM aioflow_events"
    " WHERE flow = ? ORDER BY seq"
)
"""A whole flow, in one statement: one read transaction, hence one snapshot of the WAL."""
_MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
"""The most values one statement may take (SQLite's limit): a purge batch's bound."""
_SELECT_FLOWS = (
    "SELECT f.flow_id, f.name, f.status, f.ref, f.created, f.updated, "
    + _LAST_SEQ
    + ", f.owner, f.generation, o.expires FROM aioflow_flows f"
    " LEFT JOIN aioflow_owners o USING (owner) WHERE f.name IS NOT NULL"
)
"""The summaries of the flows that started (a flow known only by events that a caller
appended without a start has a summary row without a name, as a key for them)."""
_OWNERS_KEPT = 3600.0
"""Seconds an expired heartbeat row is kept before a heartbeat deletes it (a flow whose
owner has no row is orphaned all the same)."""

_KINDS = {kind.value: kind for kind in EventKind}
_FLOW = EventKind.FLOW

_Row: TypeAlias = EventRow
_Steps: TypeAlias = list[tuple[str, Sequence[Sequence[Any]]]]
"""Statements with the values of each of their executions, for ``executemany``."""
_Fetch: TypeAlias = Callable[[str, Iterable[Any]], Awaitable[Iterable[Any]]]


def _event_steps(
    batch: list[_Row], keys: Mapping[str, int], owned: Container[str] = ()
) -> _Steps:
    """``batch``'s events as (statement, values of each execution) pairs for
    ``executemany``, each flow named by its key in ``keys``, the events of the flows in
    ``owned`` paired where they can be (see :func:`_values`): as many statements of
    :data:`_ONE_STATEMENT` rows as fit, then one each for the powers of two that make up
    the rest."""
    rows, pairs = _values(batch, keys, owned)
    steps: _Steps = []
    for values, statements in ((rows, _INSERT_EVENTS), (pairs, _INSERT_PAIRS)):
        n = len(values) // 9
        if not n:
            continue
        # From the largest size that fits: a chain's commit of one row looks at one size.
        start, size = 0, min(_ONE_STATEMENT, 1 << (n.bit_length() - 1))
        while start < n:
            end = n - (n - start) % size
            if end > start:
                chunks = [values[i * 9 : (i + size) * 9] for i in range(start, end, size)]
                steps.append((statements[size], chunks))
                start = end
            size >>= 1
    return steps


def _values(
    batch: list[_Row], keys: Mapping[str, int], owned: Container[str]
) -> tuple[list[Any], list[Any]]:
    """The values of ``batch`` for :data:`_INSERT_EVENTS` (9 a row, a NULL as ''; only
    atom, state, progress and details may be NULL, and no stored text is ever '') and
    for :data:`_INSERT_PAIRS` (9 a row, see :data:`_PAIR`).

    An atom's RUNNING (progress 0, no details) followed in ``batch`` by its atom's next
    event (the next seq, the same kind and attempt) is paired with it: one row holds both
    (see :data:`_EVENTS_TABLE`). Only events of flows in ``owned`` are paired, flows this
    journal holds under a fence: no other writer may add to them, so a pair's first seq,
    which no key of the table holds, is never written twice. An atom that finishes in
    the turn it started (most of a wide flow's) costs one row instead of two."""
    rows: list[Any] = []
    pairs: list[Any] = []
    extend = rows.extend
    held: _Row | None = None  # a RUNNING that may pair with the row after it
    for row in batch:
        flow_id, seq, time, kind, atom, state, attempt, progress, details, _, _ = row
        if held is not None:
            if (
                seq == held[1] + 1
                and atom == held[4]
                and flow_id == held[0]
                and attempt == held[6]
                and kind == "ATOM"
            ):
                pairs.extend(
                    (keys[flow_id], seq, time, atom, state, attempt, progress, details, held[2])
                )
                held = None
                continue
            extend(_alone(held, keys))
            held = None
        if (
            state == "RUNNING"
            and kind == "ATOM"
            and details is None
            and progress == 0.0
            and flow_id in owned
        ):
            held = row
            continue
        extend(
            (
                keys[flow_id],
                seq,
                time,
                kind,
                atom or "",
                state or "",
                attempt,
                "" if progress is None else progress,
                details or "",
            )
        )
    if held is not None:
        extend(_alone(held, keys))
    return rows, pairs


def _alone(start: _Row, keys: Mapping[str, int]) -> tuple[Any, ...]:
    """The values of a RUNNING that :func:`_values` held back and that paired with
    nothing: a row of its own (its progress is 0 and it has no details)."""
    flow_id, seq, time, kind, atom, state, attempt, _, _, _, _ = start
    return (keys[flow_id], seq, time, kind, atom or "", state, attempt, 0.0, "")


def _in_list(values: list[Any]) -> tuple[str, list[Any]]:
    """``(?, ...)`` for ``values``, padded to a power of two by repeating the last value,
    so that a few statement texts serve every lookup (and stay in the statement cache)."""
    size = 1 << (len(values) - 1).bit_length()
    marks = _MARKS.get(size)
    if marks is None:
        marks = _MARKS[size] = "(" + ", ".join("?" * size) + ")"
    return marks, values + [values[-1]] * (size - len(values))


_MARKS: dict[int, str] = {}


def _passive_checkpoint(conn: sqlite3.Connection) -> bool:
    """Copy what it can of the WAL into the database file, waiting for nobody; whether
    it copied all of it."""
    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return not busy and frames == copied


async def set_wal(db: aiosqlite.Connection, *, patience: float = 30.0) -> None:
    """Put the file in WAL mode (a no-op when it is). Switching needs the file to
    itself and SQLite does not wait for that, so processes opening a new file together
    take turns here."""
    delay = 0.005
    deadline = anyio.current_time() + patience
    while True:
        try:
            await db.execute_fetchall("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or anyio.current_time() > deadline:
                raise
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.2)


def _writable(path: Path, mode: int) -> bool:
    """Whether this process may write ``path`` (``mode`` for os.access): its user and a
    read-only file system are asked, as SQLite will meet them."""
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


async def immediate(
    db: aiosqlite.Connection, steps: Callable[[aiosqlite.Connection], Awaitable[Any]]
) -> Any:
    """Run ``steps`` in one IMMEDIATE transaction on ``db``, rolled back if they raise.

    Shielded from cancellation: aiosqlite runs each statement in its thread, so a caller
    cancelled while BEGIN waits for the file's lock would leave the connection in a
    transaction nobody ends, holding the lock for good. A cancellation is seen once the
    transaction is over (at most ``busy_timeout`` later)."""
    with anyio.CancelScope(shield=True):
        await db.execute("BEGIN IMMEDIATE")
        try:
            result = await steps(db)
            await db.execute("COMMIT")
        finally:
            if db.in_transaction:
                await db.execute("ROLLBACK")
    await anyio.lowlevel.checkpoint_if_cancelled()
    return result


def path_from_url(url: str) -> str:
    """The file path in a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(
            f"not a SQLite journal URL: {url!r} (expected sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db)"
        )
    return url[len(prefix) :]


def _list_query(
    status: FlowStatus | None, name: str | None, limit: int, before: str | None
) -> tuple[str, list[Any]]:
    """The statement :meth:`SqliteJournal.list_flows` runs and its parameters: it reads
    ``limit + 1`` rows in index order (``aioflow_flows_created``), never sorting."""
    where: list[str] = []
    params: list[Any] = []
    if status is FlowStatus.PENDING:
        where.append("(f.status IS NULL OR f.status = ?)")
        params.append(status.value)
    elif status is not None:
        where.append("f.status = ?")
        params.append(status.value)
    if name is not None:
        where.append("f.name = ?")
        params.append(name)
    if before is not None:
        # Keyset: the rows after the cursor's (created, flow_id), in a form whose
        # first term is a range on created that an index on it serves.
        created, flow_id = read_cursor(before)
        where.append("f.created <= ? AND (f.created < ? OR f.flow_id < ?)")
        params.extend((created, created, flow_id))
    sql = _SELECT_FLOWS + "".join(" AND " + term for term in where)
    return sql + " ORDER BY f.created DESC, f.flow_id DESC LIMIT ?", [*params, limit + 1]


# What makes a flow purgeable (see Journal.purge), with the status marks filled in:
# ``created < cut`` is implied by ``updated < cut`` (a flow changes after it starts) and
# lets the (created, flow_id) index find the candidates, oldest first.
_PURGEABLE = "status IN ({marks}) AND owner IS NULL AND created < ? AND updated < ?"


def _purge_sync(
    conn: sqlite3.Connection,
    statuses: list[str],
    cut: float,
    after: PurgeKey | None,
    limit: int,
) -> tuple[int, PurgeKey | None]:
    """One batch of :meth:`SqliteJournal.purge` on a connection of a worker thread.

    The candidates are read first, holding no lock (WAL readers never block the writer);
    the write transaction then checks each again and removes those that still qualify,
    events, mailbox and summary together, so the write lock is held for the deletes
    only and a reader sees a flow whole or not at all."""
    marks = ", ".join("?" * len(statuses))
    where = _PURGEABLE.format(marks=marks)
    params: list[Any] = [*statuses, cut, cut]
    sql = "SELECT created, flow_id FROM aioflow_flows WHERE " + where
    if after is not None:
        # Keyset, in a form whose first term is a range on created that the index serves.
        sql += " AND created >= ? AND (created > ? OR flow_id > ?)"
        params += [after[0], after[0], after[1]]
    rows = conn.execute(sql + " ORDER BY created, flow_id LIMIT ?", [*params, limit]).fetchall()
    if not rows:
        return 0, None
    ids = [flow_id for _, flow_id in rows]
    in_ids = "flow_id IN (" + ", ".join("?" * len(ids)) + ")"
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute(
            f"SELECT key, flow_id FROM aioflow_flows WHERE {in_ids} AND {where}",
            [*ids, *statuses, cut, cut],
        ).fetchall()
        gone = [flow_id for _, flow_id in found]
        if gone:
            keys = [key for key, _ in found]
            in_keys = "flow IN (" + ", ".join("?" * len(keys)) + ")"
            conn.execute(f"DELETE FROM aioflow_events WHERE {in_keys}", keys)
            in_gone = "flow_id IN (" + ", ".join("?" * len(gone)) + ")"
            mailbox = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'aioflow_mailbox'"
            ).fetchone()
            if mailbox is not None:
                conn.execute(f"DELETE FROM aioflow_mailbox WHERE {in_gone}", gone)
            conn.execute(f"DELETE FROM aioflow_flows WHERE {in_gone}", gone)
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    last: PurgeKey = (rows[-1][0], rows[-1][1])
    return len(gone), (last if len(rows) == limit else None)



def _events(
    flow_id: str, rows: Iterable[Sequence[Any]], codec: Codec, after: int = 0
) -> list[Event]:
    """The events that rows of ``_SELECT_EVENTS`` or ``_LOAD`` hold, after seq ``after``:
    a row with a ``started`` time holds two (see :data:`_EVENTS_TABLE`)."""
    events: list[Event] = []
    append = events.append
    for seq, time, kind_name, atom, state, attempt, progress, details, started in rows:
        kind = _KINDS[kind_name]
        if started is not None and seq - 1 > after:
            append(Event(flow_id, seq - 1, started, kind, atom, _RUNNING, attempt, 0.0, {}))
        append(
            stored_event(flow_id, seq, time, kind, atom, state, attempt, progress, details, codec)
        )
    return events


_RUNNING = decode_state(EventKind.ATOM, "RUNNING")


class _Plan(NamedTuple):
    """What a commit reads and writes before its events: the flows of its batch, its
    FLOW rows, the summaries it creates (values of :data:`_CREATE_FLOW`), the lookups
    (statement, values) that give the keys it does not know yet, the generations of its
    fenced flows and the last seqs of the others, and the first seq of each of those
    others in the batch."""

    flows: set[str]
    flow_rows: list[_Row]
    created: list[tuple[Any, ...]]
    finds: list[tuple[str, list[Any]]]
    firsts: dict[str, int]


def _finds(column: str, values: list[Any]) -> list[tuple[str, list[Any]]]:
    """The lookups of the flows whose ``column`` is in ``values`` (:data:`_FIND_BY`), in
    chunks of :data:`_FIND_CHUNK`."""
    if len(values) == 1:  # most commits: one flow's events
        return [(_FIND_ONE[column], values)]
    finds = []
    for start in range(0, len(values), _FIND_CHUNK):
        marks, padded = _in_list(values[start : start + _FIND_CHUNK])
        finds.append((_FIND_BY[column] + marks, padded))
    return finds


class SqliteJournal(WriterJournal):
    """A :class:`Journal` in a SQLite file that several processes may share.

    ``url`` is ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (a
    :class:`os.PathLike` is taken as the path). ``busy_timeout`` is how long, in seconds,
    a write waits for another process holding the file's write lock.
    """

    _completes_jobs = True

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        codec: Codec | str | None = None,
        busy_timeout: float = 30.0,
    ) -> None:
        if isinstance(url, os.PathLike):
            self.path = os.fspath(url)
            self.url = "sqlite:///" + self.path
        else:
            self.path = path_from_url(url)
            self.url = url
        # Fixed now, so that a later chdir does not move the journal.
        self._uri = Path(self.path).absolute().as_uri()
        self.codec = get_codec(codec)
        self._busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._writer: GroupWriter[_Row] | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        # Held by readers and by the multi-statement commit, so that a read on the shared
        # connection never runs inside that open transaction.
        self._lock = anyio.Lock()
        self._fences: dict[str, Fence] = {}
        # The integer keys of flows (aioflow_flows.key) this journal has met: the events'
        # rows name a flow by it. A key is never reused (AUTOINCREMENT).
        self._keys: dict[str, int] = {}
        self._retiring: dict[str, tuple[int, Fence]] = {}
        self._completing: dict[str, tuple[int, Callable[[], float]]] = {}
        self._completed: dict[str, bool] = {}
        self._beat: tuple[str, float] | None = None  # a heartbeat for the next commit
        self._mailbox_ready = False  # aioflow_mailbox known to exist (see _MAILBOX)
        self._inline: sqlite3.Connection | None = None
        # For work in worker threads (compaction, WAL checkpoints), one at a time.
        self._worker: sqlite3.Connection | None = None
        self._worker_lock = anyio.Lock()
        self._inline_rows = 0  # committed inline since the last WAL checkpoint began
        self._checkpointing = False
        self._wal_behind = False
        self._caught_up = 0.0  # monotonic() of the last catch-up (or its try)

    def __repr__(self) -> str:
        return f"SqliteJournal({self.url!r})"

    # ------------------------------------------------------------------ open and close

    async def open(self) -> None:
        if self._db is not None:
            raise JournalError(f"journal {self.url} is already open")
        # Asked first: SQLite opens a file it may not write read-only without a word, and
        # the first commit would fail instead.
        read_only = await anyio.to_thread.run_sync(self._read_only)
        if read_only is not None:
            raise self._read_only_error(read_only)
        db = await self._connect(create=True)
        try:
            if not await self._check_schema(db):
                await self._create_schema(db)
            await set_wal(db)
            await db.executescript(_PRAGMAS)
            await self._add_flows_created(db)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await db.close()
            if isinstance(exc, sqlite3.Error):
                raise await self._open_error(exc) from exc
            raise
        self._db = db
        try:
            self._inline = await anyio.to_thread.run_sync(self._connect_inline)
        except sqlite3.Error as exc:
            await self._close_db()
            raise await self._open_error(exc) from exc
        writer = self._new_writer(
            self._commit,
            name=self.url,
            commit_now=self._commit_now,
            idle=self._maintain,
            linger=_LINGER,
            linger_rows=_INLINE_ROWS,
        )
        await self._start_writer(writer, self._close_db)

    async def close(self) -> None:
        await self._stop_writer(self._close_db)

    def _connect_inline(self) -> sqlite3.Connection:
        inline = sqlite3.connect(
            self._uri + "?mode=rw",
            uri=True,
            isolation_level=None,
            check_same_thread=False,  # opened in a worker thread, used on the loop's
            timeout=0,
            cached_statements=len(_INLINE_STATEMENTS) + 16,
        )
        try:
            inline.executescript(_PRAGMAS + "PRAGMA wal_autocheckpoint=0;")
            for statement in _INLINE_STATEMENTS:
                # Compiled here, in a worker thread, and kept in the connection's cache;
                # without values it is then refused: nothing is written.
                with contextlib.suppress(sqlite3.ProgrammingError):
                    inline.execute(statement)
        except BaseException:
            inline.close()
            raise
        return inline

    async def _close_db(self) -> None:
        inline, self._inline = self._inline, None
        if inline is not None:
            inline.close()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()
        db, self._db = self._db, None
        if db is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await db.close()
                except sqlite3.Error as exc:
                    raise self._error("cannot close", exc) from exc

    async def _connect(self, *, create: bool) -> aiosqlite.Connection:
        # mode=rw: reading an unopened journal must never create the file.
        uri = self._uri + ("?mode=rwc" if create else "?mode=rw")
        try:
            return await aiosqlite.connect(
                uri,
                uri=True,
                isolation_level=None,  # autocommit: we say where transactions are
                timeout=self._busy_timeout,  # sets SQLite's busy_timeout
                cached_statements=len(_INSERT_EVENTS) + len(_INSERT_PAIRS) + 32,
            )
        except sqlite3.Error as exc:
            if create or await anyio.Path(self.path).exists():
                raise await self._open_error(exc) from exc
            raise JournalError(f"no journal at {self.path} ({self.url}): {exc}") from exc

    async def _check_schema(self, db: aiosqlite.Connection) -> bool:
        """True if the file holds an aioflow journal of our version, False if it is empty.

        Only reads, so a file that is not ours is left byte for byte as it was.
        """
        try:
            rows = await db.execute_fetchall("SELECT type, name FROM sqlite_master")
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
                raise JournalError(f"{self.path} is not a SQLite database ({exc})") from exc
            raise await self._open_error(exc) from exc  # e.g. a read-only file, or its folder
        # A jobboard may share the file (conductors need that for fencing): its tables
        # neither make the file foreign nor make it a journal.
        names = {name for _, name in rows if not name.startswith(_JOBBOARD_NAMES)}
        if not names:
            return False
        if "aioflow_meta" not in names:
            raise JournalError(
                f"{self.path} is a SQLite database but not an aioflow journal "
                "(it has no aioflow_meta table); refusing to touch it"
            )
        found = await db.execute_fetchall(
            "SELECT value FROM aioflow_meta WHERE key = 'schema_version'"
        )
        version = next(iter(found), (None,))[0]
        if version is None:
            raise JournalError(f"{self.path} has an aioflow_meta table without a schema_version")
        if version in ("1", "2", "3"):
            try:
                await self._migrate(db)
            except sqlite3.Error as exc:
                error = await self._open_error(exc)
                raise JournalError(
                    f"{self.path} is an aioflow journal of schema version {version}, which "
                    f"this version of aioflow moves to version {SCHEMA_VERSION} before it "
                    f"reads or writes it, and could not: {error} (opening it once where "
                    "it may be written migrates it)"
                ) from exc
        elif version != str(SCHEMA_VERSION):
            raise JournalError(
                f"{self.path} is an aioflow journal with schema version {version}; this "
                f"version of aioflow reads schema version {SCHEMA_VERSION} (and migrates "
                "versions 1 to 3); a newer aioflow wrote it: upgrade aioflow to open it"
            )
        missing = {"aioflow_events", "aioflow_flows"} - names
        if missing:
            raise JournalError(f"{self.path} is a damaged aioflow journal: no {sorted(missing)}")
        return True

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        """Bring a version 1, 2 or 3 journal to version 4, in one transaction: every
        process opening it at once migrates it once. Version 1 to 2 adds flow ownership; 2
        to 3 keys the events by an integer per flow (it copies them: a large journal takes
        a while, once); 3 to 4 adds a column (no row is rewritten)."""

        async def steps(db: aiosqlite.Connection) -> str | None:
            found = await db.execute_fetchall(
                "SELECT value FROM aioflow_meta WHERE key = 'schema_version'"
            )
            version = before = next(iter(found), (None,))[0]
            if version == "1":
                for statement in _MIGRATE_1_TO_2:
                    await db.execute(statement)
                version = "2"
            if version == "2":
                for statement in _MIGRATE_2_TO_3:
                    await db.execute(statement)
                version = "3"
            if version == "3":
                for statement in _MIGRATE_3_TO_4:
                    await db.execute(statement)
                return cast("str", before)
            return None  # another process migrated it meanwhile

        before = await immediate(db, steps)
        if before is not None:
            _LOG.info(
                "aioflow.journal_migrated",
                journal=self.url,
                schema_version=SCHEMA_VERSION,
                was=int(before),
            )

    async def _add_flows_created(self, db: aiosqlite.Connection) -> None:
        """Give a journal made before it the index that list_flows pages by (see
        :data:`_FLOWS_CREATED`); only a journal without it takes the write lock."""
        found = await db.execute_fetchall(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'aioflow_flows_created'"
        )
        if not found:

            async def create(db: aiosqlite.Connection) -> None:
                await db.execute(_FLOWS_CREATED)

            await immediate(db, create)

    async def _create_schema(self, db: aiosqlite.Connection) -> None:
        # WAL must be set outside a transaction, and only once the file is known to be
        # empty (it rewrites the header).
        await set_wal(db)
        await db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have created it between our check and our lock.
            if not await self._check_schema(db):
                for statement in _SCHEMA:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO aioflow_meta(key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            await db.execute("COMMIT")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await db.execute("ROLLBACK")
            raise

    def _error(self, doing: str, exc: BaseException) -> JournalError:
        return JournalError(f"journal {self.url}: {doing}: {exc}")

    async def _open_error(self, exc: sqlite3.Error) -> JournalError:
        """The error for ``exc``, met opening the file: it says that the journal is
        read-only when that is what stopped SQLite."""
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # the primary code
        if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM):
            read_only = await anyio.to_thread.run_sync(self._read_only)
            if read_only is None and code == sqlite3.SQLITE_READONLY:
                read_only = "SQLite may not write to it"
            if read_only is not None:
                return self._read_only_error(read_only, exc)
        return self._error("cannot open", exc)

    def _read_only(self) -> str | None:
        """What keeps this process from writing the journal: the file, one of the files
        SQLite keeps beside it, or their folder (None when nothing does). Other processes
        create and delete the -wal and -shm files as their connections come and go, so a
        file is read-only only when two looks, a moment apart, both say so (a worker
        thread runs this)."""
        why = self._read_only_now()
        if why is not None:
            sleep(0.02)
            why = self._read_only_now()
        return why

    def _read_only_now(self) -> str | None:
        path = Path(self.path).absolute()
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            # os.access says no for a missing file: it must be there before and after.
            if file.exists() and not _writable(file, os.W_OK) and file.exists():
                return f"the file {file} is read-only"
        folder = path.parent
        if folder.is_dir() and not _writable(folder, os.W_OK | os.X_OK):
            return (
                f"its folder {folder} is read-only (SQLite creates the journal's -wal and "
                "-shm files there)"
            )
        return None

    def _read_only_error(self, why: str, exc: BaseException | None = None) -> JournalError:
        detail = "" if exc is None else f" ({exc})"
        return JournalError(
            f"journal {self.url} is read-only: {why}{detail}. aioflow writes to the "
            "journal: fix the permissions (or mount the file system read-write), or open "
            "a journal at another path"
        )

    # ------------------------------------------------------------------------- writing

    async def _commit(self, batch: list[_Row]) -> dict[str, BaseException] | None:
        """Commit ``batch`` (the writer's callback): on the loop's thread in transactions
        of at most :data:`_INLINE_ROWS` rows when it can, else in aiosqlite's thread,
        which also finds the flows to refuse (a lost fence, a conflicting event)."""
        db = self._db
        assert db is not None
        rest = batch
        done = 0
        try:
            while done < len(batch) and self._commit_now(batch[done : done + _INLINE_ROWS]):
                done += _INLINE_ROWS
                rest = batch[done:]
                if rest:
                    await anyio.lowlevel.checkpoint()  # let the loop run between two
            if done:
                await self._maintain()
            if not rest:
                return None
            return await self._commit_threaded(db, rest)
        except (sqlite3.Error, ValueError, JournalError) as exc:  # ValueError: closed
            message = (
                str(exc)
                if isinstance(exc, JournalError)
                else f"journal {self.url}: cannot commit {len(rest)} events: {exc}"
            )
            raise CommitError(message, committed=min(done, len(batch))) from exc

    def _commit_now(self, batch: list[_Row]) -> bool:
        """The writer's fast path, run by a waiter for durability: commit a small batch
        at once on the loop's thread; False to leave it to the writer (the file is
        locked, a fence no longer holds, an event conflicts: its path sorts them out)."""
        if self._inline is None or len(batch) > _INLINE_ROWS:
            return False
        if self.large_until > self.durable:
            return False  # a large row: written in aiosqlite's thread, not on the loop's
        try:
            return self._commit_inline(batch)
        except sqlite3.IntegrityError:
            return False  # the writer's path commits the rest and names the conflict
        except sqlite3.Error as exc:
            raise self._error(f"cannot commit {len(batch)} events", exc) from exc

    async def _maintain(self) -> None:
        """Start a WAL checkpoint, which nothing waits for (the writer's idle callback,
        and after inline commits): once :data:`_CHECKPOINT_EVERY` rows were committed
        inline since the last one began, and, at most every :data:`_CATCH_UP_AFTER`
        seconds, when the last one met commits.

        Awaiting it held the writer up for the checkpoint and then for the busy loop to
        take its result back: 3-4 us a task over a 100k-task flow. The WAL starts over
        from its beginning only at a commit that follows a checkpoint which copied all of
        it; one that met commits did not, and under a steady stream of rows none does. A
        catch-up in a pause of the stream does.
        """
        if self._inline_rows >= _CHECKPOINT_EVERY:
            self._start_checkpoint()
        elif self._wal_behind and not self._checkpointing:
            now = monotonic()
            if now - self._caught_up >= _CATCH_UP_AFTER:
                self._caught_up = now  # not yet: the time of this try
                self._start_checkpoint()

    def _start_checkpoint(self) -> None:
        tg = self._tg
        if self._checkpointing or tg is None:
            return
        self._inline_rows = 0
        self._checkpointing = True
        tg.start_soon(self._checkpoint)

    async def _checkpoint(self) -> None:
        """Copy the WAL into the database file, in a worker thread (it fsyncs)."""
        whole = False
        try:
            async with self._worker_lock:
                worker = await self._worker_connection()
                whole = await anyio.to_thread.run_sync(_passive_checkpoint, worker)
        except (sqlite3.Error, JournalError):
            pass  # best effort: the next one catches up
        finally:
            self._checkpointing = False
            # Rows committed meanwhile are only in the WAL (counted again since this one
            # began): it cannot start over at the next commit.
            self._wal_behind = not whole or self._inline_rows > 0
            if not self._wal_behind:
                self._caught_up = monotonic()

    def _commit_inline(self, batch: list[_Row]) -> bool:
        """Commit a few hundred rows at most on the event loop's thread; False if the file
        was locked, or a flow of the batch is refused (the writer's path names why).

        A hop to aiosqlite's thread and back costs more than writing a few hundred rows
        to the WAL (no fsync with synchronous=NORMAL), and while the loop is busy the hop
        waits for the GIL: a commit of 32 rows was seen taking 25 ms that way. This
        connection never waits for a lock (busy_timeout 0: a busy file sends the commit
        to the worker thread) and never checkpoints the WAL (another connection does, in
        a worker thread, see :data:`_CHECKPOINT_EVERY`), so it cannot hold up the loop
        for long.
        """
        inline = self._inline
        assert inline is not None
        alone = self._commit_alone(inline, batch)
        if alone is not None:
            return alone
        plan = self._plan(batch)
        try:
            inline.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return False
            raise
        beat = self._beat
        jobs: list[tuple[float, str, int]] = []
        try:
            if plan.created:
                inline.executemany(_CREATE_FLOW, plan.created)
            # No cursor is kept: a failure's traceback would keep the file open.
            found = [row for sql, values in plan.finds for row in inline.execute(sql, values)]
            if plan.finds and self._refusals(plan, found):
                inline.execute("ROLLBACK")  # the writer's path says why
                self._forget(plan)
                return False
            for statement, rows in self._inserts(batch, plan):
                inline.executemany(statement, rows)
            if plan.flow_rows:  # only a FLOW event can complete a job
                jobs = self._completions(batch)
            done = [job[1] for job in jobs if inline.execute(_COMPLETE_JOB, job).rowcount]
            inline.execute("COMMIT")
        except BaseException:
            if inline.in_transaction:
                inline.execute("ROLLBACK")
            self._forget(plan)
            raise
        if jobs:
            self._completed_with(jobs, done)
        if beat is not None:
            self._beat_sent(beat)
        if plan.flow_rows:
            self._rested(plan)
        self._inline_rows += len(batch)
        return True

    def _commit_alone(self, inline: sqlite3.Connection, batch: list[_Row]) -> bool | None:
        """Commit the most common batch in one statement, with no transaction of its own
        to begin and end: a few rows, all of one flow whose key is known, no FLOW event
        among them, no heartbeat to carry. None when ``batch`` is not one; False when the
        file is locked or the fence failed (the writer's path says why).

        A strict chain's step commits its two events this way, as one paired row: 3
        statements fewer than ``BEGIN IMMEDIATE``, the fence's read, the events and
        ``COMMIT``."""
        if len(batch) > _ALONE_ROWS or self._beat is not None:
            return None
        flow_id = batch[0][0]
        key = self._keys.get(flow_id)
        if key is None:
            return None
        for row in batch:
            if row[0] != flow_id or row[3] == "FLOW":
                return None
        fences = self._fences
        fence = fences.get(flow_id)
        if fence is None:
            return None  # the writer's path checks that its events come after the last
        rows, pairs = _values(batch, {flow_id: key}, fences)
        if rows and pairs:
            return None  # two statements: the writer's transaction holds them
        values = pairs or rows
        n = len(values) // 9
        if n & (n - 1):
            return None  # few statement texts, which stay prepared
        values += (key, fence.generation)
        statement = (_INSERT_FENCED_PAIRS if pairs else _INSERT_FENCED)[n]
        try:
            if inline.execute(statement, values).rowcount != n:
                return False  # the generation moved on, or the flow is gone
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return False  # (BUSY_SNAPSHOT too: another process wrote first)
            raise
        self._inline_rows += n
        return True

    async def _commit_threaded(
        self, db: aiosqlite.Connection, batch: list[_Row]
    ) -> dict[str, BaseException]:
        """Commit ``batch`` in aiosqlite's thread, which waits for the file's lock: one
        transaction of the same statements as an inline commit. The rows of a flow whose
        fence no longer holds, that is not in the journal, or that conflict with committed
        events, are left out (the transaction is tried again without them); returns those
        flows with their errors.
        """
        refused: dict[str, BaseException] = {}
        # Readers on this connection must not see the open transaction.
        async with self._lock:
            while batch:
                beat = self._beat
                plan = self._plan(batch)
                await db.execute("BEGIN IMMEDIATE")
                try:
                    if plan.created:
                        await db.executemany(_CREATE_FLOW, plan.created)
                    found: list[Any] = []
                    for sql, values in plan.finds:
                        found += await db.execute_fetchall(sql, values)
                    lost = self._refusals(plan, found)
                    if not lost:
                        for statement, rows in self._inserts(batch, plan):
                            await db.executemany(statement, rows)
                        jobs = self._completions(batch)
                        done = []
                        for job in jobs:
                            if (await db.execute(_COMPLETE_JOB, job)).rowcount:
                                done.append(job[1])
                        await db.execute("COMMIT")
                        self._completed_with(jobs, done)
                        self._beat_sent(beat)
                        self._rested(plan)
                        break
                    await db.execute("ROLLBACK")
                    self._forget(plan)
                except sqlite3.IntegrityError:
                    if db.in_transaction:
                        await db.execute("ROLLBACK")
                    self._forget(plan)
                    # A run that lost its flow meets the new owner's events: say so.
                    lost = await self._conflicts(db, batch)
                except BaseException:
                    if db.in_transaction:
                        await db.execute("ROLLBACK")
                    self._forget(plan)
                    raise
                if not lost:
                    raise JournalError(f"journal {self.url}: a commit was refused for no flow")
                refused.update(lost)
                batch = [row for row in batch if row[0] not in lost]
        return refused

    def _plan(self, batch: list[_Row]) -> _Plan:
        """What a commit of ``batch`` reads and writes before its events (see
        :class:`_Plan`)."""
        flow_rows = [row for row in batch if row[3] == "FLOW"]  # few: a C-speed filter
        flows = {row[0] for row in batch}
        keys = self._keys
        fences = self._fences
        # A flow that no fence guards is written by whoever appends to it: an event that
        # does not come after its last one conflicts (a pair's start, which no key of
        # the table holds, included; see _values).
        firsts: dict[str, int] = {}
        if not flows <= fences.keys():
            for row in batch:
                if row[0] not in fences:
                    first = firsts.get(row[0])
                    if first is None or row[1] < first:
                        firsts[row[0]] = row[1]
        if not flow_rows and len(flows) == 1:  # most commits: a run's events
            (flow_id,) = flows
            key = keys.get(flow_id)
            if key is not None:
                finds = _finds("key", [key]) if firsts else [(_FIND_FENCED, [key])]
                return _Plan(flows, flow_rows, [], finds, firsts)
        created: list[tuple[Any, ...]] = []
        by_id: dict[str, None] = {}
        for row in flow_rows:
            if row[9] is not None:  # the flow's first event: its summary is made
                fence = fences.get(row[0])
                owner, generation = (None, 0) if fence is None else (fence.owner, fence.generation)
                created.append((row[0], row[9], row[5], row[10], row[2], row[2], owner, generation))
                by_id[row[0]] = None
        by_key: list[int] = []
        for flow_id in flows:
            key = keys.get(flow_id)
            if key is None:
                if flow_id not in by_id and flow_id not in fences:
                    # Events without a start (a caller's own appends): a summary without
                    # a name keys them, unless the flow has one (as the memory journal).
                    when = batch[0][2]
                    created.append((flow_id, None, None, None, when, when, None, 0))
                by_id[flow_id] = None
            elif flow_id not in by_id:
                by_key.append(key)
        finds = _finds("key", by_key) if by_key else []
        if by_id:
            finds += _finds("flow_id", list(by_id))
        return _Plan(flows, flow_rows, created, finds, firsts)

    def _refusals(self, plan: _Plan, found: Sequence[Sequence[Any]]) -> dict[str, BaseException]:
        """Learn the keys in ``found`` (rows of :data:`_FIND_BY`, read in the commit's
        transaction, so that no claim can change before it ends), and return the flows
        of ``plan`` whose rows must be refused, with their errors: a fence whose
        generation moved on, a flow that is not in the journal, an event of a flow no
        fence guards that does not come after the flow's last one."""
        keys = self._keys
        fences = self._fences
        current: dict[str, tuple[int, str | None, int]] = {}
        for key, flow_id, generation, owner, last in found:
            keys[flow_id] = key
            current[flow_id] = (generation, owner, last)
        refused: dict[str, BaseException] = {}
        for flow_id in plan.flows:
            fence = fences.get(flow_id)
            if fence is not None:
                generation, owner, _ = current.get(flow_id, (None, None, 0))
                if generation != fence.generation:
                    refused[flow_id] = taken_over(flow_id, fence, owner)
            elif flow_id not in current:  # (a key remembered for it names no flow now)
                keys.pop(flow_id, None)
                refused[flow_id] = JournalError(
                    f"journal {self.url}: no flow {flow_id} to add events to (it was never "
                    "started in this journal, or it was purged)"
                )
            else:
                first = plan.firsts.get(flow_id)  # None: it had a fence when planned
                if first is not None and first <= current[flow_id][2]:
                    refused[flow_id] = self._conflict_error(flow_id, first)
        return refused

    def _rested(self, plan: _Plan) -> None:
        """After a commit: forget the keys of the flows it brought to rest (looked up
        again if they ever move on), so that a process running flow after flow does not
        keep one key per flow it ever ran."""
        keys = self._keys
        for row in plan.flow_rows:
            if row[5] in _RESTING:
                keys.pop(row[0], None)
        if len(keys) > _KEYS_KEPT:  # flows that stopped without resting here
            keys.clear()

    def _forget(self, plan: _Plan) -> None:
        """After a rollback: the keys of the flows ``plan`` created are not theirs."""
        for row in plan.created:
            self._keys.pop(row[0], None)

    def _inserts(self, batch: list[_Row], plan: _Plan) -> _Steps:
        """The statements that commit ``batch`` once its flows' keys are known: its
        events, the status of each flow that has a FLOW event in it, and a heartbeat."""
        keys = self._keys
        steps = _event_steps(batch, keys, self._fences)
        if plan.flow_rows:
            # The last FLOW event's; a flow that comes to rest gives up its owner.
            status = {
                row[0]: (row[5], row[2], row[5] in _RESTING, keys[row[0]])
                for row in plan.flow_rows
            }
            steps.append((_SET_STATUS, list(status.values())))
        if self._beat is not None:
            steps.append((_HEARTBEAT, [self._beat]))
        return steps

    def beat_on_commit(self, owner: str, expires: float) -> bool:
        # The next commit (a new flow's first events) or take carries it: a flow and its
        # owner's heartbeat land in one transaction, for no round trip of their own.
        self._beat = (owner, expires)
        return True

    def _beat_sent(self, beat: tuple[str, float] | None) -> None:
        """A commit carrying ``beat`` succeeded."""
        if beat is not None and self._beat is beat:
            self._beat = None

    async def _conflicts(
        self, db: aiosqlite.Connection, batch: list[_Row]
    ) -> dict[str, BaseException]:
        """The flows whose rows in ``batch`` repeat a committed (flow, seq), with errors
        naming it."""
        by_flow: dict[str, set[int]] = {}
        found: dict[str, BaseException] = {}
        for row in batch:
            seqs = by_flow.setdefault(row[0], set())
            if row[1] in seqs:
                found[row[0]] = self._conflict_error(row[0], row[1])
            seqs.add(row[1])
        for flow_id, seqs in by_flow.items():
            if flow_id in found:
                continue
            rows = await db.execute_fetchall(
                "SELECT seq, started FROM aioflow_events WHERE flow = (SELECT key FROM"
                " aioflow_flows WHERE flow_id = ?) AND seq BETWEEN ? AND ?",
                (flow_id, min(seqs), max(seqs) + 1),  # a pair's start is at its seq - 1
            )
            stored = {seq for seq, _ in rows}
            stored.update(seq - 1 for seq, started in rows if started is not None)
            taken = seqs & stored
            if taken:
                found[flow_id] = self._conflict_error(flow_id, min(taken))
        return found

    def _conflict_error(self, flow_id: str, seq: int) -> JournalError:
        return JournalError(
            f"conflicting write to flow {flow_id} at seq {seq} in journal {self.url}: that "
            "event is already there (is another engine writing this flow?)"
        )

    # ------------------------------------------------------------------------- reading

    async def _fetch_shared(self, sql: str, params: Iterable[Any]) -> Iterable[Any]:
        db = self._db
        if db is None:
            raise JournalError(f"journal {self.url} was closed during a read")
        async with self._lock:
            return await db.execute_fetchall(sql, params)

    async def _reading(self) -> tuple[_Fetch | None, aiosqlite.Connection | None]:
        """How to read now: the open connection, or a temporary one the caller closes.

        The fetcher is None when the file exists but is still empty. A read on the open
        journal first waits until what was appended before it is committed, so that it
        sees it (the writer may be letting rows gather, see :data:`_LINGER`).
        """
        if self._db is not None:
            writer = self._writer
            if writer is not None and writer.error is None and writer.durable < writer.appended:
                with contextlib.suppress(JournalError, LeaseLostError):  # the read goes on
                    await writer.wait_durable(writer.appended)
            return self._fetch_shared, None
        db = await self._connect(create=False)
        try:
            present = await self._check_schema(db)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await db.close()
            raise
        return (db.execute_fetchall if present else None), db

    async def _query(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        fetch, temporary = await self._reading()
        try:
            return [] if fetch is None else list(await fetch(sql, params))
        except (sqlite3.Error, ValueError) as exc:
            raise self._error("cannot read", exc) from exc
        finally:
            if temporary is not None:
                with anyio.CancelScope(shield=True):
                    await temporary.close()

    async def flows(self, status: FlowStatus | None = None) -> list[FlowSummary]:
        if status is None:
            rows = await self._query(_SELECT_FLOWS + " ORDER BY f.created, f.rowid")
        else:
            rows = await self._query(
                _SELECT_FLOWS + " AND f.status = ? ORDER BY f.created, f.rowid", (status.value,)
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
        rows = await self._query(*_list_query(status, name, limit, before))
        now = self.clock()
        return page([FlowSummary.from_row(row, now) for row in rows], limit)

    async def summary(self, flow_id: str) -> FlowSummary:
        rows = await self._query(_SELECT_FLOWS + " AND f.flow_id = ?", (flow_id,))
        if not rows:
            raise NotFoundError(f"no flow {flow_id} in journal {self.url}")
        return FlowSummary.from_row(rows[0], self.clock())

    async def orphans(self) -> list[FlowSummary]:
        now = self.clock()
        rows = await self._query(
            _SELECT_FLOWS + " AND f.status IN (?, ?) AND (f.owner IS NULL OR o.expires IS NULL"
            " OR o.expires <= ?) ORDER BY f.created, f.rowid",
            (*sorted(status.value for status in ACTIVE), now),
        )
        return [FlowSummary.from_row(row, now) for row in rows]

    # ----------------------------------------------------------------------- ownership

    async def _write(
        self, doing: str, steps: Callable[[aiosqlite.Connection], Awaitable[Any]]
    ) -> Any:
        """Run ``steps`` in one IMMEDIATE transaction on the open journal's connection."""
        db = self._db
        if db is None:
            raise JournalError(f"journal {self.url} is not open")
        try:
            async with self._lock:
                return await immediate(db, steps)
        except (sqlite3.Error, ValueError) as exc:
            raise self._error(doing, exc) from exc

    async def take(self, flow_id: str, owner: str) -> tuple[int, int]:
        now = self.clock()

        async def steps(db: aiosqlite.Connection) -> tuple[int, int]:
            rows = list(
                await db.execute_fetchall(
                    "SELECT f.owner, f.generation, " + _LAST_SEQ + ", o.expires, f.key FROM"
                    " aioflow_flows f LEFT JOIN aioflow_owners o USING (owner)"
                    " WHERE f.flow_id = ?",
                    (flow_id,),
                )
            )
            if not rows:
                raise NotFoundError(f"no flow {flow_id} in journal {self.url}")
            current, generation, last_seq, expires, key = rows[0]
            if current is not None and current != owner and expires is not None and expires > now:
                raise FlowBusyError(flow_id, current, expires)
            await db.execute(
                "UPDATE aioflow_flows SET owner = ?, generation = ? WHERE key = ?",
                (owner, generation + 1, key),
            )
            self._keys[flow_id] = key
            if self._beat is not None:  # the taker's heartbeat, in the same transaction
                await db.execute(_HEARTBEAT, self._beat)
            return generation + 1, last_seq

        beat = self._beat
        result: tuple[int, int] = await self._write(f"cannot take flow {flow_id}", steps)
        self._beat_sent(beat)
        return result

    async def heartbeat(self, owner: str, expires: float) -> None:
        async def steps(db: aiosqlite.Connection) -> None:
            await db.execute(_HEARTBEAT, (owner, expires))
            await db.execute(
                "DELETE FROM aioflow_owners WHERE expires < ?", (self.clock() - _OWNERS_KEPT,)
            )

        await self._write("cannot renew the heartbeat of engine " + owner, steps)

    async def disown(self, flow_id: str, owner: str, generation: int) -> bool:
        async def steps(db: aiosqlite.Connection) -> bool:
            cursor = await db.execute(
                "UPDATE aioflow_flows SET owner = NULL WHERE flow_id = ? AND owner = ?"
                " AND generation = ?",
                (flow_id, owner, generation),
            )
            return bool(cursor.rowcount)

        done: bool = await self._write(f"cannot give up flow {flow_id}", steps)
        return done

    async def post_message(
        self, flow_id: str, topic: str, message: Any, *, key: str | None = None, time: float
    ) -> int | None:
        text = await encode_message(self.codec, flow_id, topic, message)
        values = (flow_id, topic, key, text, time)

        async def steps(db: aiosqlite.Connection) -> int | None:
            if not self._mailbox_ready:
                for statement in _MAILBOX:
                    await db.execute(statement)
            cursor = await db.execute(_POST, values)
            if cursor.rowcount == 1:
                return cursor.lastrowid
            found = await db.execute_fetchall(
                "SELECT 1 FROM aioflow_flows WHERE flow_id = ?", (flow_id,)
            )
            if not list(found):
                raise NotFoundError(f"no flow {flow_id} in journal {self.url}")
            return None  # the key was used

        doing = f"cannot send to flow {flow_id}"
        try:
            stored: int | None = await self._write(doing, steps)
        except NotFoundError:
            # A flow this journal was handed is found once its first events are in.
            if not await settle_appends(self):
                raise
            stored = await self._write(doing, steps)
        self._mailbox_ready = True
        return stored

    async def _read_mail(self, sql: str, params: Iterable[Any]) -> list[Any]:
        """Rows of a query on the mailbox; none when the file has no mailbox yet (nothing
        was ever sent to it, see :data:`_MAILBOX`)."""
        try:
            return await self._query(sql, params)
        except JournalError as exc:
            cause = exc.__cause__
            if isinstance(cause, sqlite3.OperationalError) and "no such table" in str(cause):
                return []
            raise

    async def next_message(
        self, flow_id: str, topic: str, after: int = 0
    ) -> tuple[int, Any] | None:
        rows = await self._read_mail(
            "SELECT id, message FROM aioflow_mailbox WHERE flow_id = ? AND topic = ?"
            " AND id > ? ORDER BY id LIMIT 1",
            (flow_id, topic, after),
        )
        if not rows:
            return None
        return int(rows[0][0]), self.codec.decode(rows[0][1])

    async def mail_topics(self, flow_id: str, after: Mapping[str, int]) -> set[str]:
        # The newest id of each topic, from the (flow_id, topic, id) index alone.
        rows = await self._read_mail(
            "SELECT topic, max(id) FROM aioflow_mailbox WHERE flow_id = ? GROUP BY topic",
            (flow_id,),
        )
        return {topic for topic, newest in rows if newest > after.get(topic, 0)}

    async def mail_since(self, after: int | None) -> tuple[int, list[tuple[str, str]]]:
        if after is None:
            rows = await self._read_mail("SELECT coalesce(max(id), 0) FROM aioflow_mailbox", ())
            return (int(rows[0][0]) if rows else 0), []
        rows = await self._read_mail(
            "SELECT id, flow_id, topic FROM aioflow_mailbox WHERE id > ? ORDER BY id"
            f" LIMIT {MAIL_BATCH}",
            (after,),
        )
        if not rows:
            return after, []
        return int(rows[-1][0]), [(str(f), str(t)) for _, f, t in rows]

    async def events(self, flow_id: str, *, after: int = 0) -> AsyncIterator[Event]:
        fetch, temporary = await self._reading()
        try:
            while fetch is not None:
                try:
                    page = list(await fetch(_SELECT_EVENTS, (flow_id, after, _PAGE)))
                except (sqlite3.Error, ValueError) as exc:
                    raise self._error(f"cannot read flow {flow_id}", exc) from exc
                for event in _events(flow_id, page, self.codec, after):
                    yield event
                if len(page) < _PAGE:
                    return
                after = page[-1][0]
        finally:
            if temporary is not None:
                with anyio.CancelScope(shield=True):
                    await temporary.close()

    async def load(self, flow_id: str) -> list[Event]:
        fetch, temporary = await self._reading()
        try:
            rows = [] if fetch is None else list(await fetch(_LOAD, (flow_id,)))
        except (sqlite3.Error, ValueError) as exc:
            raise self._error(f"cannot read flow {flow_id}", exc) from exc
        finally:
            if temporary is not None:
                with anyio.CancelScope(shield=True):
                    await temporary.close()
        if not rows:
            raise NotFoundError(f"no flow {flow_id} in journal {self.url}")
        return _events(flow_id, rows, self.codec)

    async def _purge_batch(
        self, statuses: frozenset[FlowStatus], cut: float, after: PurgeKey | None, limit: int
    ) -> tuple[int, PurgeKey | None]:
        values = sorted(status.value for status in statuses)
        limit = min(limit, _MAX_VARIABLES - len(values) - 2)
        done: tuple[int, PurgeKey | None] = await self._on_worker(
            "cannot purge flows", (0, None), _purge_sync, values, cut, after, limit
        )
        return done

    async def _count_purgeable(self, statuses: frozenset[FlowStatus], cut: float) -> int:
        values = sorted(status.value for status in statuses)
        marks = ", ".join("?" * len(values))
        sql = "SELECT count(*) FROM aioflow_flows WHERE " + _PURGEABLE.format(marks=marks)

        def count(conn: sqlite3.Connection) -> int:
            return int(conn.execute(sql, [*values, cut, cut]).fetchone()[0])

        found: int = await self._on_worker("cannot count the flows to purge", 0, count)
        return found

    async def _on_worker(self, doing: str, empty: Any, work: Callable[..., Any], *args: Any) -> Any:
        """``work(connection, *args)`` in a worker thread, one call at a time, on the open
        journal's worker connection (else on one of its own); ``empty`` when the file
        holds no journal yet."""
        async with self._worker_lock:
            try:
                if self._db is not None:
                    worker = await self._worker_connection()
                    return await anyio.to_thread.run_sync(work, worker, *args)
                conn = await anyio.to_thread.run_sync(self._connect_worker)
                try:
                    return await anyio.to_thread.run_sync(work, conn, *args)
                finally:
                    conn.close()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return empty
                raise self._error(doing, exc) from exc
            except sqlite3.Error as exc:
                raise self._error(doing, exc) from exc

    async def compact(
        self, flow_id: str, *, keep: int | None = 1, before: float | None = None
    ) -> int:
        check_keep(keep, before)
        # In a worker thread, on a connection of its own, in one IMMEDIATE transaction:
        # the read, the replay, the delete and the insert are one atomic step for every
        # process, the loop is never held up, and the writer's commits never land inside.
        async with self._worker_lock:
            if self._db is None:
                conn = await anyio.to_thread.run_sync(self._connect_worker)
                try:
                    return await anyio.to_thread.run_sync(
                        self._compact_sync, conn, flow_id, keep, before
                    )
                finally:
                    conn.close()
            worker = await self._worker_connection()
            return await anyio.to_thread.run_sync(self._compact_sync, worker, flow_id, keep, before)

    async def _worker_connection(self) -> sqlite3.Connection:
        """The open journal's connection for worker threads (hold ``_worker_lock``)."""
        if self._worker is None:
            self._worker = await anyio.to_thread.run_sync(self._connect_worker)
        return self._worker

    def _connect_worker(self) -> sqlite3.Connection:
        try:
            return sqlite3.connect(
                self._uri + "?mode=rw",
                uri=True,
                isolation_level=None,
                check_same_thread=False,  # used by one worker thread at a time
                timeout=self._busy_timeout,
            )
        except sqlite3.Error as exc:
            raise JournalError(f"no journal at {self.path} ({self.url}): {exc}") from exc

    def _compact_sync(
        self, conn: sqlite3.Connection, flow_id: str, keep: int | None, before: float | None
    ) -> int:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = conn.execute(
                    "SELECT key FROM aioflow_flows WHERE flow_id = ?", (flow_id,)
                ).fetchone()
                rows = [] if found is None else conn.execute(_LOAD_KEY, found).fetchall()
                if not rows:
                    raise NotFoundError(f"no flow {flow_id} in journal {self.url}")
                (key,) = found
                events = _events(flow_id, rows, self.codec)
                plan = plan_compaction(events, keep, before)
                if plan is None:
                    return 0
                n, folded = plan
                conn.execute(
                    "DELETE FROM aioflow_events WHERE flow = ? AND seq <= ?", (key, folded.seq)
                )
                # A row that paired a start folded away with the event after it keeps
                # that event alone.
                conn.execute(
                    "UPDATE aioflow_events SET started = NULL WHERE flow = ? AND seq = ?",
                    (key, folded.seq + 1),
                )
                conn.execute(
                    _INSERT_EVENT,
                    (
                        key,
                        folded.seq,
                        folded.time,
                        folded.kind.value,
                        None,
                        None,
                        0,
                        None,
                        self.codec.encode(folded.details),
                    ),
                )
                conn.execute("COMMIT")
                return n - 1
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise NotFoundError(f"no flow {flow_id} in journal {self.url}") from exc
            raise self._error(f"cannot compact flow {flow_id}", exc) from exc
        except sqlite3.Error as exc:
            raise self._error(f"cannot compact flow {flow_id}", exc) from exc

    async def get_meta(self, key: str) -> str | None:
        rows = await self._query("SELECT value FROM aioflow_meta WHERE key = ?", (key,))
        return cast("str", rows[0][0]) if rows else None

    async def append_after(self, flow_id: str, last_seq: int, events: Sequence[Event]) -> bool:
        if self._db is None:
            raise JournalError(f"journal {self.url} is not open")
        fence = self._fences.get(flow_id)
        if fence is not None and fence.lost:
            raise fence.error(flow_id)
        # Encoded first: a value the codec refuses keeps nothing.
        rows = [encode_row(event, self.codec) for event in events]
        # Its own connection: the shared one carries the group writer's statements, which
        # must not land inside (or be rolled back with) this transaction.
        db = await self._connect(create=False)
        try:
            await db.execute("BEGIN IMMEDIATE")
            found = list(
                await db.execute_fetchall(
                    "SELECT f.key, " + _LAST_SEQ + ", f.owner FROM aioflow_flows f"
                    " WHERE f.flow_id = ?",
                    (flow_id,),
                )
            )
            key, seq, owner = found[0] if found else (None, 0, None)
            # Not while an engine has taken the flow: it may be about to write it.
            if seq != last_seq or owner is not None:
                await db.execute("ROLLBACK")
                return False
            if key is None:  # a flow these events start
                first = next((row for row in rows if row[9] is not None), None)
                name, status, ref = (None, None, None)
                if first is not None:
                    name, status, ref = first[9], first[5], first[10]
                when = rows[0][2] if rows else self.clock()
                cursor = await db.execute(
                    _CREATE_FLOW, (flow_id, name, status, ref, when, when, None, 0)
                )
                key = cursor.lastrowid
            assert key is not None
            for statement, values in _event_steps(rows, {flow_id: key}) if rows else ():
                await db.executemany(statement, values)
            changes = [row for row in rows if row[3] == "FLOW"]
            if changes:  # the last one's status
                last = changes[-1]
                await db.execute(_SET_STATUS, (last[5], last[2], last[5] in _RESTING, key))
            await db.execute("COMMIT")
            return True
        except sqlite3.Error as exc:
            raise self._error(f"cannot append to flow {flow_id}", exc) from exc
        finally:
            with anyio.CancelScope(shield=True):
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                await db.close()

    async def set_meta_default(self, key: str, value: str) -> str:
        db = self._db
        if db is None:
            raise JournalError(f"journal {self.url} is not open")
        try:
            # The lock keeps these two statements out of the writer's open transaction.
            async with self._lock:
                await db.execute(
                    "INSERT INTO aioflow_meta(key, value) VALUES (?, ?)"
                    " ON CONFLICT(key) DO NOTHING",
                    (key, value),
                )
                rows = list(
                    await db.execute_fetchall(
                        "SELECT value FROM aioflow_meta WHERE key = ?", (key,)
                    )
                )
        except (sqlite3.Error, ValueError) as exc:
            raise self._error(f"cannot set {key!r}", exc) from exc
        return cast("str", rows[0][0])
