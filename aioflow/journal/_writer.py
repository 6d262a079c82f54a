"""Group commit: queue encoded rows without waiting, commit them in batches.

A backend that commits asynchronously owns one :class:`GroupWriter`. ``append`` queues a
row and hands back a ticket (1, 2, 3, ...); one writer task takes everything pending,
commits it as one transaction through the backend's callback and then advances
``durable``. Waiters for the same commit share one :class:`anyio.Event`, so a thousand
atoms waiting on one commit cost one wake-up each and nothing per ticket.

The log stays in order: batches are committed in append order, and after a failed
commit nothing more is committed, so storage always holds a prefix of the appends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeAlias, TypeVar, cast

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from .._codec import Codec
from .._errors import JournalError
from .._events import Event, EventKind, decode_state, event_fields
from .._states import AtomState, FlowStatus
from ._base import Fence, Journal, encode_details

__all__ = ["EventRow", "GroupWriter", "WriterJournal", "encode_row"]

Row = TypeVar("Row")


class GroupWriter(Generic[Row]):
    """Batches rows handed over by ``append`` and commits each batch in one transaction.

    ``commit`` receives the whole pending batch and must commit it in order: all of it,
    or raise having committed at most a prefix of it (one transaction, or several in a
    row). ``name`` says which journal this is, for error messages.

    With ``linger`` (seconds), rows that nobody waits for yet are left to gather for up
    to that long, or until ``linger_rows`` are pending, before the writer commits them:
    a commit has a fixed cost, and rows arriving one by one would otherwise each pay it.
    A waiter ends the linger at once (or, with ``commit_now``, commits for itself).
    """

    def __init__(
        self,
        commit: Callable[[list[Row]], Awaitable[None]],
        *,
        name: str,
        commit_now: Callable[[list[Row]], bool] | None = None,
        idle: Callable[[], Awaitable[None]] | None = None,
        linger: float = 0.0,
        linger_rows: int = 0,
    ) -> None:
        self._commit = commit
        self._commit_now = commit_now
        self._idle = idle
        self._linger = linger
        self._linger_rows = linger_rows
        # Set to end the writer's linger early: a waiter came, the batch is full, closing.
        self._hurry: anyio.Event | None = None
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
        pending = self._pending
        pending.append(row)
        self.appended += 1
        if not self._woken:
            self._woken = True
            self._wake.set()
        elif self._hurry is not None and len(pending) >= self._linger_rows:
            self._hurry.set()
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
            if self._hurry is not None:
                self._hurry.set()  # the writer lingers over rows this waiter needs
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
                    if self._linger > 0:
                        await self._gather()
                    continue
                # A commit runs to the end even if the task group is cancelled: its
                # outcome must be known before the log may go on.
                with anyio.CancelScope(shield=True):
                    await self._commit_pending()
        finally:
            self._running = False
            self._stopped.set()
            # Wake every waiter: with the writer gone they commit for themselves.
            self._wake_waiters(all_of_them=True)

    async def _gather(self) -> None:
        """Let rows gather (see ``linger``) unless someone already waits for them."""
        if (
            self._closing
            or not self._pending  # woken by rows the last commit took already
            or self._next is not None  # a waiter (none waits on a commit: none is running)
            or len(self._pending) >= self._linger_rows
        ):
            return
        self._hurry = hurry = anyio.Event()
        try:
            with anyio.move_on_after(self._linger):
                await hurry.wait()
        finally:
            self._hurry = None

    async def close(self) -> None:
        """Commit everything pending, stop the writer and raise its error if it failed.

        The final commit is shielded, so it happens even when the caller is cancelled
        (the cancellation is delivered at the caller's next checkpoint).
        """
        self._closing = True
        self._wake.set()
        if self._hurry is not None:
            self._hurry.set()
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
        try:
            if not self._commit_now(self._pending):
                return False
        except Exception as exc:
            self._fail(exc)
            return True
        self._pending = []
        # Nothing was in flight (the writer is not busy): every waiter is served.
        self._committed(self.appended)
        return True

    def _committed(self, high: int) -> None:
        """Everything up to ticket ``high`` is committed: wake the waiters it serves."""
        self.durable = high
        self.commits += 1
        self._wake_waiters(all_of_them=high == self.appended)

    def _wake_waiters(self, *, all_of_them: bool) -> None:
        """Wake the waiters of the commit in flight, and with ``all_of_them`` also those
        of the next one."""
        events = (self._current, self._next) if all_of_them else (self._current,)
        for event in events:
            if event is not None:
                event.set()
        self._current = None
        if all_of_them:
            self._next = None

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
        self._wake_waiters(all_of_them=True)

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
        self._committed(high)


_FLOW = EventKind.FLOW

# flow_id, seq, time, kind, atom, state, attempt, progress, details, name, ref
EventRow: TypeAlias = tuple[
    str,
    int,
    float,
    str,
    "str | None",
    "str | None",
    int,
    "float | None",
    "str | None",
    "str | None",
    "str | None",
]
"""An event as a backend stores it: its details encoded, and, for the FLOW event that
names a flow, the flow's name and reference for its summary row."""


def encode_row(event: Event, codec: Codec) -> EventRow:
    """``event`` as a row; a value the codec refuses raises SerializationError now."""
    return fields_row(codec, *event_fields(event))


def fields_row(
    codec: Codec,
    flow_id: str,
    seq: int,
    time: float,
    kind: EventKind,
    atom: str | None,
    state: AtomState | FlowStatus | None,
    attempt: int,
    progress: float | None,
    details: Mapping[str, Any] | None,
) -> EventRow:
    """An event given by its fields as a row (see :func:`encode_row`)."""
    text: str | None = None
    name: str | None = None
    ref: str | None = None
    if details:  # most events have none: a RUNNING, a PROGRESS report
        text = encode_details(codec, flow_id, kind, atom, details)
        if kind is _FLOW and "name" in details:
            name = str(details["name"])
            ref_value = details.get("ref")
            ref = None if ref_value is None else str(ref_value)
    return (
        flow_id,
        seq,
        time,
        kind._value_,
        atom,
        None if state is None else state._value_,
        attempt,
        progress,
        text,
        name,
        ref,
    )


class WriterJournal(Journal):
    """What the journals committing through a :class:`GroupWriter` share: appending
    rows, durability, fences, and starting and stopping the writer in a task group of
    its own. A subclass says how to commit and names itself in messages (``label``)."""

    _writer: GroupWriter[EventRow] | None = None
    _tg: TaskGroup | None = None
    _fences: dict[str, Fence]

    @property
    def label(self) -> str:
        """How messages name this journal (its URL, without a password)."""
        return self.url

    async def _start_writer(
        self, writer: GroupWriter[EventRow], release: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``writer`` until :meth:`_stop_writer`; ``release`` frees the storage if
        the writer cannot start."""
        self._writer = writer
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await tg.start(writer.run)
        except BaseException as exc:
            tg.cancel_scope.cancel()
            try:
                await tg.__aexit__(type(exc), exc, exc.__traceback__)
            finally:
                await release()
            raise
        self._tg = tg

    async def _stop_writer(self, release: Callable[[], Awaitable[None]]) -> None:
        """Commit what is pending, stop the writer, then ``release`` the storage."""
        writer, tg = self._writer, self._tg
        if writer is None or tg is None:
            return
        self._tg = None
        try:
            try:
                await writer.close()
            finally:
                # The writer has stopped; this only leaves the task group (and delivers a
                # pending cancellation of the caller, which must not be swallowed).
                await tg.__aexit__(None, None, None)
        finally:
            await release()
        # Everything is committed and closed; now let a cancellation of the caller (held
        # off by the shields above) be seen.
        await anyio.lowlevel.checkpoint_if_cancelled()

    @property
    def is_open(self) -> bool:
        return self._tg is not None

    async def _lost_fences(
        self,
        flow_ids: set[str],
        generations: Callable[[list[str]], Awaitable[Iterable[Sequence[Any]]]],
    ) -> dict[str, Fence]:
        """The fences (by flow id) of ``flow_ids`` whose job's claim generation moved on.

        ``generations`` reads the (job id, generation) rows of the given jobs inside the
        commit's transaction, in a way that keeps them from changing before the commit.
        """
        lost: dict[str, Fence] = {}
        by_table: dict[str, Fence] = {}
        for flow_id in flow_ids:
            fence = self._fences.get(flow_id)
            if fence is None:
                continue
            if fence.lost or (fence.current is not None and fence.current() != fence.generation):
                lost[flow_id] = fence
            elif fence.current is None:
                by_table[flow_id] = fence
        if by_table:
            rows = await generations([fence.job_id for fence in by_table.values()])
            current: dict[str, int] = {row[0]: row[1] for row in rows}
            for flow_id, fence in by_table.items():
                if current.get(fence.job_id) != fence.generation:
                    lost[flow_id] = fence
        return lost

    def _event(self, flow_id: str, row: Sequence[Any]) -> Event:
        """The event a stored row (seq, time, kind, atom, state, attempt, progress,
        details) holds."""
        seq, time, kind_name, atom, state, attempt, progress, details = row
        kind = EventKind(kind_name)
        return Event(
            flow_id,
            seq,
            time,
            kind,
            atom,
            decode_state(kind, state),
            attempt,
            progress,
            {} if details is None else cast("Mapping[str, Any]", self.codec.decode(details)),
        )

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
        writer = self._writer
        if writer is None or self._tg is None:
            raise JournalError(f"journal {self.label} is not open")
        if self._fences:
            fence = self._fences.get(flow_id)
            if fence is not None and fence.lost:
                raise fence.error(flow_id)
        row = fields_row(
            self.codec, flow_id, seq, time, kind, atom, state, attempt, progress, details
        )
        return writer.append(row)

    @property
    def durable(self) -> int:
        return 0 if self._writer is None else self._writer.durable

    @property
    def appended(self) -> int:
        return 0 if self._writer is None else self._writer.appended

    @property
    def commits(self) -> int:
        """How many group commits the writer made since it was opened (for tests)."""
        return 0 if self._writer is None else self._writer.commits

    async def wait_durable(self, ticket: int) -> None:
        if self._writer is None:
            if ticket <= 0:
                return
            raise JournalError(f"journal {self.label} was never opened")
        await self._writer.wait_durable(ticket)
