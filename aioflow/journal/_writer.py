"""Group commit: queue encoded rows without waiting, commit them in batches.

A backend that commits asynchronously owns one :class:`GroupWriter`. ``append`` queues a
row and hands back a ticket (1, 2, 3, ...); one writer task takes everything pending,
commits it as one transaction through the backend's callback and then advances
``durable``. Waiters for the same commit share one :class:`anyio.Event`, so a thousand
atoms waiting on one commit cost one wake-up each and nothing per ticket.

The log stays in order: batches are committed in append order, so storage always
holds a prefix of each flow's appends. A commit may keep some flows' rows and refuse
others' (a fence that no longer holds, a conflicting event): the refused flows' rows are
dropped, with every row of theirs still queued, and only those flows fail. A commit that
fails as a whole (a lost connection, a locked or full disk) fails the flows whose rows
it held the same way; the writer waits a moment (backing off) and goes on with the rest.
It never stops for everyone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Generic, TypeAlias, TypeVar, cast

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from .._codec import NO_RESULT, Codec, Encoded
from .._errors import JournalError
from .._events import Event, EventKind, decode_state, event_fields
from .._states import AtomState, FlowStatus
from ._base import Fence, Journal, encode_details

__all__ = ["CommitError", "EventRow", "GroupWriter", "WriterJournal", "encode_row"]

Row = TypeVar("Row")


class CommitError(JournalError):
    """Raised by a backend's commit that failed after keeping the first ``committed``
    rows of its batch (in transactions of their own)."""

    def __init__(self, message: str, *, committed: int = 0) -> None:
        super().__init__(message)
        self.committed = committed


class GroupWriter(Generic[Row]):
    """Batches rows handed over by ``append`` and commits each batch in one transaction.

    ``commit`` receives the whole pending batch and must commit it in order. It returns
    the flows (by ``key`` of their rows) whose rows it refused and left out, each with
    its error, or None; or it raises, having committed nothing of the batch but a prefix
    of ``committed`` rows (an attribute of the exception; 0 when absent). ``on_refused``
    hears of every flow whose rows were dropped, refused or lost with a failed commit.
    ``name`` says which journal this is, for error messages.

    With ``linger`` (seconds), rows that nobody waits for yet are left to gather for up
    to that long, or until ``linger_rows`` are pending, before the writer commits them:
    a commit has a fixed cost, and rows arriving one by one would otherwise each pay it.
    A waiter ends the linger at once (or, with ``commit_now``, commits for itself).

    With ``in_waiter``, a waiter that finds no commit in flight and no other waiter
    awaits ``commit`` itself for everything pending, instead of waking the writer task
    and waiting to be woken in turn: a strict step on PostgreSQL saves two switches of
    tasks. The commit is shielded from the waiter's cancellation, as the writer's are.
    The writer commits whatever no waiter took, and for all when several wait (it
    gathers what they append meanwhile).
    """

    def __init__(
        self,
        commit: Callable[[list[Row]], Awaitable[Mapping[str, BaseException] | None]],
        *,
        name: str,
        key: Callable[[Row], str] | None = None,
        on_refused: Callable[[Mapping[str, BaseException]], None] | None = None,
        commit_now: Callable[[list[Row]], bool] | None = None,
        idle: Callable[[], Awaitable[None]] | None = None,
        linger: float = 0.0,
        linger_rows: int = 0,
        in_waiter: bool = False,
    ) -> None:
        self._commit = commit
        self._key = key
        self._on_refused = on_refused
        self._commit_now = commit_now
        self._idle = idle
        self._linger = linger
        self._linger_rows = linger_rows
        self._in_waiter = in_waiter
        # Set to end the writer's linger early: a waiter came, the batch is full, closing.
        self._hurry: anyio.Event | None = None
        self._busy = False
        self._name = name
        self._pending: list[Row | None] = []
        self._holes = False  # some pending rows were dropped (are None)
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
        # Tickets whose rows were dropped (refused, or lost with a failed commit), with
        # the error their waiters get; bounded (see _forget).
        self._dropped: dict[int, BaseException] = {}
        # Flows dropped for good: later rows of theirs are refused at once.
        self.broken: dict[str, BaseException] = {}
        self._backoff = 0.0
        self.failures = 0
        """How many commits failed as a whole (tests and monitoring)."""
        self.last_failure: JournalError | None = None
        """The error of the last commit, while commits fail."""
        self._closing = False
        self._running = False
        self._stopped = anyio.Event()

    @property
    def error(self) -> JournalError | None:
        """The failure that closed the writer for good, if any (never a commit's own)."""
        return self._error

    @property
    def healthy(self) -> bool:
        """False from a commit that failed as a whole until one succeeds again."""
        return self._backoff == 0.0

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
                if self._dropped:
                    dropped = self._dropped.get(ticket)
                    if dropped is not None:
                        raise dropped
                return
            if ticket > self.appended:
                raise ValueError(f"ticket {ticket} was never handed out (last is {self.appended})")
            if not self._busy and self._pending:
                if not yielded and (self._commit_now is not None or self._own_turn()):
                    yielded = True
                    if _others_ready():
                        # Let whatever else is ready append first (and the writer, already
                        # woken, commit it all): atoms finishing together share a commit.
                        await anyio.lowlevel.checkpoint()
                        continue
                if self._commit_now is not None and self._commit_sync():
                    continue
                if not self._running or self._own_turn():
                    # Commit here, in the waiter: the writer task is gone (its task group
                    # was cancelled, or it never started), or handing the batch to it
                    # would cost a switch of tasks there and one back. Shielded as the
                    # writer's commits are: the outcome must be known before the log goes on.
                    with anyio.CancelScope(shield=True):
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
                if self._busy:  # a waiter is committing (see ``in_waiter``)
                    await self._wait_free()
                    continue
                # A commit runs to the end even if the task group is cancelled: its
                # outcome must be known before the log may go on.
                with anyio.CancelScope(shield=True):
                    await self._commit_pending()
                if self._backoff and not self._closing:
                    await anyio.sleep(self._backoff)  # the storage failed: let it recover
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
        failures = self.failures
        with anyio.CancelScope(shield=True):
            if self._running:
                await self._stopped.wait()
            # The writer may have been cancelled with rows still queued, and a waiter
            # may be committing (see ``in_waiter``).
            await self._wait_free()
            while self._pending and self._error is None:
                await self._commit_pending()
                await self._wait_free()
        if self._error is not None:
            raise self._error
        if self.failures > failures and self.last_failure is not None:
            # The rows queued at closing could not be kept: say so.
            raise self.last_failure

    def _own_turn(self) -> bool:
        """Whether a waiter should commit the pending rows itself (see ``in_waiter``)
        rather than wake the writer for them: only the lone waiter, as in a strict chain
        of steps. When others wait too, the writer commits for all (it gathers what they
        append meanwhile into one commit). Not while commits fail: the writer spaces the
        attempts out (``_backoff``)."""
        return (
            self._in_waiter and not self._backoff and self._current is None and self._next is None
        )

    async def _wait_free(self) -> None:
        """Return once the commit in flight (one a waiter makes, see ``in_waiter``) ended."""
        while self._busy:
            if self._current is None:
                self._current = anyio.Event()
            await self._current.wait()

    def _commit_sync(self) -> bool:
        """Let the backend commit everything pending at once, in the waiter, without a
        trip through the writer task; False when it declined (the writer will do it)."""
        assert self._commit_now is not None
        if self._holes:
            return False  # rows were dropped from it: the writer's path skips them
        try:
            if not self._commit_now(self._pending):  # type: ignore[arg-type]
                return False
        except Exception:
            return False  # the writer's path commits it, or fails only its flows
        self._pending = []
        self._backoff = 0.0
        self.last_failure = None
        # Nothing was in flight (the writer is not busy): every waiter is served.
        self._committed(self.appended)
        return True

    def _committed(self, high: int) -> None:
        """Everything up to ticket ``high`` is committed: wake the waiters it serves (all
        of them once the writer is gone: one of them commits the rest)."""
        self.durable = high
        self.commits += 1
        self._wake_waiters(all_of_them=high == self.appended or not self._running)

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

    def _error_of(self, exc: Exception) -> JournalError:
        if isinstance(exc, JournalError):
            return exc
        error = JournalError(f"journal {self._name}: commit failed: {exc}")
        error.__cause__ = exc
        return error

    async def _commit_pending(self) -> None:
        batch = self._pending
        self._pending = []
        high = self.appended
        self._inflight = high
        self._current = self._next
        self._next = None
        self._busy = True
        rows = [row for row in batch if row is not None] if self._holes else batch
        self._holes = False
        refused: Mapping[str, BaseException] | None = None
        try:
            refused = await self._commit(rows) if rows else None  # type: ignore[arg-type]
        except Exception as exc:
            error = self._error_of(exc)
            committed = getattr(exc, "committed", 0)
            key = self._key
            if key is None:
                # Rows that name no flow cannot be told apart: the writer stops.
                self._error = error
                self._pending = []
                self._wake_waiters(all_of_them=True)
                return
            self.failures += 1
            self.last_failure = error
            self._backoff = min(max(self._backoff * 2, 0.05), 2.0)
            refused = {key(row): error for row in rows[committed:]}  # type: ignore[arg-type]
        else:
            self._backoff = 0.0
            self.last_failure = None
        finally:
            self._busy = False
        if refused:
            self._drop(batch, high, refused)
        self._committed(high)

    def _drop(
        self, batch: list[Row | None], high: int, refused: Mapping[str, BaseException]
    ) -> None:
        """Drop the rows of the ``refused`` flows: those of ``batch`` (tickets up to
        ``high``) and those queued since. Their waiters get their flow's error."""
        key = self._key
        assert key is not None
        dropped = self._dropped
        first = high - len(batch) + 1
        for j, row in enumerate(batch):
            if row is not None:
                error = refused.get(key(row))
                if error is not None:
                    dropped[first + j] = error
        pending = self._pending
        first = self.appended - len(pending) + 1
        for j, row in enumerate(pending):
            if row is not None:
                error = refused.get(key(row))
                if error is not None:
                    dropped[first + j] = error
                    pending[j] = None
                    self._holes = True
        if len(dropped) > _DROPPED_KEPT:
            for ticket in sorted(dropped)[: len(dropped) - _DROPPED_KEPT // 2]:
                del dropped[ticket]
        self.broken.update(refused)
        if len(self.broken) > _DROPPED_KEPT:
            for flow in list(self.broken)[: len(self.broken) - _DROPPED_KEPT // 2]:
                del self.broken[flow]
        if self._on_refused is not None:
            self._on_refused(refused)


_DROPPED_KEPT = 100_000
"""How many dropped tickets (and broken flows) a writer remembers; older ones are
forgotten (their waiters were woken long ago)."""


_FLOW = EventKind.FLOW


def _others_ready() -> bool:
    """Whether other callbacks wait for this turn of the event loop, so that yielding to
    them may let more rows join a commit; True when it cannot tell.

    Reads asyncio's own loop's ready queue (``_ready``, there since Python 3.4; another
    loop, or trio, answers True). When nothing else is ready, a yield only costs a turn
    of the loop: a strict chain of steps, each waiting for its own commit, took 10-15 µs
    longer a step with it (benchmarks/README.md)."""
    try:
        ready = getattr(asyncio.get_running_loop(), "_ready", None)
    except RuntimeError:  # not on asyncio
        return True
    return ready is None or bool(ready)


def _flow_of(row: EventRow) -> str:
    return row[0]


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


def stored_event(
    flow_id: str,
    seq: int,
    time: float,
    kind: EventKind,
    atom: str | None,
    state: str | None,
    attempt: int,
    progress: float | None,
    details: str | None,
    codec: Codec,
) -> Event:
    """The event a backend stored with these columns (``details`` the codec's text)."""
    return Event(
        flow_id,
        seq,
        time,
        kind,
        atom,
        decode_state(kind, state),
        attempt,
        progress,
        {} if details is None else cast("Mapping[str, Any]", codec.decode(details)),
    )


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
    no_result: str | None = None,
) -> EventRow:
    """An event given by its fields as a row (see :func:`encode_row`); ``no_result`` is
    the codec's text of NO_RESULT, when the caller keeps it (most successes' details:
    encoded once, not per event)."""
    text: str | None = None
    name: str | None = None
    ref: str | None = None
    if details is NO_RESULT and no_result is not None:
        text = no_result
    elif details:  # most events have none: a RUNNING, a PROGRESS report
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
    _retiring: dict[str, tuple[int, Fence]]
    _completes_jobs = False
    """Whether a commit can complete a conductor's job (``_complete_job_on_success``)."""
    _completing: dict[str, tuple[int, Callable[[], float]]]
    _completed: dict[str, bool]
    _no_result: str | None = None
    """The codec's text of a success without a result (most successes), set on opening."""
    large_until = 0
    """The ticket of the last row holding a large value (encoded off the loop): a backend
    should not write such a row on the loop's thread."""

    @property
    def label(self) -> str:
        """How messages name this journal (its URL, without a password)."""
        return self.url

    async def _start_writer(
        self, writer: GroupWriter[EventRow], release: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``writer`` until :meth:`_stop_writer`; ``release`` frees the storage if
        the writer cannot start."""
        self._no_result = self.codec.encode(NO_RESULT)
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

    def _new_writer(
        self,
        commit: Callable[[list[EventRow]], Awaitable[Mapping[str, BaseException] | None]],
        **options: Any,
    ) -> GroupWriter[EventRow]:
        """The journal's writer: rows are told apart by flow, and a flow whose rows are
        dropped loses its fence (its run is stopped)."""
        return GroupWriter(commit, key=_flow_of, on_refused=self._refused, **options)

    def _refused(self, refused: Mapping[str, BaseException]) -> None:
        for flow_id, error in refused.items():
            fence = self._fences.get(flow_id)
            if fence is not None:
                fence.lose(error)

    def set_fence(self, flow_id: str, fence: Fence | None) -> None:
        retiring = self._retiring
        writer = self._writer
        if retiring and writer is not None:
            durable = writer.durable
            for flow, (ticket, retired) in list(retiring.items()):
                if ticket <= durable:
                    del retiring[flow]
                    if self._fences.get(flow) is retired:
                        del self._fences[flow]
        if fence is not None:
            retiring.pop(flow_id, None)
            self._fences[flow_id] = fence
            if writer is not None and writer.broken:
                # A new run took the flow: its earlier run's refusal is not this one's.
                writer.broken.pop(flow_id, None)
            return
        old = self._fences.get(flow_id)
        if old is None:
            return
        if writer is None or writer.durable >= writer.appended:
            del self._fences[flow_id]
        else:
            # Rows of the flow may still be queued: they are checked all the same.
            retiring[flow_id] = (writer.appended, old)

    def _complete_job_on_success(
        self, job_id: str, generation: int, clock: Callable[[], float]
    ) -> bool:
        if not self._completes_jobs:
            return False
        self._completing[job_id] = (generation, clock)
        return True

    def _job_completed(self, job_id: str) -> bool | None:
        self._completing.pop(job_id, None)
        return self._completed.pop(job_id, None)

    def _completions(self, batch: list[EventRow]) -> list[tuple[float, str, int]]:
        """The jobs to complete with ``batch``: (time, id, generation) of each whose flow
        the batch brings to SUCCESS (see :meth:`_complete_job_on_success`)."""
        completing = self._completing
        if not completing:
            return []
        return [
            (clock(), row[0], generation)
            for row in batch
            if row[3] == "FLOW" and row[5] == "SUCCESS" and row[0] in completing
            for generation, clock in (completing[row[0]],)
        ]

    def _completed_with(self, jobs: list[tuple[float, str, int]], done: Collection[str]) -> None:
        """The commit of ``jobs``' flows succeeded; ``done`` are those it completed."""
        for _, job_id, _ in jobs:
            if self._completing.pop(job_id, None) is not None:
                self._completed[job_id] = job_id in done

    @property
    def healthy(self) -> bool:
        """False while the journal's commits fail (the storage is unavailable)."""
        return self._writer is None or self._writer.healthy

    def _event(self, flow_id: str, row: Sequence[Any]) -> Event:
        """The event a stored row (seq, time, kind, atom, state, attempt, progress,
        details) holds."""
        seq, time, kind, atom, state, attempt, progress, details = row
        return stored_event(
            flow_id, seq, time, EventKind(kind), atom, state, attempt, progress, details, self.codec
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
            if fence is not None and fence.failure is not None:  # lost, one call less
                raise fence.error(flow_id)
        if writer.broken and flow_id in writer.broken:
            raise writer.broken[flow_id]
        row = fields_row(
            self.codec,
            flow_id,
            seq,
            time,
            kind,
            atom,
            state,
            attempt,
            progress,
            details,
            self._no_result,
        )
        ticket = writer.append(row)
        if details.__class__ is Encoded:  # a large value, encoded off the loop
            self.large_until = ticket
        return ticket

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
