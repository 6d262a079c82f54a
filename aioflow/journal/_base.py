"""The small protocol every journal backend implements.

A journal is an append-only log of :class:`~aioflow.Event` per flow. The engine hands
events over with :meth:`Journal.append`, which never awaits; a backend commits what is
pending in groups and publishes how far the log is durable (``durable``, a count of
appended events). :meth:`Journal.wait_durable` lets the engine wait for a given append
to be committed (the ``strict`` durability mode waits only where an atom would build on
it).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from .._codec import Codec
from .._errors import JournalError, LeaseLostError, SerializationError
from .._events import Event, EventKind
from .._replay import compaction_cut, replay, snapshot
from .._states import AtomState, FlowStatus


@dataclass(frozen=True, slots=True)
class FlowSummary:
    """One row of :meth:`Journal.flows`: what a flow is and how it stands."""

    flow_id: str
    name: str
    status: FlowStatus
    ref: str | None
    created: float
    updated: float
    last_seq: int

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> FlowSummary:
        """The summary a stored row (flow_id, name, status, ref, created, updated,
        last_seq) holds; a flow with no status yet is PENDING."""
        flow_id, name, status, ref, created, updated, last_seq = row
        return cls(
            flow_id=flow_id,
            name=name,
            status=FlowStatus.PENDING if status is None else FlowStatus(status),
            ref=ref,
            created=created,
            updated=updated,
            last_seq=last_seq,
        )


class Fence:
    """A job's claim that a journal checks before it keeps a flow's events (fencing).

    A conductor gives one to the journal for the flow of each job it runs
    (:meth:`Journal.set_fence`). Every commit holding that flow's events first checks, in
    the same transaction, that the job's claim generation is still ``generation``: in the
    ``aioflow_jobs`` table of the journal's own database (so the jobboard and the journal
    must share it), or by calling ``current`` when it is given (an in-process board). If
    the claim moved on, the flow's events are dropped, the fence is lost for good, every
    later append for the flow raises :class:`~aioflow.LeaseLostError`, and ``on_lost`` is
    called (the conductor stops the flow).
    """

    __slots__ = ("current", "generation", "job_id", "lost", "on_lost")

    def __init__(
        self,
        job_id: str,
        generation: int,
        *,
        current: Callable[[], int | None] | None = None,
        on_lost: Callable[[], object] | None = None,
    ) -> None:
        self.job_id = job_id
        self.generation = generation
        self.current = current
        self.on_lost = on_lost
        self.lost = False

    def __repr__(self) -> str:
        state = "lost" if self.lost else "held"
        return f"Fence(job {self.job_id}, generation {self.generation}, {state})"

    def lose(self) -> None:
        """Mark the claim lost (once) and tell ``on_lost``."""
        if not self.lost:
            self.lost = True
            if self.on_lost is not None:
                self.on_lost()

    def error(self, flow_id: str) -> LeaseLostError:
        """The error an append for ``flow_id`` raises once the fence is lost."""
        return LeaseLostError(
            f"job {self.job_id} is no longer claimed with generation {self.generation} (its "
            f"lease expired and another conductor claimed it); flow {flow_id} may not be "
            "written by this conductor"
        )


class Journal(abc.ABC):
    """An append-only event log of flows, opened with ``async with``."""

    url: str
    codec: Codec
    _fences: dict[str, Fence]

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
        without making one (the built-in ones do)."""
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

    def set_fence(self, flow_id: str, fence: Fence | None) -> None:
        """Check ``fence`` before committing any event of ``flow_id`` (None removes it).

        Raises :class:`~aioflow.JournalError` for a journal that cannot fence writes.
        """
        fences = getattr(self, "_fences", None)
        if fences is None:
            raise JournalError(f"journal {self.url} cannot fence the writes of jobs")
        if fence is None:
            fences.pop(flow_id, None)
        else:
            fences[flow_id] = fence

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
    """An event's details as the codec's text (None when empty). A value the codec
    refuses raises the error every backend raises: SerializationError naming the atom."""
    if not details:
        return None
    try:
        return codec.encode(details)
    except (TypeError, ValueError) as exc:  # SerializationError is a TypeError
        whose = f"atom {atom!r}" if atom is not None else f"flow {flow_id}"
        raise SerializationError(
            f"cannot store the {kind.value} event details of {whose}: {exc}", atom=atom
        ) from exc
