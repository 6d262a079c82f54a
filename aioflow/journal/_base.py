"""The small protocol every journal backend implements.

A journal is an append-only log of :class:`~aioflow.Event` per flow. The engine hands
events over with :meth:`Journal.append`, which never awaits; a backend commits what is
pending in groups and publishes how far the log is durable (``durable``, a count of
appended events). :meth:`Journal.wait_durable` lets the engine wait for a given append
to be committed (the ``strict`` durability mode waits only where an atom would build on
it).

Beside its events, each flow has a mailbox: messages sent to it by topic, from any
process (:meth:`Journal.post_message`), kept apart from the events so that a send never
takes a seq that the flow's owner is about to write.
"""

from __future__ import annotations

import abc
import base64
import binascii
import contextlib
import json
import math
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeAlias

import anyio.lowlevel
import anyio.to_thread

from .._codec import Codec, Encoded, size_hint
from .._errors import JournalError, LeaseLostError, NotFoundError, SerializationError
from .._events import Event, EventKind
from .._log import get_logger
from .._replay import compaction_cut, replay, snapshot
from .._states import AtomState, FlowStatus
from .._values import OFF_LOOP_BYTES

if TYPE_CHECKING:
    from datetime import timedelta

_LOG = get_logger("aioflow.journal")

ACTIVE = frozenset({FlowStatus.RUNNING, FlowStatus.REVERTING})
"""The statuses in which a flow has an owner running it (else it rests, or is PENDING)."""

PURGEABLE = frozenset({FlowStatus.SUCCESS, FlowStatus.REVERTED, FlowStatus.FAILED})
"""The statuses :meth:`Journal.purge` removes flows in: the final ones."""

PurgeKey: TypeAlias = tuple[float, str]
"""Where a purge has got to: the (created, flow id) of the last flow it looked at."""


@dataclass(frozen=True, slots=True)
class FlowSummary:
    """One row of :meth:`Journal.flows`: what a flow is, how it stands and who runs it.

    ``owner`` is the id of the engine that took the flow last (None once it rests or was
    given up), ``generation`` counts the takings, ``lease_expires`` is when the owner's
    heartbeat runs out unless renewed, and ``orphaned`` is true for a RUNNING or
    REVERTING flow that no live engine owns: its process died (or lost its journal), and
    a resume, or an engine with ``recover=True``, may take it over.
    """

    flow_id: str
    name: str
    status: FlowStatus
    ref: str | None
    created: float
    updated: float
    last_seq: int
    owner: str | None = None
    generation: int = 0
    lease_expires: float | None = None
    orphaned: bool = False

    @classmethod
    def from_row(cls, row: Sequence[Any], now: float) -> FlowSummary:
        """The summary a stored row (flow_id, name, status, ref, created, updated,
        last_seq, owner, generation, lease_expires) holds at time ``now``; a flow with no
        status yet is PENDING."""
        flow_id, name, status, ref, created, updated, last_seq, owner, generation, expires = row
        status = FlowStatus.PENDING if status is None else FlowStatus(status)
        return cls(
            flow_id=flow_id,
            name=name,
            status=status,
            ref=ref,
            created=created,
            updated=updated,
            last_seq=last_seq,
            owner=owner,
            generation=generation or 0,
            lease_expires=expires,
            orphaned=is_orphaned(status, owner, expires, now),
        )


def is_orphaned(status: FlowStatus, owner: str | None, expires: float | None, now: float) -> bool:
    """True when a flow in ``status`` needs an owner and none is alive at ``now``."""
    return status in ACTIVE and (owner is None or expires is None or expires <= now)


