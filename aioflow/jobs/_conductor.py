"""The Conductor: claims jobs from a board and runs their flows in an engine.

Each job runs in the conductor's task group under a lease that a companion task renews
every third of its length. The flow's journal appends carry a fence on the job's claim,
so once the lease is lost (the conductor was paused, or cut off, past its lease and
another conductor claimed the job) not one more event of it is accepted, and the flow is
stopped here with :class:`~aioflow.LeaseLostError`.
"""

from __future__ import annotations

import math
import os
import socket
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import anyio

from .._engine import Engine
from .._errors import (
    AioflowError,
    FlowFailedError,
    JournalError,
    LeaseLostError,
    NotFoundError,
)
from .._failure import Failure
from .._log import get_logger
from .._outcome import Outcome
from .._replay import replay
from .._states import AtomState, FlowStatus
from ._board import Job, JobBoard, JobState

__all__ = ["Conductor"]

_LOG = get_logger("aioflow.conductor")
CONDUCTOR = "<conductor>"
"""The failures key of what went wrong around a flow rather than in one of its atoms."""


_WAKE_EVERY = 1.0
"""Seconds between two checks of the parked (WAITING) jobs by an idle conductor."""


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
        if not board.shares_database(engine.journal):
            raise AioflowError(
                f"the conductor's journal ({engine.journal.url}) cannot check the claims of "
                f"jobboard {board.url}: put both in the same SQLite file or PostgreSQL "
                "database and schema (fencing needs them in one transaction)"
            )
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
            slots = anyio.Semaphore(self.capacity)
            claimed = 0
            next_wake = -math.inf
            async with anyio.create_task_group() as tg:
                while max_jobs is None or claimed < max_jobs:
                    await slots.acquire()
                    try:
                        job = await self.board.claim(self.name, self.lease)
                    except BaseException:
                        slots.release()
                        raise
                    if job is None:
                        slots.release()
                        if self.board.clock() >= next_wake:
                            # Reads every WAITING job's journal: not at every poll.
                            next_wake = self.board.clock() + max(self.poll, _WAKE_EVERY)
                            await self.wake_parked()
                        await self.board.wait_for_work(self.poll)
                        continue
                    claimed += 1
                    tg.start_soon(self._job, job, slots, name=f"job {job.id}")

    async def wake_parked(self) -> int:
        """Make WAITING jobs claimable again once their flow needs running: a wait was
        completed (by any process: the journal says so), a wait's deadline passed (the
        resume fails it), or the flow ended or was suspended elsewhere. A flow another
        engine is running (RUNNING) stays parked until it rests. Returns how many."""
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
            if (state.status is not FlowStatus.WAITING or not waits or expired) and (
                await self.board.unpark(job.id)
            ):
                woken += 1
                self._log.info("aioflow.job_unparked", job=job.id)
        return woken

    async def run_one(self, job: Job) -> None:
        """Run one job this conductor has claimed (``board.claim(conductor.name, ...)``)."""
        await self._job(job, anyio.Semaphore(0))

    async def _job(self, job: Job, slots: anyio.Semaphore) -> None:
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
                await self.board.finish(job, JobState.FAILED, None, {CONDUCTOR: failure})
                log.warning("aioflow.job_dead_lettered")
                return
            await self._run_claimed(job, log)
        finally:
            self.running.pop(job.id, None)
            slots.release()

    async def _run_claimed(self, job: Job, log: Any) -> None:
        journal = self.engine.journal
        async with anyio.create_task_group() as tg:
            fence = self.board.fence(job, on_lost=tg.cancel_scope.cancel)
            journal.set_fence(job.id, fence)
            tg.start_soon(self._renew, job, fence)
            outcome: Outcome | None = None
            error: Exception | None = None
            try:
                outcome = await self._drive(job)
            except LeaseLostError:
                pass
            except anyio.get_cancelled_exc_class():
                if not fence.lost:
                    with anyio.CancelScope(shield=True):
                        # Graceful shutdown: give the job back now, not after the lease.
                        await self.board.release(job)
                        log.info("aioflow.job_released")
                raise
            except Exception as exc:
                if not fence.lost:
                    error = exc
            finally:
                journal.set_fence(job.id, None)
            if fence.lost:
                tg.cancel_scope.cancel()
            else:
                with anyio.CancelScope(shield=True):
                    await self._settle(job, outcome, error, log)
                tg.cancel_scope.cancel()
        if fence.lost:
            log.warning("aioflow.job_lease_lost")

    async def _drive(self, job: Job) -> Outcome:
        try:
            await self.engine.journal.load(job.id)
        except NotFoundError:
            return await self._outcome_of(self.engine.run(job.flow, job.inputs, flow_id=job.id))
        return await self._outcome_of(self.engine.resume(job.id))

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
        if outcome is None and isinstance(error, JournalError):
            # The storage failed, not the flow: let another conductor (or a later try of
            # this one) resume it from what the journal kept.
            done = await board.release(job)
            log.error("aioflow.job_journal_error", error=str(error))
        elif outcome is None:
            failure = Failure.from_exception(error or AioflowError("the flow did not end"))
            done = await board.finish(job, JobState.FAILED, None, {CONDUCTOR: failure})
            log.error("aioflow.job_error", error=str(failure))
        elif outcome.status is FlowStatus.SUCCESS:
            done = await board.finish(job, JobState.COMPLETE, outcome.status)
            log.info("aioflow.job_complete")
        elif outcome.status in (FlowStatus.REVERTED, FlowStatus.FAILED):
            done = await board.finish(job, JobState.FAILED, outcome.status, outcome.failures)
            log.info("aioflow.job_failed", status=outcome.status.value)
        elif outcome.status is FlowStatus.WAITING:
            done = await board.park(job)
            log.info("aioflow.job_waiting")
        else:
            done = await board.release(job)
            log.info("aioflow.job_released", status=outcome.status.value)
        if not done:
            log.warning("aioflow.job_lease_lost", when="settling")

    async def _renew(self, job: Job, fence: Any) -> None:
        """Renew the lease every third of it; lose the fence once renewal is refused or
        the lease ran out without one succeeding."""
        board = self.board
        expires = board._now() + self.lease
        while True:
            await board._sleep(self.lease / 3)
            try:
                renewed = await board.renew(job, self.lease)
            except AioflowError as exc:
                self._log.warning("aioflow.lease_renewal_failed", job=job.id, error=str(exc))
                renewed = None
            now = board._now()
            if renewed:
                expires = now + self.lease
            elif renewed is False or now >= expires:
                fence.lose()
                return
