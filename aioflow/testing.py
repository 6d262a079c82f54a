"""Helpers for testing flows: a clock a test moves by hand.

``FakeClock`` stands in for the wall clock and for ``sleep``: hand ``clock.now`` and
``clock.sleep`` to an :class:`~aioflow.Engine` or a job board, and every time-based
thing they do (sleeps, the deadlines of waits and parts, leases, delayed jobs,
schedules) follows it. ``clock.advance(seconds)`` moves time on and wakes whatever was
due meanwhile, so a test runs a week of a flow's life in milliseconds::

    clock = FakeClock()
    async with Engine(journal, clock=clock.now, sleep=clock.sleep) as engine:
        handle = await engine.start(trial_flow)
        clock.advance(14 * 24 * 3600)      # or: await clock.elapse(...), step by step
        outcome = await handle.wait()
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from datetime import UTC, datetime

import anyio
import anyio.lowlevel

from ._flow import instant

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that only moves when told to.

    ``now()`` is seconds since the epoch, like :func:`time.time`; ``start`` sets where it
    begins (a number of seconds, or an aware :class:`~datetime.datetime`; by default the
    real time when the clock is made). ``await sleep(seconds)`` returns once the clock has
    been advanced that far. ``advance(seconds)`` moves the clock on at once and wakes
    every sleeper due by then; ``await elapse(seconds)`` moves it one due sleeper at a
    time, letting each run before the clock moves past the next deadline.
    """

    def __init__(self, start: float | datetime | None = None) -> None:
        self._now = (
            time.time() if start is None else instant(start, "FakeClock(start=...)", seconds=True)
        )
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    def now(self) -> float:
        """The clock's time, in seconds since the epoch."""
        return self._now

    def datetime(self) -> datetime:
        """The clock's time as an aware UTC datetime."""
        return datetime.fromtimestamp(self._now, UTC)

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting for the clock to move."""
        return sum(1 for _, _, event in self._sleepers if not event.is_set())

    @property
    def next_deadline(self) -> float | None:
        """When the earliest waiting sleep is due, or None when none waits."""
        for deadline, _, event in sorted(self._sleepers):
            if not event.is_set():
                return deadline
        return None

    async def sleep(self, seconds: float) -> None:
        """Return once the clock has been advanced ``seconds`` past now (at once, after
        one checkpoint, for zero or less)."""
        if math.isnan(seconds):
            raise ValueError("FakeClock.sleep: seconds is NaN")
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), event))
        try:
            await event.wait()
        finally:
            event.set()  # a cancelled sleep no longer counts as sleeping

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on at once and wake every sleep due by then (they
        run once the caller next awaits; they see the new time)."""
        self._now = self._target(seconds)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            heapq.heappop(self._sleepers)[2].set()

    async def elapse(self, seconds: float) -> None:
        """Let ``seconds`` pass step by step: sleeps due on the way wake in deadline
        order, and the clock stops at each one's deadline while what it woke runs (until
        the event loop has nothing more to do for a while), so a sleep started by a woken
        task that falls inside the interval is honoured too."""
        target = self._target(seconds)
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, event = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            event.set()
            await _settle()
        self._now = target
        await _settle()

    def _target(self, seconds: float) -> float:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"FakeClock: seconds must be a number, not {seconds!r}")
        if math.isnan(seconds) or seconds < 0:
            raise ValueError(f"FakeClock: seconds must be >= 0, not {seconds!r}")
        return self._now + seconds

    def __repr__(self) -> str:
        return f"FakeClock({self.datetime().isoformat()}, {self.sleepers} sleeping)"


async def _settle(rounds: int = 20, pause: float = 0.002) -> None:
    """Let what woke run: turns of the event loop, and a few real milliseconds for the
    I/O it starts (a journal commit in a thread)."""
    for _ in range(rounds):
        await anyio.lowlevel.checkpoint()
    await anyio.sleep(pause)
    for _ in range(rounds):
        await anyio.lowlevel.checkpoint()
