"""Worker tasks placed in a task group's cancel scope, as anyio places the tasks it starts.

A run's workers (see ``Run.spawn``) are plain asyncio tasks: anyio's ``start_soon`` costs
several times a bare task. They must still be cancelled the anyio way, so that a shielded
scope inside an atom holds. A worker entering a cancel scope of its own does that, but the
first scope a task enters costs it ~4 µs (anyio builds its record of the task on a
``KeyError``), a quarter of what a sleeping atom costs in all.

anyio keeps, for each task it starts, a record naming the cancel scope the task is in,
and the scope keeps the set of its tasks. :class:`ScopeMembership` writes those two
entries for a worker and removes them when it ends, so the task group's own scope
cancels it, shields and all. They are anyio's private structures: anything that does not
look as expected (another anyio, another backend) makes :func:`membership` answer None,
and workers then enter scopes of their own. ``tests/test_workers.py`` pins that the fast
way is taken with the anyio this project is tested with, and that cancellation honours
shields either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import anyio


class ScopeMembership:
    """Puts tasks in one cancel scope of anyio's asyncio backend and takes them out."""

    __slots__ = ("_make_state", "_members", "_scope", "_states")

    def __init__(
        self,
        scope: anyio.CancelScope,
        states: MutableMapping[asyncio.Task[Any], Any],
        make_state: Any,
        members: set[asyncio.Task[Any]],
    ) -> None:
        self._scope = scope
        self._states = states
        self._make_state = make_state
        self._members = members

    def join(self, task: asyncio.Task[Any]) -> None:
        """Put ``task`` (new, not yet started) in the scope."""
        self._states[task] = self._make_state(None, self._scope)
        self._members.add(task)

    def leave(self, task: asyncio.Task[Any]) -> None:
        """Take ``task`` (ended) out of the scope."""
        self._members.discard(task)
        self._states.pop(task, None)


def membership(scope: anyio.CancelScope) -> ScopeMembership | None:
    """A way to put tasks in ``scope`` (a task group's cancel scope on asyncio), or None
    when anyio's structures are not the ones this module knows."""
    try:
        from anyio._backends import _asyncio as backend
    except ImportError:  # pragma: no cover - anyio without its asyncio backend module
        return None
    states = getattr(backend, "_task_states", None)
    make_state = getattr(backend, "TaskState", None)
    members = getattr(scope, "_tasks", None)
    if (
        not isinstance(states, MutableMapping)
        or not isinstance(make_state, type)
        or not isinstance(scope, getattr(backend, "CancelScope", ()))
        or not isinstance(members, set)
    ):
        return None
    try:
        probe = make_state(None, scope)
    except TypeError:
        return None
    if getattr(probe, "cancel_scope", None) is not scope:
        return None
    return ScopeMembership(scope, states, make_state, members)
