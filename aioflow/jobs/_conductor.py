"""The Conductor: claims jobs from a board and runs their flows in an engine.

Each job runs in the conductor's task group under a claim that a companion task renews
every third of its lease. The claim says which conductor should run the job; the flow
itself is owned by the engine that runs it (see ``aioflow._owner``), and the journal
fences the flow's writes on that ownership. So a conductor paused past its lease finds,
on waking, that another conductor has claimed the job and its engine has taken the
flow over: not one more event of it is accepted, and the flow is stopped here with
:class:`~aioflow.LeaseLostError`. A claimed job whose flow a live engine still runs
elsewhere is given back until that engine's lease ends (:class:`~aioflow.FlowBusyError`).

Faults of the store are never the job's: a claim that fails, or a run that ends with a
:class:`~aioflow.JournalError`, gives the job back and makes the conductor wait, backing
off, until the store takes writes again; it never marks a job FAILED for them.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.lowlevel

from .._engine import Engine
from .._errors import (
    AioflowError,
    FlowBusyError,
    FlowExistsError,
    FlowFailedError,
    JournalError,
    LeaseLostError,
    NotFoundError,
)
from .._failure import Failure
from .._instruments import attached
from .._log import get_logger
from .._outcome import Outcome
from .._replay import part_deadlines, replay
from .._states import AtomState, FlowStatus
from ._board import Job, JobBoard, JobState

if TYPE_CHECKING:
    from ..instrument import JobEvent

__all__ = ["Conductor"]

_LOG = get_logger("aioflow.conductor")
CONDUCTOR = "<conductor>"
"""The failures key of what went wrong around a flow rather than in one of its atoms."""


_WAKE_EVERY = 1.0
"""Seconds between two checks of the parked (WAITING) jobs by an idle conductor."""

SCHEDULES_LOOK = 60.0
"""Seconds between two looks at the board's schedules when none is due sooner (a
schedule added by another process is fired within this long of its first tick; one
added through the conductor's own board object at once)."""

_BACKOFF = (0.05, 5.0)
"""The first and the longest pause of a conductor whose store fails (doubling between)."""


@dataclass(slots=True)
class _Hold:
    """A job a conductor holds: what stops its run, and until when its claim holds."""

    job: Job
    lose: Callable[[], None]
    expires: float


def _release(slots: anyio.Semaphore, count: int) -> None:
    for _ in range(count):
        slots.release()


