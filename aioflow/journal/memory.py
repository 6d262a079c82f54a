"""A journal kept in memory: for tests, examples and flows that need no durability.

Everything appended is durable at once. Details are still encoded on append, so a value
the SQLite journal would refuse is refused here too, with the same error.

Events are kept as tuples of plain values (states and kinds by name, details as the
encoded text), which the garbage collector stops tracking: a million kept
:class:`~aioflow.Event` objects would make every full collection of the process walk
them. Reads build the events again, with details decoded as any durable journal does.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import AsyncIterator, Mapping, Sequence
from operator import attrgetter, itemgetter
from typing import Any, TypeAlias

from .._codec import NO_RESULT, Codec, get_codec
from .._errors import FlowBusyError, JournalError, NotFoundError
from .._events import Event, EventKind, decode_state, event_fields
from .._states import AtomState, FlowStatus
from ._base import (
    MAIL_BATCH,
    Fence,
    FlowSummary,
    Journal,
    PurgeKey,
    check_keep,
    check_limit,
    encode_details,
    encode_message,
    is_orphaned,
    page,
    plan_compaction,
    read_cursor,
    taken_over,
)

__all__ = ["MemoryJournal"]

_FLOW = EventKind.FLOW
_seq_of = itemgetter(0)

_Row: TypeAlias = tuple[int, float, str, str | None, str | None, int, float | None, str | None]
"""An event as kept: seq, time, kind, atom, state, attempt, progress, encoded details."""


def _row(
    seq: int,
    time: float,
    kind: EventKind,
    atom: str | None,
    state: AtomState | FlowStatus | None,
    attempt: int,
    progress: float | None,
    text: str | None,
) -> _Row:
    value = None if state is None else state._value_
    return (seq, time, kind._value_, atom, value, attempt, progress, text)


class _Flow:
    """One flow's events and the running summary :meth:`MemoryJournal.flows` reports."""

    __slots__ = (
        "created",
        "events",
        "generation",
        "last_seq",
        "name",
        "owner",
        "ref",
        "status",
        "updated",
    )

    def __init__(self, seq: int, time: float) -> None:
        self.owner: str | None = None
        self.generation = 0
        self.events: list[_Row] = []
        self.last_seq = seq - 1
        self.name: str | None = None
        self.ref: str | None = None
        self.status = FlowStatus.PENDING
        self.created = self.updated = time


def _purgeable(flow: _Flow, statuses: frozenset[FlowStatus], cut: float) -> bool:
    """Whether :meth:`MemoryJournal.purge` removes ``flow`` (see :meth:`Journal.purge`)."""
    return (
        flow.name is not None
        and flow.status in statuses
        and flow.owner is None
        and flow.created < cut
        and flow.updated < cut
    )


