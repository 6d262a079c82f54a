"""Group commit: queue encoded rows without waiting, commit them in batches.

A backend that commits asynchronously owns one :class:`GroupWriter`. ``append`` queues a
row and hands back a ticket (1, 2, 3, ...); one writer task takes everything pending,
commits it as one transaction through the backend's callback and then advances
``durable``. Waiters for the same commit share one :class:`anyio.Event`, so a thousand
atoms waiting on one commit cost one wake-up each and nothing per ticket.

The log stays in order: batches are committed whole and in append order, and after a
failed commit nothing more is committed, so storage always holds a prefix of the appends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from .._errors import JournalError

__all__ = ["GroupWriter"]

Row = TypeVar("Row")


class GroupWriter(Generic[Row]):
    """Batches rows handed over by ``append`` and commits each batch in one transaction.

    ``commit`` receives the whole pending batch and must commit it atomically (or raise,
    committing nothing). ``name`` says which journal this is, for error messages.
    """

    def __init__(
        self,
        commit: Callable[[list[Row]], Awaitable[None]],
        *,
        name: str,
        commit_now: Callable[[list[Row]], bool] | None = None,
        idle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._commit = commit
        self._commit_now = commit_now
        self._idle = idle
        self._busy = False
        self._name = name
        self._pending: list[Row] = []
        self.appended = 0
        """The last ticket handed out."""
        self.durable = 0
        """The highest committed ticket."""
        self.commits = 0
        """How many batches were committed (tests and benchmarks count group commits)."""
        self._wake = anyio.Event()
        self._woken = False
        # Highest ticket in the batch being committed; waiters at or below it wait for
        # ``_current`` and waiters above it for ``_next``. Both are created on demand so a
        # commit nobody waits for allocates nothing.
        self._inflight = 0
        self._current: anyio.Event | None = None
        self._next: anyio.Event | None = None
        self._error: JournalError | None = None
        self._closing = False
        self._running = False
        self._stopped = anyio.Event()
        self._inline = anyio.Lock()

    @property
    def error(self) -> JournalError | None:
        """The failure that stopped the writer, if any."""
        return self._error

    def append(self, row: Row) -> int:
        """Queue ``row`` for the next commit and return its ticket; never waits."""
        if self._error is not None:
            raise self._error
        if self._closing:
            raise JournalError(f"journal {self._name} is closed")
        self._pending.append(row)
        self.appended += 1
        if not self._woken:
            self._woken = True
            self._wake.set()
        return self.appended

    async def wait_durable(self, ticket: int) -> None:
        """Return once ``ticket`` is committed; raise the writer's error if it failed."""
        yielded = False
        while True:
            if self._error is not None:
                raise self._error
            if ticket <= self.durable:
                return
            if ticket > self.appended:
                raise ValueError(f"ticket {ticket} was never handed out (last is {self.appended})")
            if self._commit_now is not None and not self._busy and self._pending:
                if not yielded:
                    # Let whatever else is ready append first (and the writer, already
                    # woken, commit it all): atoms finishing together share a commit.
                    yielded = True
                    await anyio.lowlevel.checkpoint()
                    continue
                if self._commit_sync():
                    continue
            if not self._running:
                # The writer task is gone (its task group was cancelled, or it never
                # started): commit in the waiter, one batch at a time, in append order.
                async with self._inline:
                    if self._pending and self._error is None:
                        await self._commit_pending()
                continue
            if ticket <= self._inflight:
                if self._current is None:
                    self._current = anyio.Event()
                event = self._current
            else:
                if self._next is None:
                    self._next = anyio.Event()
                event = self._next
            await event.wait()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer task: commit whatever is pending until :meth:`close` is called.

        Start it with ``await task_group.start(writer.run)`` so that it is known to be
        running (and to signal when it stops) before anything is appended.
        """
        self._running = True
        try:
            task_status.started()
            while self._error is None:
                if not self._pending:
                    if self._closing:
                        return
                    if self._idle is not None:
                        await self._idle()
                        if self._pending:
                            continue
                    await self._wake.wait()
                    # Rearm before taking the batch: an append after this point must
                    # wake the next round.
                    self._wake = anyio.Event()
                    self._woken = False
                    continue
                # A commit runs to the end even if the task group is cancelled: its
                # outcome must be known before the log may go on.
                with anyio.CancelScope(shield=True):
                    await self._commit_pending()
        finally:
            self._running = False
            self._stopped.set()
            # Wake every waiter: with the writer gone they commit for themselves.
            for event in (self._current, self._next):
                if event is not None:
                    event.set()
            self._current = self._next = None

    async def close(self) -> None:
        """Commit everything pending, stop the writer and raise its error if it failed.

        The final commit is shielded, so it happens even when the caller is cancelled
        (the cancellation is delivered at the caller's next checkpoint).
        """
        self._closing = True
        self._wake.set()
        with anyio.CancelScope(shield=True):
            if self._running:
                await self._stopped.wait()
            # The writer may have been cancelled with rows still queued.
            while self._pending and self._error is None:
                await self._commit_pending()
        if self._error is not None:
            raise self._error

    def _commit_sync(self) -> bool:
        """Let the backend commit everything pending at once, in the waiter, without a
        trip through the writer task; False when it declined (the writer will do it)."""
        assert self._commit_now is not None
        batch = self._pending
        try:
            if not self._commit_now(batch):
                return False
        except Exception as exc:
            self._pending = []
            self._fail(exc)
            return True
        self._pending = []
        self.durable = self.appended
        self.commits += 1
        for event in (self._current, self._next):
            if event is not None:
                event.set()
        self._current = self._next = None
        return True

    def _fail(self, exc: Exception) -> None:
        if isinstance(exc, JournalError):
            error = exc
        else:
            error = JournalError(f"journal {self._name}: commit failed: {exc}")
            error.__cause__ = exc
        self._error = error
        # Rows queued after the failed batch are dropped with it: committing them
        # would leave a gap in the log.
        self._pending = []
        for event in (self._current, self._next):
            if event is not None:
                event.set()
        self._current = self._next = None

    async def _commit_pending(self) -> None:
        batch = self._pending
        self._pending = []
        high = self.appended
        self._inflight = high
        self._current = self._next
        self._next = None
        self._busy = True
        try:
            await self._commit(batch)
        except Exception as exc:
            self._fail(exc)
            return
        finally:
            self._busy = False
        self.durable = high
        self.commits += 1
        if self._current is not None:
            self._current.set()
            self._current = None