class Fence:
    """A run's ownership of a flow, which the journal checks before it keeps the flow's
    events (fencing).

    An engine takes a flow (:meth:`Journal.take`, or by creating it) and gives the
    journal a fence with the generation it got (:meth:`Journal.set_fence`). Every commit
    holding that flow's events checks, in the same transaction, that the flow's
    generation is still ``generation``. If it moved on (another engine took the flow over
    because this one's lease expired), or the commit met a conflicting event, the
    flow's events are dropped, and only them: the other flows of the batch are committed.
    The fence is then lost for good: every later append for the flow raises
    :attr:`failure`, and ``on_lost`` is called (the engine stops that run). A commit
    that fails for everyone (a lost connection, a full disk) loses the fences of the
    flows whose events it held, with the storage error as their failure.
    """

    __slots__ = ("failure", "generation", "on_lost", "owner")

    def __init__(
        self,
        owner: str,
        generation: int,
        *,
        on_lost: Callable[[BaseException], object] | None = None,
    ) -> None:
        self.owner = owner
        self.generation = generation
        self.on_lost = on_lost
        self.failure: BaseException | None = None

    def __repr__(self) -> str:
        state = "lost" if self.lost else "held"
        return f"Fence({self.owner}, generation {self.generation}, {state})"

    @property
    def lost(self) -> bool:
        """True once the journal refused (or failed to keep) the flow's events."""
        return self.failure is not None

    def lose(self, error: BaseException) -> None:
        """Mark the ownership lost (once) with ``error`` and tell ``on_lost``."""
        if self.failure is None:
            self.failure = error
            if self.on_lost is not None:
                self.on_lost(error)

    def error(self, flow_id: str) -> BaseException:
        """The error an append for ``flow_id`` raises once the fence is lost."""
        if self.failure is not None:
            return self.failure
        return lease_lost(flow_id, self.owner, self.generation)


def taken_over(flow_id: str, fence: Fence, by: str | None) -> LeaseLostError:
    """The error of a fence whose flow another owner (``by``, when known) took over."""
    if by is None or by == fence.owner:
        return lease_lost(flow_id, fence.owner, fence.generation)
    return LeaseLostError(
        f"flow {flow_id} was taken over by engine {by} (the lease of engine {fence.owner}, "
        f"generation {fence.generation}, had expired); this engine may not write one more "
        "event of it",
        flow_id=flow_id,
    )


def lease_lost(flow_id: str, owner: str, generation: int) -> LeaseLostError:
    """The error of an owner whose flow was taken over."""
    return LeaseLostError(
        f"flow {flow_id} is no longer owned by engine {owner} (generation {generation}): "
        "its lease expired and another engine took the flow over; this engine may not "
        "write one more event of it",
        flow_id=flow_id,
    )