class MemoryJournal(Journal):
    """A :class:`Journal` in a dict: nothing survives the process.

    It keeps its events across ``close()`` and a later ``open()``, and can be read while
    closed. Within a flow, ``seq`` must grow with every append; appending a ``seq`` that
    is not past the flow's last one raises :class:`~aioflow.JournalError` (the SQLite
    journal raises it on commit).
    """

    def __init__(self, *, codec: Codec | str | None = None) -> None:
        self.url = "memory://"
        self.codec = get_codec(codec)
        self._decode = self.codec.decode
        self._no_result = self.codec.encode(NO_RESULT)
        self._flows: dict[str, _Flow] = {}
        self._meta: dict[str, str] = {}
        self._count = 0
        self._open = False
        self._fences: dict[str, Fence] = {}
        self._heartbeats: dict[str, float] = {}
        # The mailbox: flow -> topic -> [(id, text)] by id, and flow -> the keys used.
        self._mail: dict[str, dict[str, list[tuple[int, str]]]] = {}
        self._mail_keys: dict[str, set[str]] = {}
        self._mail_ids = 0
        # (flow id, topic) of message id i + 1; None once its flow was purged.
        self._mail_log: list[tuple[str, str] | None] = []

    def __repr__(self) -> str:
        return f"MemoryJournal({self._count} events, {len(self._flows)} flows)"

    async def open(self) -> None:
        """Start accepting appends."""
        self._open = True

    async def close(self) -> None:
        """Stop accepting appends; the events stay readable."""
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    def append(self, event: Event) -> int:
        return self.record(*event_fields(event))

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
        if not self._open:
            raise JournalError("the memory journal is not open")
        flow = self._flows.get(flow_id)
        fence = self._fences.get(flow_id) if self._fences else None
        if fence is not None:
            if fence.failure is not None:  # lost (the property's test, one call less)
                raise fence.error(flow_id)
            if flow is not None and flow.generation != fence.generation:
                fence.lose(taken_over(flow_id, fence, flow.owner))
                raise fence.error(flow_id)
        if details is NO_RESULT:  # most successes: encoded once, not per atom
            text: str | None = self._no_result
        else:
            text = encode_details(self.codec, flow_id, kind, atom, details) if details else None
        if flow is None:
            flow = self._flows[flow_id] = _Flow(seq, time)
            if fence is not None:
                flow.owner, flow.generation = fence.owner, fence.generation
        elif seq <= flow.last_seq:
            raise JournalError(
                f"conflicting write to flow {flow_id} at seq {seq}: the journal "
                f"is already at seq {flow.last_seq} (is another engine writing this flow?)"
            )
        value = None if state is None else state._value_  # as _row, inline: once per event
        flow.events.append((seq, time, kind._value_, atom, value, attempt, progress, text))
        flow.last_seq = seq
        if kind is _FLOW:
            # As in SQLite: the first FLOW event naming the flow makes its summary.
            if details and flow.name is None and "name" in details:
                flow.name = str(details["name"])
                ref = details.get("ref")
                flow.ref = None if ref is None else str(ref)
                flow.created = time
            if isinstance(state, FlowStatus):
                flow.status = state
                flow.updated = time
                if state.is_resting:
                    flow.owner = None
        self._count += 1
        return self._count

    def _event(self, flow_id: str, row: _Row) -> Event:
        seq, time, kind, atom, state, attempt, progress, text = row
        details: Any = {} if text is None else self._decode(text)
        event_kind = EventKind(kind)
        state_ = decode_state(event_kind, state)
        return Event(flow_id, seq, time, event_kind, atom, state_, attempt, progress, details)

    @property
    def durable(self) -> int:
        return self._count

    @property
    def appended(self) -> int:
        return self._count

    async def wait_durable(self, ticket: int) -> None:
        if ticket > self._count:
            raise ValueError(f"ticket {ticket} was never handed out (last is {self._count})")

    async def flows(self, status: FlowStatus | None = None) -> list[FlowSummary]:
        now = self.clock()
        found = [
            self._summary(flow_id, flow, now)
            for flow_id, flow in self._flows.items()
            if flow.name is not None and (status is None or flow.status is status)
        ]
        found.sort(key=attrgetter("created"))
        return found

    async def list_flows(
        self,
        *,
        status: FlowStatus | None = None,
        name: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> tuple[list[FlowSummary], str | None]:
        check_limit(limit)
        after = None if before is None else read_cursor(before)
        # No index in a dict: one pass that keeps the newest limit + 1 (O(n log limit)).
        keys = (
            (flow.created, flow_id)
            for flow_id, flow in self._flows.items()
            if flow.name is not None
            and (status is None or flow.status is status)
            and (name is None or flow.name == name)
            and (after is None or (flow.created, flow_id) < after)
        )
        now = self.clock()
        newest = [
            self._summary(flow_id, self._flows[flow_id], now)
            for _, flow_id in heapq.nlargest(limit + 1, keys)
        ]
        return page(newest, limit)

    def _summary(self, flow_id: str, flow: _Flow, now: float) -> FlowSummary:
        expires = None if flow.owner is None else self._heartbeats.get(flow.owner)
        return FlowSummary(
            flow_id=flow_id,
            name=flow.name or "",
            status=flow.status,
            ref=flow.ref,
            created=flow.created,
            updated=flow.updated,
            last_seq=flow.last_seq,
            owner=flow.owner,
            generation=flow.generation,
            lease_expires=expires,
            orphaned=is_orphaned(flow.status, flow.owner, expires, now),
        )

    async def summary(self, flow_id: str) -> FlowSummary:
        flow = self._flows.get(flow_id)
        if flow is None or flow.name is None:
            raise NotFoundError(f"no flow {flow_id} in the memory journal")
        return self._summary(flow_id, flow, self.clock())

    async def take(self, flow_id: str, owner: str) -> tuple[int, int]:
        flow = self._flows.get(flow_id)
        if flow is None:
            raise NotFoundError(f"no flow {flow_id} in the memory journal")
        expires = None if flow.owner is None else self._heartbeats.get(flow.owner)
        if (
            flow.owner is not None
            and flow.owner != owner
            and expires is not None
            and expires > self.clock()
        ):
            raise FlowBusyError(flow_id, flow.owner, expires)
        flow.owner = owner
        flow.generation += 1
        return flow.generation, flow.last_seq

    async def heartbeat(self, owner: str, expires: float) -> None:
        self._heartbeats[owner] = expires

    async def disown(self, flow_id: str, owner: str, generation: int) -> bool:
        flow = self._flows.get(flow_id)
        if flow is None or flow.owner != owner or flow.generation != generation:
            return False
        flow.owner = None
        return True

    async def events(self, flow_id: str, *, after: int = 0) -> AsyncIterator[Event]:
        flow = self._flows.get(flow_id)
        if flow is None:
            return
        rows = flow.events
        i = bisect.bisect_right(rows, after, key=_seq_of)
        # Index-based so that events appended while the caller iterates are seen too.
        while i < len(rows):
            yield self._event(flow_id, rows[i])
            i += 1

    async def load(self, flow_id: str) -> list[Event]:
        flow = self._flows.get(flow_id)
        if flow is None:
            raise NotFoundError(f"no flow {flow_id} in the memory journal")
        return [self._event(flow_id, row) for row in flow.events]

    async def compact(
        self, flow_id: str, *, keep: int | None = 1, before: float | None = None
    ) -> int:
        check_keep(keep, before)
        flow = self._flows.get(flow_id)
        if flow is None:
            raise NotFoundError(f"no flow {flow_id} in the memory journal")
        plan = plan_compaction(await self.load(flow_id), keep, before)
        if plan is None:
            return 0
        n, folded = plan
        f = folded
        text = encode_details(self.codec, flow_id, f.kind, f.atom, f.details)
        row = _row(f.seq, f.time, f.kind, f.atom, f.state, f.attempt, f.progress, text)
        flow.events[:n] = [row]
        return n - 1

    async def _purge_batch(
        self, statuses: frozenset[FlowStatus], cut: float, after: PurgeKey | None, limit: int
    ) -> tuple[int, PurgeKey | None]:
        # No await: finding the flows and removing them is one step.
        keys = ((flow.created, flow_id) for flow_id, flow in self._flows.items())
        doomed = heapq.nsmallest(
            limit,
            (
                key
                for key in keys
                if (after is None or key > after) and _purgeable(self._flows[key[1]], statuses, cut)
            ),
        )
        for _, flow_id in doomed:
            self._remove(flow_id)
        return len(doomed), (doomed[-1] if len(doomed) == limit else None)

    async def _count_purgeable(self, statuses: frozenset[FlowStatus], cut: float) -> int:
        return sum(1 for flow in self._flows.values() if _purgeable(flow, statuses, cut))

    def _remove(self, flow_id: str) -> None:
        """Forget a flow: its events, summary and mailbox."""
        del self._flows[flow_id]
        for kept in self._mail.pop(flow_id, {}).values():
            for mail_id, _ in kept:
                self._mail_log[mail_id - 1] = None
        self._mail_keys.pop(flow_id, None)

    async def post_message(
        self, flow_id: str, topic: str, message: Any, *, key: str | None = None, time: float
    ) -> int | None:
        text = await encode_message(self.codec, flow_id, topic, message)
        # No await from here on: the checks and the append are one step.
        if not self._open:
            raise JournalError("the memory journal is not open")
        if flow_id not in self._flows:
            raise NotFoundError(f"no flow {flow_id} in the memory journal")
        if key is not None:
            used = self._mail_keys.setdefault(flow_id, set())
            if key in used:
                return None
            used.add(key)
        self._mail_ids += 1
        self._mail.setdefault(flow_id, {}).setdefault(topic, []).append((self._mail_ids, text))
        self._mail_log.append((flow_id, topic))
        return self._mail_ids

    async def mail_since(self, after: int | None) -> tuple[int, list[tuple[str, str]]]:
        if after is None or after >= self._mail_ids:
            return self._mail_ids, []
        found = self._mail_log[after : after + MAIL_BATCH]  # ids are 1, 2, ...
        return after + len(found), [sent for sent in found if sent is not None]

    async def next_message(
        self, flow_id: str, topic: str, after: int = 0
    ) -> tuple[int, Any] | None:
        kept = self._mail.get(flow_id, {}).get(topic, [])
        i = bisect.bisect_right(kept, after, key=_seq_of)  # ids grow along the list
        if i == len(kept):
            return None
        mail_id, text = kept[i]
        return mail_id, self._decode(text)

    async def mail_topics(self, flow_id: str, after: Mapping[str, int]) -> set[str]:
        return {
            topic
            for topic, kept in self._mail.get(flow_id, {}).items()
            if kept[-1][0] > after.get(topic, 0)
        }

    async def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    async def set_meta_default(self, key: str, value: str) -> str:
        return self._meta.setdefault(key, value)

    async def append_after(self, flow_id: str, last_seq: int, events: Sequence[Event]) -> bool:
        if not self._open:
            raise JournalError("the memory journal is not open")
        flow = self._flows.get(flow_id)
        if (0 if flow is None else flow.last_seq) != last_seq:
            return False
        if flow is not None and flow.owner is not None:
            return False  # an engine has taken the flow: it may be about to write it
        for event in events:  # all encodable, or none is kept
            encode_details(self.codec, flow_id, event.kind, event.atom, event.details)
        for event in events:
            self.append(event)
        return True
