"""Events: the frozen records of everything the engine does, in the order it did it.

A flow's journal is the list of its events; its state is a replay of them
(see :mod:`aioflow._replay`). What each kind carries in ``details`` is written down in
``docs/journal.md``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from ._states import AtomState, FlowStatus


class EventKind(enum.Enum):
    """What an :class:`Event` is about."""

    FLOW = "FLOW"
    """The flow's status changed (``state`` is a :class:`FlowStatus`)."""
    ATOM = "ATOM"
    """An atom's state changed (``state`` is an :class:`AtomState`)."""
    PROGRESS = "PROGRESS"
    """A running atom reported progress (``progress`` and ``details``)."""
    CHECKPOINT = "CHECKPOINT"
    """A checkpoint was reached."""
    WAIT = "WAIT"
    """An external wait was opened or closed."""
    SNAPSHOT = "SNAPSHOT"
    """Older events folded into one by compaction: ``details["state"]`` is the flow's
    state as of this ``seq``; it is then the flow's first event."""

    __hash__ = object.__hash__  # as AtomState's: members are singletons


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to a flow; ``seq`` is its place in the flow's journal."""

    flow_id: str
    seq: int
    time: float
    kind: EventKind
    atom: str | None = None
    state: AtomState | FlowStatus | None = None
    attempt: int = 0
    progress: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


EventFields: TypeAlias = tuple[
    str, int, float, EventKind, str | None, AtomState | FlowStatus | None, int, float | None,
    Mapping[str, Any],
]  # fmt: skip
"""An event's fields in order, as :meth:`Journal.record` takes them."""


def event_fields(event: Event) -> EventFields:
    """``event``'s fields in order (see :data:`EventFields`)."""
    return (
        event.flow_id,
        event.seq,
        event.time,
        event.kind,
        event.atom,
        event.state,
        event.attempt,
        event.progress,
        event.details,
    )


_FLOW = EventKind.FLOW
_FLOW_STATUSES = {status.value: status for status in FlowStatus}
_ATOM_STATES = {state.value: state for state in AtomState}


def decode_state(kind: EventKind, state: str | None) -> AtomState | FlowStatus | None:
    """Turn a stored state name back into the enum its event kind uses (by a dict: an
    enum's lookup by value costs ten times as much; an unknown name raises the enum's
    ValueError)."""
    if state is None:
        return None
    if kind is _FLOW:
        found: AtomState | FlowStatus | None = _FLOW_STATUSES.get(state)
        return FlowStatus(state) if found is None else found
    found = _ATOM_STATES.get(state)
    return AtomState(state) if found is None else found