class Journal(abc.ABC):
    """An append-only event log of flows, opened with ``async with``."""

    url: str
    codec: Codec
    _fences: dict[str, Fence]
    clock: Callable[[], float] = time.time
    """The time leases are measured with (an engine gives the journal its own clock)."""
    purge_batch: int = 500
    """The most flows one transaction of :meth:`purge` removes."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def healthy(self) -> bool:
        """False while the journal's commits fail (its storage is unavailable)."""
        return True

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, check (or create) the schema and start the writer."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Commit everything appended so far, then release the storage."""

    @property
    @abc.abstractmethod
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""

    @abc.abstractmethod
    def append(self, event: Event) -> int:
        """Hand one event to the writer without waiting and return its ticket.

        The details are encoded now, so a value the codec cannot store raises
        :class:`~aioflow.SerializationError` (naming ``event.atom``) here and nothing of
        the event is kept. Tickets count appends from 1; ``durable >= ticket`` means the
        event is committed.
        """

    def record(
        self,
        flow_id: str,
        seq: int,
        time: float,
        kind: EventKind,
        atom: str | None,
        state: AtomState | FlowStatus | None,
        attempt: int,
        progress: float | None,
        details: Mapping[str, Any] | None,
    ) -> int:
        """:meth:`append` the event with these fields. The engine calls this when no
        listener needs the :class:`~aioflow.Event` itself; a backend may store the fields
        without making one (the built-in ones do). Details may come
        :class:`~aioflow._codec.Encoded`: a backend that does not store their text
        encodes them again."""
        if type(details) is Encoded:
            details = details.details
        return self.append(
            Event(flow_id, seq, time, kind, atom, state, attempt, progress, details or {})
        )

    @property
    @abc.abstractmethod
    def durable(self) -> int:
        """How many appended events are committed (the highest durable ticket)."""

    @abc.abstractmethod
    async def wait_durable(self, ticket: int) -> None:
        """Return once the append with ``ticket`` (and all before it) is committed.

        Raises :class:`~aioflow.JournalError` if the writer failed.
        """

    async def flush(self) -> None:
        """Return once everything appended so far is committed."""
        await self.wait_durable(self.appended)

    @property
    @abc.abstractmethod
    def appended(self) -> int:
        """How many events were handed to :meth:`append` (the last ticket given)."""

    @abc.abstractmethod
    async def flows(self, status: FlowStatus | None = None) -> list[FlowSummary]:
        """Summaries of the flows in the journal, oldest first, optionally by status."""

    async def list_flows(
        self,
        *,
        status: FlowStatus | None = None,
        name: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> tuple[list[FlowSummary], str | None]:
        """One page of the journal's flows, newest first (by ``created``, then flow id),
        optionally only those in ``status`` or named ``name``, and the cursor of the next
        page (None on the last): pass it as ``before`` to get that page.

        The cursor is opaque (a ValueError names a malformed one); pages follow one
        another by key, not by offset, so a flow created meanwhile neither shifts nor
        repeats them. The built-in backends answer with one query that reads ``limit``
        rows; this fallback filters :meth:`flows`.
        """
        check_limit(limit)
        after = None if before is None else read_cursor(before)
        found = [
            s
            for s in await self.flows(status)
            if (name is None or s.name == name)
            and (after is None or (s.created, s.flow_id) < after)
        ]
        found.sort(key=_newest_first, reverse=True)
        return page(found, limit)

    @abc.abstractmethod
    def events(self, flow_id: str, *, after: int = 0) -> AsyncIterator[Event]:
        """The flow's committed events with ``seq > after``, in order."""

    @abc.abstractmethod
    async def load(self, flow_id: str) -> list[Event]:
        """Every committed event of the flow, in order.

        Raises :class:`~aioflow.NotFoundError` when the journal has no such flow.
        """

    async def compact(
        self, flow_id: str, *, keep: int | None = 1, before: float | None = None
    ) -> int:
        """Fold the flow's history before its last ``keep`` checkpoints (and, with
        ``before``, only what precedes the last checkpoint reached at that time or
        earlier) into one SNAPSHOT event.

        Replaying the compacted log gives exactly the state the whole log gives, so a
        resume after compaction does what it would have done before it. Returns how many
        events were removed (0 when there was nothing to fold). Raises
        :class:`~aioflow.NotFoundError` for an unknown flow.
        """
        raise JournalError(f"journal {self.url} cannot compact flows")

    # Retention ---------------------------------------------------------------------------

    async def purge(
        self,
        older_than: float | timedelta,
        status: FlowStatus | Iterable[FlowStatus] | None = None,
        *,
        dry_run: bool = False,
    ) -> int:
        """Remove every flow that ended (SUCCESS, REVERTED or FAILED; with ``status``,
        only those of the final statuses it names) more than ``older_than`` (seconds, or
        a :class:`~datetime.timedelta`) ago on the journal's :attr:`clock`, with all its
        rows: events (snapshots too), summary and mailbox. Returns how many flows it
        removed; with ``dry_run``, how many it would remove now, removing nothing.

        Only whole flows go, in transactions of at most :attr:`purge_batch` flows,
        yielding to the event loop between two, so other writers get in between. Each
        transaction checks again that its flows are still final, unowned and older
        than the cut: a flow that an engine took meanwhile is kept, and a reader (a
        resume) sees a flow whole or not at all (:meth:`load` reads in one snapshot).
        A flow that may still move (RUNNING, SUSPENDED, WAITING, ...) is never removed:
        naming such a status raises :class:`ValueError` saying why.
        """
        statuses = purge_statuses(status)
        cut = purge_cut(older_than, self.clock())
        if dry_run:
            return await self._count_purgeable(statuses, cut)
        removed = await purge_in_batches(
            lambda after, limit: self._purge_batch(statuses, cut, after, limit),
            self.purge_batch,
            "flows",
        )
        if removed:
            _LOG.info("aioflow.journal_purged", flows=removed, before=cut)
        return removed

    async def _purge_batch(
        self, statuses: frozenset[FlowStatus], cut: float, after: PurgeKey | None, limit: int
    ) -> tuple[int, PurgeKey | None]:
        """Remove, in one transaction, the purgeable flows (in ``statuses``, unowned,
        created and last changed before ``cut``) among the next ``limit`` of them by
        (created, flow id) after ``after``; return how many it removed and the key to go
        on after (None once there were fewer than ``limit``: the last batch)."""
        raise JournalError(f"journal {self.url} cannot purge flows")

    async def _count_purgeable(self, statuses: frozenset[FlowStatus], cut: float) -> int:
        """How many flows :meth:`_purge_batch` would remove now, in all."""
        raise JournalError(f"journal {self.url} cannot purge flows")

    def set_fence(self, flow_id: str, fence: Fence | None) -> None:
        """Check ``fence`` before committing any event of ``flow_id``; None retires the
        flow's fence once the events appended so far are settled (committed or refused),
        so events still queued are checked all the same."""
        if fence is None:
            self._fences.pop(flow_id, None)
        else:
            self._fences[flow_id] = fence

    def fence_of(self, flow_id: str) -> Fence | None:
        """The fence the journal checks for ``flow_id`` now, if any."""
        return self._fences.get(flow_id)

    # A conductor's jobs ---------------------------------------------------------------

    def _complete_job_on_success(
        self, job_id: str, generation: int, clock: Callable[[], float]
    ) -> bool:
        """Mark job ``job_id`` COMPLETE (status SUCCESS, if its claim is still
        ``generation``, at ``clock()``) in the very transaction that commits its flow's
        SUCCESS, rather than in one of its own after: a round trip less a job, and no
        moment where the flow has ended but its job is still CLAIMED. The board's table
        must be in this journal's database. False when this journal cannot; then the
        conductor finishes the job itself."""
        return False

    def _job_completed(self, job_id: str) -> bool | None:
        """Forget what :meth:`_complete_job_on_success` asked; say whether it was done:
        True (the job is COMPLETE), False (the flow's SUCCESS was committed but the claim
        had moved on), or None (no such commit happened: the conductor settles the job)."""
        return None

    # Ownership ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def take(self, flow_id: str, owner: str) -> tuple[int, int]:
        """Make ``owner`` the owner of flow ``flow_id`` and return (its new generation,
        the flow's last committed seq), in one atomic step for every process sharing
        the journal.

        A flow is taken when nobody owns it (it rests, or its run was given up), when
        ``owner`` owns it already, or when its owner's lease has expired. A flow that
        rests has no owner: a run gives its flow up in the commit that rests it.
        Otherwise raises :class:`~aioflow.FlowBusyError` naming the owner and
        changes nothing. Raises :class:`~aioflow.NotFoundError` for an unknown flow.
        Once taken, the previous owner's fence no longer matches: its next commit of the
        flow is refused.
        """

    @abc.abstractmethod
    async def heartbeat(self, owner: str, expires: float) -> None:
        """Record that engine ``owner`` is alive until ``expires`` (seconds since the
        epoch, on the journal's :attr:`clock`); its flows are not orphaned before then."""

    def beat_on_commit(self, owner: str, expires: float) -> bool:
        """Record ``owner``'s heartbeat with the next commit of events, or the next
        :meth:`take`, in the same transaction; False when this journal cannot (then
        :meth:`heartbeat` is to be awaited instead)."""
        return False

    @abc.abstractmethod
    async def disown(self, flow_id: str, owner: str, generation: int) -> bool:
        """Give up ``owner``'s ownership of ``flow_id`` (generation ``generation``), so
        that the flow is orphaned now rather than when the owner's lease runs out (its
        run ended without being able to write its last events). False when the flow's
        ownership had moved on already."""

    async def summary(self, flow_id: str) -> FlowSummary:
        """The summary of one flow; :class:`~aioflow.NotFoundError` when unknown."""
        for found in await self.flows():
            if found.flow_id == flow_id:
                return found
        raise NotFoundError(f"no flow {flow_id} in journal {self.url}")

    async def orphans(self) -> list[FlowSummary]:
        """The flows that are RUNNING or REVERTING with no live owner, oldest first."""
        return [s for s in await self.flows() if s.orphaned]

    @abc.abstractmethod
    async def get_meta(self, key: str) -> str | None:
        """A value from the journal's own key/value table, or None."""

    @abc.abstractmethod
    async def set_meta_default(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless a value is there; return the stored one.

        Atomic across processes sharing the journal: of concurrent callers, one wins and
        all see its value.
        """

    async def append_after(self, flow_id: str, last_seq: int, events: Sequence[Event]) -> bool:
        """Commit ``events`` (of ``flow_id``, numbered from ``last_seq + 1``) if and only
        if the flow's last committed seq is still ``last_seq``; True when they were.

        A compare-and-append, atomic across processes sharing the journal: of concurrent
        callers expecting the same ``last_seq``, exactly one succeeds. It bypasses the group
        writer and commits before returning, so it is for flows no engine is running
        (completing an external wait of a resting flow). A value the codec cannot store
        raises :class:`~aioflow.SerializationError` and nothing is kept.
        """
        raise JournalError(f"journal {self.url} cannot append conditionally")

    # The mailbox -----------------------------------------------------------------------
    #
    # Append-only: which messages a flow took is in its own events (a receive's SUCCESS
    # names the message, and the engine keeps a cursor per topic: the last id taken), so
    # nothing here is ever marked or deleted by a delivery, nor by a compaction (which
    # cannot know what is still to be taken). The methods raise JournalError unless a
    # backend keeps a mailbox; the built-in ones all do.

    async def post_message(
        self, flow_id: str, topic: str, message: Any, *, key: str | None = None, time: float
    ) -> int | None:
        """Add ``message`` (encoded with :attr:`codec`, as event details are) to flow
        ``flow_id``'s mailbox on ``topic``, sent at ``time``, and return its id.

        Ids grow in the order messages are committed, across every process sharing the
        journal, so a reader that takes the messages above the last id it took never
        skips one. With ``key``, a second post with the same key for this flow stores
        nothing and returns None, whichever process made the first. Committed when it
        returns. Raises :class:`~aioflow.SerializationError` (nothing stored) for a
        message the codec refuses, :class:`~aioflow.NotFoundError` when the journal has
        no flow ``flow_id``.
        """
        raise JournalError(f"journal {self.url} keeps no mailbox")

    async def next_message(
        self, flow_id: str, topic: str, after: int = 0
    ) -> tuple[int, Any] | None:
        """The oldest message of ``flow_id`` on ``topic`` whose id is above ``after``, as
        (id, decoded value), or None. Reads on a journal that is not open, too."""
        raise JournalError(f"journal {self.url} keeps no mailbox")

    async def mail_topics(self, flow_id: str, after: Mapping[str, int]) -> set[str]:
        """The topics of ``flow_id`` holding a message whose id is above
        ``after.get(topic, 0)``: one query, for an engine to see at once which of a
        flow's open receives have something to take."""
        raise JournalError(f"journal {self.url} keeps no mailbox")

    async def mail_since(self, after: int | None) -> tuple[int, list[tuple[str, str]]]:
        """The (flow id, topic) of every message whose id is above ``after``, oldest
        first (at most :data:`MAIL_BATCH`), and the id to look after next time; with
        ``after`` None, only the id of the newest message (0 when there is none)."""
        raise JournalError(f"journal {self.url} keeps no mailbox")


MAIL_BATCH = 1000
"""The most messages one :meth:`Journal.mail_since` returns."""


async def encode_message(codec: Codec, flow_id: str, topic: str, message: Any) -> str:
    """A message as the codec's text, encoded in a worker thread when large (as an
    atom's large result is, see ``aioflow._values``); SerializationError naming the flow
    and topic when the codec refuses it."""

    def encode() -> str:
        try:
            return codec.encode(message)
        except (TypeError, ValueError) as exc:  # SerializationError is a TypeError
            raise SerializationError(
                f"cannot store a message on topic {topic!r} for flow {flow_id}: {exc}"
            ) from exc

    hint = size_hint(message)
    if hint is None or hint >= OFF_LOOP_BYTES:
        return await anyio.to_thread.run_sync(encode)
    return encode()


async def settle_appends(journal: Journal) -> bool:
    """Wait until what ``journal`` was handed is committed (a flow created by an append
    still pending is then found); True when something was pending. A failed writer is
    not this caller's error: the wait just ends."""
    if journal.durable >= journal.appended:
        return False
    with contextlib.suppress(JournalError, LeaseLostError):
        await journal.wait_durable(journal.appended)
    return True


_KEPT_BECAUSE = {
    FlowStatus.PENDING: "it has not started",
    FlowStatus.RUNNING: "an engine may be running it",
    FlowStatus.REVERTING: "an engine may be reverting it",
    FlowStatus.SUSPENDED: "it may still be resumed (cancel it to end it REVERTED first)",
    FlowStatus.WAITING: "it waits for an external completion (cancel it first)",
}


def purge_statuses(status: FlowStatus | Iterable[FlowStatus] | None) -> frozenset[FlowStatus]:
    """The statuses a purge removes flows in: every final one by default, else those
    named; ValueError for a status that is not final, saying why such flows stay."""
    if status is None:
        return PURGEABLE
    if isinstance(status, FlowStatus):
        named = [status]
    elif isinstance(status, str) or not isinstance(status, Iterable):
        raise TypeError(f"status is a FlowStatus or several, not {status!r}")
    else:
        named = list(status)
    for one in named:
        if not isinstance(one, FlowStatus):
            raise TypeError(f"status is a FlowStatus or several, not {one!r}")
        if one not in PURGEABLE:
            raise ValueError(
                f"purge removes only flows that ended (SUCCESS, REVERTED, FAILED), not "
                f"{one.value} ones: {_KEPT_BECAUSE[one]}"
            )
    if not named:
        raise ValueError("status names no status: give one or more of SUCCESS, REVERTED, FAILED")
    return frozenset(named)


async def purge_in_batches(
    step: Callable[[Any, int], Awaitable[tuple[int, Any]]], batch: object, what: str
) -> int:
    """Run ``step(after, batch)`` (remove up to ``batch`` of ``what``, in one short
    transaction, after the key ``after``; return how many and the key to go on after,
    None at the end) until it is done, letting other writers in between two batches;
    how many were removed in all."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"purge_batch must be a whole number of {what} >= 1, not {batch!r}")
    removed = 0
    after: Any = None
    while True:
        found, after = await step(after, batch)
        removed += found
        if found:
            # aioflow.journal_purge_batch (flows=...), aioflow.jobs_purge_batch (jobs=...)
            event = "aioflow.journal_purge_batch" if what == "flows" else "aioflow.jobs_purge_batch"
            _LOG.debug(event, **{what: found}, removed=removed)
        if after is None:
            return removed
        await anyio.lowlevel.checkpoint()


def purge_cut(older_than: float | timedelta, now: float) -> float:
    """The time before which a purge removes what rested (``now - older_than``); a
    TypeError or ValueError naming a bad ``older_than``."""
    # A timedelta exists only once its caller imported datetime (aioflow does not, to be
    # quick to import).
    datetime = sys.modules.get("datetime")
    if datetime is not None and isinstance(older_than, datetime.timedelta):
        seconds = float(older_than.total_seconds())
    elif isinstance(older_than, bool) or not isinstance(older_than, int | float):
        raise TypeError(
            f"older_than is a number of seconds or a datetime.timedelta, not {older_than!r}"
        )
    else:
        seconds = float(older_than)
    if not (0 <= seconds < math.inf):
        raise ValueError(f"older_than must be a finite time >= 0, not {older_than!r}")
    return now - seconds


def _newest_first(summary: FlowSummary) -> tuple[float, str]:
    return summary.created, summary.flow_id


def check_limit(limit: int) -> None:
    """Refuse a page size that is not a whole number >= 1, naming it."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a whole number of flows >= 1, not {limit!r}")


def flow_cursor(summary: FlowSummary) -> str:
    """The cursor of the page that follows ``summary`` (see :meth:`Journal.list_flows`):
    its (created, flow id) key as URL-safe base64 text."""
    key = json.dumps([summary.created, summary.flow_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(key.encode()).decode("ascii").rstrip("=")


def read_cursor(cursor: str) -> tuple[float, str]:
    """The (created, flow id) key a :func:`flow_cursor` holds; ValueError for any text
    that is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4))
        created, flow_id = json.loads(raw)
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        created = flow_id = None
    if (
        isinstance(created, bool)
        or not isinstance(created, int | float)
        or not math.isfinite(created)
        or not isinstance(flow_id, str)
    ):
        raise ValueError(f"{cursor!r} is not a page cursor (pass the one a page returned)")
    return float(created), flow_id


def page(newest: list[FlowSummary], limit: int) -> tuple[list[FlowSummary], str | None]:
    """The first ``limit`` of ``newest`` (a backend reads ``limit + 1`` rows) and the
    cursor of what follows them, None when nothing does."""
    if len(newest) <= limit:
        return newest, None
    return newest[:limit], flow_cursor(newest[limit - 1])


def check_keep(keep: int | None, before: float | None) -> None:
    """Refuse compaction settings that make no sense, naming the bad one."""
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be a whole number of checkpoints >= 1, not {keep!r}")
    if before is not None and not isinstance(before, int | float):
        raise ValueError(f"before must be a timestamp in seconds, not {before!r}")


def plan_compaction(
    events: list[Event], keep: int | None, before: float | None
) -> tuple[int, Event] | None:
    """What compacting ``events`` (one flow's whole log) does: fold its first ``n``
    events into the returned SNAPSHOT event; None when there is nothing to fold."""
    n = compaction_cut(events, keep, before)
    if n == 0:
        return None
    if events[0].seq != 1 and events[0].kind.value != "SNAPSHOT":
        raise JournalError(f"flow {events[0].flow_id}: its log does not start at event 1")
    state = replay(events[0].flow_id, events[:n])
    return n, snapshot(state, events[n - 1].time)


def encode_details(
    codec: Codec,
    flow_id: str,
    kind: EventKind,
    atom: str | None,
    details: Mapping[str, Any] | None,
) -> str | None:
    """An event's details as the codec's text (None when empty; the text itself when
    they are :class:`~aioflow._codec.Encoded`). A value the codec refuses raises the
    error every backend raises: SerializationError naming the atom."""
    if not details:
        return None
    if type(details) is Encoded:
        return details.text
    try:
        return codec.encode(details)
    except (TypeError, ValueError) as exc:  # SerializationError is a TypeError
        whose = f"atom {atom!r}" if atom is not None else f"flow {flow_id}"
        raise SerializationError(
            f"cannot store the {kind.value} event details of {whose}: {exc}", atom=atom
        ) from exc