class Conductor:
    """Claims jobs from ``board`` and runs them in ``engine``, ``capacity`` at a time.

    ``lease`` is how long a claim lasts unless renewed (every ``lease / 3``); a job
    claimed more than ``max_attempts`` times (its conductors kept dying) is FAILED as a
    dead letter instead of being run again. ``poll`` bounds how long an idle conductor
    waits before looking at the board again. The engine's journal must be able to check
    the board's claims: the same SQLite file or PostgreSQL database (and schema), or a
    ``memory://`` board in this process.
    """

    def __init__(
        self,
        board: JobBoard,
        engine: Engine,
        *,
        name: str | None = None,
        lease: float = 30.0,
        capacity: int = 1,
        max_attempts: int = 5,
        poll: float = 1.0,
    ) -> None:
        if not (isinstance(lease, int | float) and math.isfinite(lease) and lease > 0):
            raise ValueError(f"lease must be a positive number of seconds, not {lease!r}")
        for label, value in (("capacity", capacity), ("max_attempts", max_attempts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer, not {value!r}")
        self.board = board
        self.engine = engine
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.lease = float(lease)
        self.capacity = capacity
        self.max_attempts = max_attempts
        self.poll = poll
        self.running: dict[str, Job] = {}
        """The jobs this conductor holds now, by id."""
        self._stack: AsyncExitStack | None = None
        self._log = _LOG.bind(conductor=self.name)
        self._backoff = 0.0  # > 0 while the store fails: claims wait that long first
        self._unstarted: dict[str, Job] = {}  # claimed by run(), their task not begun yet

    def __repr__(self) -> str:
        return f"Conductor({self.name!r}, {len(self.running)}/{self.capacity} jobs)"

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            if not self.engine.journal.is_open:
                await stack.enter_async_context(self.engine.journal)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)

    async def run(self, *, max_jobs: int | None = None) -> None:
        """Claim and run jobs until cancelled (or, with ``max_jobs``, until that many
        jobs were claimed and have ended here). Cancelling gives the held jobs back."""
        async with AsyncExitStack() as stack:
            if not self.engine.journal.is_open:
                await stack.enter_async_context(self.engine.journal)
            # One heartbeat, timer server and mailbox poll for every job's run.
            await stack.enter_async_context(self.engine._services())
            slots = anyio.Semaphore(self.capacity)
            claimed = 0
            next_wake = -math.inf
            try:
                async with self._renewing() as held, anyio.create_task_group() as tg:
                    schedules = anyio.CancelScope()
                    tg.start_soon(self._fire_schedules, schedules, name="aioflow schedules")
                    while max_jobs is None or claimed < max_jobs:
                        free = await self._free_slots(slots, max_jobs, claimed)
                        try:
                            if self._backoff:
                                await self._store_back()
                            # Shielded: a cancel while the claim commits must not lose
                            # its jobs; each is then started (its task gives it back
                            # when cancelled) or given back by _give_back_unstarted.
                            with anyio.CancelScope(shield=True):
                                jobs = await self.board.claim_many(self.name, self.lease, free)
                        except JournalError as exc:
                            _release(slots, free)
                            self._trouble(exc)  # no claim while the store is away
                            continue
                        except BaseException:
                            _release(slots, free)
                            raise
                        _release(slots, free - len(jobs))
                        if not jobs:
                            if self.board.clock() >= next_wake:
                                # Reads every WAITING job's journal: not at every poll.
                                next_wake = self.board.clock() + max(self.poll, _WAKE_EVERY)
                                await self.wake_parked()
                            await self.board.wait_for_work(self.poll)
                            continue
                        claimed += len(jobs)
                        for job in jobs:
                            self._unstarted[job.id] = job
                            tg.start_soon(self._job, job, slots, held, name=f"job {job.id}")
                    schedules.cancel()  # max_jobs reached: only the jobs held are awaited
            finally:
                await self._give_back_unstarted()

    async def _free_slots(self, slots: anyio.Semaphore, max_jobs: int | None, claimed: int) -> int:
        """Wait for a free slot, then take every other free one too (no more than the
        jobs ``max_jobs`` leaves to claim): how many jobs the next claim may take."""
        await slots.acquire()
        free = 1
        wanted = self.capacity if max_jobs is None else min(self.capacity, max_jobs - claimed)
        while free < wanted and slots.value > 0:
            slots.acquire_nowait()
            free += 1
        return free

    async def _give_back_unstarted(self) -> None:
        """Give back the claimed jobs whose task never began (the run was cancelled, or
        failed, between the claim and their start), now rather than after the lease."""
        jobs, self._unstarted = list(self._unstarted.values()), {}
        if not jobs:
            return
        with anyio.CancelScope(shield=True):
            for job in jobs:
                with suppress(JournalError):
                    if await self.board.release(job):
                        self._log.info("aioflow.job_released", job=job.id, started=False)

    async def _fire_schedules(self, scope: anyio.CancelScope) -> None:
        """Post the jobs of due schedules (see ``JobBoard.schedule``), sleeping on the
        board's clock until the earliest is due, and looking for new schedules at least
        every :data:`SCHEDULES_LOOK` seconds."""
        board = self.board
        with scope:
            while True:
                try:
                    earliest = await board.fire_due()
                except (AioflowError, OSError) as exc:  # the store is away: later
                    self._log.warning("aioflow.schedules_failed", error=str(exc))
                    earliest = None
                now = board.clock()
                wait = SCHEDULES_LOOK if earliest is None else min(earliest - now, SCHEDULES_LOOK)
                if wait <= 0:  # the clock moved past a tick while firing: fire again
                    await anyio.lowlevel.checkpoint()
                    continue
                await board.wait_for_schedules(wait)

    async def wake_parked(self) -> int:
        """Make WAITING jobs claimable again once their flow needs running: a wait was
        completed (by any process: the journal says so), a wait's or an unfinished
        part's deadline passed (the resume ends it), or the flow ended or was suspended
        elsewhere. A flow another engine is running (RUNNING) stays parked until it rests.
        Returns how many."""
        woken = 0
        now = self.board.clock()
        for job in await self.board.jobs(state=JobState.WAITING):
            try:
                state = replay(job.id, await self.engine.journal.load(job.id))
            except NotFoundError:
                continue
            if state.status is FlowStatus.RUNNING or state.status is FlowStatus.REVERTING:
                continue
            waits = [r for r in state.atoms.values() if r.state is AtomState.WAITING]
            expired = any(float(r.details.get("deadline") or math.inf) <= now for r in waits)
            expired = expired or any(d <= now for d in part_deadlines(state))
            if (state.status is not FlowStatus.WAITING or not waits or expired) and (
                await self.board.unpark(job.id)
            ):
                woken += 1
                self._log.info("aioflow.job_unparked", job=job.id)
        return woken

    async def run_one(self, job: Job) -> None:
        """Run one job this conductor has claimed (``board.claim(conductor.name, ...)``)."""
        async with self._renewing() as held:
            await self._job(job, anyio.Semaphore(0), held)

    async def _job(self, job: Job, slots: anyio.Semaphore, held: dict[str, _Hold]) -> None:
        # Before any await: from here on this task, not run()'s clean-up, gives it back.
        self._unstarted.pop(job.id, None)
        log = self._log.bind(job=job.id, flow=job.flow, attempt=job.attempts)
        self.running[job.id] = job
        try:
            if job.attempts > self.max_attempts:
                failure = Failure.from_exception(
                    AioflowError(
                        f"job {job.id} was claimed {job.attempts} times and never finished "
                        f"(max_attempts={self.max_attempts}): dead-lettered"
                    )
                )
                if await self.board.finish(job, JobState.FAILED, None, {CONDUCTOR: failure}):
                    self._tell("dead_lettered", job)
                log.warning("aioflow.job_dead_lettered")
                return
            self._tell("claimed", job)
            await self._run_claimed(job, log, held)
        finally:
            self.running.pop(job.id, None)
            slots.release()

    def _tell(self, event: JobEvent, job: Job) -> None:
        """Tell the engine's instruments (see aioflow.instrument) what became of a job."""
        hooks = self.engine._hooks
        if hooks is not None:
            hooks.job(event, job)

    def _trouble(self, exc: BaseException) -> None:
        """The store failed: wait longer before the next claim (see :meth:`_store_back`)."""
        self._backoff = min(max(self._backoff * 2, _BACKOFF[0]), _BACKOFF[1])
        self._log.warning("aioflow.store_unavailable", error=str(exc), retry_in=self._backoff)

    async def _store_back(self) -> None:
        """Wait until the store takes writes again (a heartbeat of the engine is written),
        backing off between two tries."""
        while True:
            await self.board._sleep(self._backoff)
            try:
                await self.engine._ownership.renew()
            except AioflowError as exc:
                self._trouble(exc)
                continue
            self._backoff = 0.0
            self._log.info("aioflow.store_available")
            return

    async def _run_claimed(self, job: Job, log: Any, held: dict[str, _Hold]) -> None:
        journal = self.engine.journal
        if self.board._table_in(journal):
            # A flow that succeeds completes its job in the commit of its last events.
            journal._complete_job_on_success(job.id, job.generation, self.board._now)
        try:
            await self._run_held(job, log, held)
        finally:
            journal._job_completed(job.id)  # whatever became of it, forgotten

    async def _run_held(self, job: Job, log: Any, held: dict[str, _Hold]) -> None:
        claim_lost = anyio.Event()
        outcome: Outcome | None = None
        error: Exception | None = None
        run_scope = anyio.CancelScope()

        def lose() -> None:
            claim_lost.set()
            run_scope.cancel()

        # Renewed with the conductor's other jobs (see _renew_held) until it is settled.
        held[job.id] = _Hold(job, lose, self.board._now() + self.lease)
        try:
            try:
                with run_scope:
                    outcome = await self._drive(job)
            except LeaseLostError as exc:
                # Another engine took the flow over: the job is no longer this one's.
                log.warning("aioflow.job_lease_lost", error=str(exc))
                return
            except FlowBusyError as exc:
                # The flow still runs in a live engine elsewhere (its conductor's claim
                # lapsed first): give the job back until that engine's lease ends.
                delay = max((exc.expires or 0.0) - self.engine.journal.clock(), self.lease / 3)
                with anyio.CancelScope(shield=True):
                    with suppress(JournalError):
                        await self.board.release(job, delay=delay)
                log.info("aioflow.job_busy_elsewhere", owner=exc.owner, retry_in=delay)
                return
            except anyio.get_cancelled_exc_class():
                if not claim_lost.is_set():
                    with anyio.CancelScope(shield=True), suppress(JournalError):
                        # Graceful shutdown: give the job back now, not after the lease.
                        await self.board.release(job)
                        log.info("aioflow.job_released")
                raise
            except Exception as exc:
                error = exc
            if claim_lost.is_set():
                log.warning("aioflow.job_lease_lost")
            else:
                with anyio.CancelScope(shield=True):
                    await self._settle(job, outcome, error, log)
        finally:
            del held[job.id]

    async def _drive(self, job: Job) -> Outcome:
        # Most jobs are new: start the flow, and resume it only when the journal has it
        # already. A job's first claim (generation 1: every claim, give-back, park and
        # retry moves it on) names a flow nobody started: its id is the board's fresh
        # uuid. That start reads nothing; a later claim's start reads the flow's summary
        # once, and resumes instead when it is there.
        # Posted inside a span: the flow keeps that trace context (instruments only).
        engine = self.engine
        if job.id in engine._slots:  # this engine runs it already (a wake-up): join
            return await self._outcome_of(engine.resume(job.id))
        trace = await self.board.trace_of(job.id) if engine._hooks is not None else {}
        try:
            with attached(trace):
                return await self._outcome_of(
                    engine._run_flow(job.flow, job.inputs, job.id, None, new=job.generation == 1)
                )
        except FlowExistsError:
            return await self._outcome_of(engine.resume(job.id))

    @staticmethod
    async def _outcome_of(run: Any) -> Outcome:
        try:
            outcome: Outcome = await run
        except FlowFailedError as exc:
            return exc.outcome
        return outcome

    async def _settle(
        self, job: Job, outcome: Outcome | None, error: Exception | None, log: Any
    ) -> None:
        board = self.board
        if outcome is None and isinstance(error, JournalError | OSError):
            # The storage failed, not the flow: let another conductor (or a later try of
            # this one) resume it from what the journal kept, once the store is back.
            self._trouble(error)
            try:
                done = await board.release(job, delay=self._backoff)
            except JournalError:
                done = True  # the claim lapses by itself
            log.error("aioflow.job_journal_error", error=str(error))
        elif outcome is None:
            failure = Failure.from_exception(error or AioflowError("the flow did not end"))
            done = await board.finish(job, JobState.FAILED, None, {CONDUCTOR: failure})
            if done:
                self._tell("failed", job)
            log.error("aioflow.job_error", error=str(failure))
        elif outcome.status is FlowStatus.SUCCESS:
            completed = self.engine.journal._job_completed(job.id)  # by the last commit?
            if completed is None:
                completed = await board.finish(job, JobState.COMPLETE, outcome.status)
            done = completed
            if done:
                self._tell("completed", job)
            log.info("aioflow.job_complete")
        elif outcome.status in (FlowStatus.REVERTED, FlowStatus.FAILED):
            done = await board.finish(job, JobState.FAILED, outcome.status, outcome.failures)
            if done:
                self._tell("failed", job)
            log.info("aioflow.job_failed", status=outcome.status.value)
        elif outcome.status is FlowStatus.WAITING:
            done = await board.park(job)
            log.info("aioflow.job_waiting")
        else:
            done = await board.release(job)
            log.info("aioflow.job_released", status=outcome.status.value)
        if not done:
            log.warning("aioflow.job_lease_lost", when="settling")

    async def _renew_held(self, jobs: dict[str, _Hold]) -> None:
        """Renew the claims of the ``jobs`` this conductor holds, every third of the lease,
        in one call (:meth:`JobBoard.renew_many`); a job whose renewal is refused
        (another conductor claimed it) or whose lease ran out without one succeeding is
        lost: its run is stopped here (SUSPENDED, when the journal still takes its last
        events), and the job's new holder resumes it. One task for all the jobs, where
        each job had a task group and a task of its own."""
        board = self.board
        while True:
            await board._sleep(self.lease / 3)
            held = list(jobs.values())
            if not held:
                continue
            renewed: set[str] | None
            try:
                renewed = await board.renew_many([hold.job for hold in held], self.lease)
            except AioflowError as exc:
                ids = [hold.job.id for hold in held]
                self._log.warning("aioflow.lease_renewal_failed", jobs=ids, error=str(exc))
                renewed = None
            now = board._now()
            for hold in held:
                if renewed is not None and hold.job.id in renewed:
                    hold.expires = now + self.lease
                elif renewed is not None or now >= hold.expires:
                    hold.lose()

    @asynccontextmanager
    async def _renewing(self) -> AsyncIterator[dict[str, _Hold]]:
        """The jobs whose claims a renewal task renews while the block runs: ``run()``
        keeps one for all its jobs, ``run_one`` one for its job."""
        held: dict[str, _Hold] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._renew_held, held, name="aioflow renewals")
            try:
                yield held
            finally:
                tg.cancel_scope.cancel()
