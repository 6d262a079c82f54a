"""One timer per engine: every deadline it keeps (waits, sleeps, part deadlines, resting
flows to wake) in one heap, served by one task that sleeps until the earliest.

Ten thousand sleeping flows cost ten thousand heap entries and one sleeping task, not
ten thousand tasks. Callbacks are plain functions run on the event loop when their
deadline passes on the engine's clock; they must not block. A callback that raises is
logged and the others still run.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel

from ._log import get_logger

__all__ = ["Timer", "Timers"]

_LOG = get_logger("aioflow")


class Timer:
    """A deadline in :class:`Timers`; :meth:`cancel` calls it off."""

    __slots__ = ("args", "callback", "deadline")

    def __init__(self, deadline: float, callback: Callable[..., None], args: tuple[Any, ...]):
        self.deadline = deadline
        self.callback: Callable[..., None] | None = callback
        self.args = args

    def cancel(self) -> None:
        self.callback = None
        self.args = ()

    @property
    def active(self) -> bool:
        return self.callback is not None

    def __lt__(self, other: Timer) -> bool:  # heapq's order when deadlines tie: any
        return False


class Timers:
    """The deadlines of one engine, served by :meth:`serve` (one task)."""

    def __init__(
        self, clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._nap: anyio.CancelScope | None = None  # the serving task's current sleep
        self._idle: anyio.Event | None = None  # set when a deadline comes with none kept
        self.serving = False

    def __len__(self) -> int:
        return sum(1 for _, _, t in self._heap if t.active)

    def add(self, deadline: float, callback: Callable[..., None], *args: Any) -> Timer:
        """Call ``callback(*args)`` once ``deadline`` (the engine's clock) has passed."""
        timer = Timer(deadline, callback, args)
        heap = self._heap
        earliest = heap[0][0] if heap else None
        heapq.heappush(heap, (deadline, next(self._order), timer))
        if earliest is None or deadline < earliest:
            self._poke()
        return timer

    def _poke(self) -> None:
        """Make the serving task look at the heap again (a new earliest deadline)."""
        if self._idle is not None:
            self._idle.set()
        if self._nap is not None:
            self._nap.cancel()

    def fire_due(self) -> int:
        """Run the callbacks whose deadline has passed; how many ran."""
        heap = self._heap
        fired = 0
        now = self.clock()
        while heap and (heap[0][0] <= now or not heap[0][2].active):
            _, _, timer = heapq.heappop(heap)
            callback, args = timer.callback, timer.args
            if callback is None:
                continue
            timer.cancel()
            fired += 1
            try:
                callback(*args)
            except Exception as exc:  # one broken callback must not stop the others
                _LOG.error("aioflow.timer_failed", error=str(exc), exc_info=exc)
        return fired

    async def serve(self) -> None:
        """Until cancelled: sleep until the earliest deadline, then run what is due."""
        self.serving = True
        try:
            while True:
                self.fire_due()
                heap = self._heap
                if not heap:
                    self._idle = anyio.Event()
                    await self._idle.wait()
                    self._idle = None
                    continue
                with anyio.CancelScope() as nap:
                    self._nap = nap
                    remaining = heap[0][0] - self.clock()
                    if remaining > 0:
                        await self.sleep(remaining)
                    else:
                        await anyio.lowlevel.checkpoint()
                self._nap = None
        finally:
            self.serving = False
            self._nap = self._idle = None
