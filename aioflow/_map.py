"""``Map``: one member run once per element of a sequence known only at run time.

A pure definition, like the flows in :mod:`aioflow._flow`. Compiling a Map gives two
nodes: its *controller*, an atom named like the Map, which reads the sequence, journals
how many elements it has and grows one copy of the member per element; and its
*collector*, an internal join after every copy, which publishes their results as a list
(see :mod:`aioflow._kernel.mapping`).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from ._flow import Checkpoint, Flow, seconds_of
from ._retry import Retry
from ._task import Task

if TYPE_CHECKING:
    from datetime import timedelta

__all__ = ["Map"]


def _symbol(value: object, what: str, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"map {name!r}: {what} must be a non-empty symbol name, not {value!r}")
    return value


class Map(Flow):
    """Run ``member`` (a task or a whole flow) once per element of the sequence in symbol
    ``over``, concurrently (at most ``max_parallel`` at once). Each copy sees its element
    as symbol ``item`` and is named ``name[i]`` (the atoms of a flow member
    ``name[i].atom``); ``provides`` gets their results as a list, in the elements' order:
    a task's result; for a flow, the one symbol it provides, a dict of them when it
    provides several, None when it provides none. An empty sequence provides ``[]`` at
    once.

    ``retry`` and ``timeout`` apply to each copy on its own: a failed element is retried
    alone, and each copy has its own deadline. The expansion is journaled when the
    sequence is known, so resume, revert and progress see the same copies, and a resume
    never reads the sequence again."""

    kind = "map"

    def __init__(
        self,
        name: str,
        member: Task | Flow,
        *,
        over: str,
        item: str = "item",
        provides: str | None = None,
        max_parallel: int | None = None,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a map name must be a non-empty string, not {name!r}")
        if not isinstance(member, Task | Flow) or isinstance(member, Checkpoint):
            hint = " (a function: decorate it with @aioflow.task)" if callable(member) else ""
            raise TypeError(
                f"map {name!r}: the member must be a task or a flow, not {member!r}{hint}"
            )
        self.over = _symbol(over, "over", name)
        self.item = _symbol(item, "item", name)
        self.provides = None if provides is None else _symbol(provides, "provides", name)
        if max_parallel is not None and (
            isinstance(max_parallel, bool) or not isinstance(max_parallel, int)
        ):
            raise TypeError(f"map {name!r}: max_parallel must be an int, not {max_parallel!r}")
        if max_parallel is not None and max_parallel < 1:
            raise ValueError(f"map {name!r}: max_parallel must be >= 1, not {max_parallel}")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"map {name!r}: retry must be an aioflow.Retry, not {retry!r}")
        self.max_parallel = max_parallel
        self.item_retry = retry
        self.item_timeout = seconds_of(timeout, f"map {name!r}: timeout")
        # As a Flow: no retry or deadline of its own (those are each copy's), one member.
        super().__init__(name)
        self.members = [_per_item(member, retry, self.item_timeout)]

    @property
    def member(self) -> Task | Flow:
        """What each copy runs (with the Map's ``retry`` and ``timeout``)."""
        member = self.members[0]
        assert isinstance(member, Task | Flow)
        return member

    def add(self, *members: object) -> Map:
        if members:
            raise TypeError(f"map {self.name!r} has one member, given when it is made")
        return self

    def __repr__(self) -> str:
        return f"<Map {self.name!r} of {self.member.name!r} over {self.over!r}>"


def _per_item(member: Task | Flow, retry: Retry | None, timeout: float | None) -> Task | Flow:
    """``member`` with the Map's retry and deadline, which each copy gets on its own."""
    if retry is None and timeout is None:
        return member
    if isinstance(member, Task):
        if retry is not None and timeout is not None:
            return member.using(retry=retry, timeout=timeout)
        if retry is not None:
            return member.using(retry=retry)
        return member.using(timeout=timeout)
    flow = copy.copy(member)  # its members are shared, never changed
    if retry is not None:
        flow.retry = retry
    if timeout is not None:
        flow.timeout = timeout
    return flow
