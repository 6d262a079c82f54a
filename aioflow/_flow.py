"""Flows: how tasks are composed. Pure definitions; nothing here runs or does I/O.

``Linear`` runs members one after another, ``Unordered`` concurrently, ``Graph`` in the
order their data and explicit links impose. Flows nest. A ``Checkpoint`` names a point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeAlias, TypeGuard

from ._retry import Retry
from ._task import Task

if TYPE_CHECKING:
    from datetime import datetime, timedelta

Decider: TypeAlias = Callable[[Mapping[str, Any]], object]


class Checkpoint:
    """A named point in a flow, reached when everything before it finished."""

    def __init__(
        self,
        name: str,
        *,
        retry: Retry | None = None,
        keep: int | None = None,
        keep_for: timedelta | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a checkpoint name must be a non-empty string, not {name!r}")
        if keep is not None and keep < 1:
            raise ValueError(f"checkpoint {name!r}: keep must be >= 1")
        self.name = name
        self.retry = retry
        self.keep = keep
        self.keep_for = keep_for

    def __repr__(self) -> str:
        return f"<Checkpoint {self.name!r}>"


Member: TypeAlias = "Task | Flow | Checkpoint"


def is_datetime(value: object) -> TypeGuard[datetime]:
    """True for a ``datetime.datetime`` (told without importing the module: it costs
    milliseconds at import, and most programs never need it)."""
    return any(c.__name__ == "datetime" and c.__module__ == "datetime" for c in type(value).__mro__)


def instant(value: object, what: str, *, seconds: bool = False) -> float:
    """An aware datetime (or, with ``seconds``, seconds since the epoch) as seconds since
    the epoch; a ValueError naming ``what`` for a naive one, a TypeError for the rest."""
    if is_datetime(value):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"{what} must be an aware datetime (with a tzinfo, e.g. timezone.utc),"
                f" not the naive {value!r}"
            )
        return value.timestamp()
    if not seconds or isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be an aware datetime, not {value!r}")
    if value != value:
        raise ValueError(f"{what} must be a time, not NaN")
    return float(value)


def seconds_of(value: object, what: str, *, zero: bool = False) -> float | None:
    """``value`` (seconds, or a timedelta) as seconds, or None for None; a ValueError
    naming ``what`` for a negative, zero (unless ``zero``), infinite or NaN one."""
    if value is None:
        return None
    if hasattr(value, "total_seconds") and not isinstance(value, int | float):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds or a timedelta, not {value!r}")
    seconds = float(value)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"{what} must be a finite number of seconds, not {value!r}")
    if seconds < 0 or (seconds == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{what} must be {bound} seconds, not {value!r}")
    return seconds


def _check_member(flow: str, member: object) -> None:
    if not isinstance(member, Task | Flow | Checkpoint):
        hint = " (a function: decorate it with @aioflow.task)" if callable(member) else ""
        raise TypeError(
            f"flow {flow!r}: a member must be a task, a flow or a checkpoint, not {member!r}{hint}"
        )


class Flow:
    """The base of every flow: a name, members, an optional retry for the whole part, and
    an optional ``timeout`` (seconds, or a timedelta): a deadline for each attempt of the
    part, set when it starts and kept in the journal; past it the part's running atoms
    are cancelled and it fails with :class:`~aioflow.DeadlineExceededError`."""

    kind: ClassVar[str] = "flow"

    def __init__(
        self,
        name: str,
        *members: Member,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a flow name must be a non-empty string, not {name!r}")
        self.name = name
        self.retry = retry
        self.timeout = seconds_of(timeout, f"flow {name!r}: timeout")
        self.members: list[Member] = []
        self.add(*members)

    def add(self, *members: Member) -> Self:
        """Append members; returns the flow so calls chain."""
        for m in members:
            _check_member(self.name, m)
        self.members.extend(members)
        return self

    def __iter__(self) -> Any:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} with {len(self.members)} members>"


class Linear(Flow):
    """Members run one after another, each after the previous one finished."""

    kind = "linear"


class Unordered(Flow):
    """Members run concurrently; none may need what another provides."""

    kind = "unordered"


@dataclass(frozen=True, slots=True)
class Link:
    """An explicit edge of a :class:`Graph`: ``target`` runs after ``source``."""

    source: str
    target: str
    decider: Decider | None = None


class Graph(Flow):
    """Members ordered by data (a member needing a symbol runs after its provider) and by
    explicit :meth:`link` calls, which may carry a decider."""

    kind = "graph"

    def __init__(
        self,
        name: str,
        *members: Member,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
    ) -> None:
        self.links: list[Link] = []
        super().__init__(name, *members, retry=retry, timeout=timeout)

    def link(
        self, source: Member | str, target: Member | str, *, decider: Decider | None = None
    ) -> Self:
        """Make ``target`` run after ``source``. With a ``decider``, ``target`` runs only
        when ``decider(results)`` is true, where ``results`` maps the target's upstream
        atoms to their results; otherwise it and everything after it are IGNORED."""
        if decider is not None and not callable(decider):
            raise TypeError(f"graph {self.name!r}: a decider must be callable, not {decider!r}")
        self.links.append(Link(_member_name(source), _member_name(target), decider))
        return self


def _member_name(member: Member | str) -> str:
    if isinstance(member, str):
        return member
    if isinstance(member, Task | Flow | Checkpoint):
        return member.name
    raise TypeError(f"a link end must be a member or its name, not {member!r}")
