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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from .._codec import Codec
from .._errors import SerializationError
from .._events import Event
from .._states import FlowStatus


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


class Journal(abc.ABC):
    """An append-only event log of flows, opened with ``async with``."""

    url: str
    codec: Codec

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

    @abc.abstractmethod
    async def get_meta(self, key: str) -> str | None:
        """A value from the journal's own key/value table, or None."""

    @abc.abstractmethod
    async def set_meta_default(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless a value is there; return the stored one.

        Atomic across processes sharing the journal: of concurrent callers, one wins and
        all see its value.
        """


def _details_error(event: Event, exc: Exception) -> SerializationError:
    """The error every backend raises when ``event.details`` cannot be encoded."""
    whose = f"atom {event.atom!r}" if event.atom is not None else f"flow {event.flow_id}"
    return SerializationError(
        f"cannot store the {event.kind.value} event details of {whose}: {exc}", atom=event.atom
    )
