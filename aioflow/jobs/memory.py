"""A jobboard in a dict: for tests and single-process use; nothing survives the process."""

from __future__ import annotations

import dataclasses
import heapq
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import NotFoundError
from .._failure import Failure
from .._instruments import capture
from .._states import FlowStatus
from ..journal import Journal
from ._board import Job, JobBoard, JobState, available_from, check_claim_count, check_post
from ._schedule import Schedule

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["MemoryJobBoard"]

_CLAIMABLE = (JobState.UNCLAIMED, JobState.CLAIMED)


class MemoryJobBoard(JobBoard):
    """A :class:`JobBoard` in memory, for tests and one process."""

    def __init__(self, url: str = "memory://", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._jobs: dict[str, Job] = {}
        self._traces: dict[str, dict[str, str]] = {}  # job id -> where it was posted
        self._order: dict[str, int] = {}
        self._posted = 0
        self._wake = anyio.Event()
        self._schedules: dict[str, Schedule] = {}

    def _notify(self) -> None:
        self._wake.set()
        self._wake = anyio.Event()

    async def post(
        self,
        flow: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        priority: int = 0,
        idempotency_key: str | None = None,
        delay: float | None = None,
        run_at: datetime | None = None,
    ) -> Job:
        values = check_post(flow, inputs, priority)
        available_from(0.0, delay, run_at)  # bad timing is refused before anything else
        self.codec.encode(values)  # refuse what a database board would refuse
        if idempotency_key is not None:
            for job in self._jobs.values():
                if job.idempotency_key == idempotency_key:
                    return job
        now = self._now()
        available = available_from(now, delay, run_at)
        job = Job(
            id=os.urandom(16).hex(),
            flow=flow,
            inputs=values,
            state=JobState.UNCLAIMED,
            name=name,
            priority=priority,
            idempotency_key=idempotency_key,
            available_at=available,
            created=now,
            updated=now,
        )
        self._jobs[job.id] = job
        trace = capture()
        if trace:
            self._traces[job.id] = trace
        self._posted += 1
        self._order[job.id] = self._posted
        self._notify()
        return job

    async def trace_of(self, job_id: str) -> dict[str, str]:
        return dict(self._traces.get(job_id, {}))

    async def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id} on {self.url}")
        return job

    async def jobs(self, state: JobState | None = None) -> list[Job]:
        return [j for j in self._jobs.values() if state is None or j.state is state]

    async def trash(self, job_id: str) -> None:
        if self._jobs.pop(job_id, None) is None:
            raise NotFoundError(f"no job {job_id} on {self.url}")
        self._traces.pop(job_id, None)

    async def _purge_batch(
        self, states: frozenset[JobState], cut: float, after: str | None, limit: int
    ) -> tuple[int, str | None]:
        # No await: finding the jobs and removing them is one step.
        doomed = heapq.nsmallest(
            limit,
            (
                job_id
                for job_id, job in self._jobs.items()
                if (after is None or job_id > after) and job.state in states and job.updated < cut
            ),
        )
        for job_id in doomed:
            del self._jobs[job_id]
            self._traces.pop(job_id, None)
            self._order.pop(job_id, None)
        return len(doomed), (doomed[-1] if len(doomed) == limit else None)

    async def _count_purgeable(self, states: frozenset[JobState], cut: float) -> int:
        return sum(1 for job in self._jobs.values() if job.state in states and job.updated < cut)

    async def claim(self, owner: str, lease: float) -> Job | None:
        jobs = await self.claim_many(owner, lease, 1)
        return jobs[0] if jobs else None

    async def claim_many(self, owner: str, lease: float, n: int) -> list[Job]:
        check_claim_count(n)
        now = self._now()
        # No await: choosing the jobs and claiming them is one step.
        best = heapq.nsmallest(
            n,
            (j for j in self._jobs.values() if j.state in _CLAIMABLE and j.available_at <= now),
            key=lambda j: (-j.priority, j.created, self._order[j.id]),
        )
        return [
            self._put(
                job,
                state=JobState.CLAIMED,
                owner=owner,
                generation=job.generation + 1,
                attempts=job.attempts + 1,
                available_at=now + lease,
            )
            for job in best
        ]

    def _held(self, job: Job) -> Job | None:
        """The stored job if ``job``'s claim is still current, else None."""
        stored = self._jobs.get(job.id)
        if (
            stored is None
            or stored.generation != job.generation
            or stored.state is not JobState.CLAIMED
        ):
            return None
        return stored

    def _put(self, job: Job, **changes: Any) -> Job:
        job = dataclasses.replace(job, updated=self._now(), **changes)
        self._jobs[job.id] = job
        return job

    async def renew(self, job: Job, lease: float) -> bool:
        stored = self._held(job)
        if stored is None:
            return False
        self._put(stored, available_at=self._now() + lease)
        return True

    async def renew_many(self, jobs: Sequence[Job], lease: float) -> set[str]:
        renewed: set[str] = set()
        for job in jobs:
            stored = self._held(job)
            if stored is not None:
                self._put(stored, available_at=self._now() + lease)
                renewed.add(job.id)
        return renewed

    async def release(self, job: Job, delay: float = 0.0) -> bool:
        stored = self._held(job)
        if stored is None:
            return False
        self._put(
            stored,
            state=JobState.UNCLAIMED,
            owner=None,
            generation=stored.generation + 1,
            attempts=max(stored.attempts - 1, 0),
            available_at=self._now() + max(delay, 0.0),
        )
        self._notify()
        return True

    async def finish(
        self,
        job: Job,
        state: JobState,
        status: FlowStatus | None,
        failures: Mapping[str, Failure] | None = None,
    ) -> bool:
        if not state.is_final:
            raise ValueError(f"a job finishes COMPLETE or FAILED, not {state.value}")
        stored = self._held(job)
        if stored is None:
            return False
        self._put(stored, state=state, status=status, failures=dict(failures or {}))
        return True

    async def park(self, job: Job) -> bool:
        stored = self._held(job)
        if stored is None:
            return False
        self._put(stored, state=JobState.WAITING, owner=None, generation=stored.generation + 1)
        return True

    async def unpark(self, job_id: str) -> bool:
        stored = self._jobs.get(job_id)
        if stored is None or stored.state is not JobState.WAITING:
            return False
        self._put(stored, state=JobState.UNCLAIMED, available_at=self._now())
        self._notify()
        return True

    async def _requeue(self, job: Job) -> bool:
        stored = self._jobs.get(job.id)
        if (
            stored is None
            or stored.state is not JobState.FAILED
            or stored.status is not None
            or stored.generation != job.generation
        ):
            return False
        self._put(
            stored,
            state=JobState.UNCLAIMED,
            owner=None,
            generation=stored.generation + 1,
            attempts=0,
            status=None,
            failures={},
            available_at=self._now(),
        )
        self._notify()
        return True

    async def _repost(self, job: Job) -> Job | None:
        stored = self._jobs.get(job.id)
        if (
            stored is None
            or stored.state is not JobState.FAILED
            or stored.generation != job.generation
        ):
            return None
        # No await between the check and both changes: they happen at once.
        self._jobs[job.id] = dataclasses.replace(stored, generation=stored.generation + 1)
        now = self._now()
        new = dataclasses.replace(
            stored,
            id=os.urandom(16).hex(),
            state=JobState.UNCLAIMED,
            idempotency_key=None,
            owner=None,
            generation=0,
            attempts=0,
            available_at=now,
            created=now,
            updated=now,
            status=None,
            failures={},
        )
        self._jobs[new.id] = new
        self._posted += 1
        self._order[new.id] = self._posted
        self._notify()
        return new

    async def _cancel_unstarted(self, job: Job, failures: Mapping[str, Failure]) -> bool:
        stored = self._jobs.get(job.id)
        if stored is None or stored.generation != job.generation:
            return False
        lapsed = stored.state is JobState.CLAIMED and stored.available_at <= self._now()
        if stored.state is not JobState.UNCLAIMED and not lapsed:
            return False
        self._put(
            stored,
            state=JobState.FAILED,
            owner=None,
            generation=stored.generation + 1,
            status=None,
            failures=dict(failures),
        )
        return True

    def shares_database(self, journal: Journal) -> bool:
        return True  # its fences are checked in the process, whatever the journal

    async def wait_for_work(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._wake.wait()

    async def _load_schedules(self) -> list[Schedule]:
        return list(self._schedules.values())

    async def _save_schedule(self, schedule: Schedule, inputs: str, now: float) -> None:
        self._schedules[schedule.name] = schedule

    async def _drop_schedule(self, name: str) -> bool:
        return self._schedules.pop(name, None) is not None

    async def _move_schedule(
        self, name: str, old: float, new: float, tick: float | None, now: float
    ) -> bool:
        found = self._schedules.get(name)
        if found is None or found.next_run != old:
            return False
        last = found.last_tick if tick is None else tick
        self._schedules[name] = dataclasses.replace(found, next_run=new, last_tick=last)
        return True
