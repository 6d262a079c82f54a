"""Jobs and the JobBoard protocol every backend implements.

A job is a flow reference plus inputs, posted by a producer and run by whichever
conductor claims it. A claim is a lease: the job is CLAIMED until ``available_at``, and
each claim gives the job a new ``generation``. A lease that runs out makes the job
claimable again (no reaper); the old holder's generation is then stale, so its renewals,
completions are refused. (Its flow's journal appends are fenced by the flow's own
ownership, which the engine running the job holds: see ``aioflow._owner``.)
"""

from __future__ import annotations

import abc
import enum
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, cast

import anyio
import anyio.lowlevel

from .._codec import Codec, get_codec
from .._errors import AioflowError, FlowCancelledError, NotFoundError
from .._failure import CANCEL, Failure
from .._flow import instant
from .._log import get_logger
from .._states import FlowStatus
from ..journal import Journal
from ..journal._base import purge_cut, purge_in_batches
from ._schedule import Schedule, check_schedule, due, first_run, tick_name

if TYPE_CHECKING:
    from datetime import datetime, timedelta

__all__ = ["FlowCanceller", "Job", "JobBoard", "JobState"]

_LOG = get_logger("aioflow.jobs")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class FlowCanceller(Protocol):
    """What :meth:`JobBoard.cancel` needs of an engine (an :class:`~aioflow.Engine` on the
    journal the conductors use): a durable cancel request for a flow."""

    async def cancel(self, flow_id: str) -> None: ...


class JobState(enum.Enum):
    """Where a job stands on its board."""

    UNCLAIMED = "UNCLAIMED"
    """Posted (or given back), waiting for a conductor."""
    CLAIMED = "CLAIMED"
    """Run by ``owner`` under a lease until ``available_at``; claimable again after it."""
    WAITING = "WAITING"
    """Its flow rests on external waits; no conductor holds it."""
    COMPLETE = "COMPLETE"
    """Its flow ended SUCCESS."""
    FAILED = "FAILED"
    """Its flow ended REVERTED or FAILED, or it was dead-lettered; see ``failures``."""

    @property
    def is_final(self) -> bool:
        """True for COMPLETE and FAILED: nothing will run the job again."""
        return self in (JobState.COMPLETE, JobState.FAILED)


FINISHED = frozenset({JobState.COMPLETE, JobState.FAILED})
"""The states :meth:`JobBoard.purge` removes jobs in."""


@dataclass(frozen=True, slots=True)
class Job:
    """One job as its board last recorded it. Its flow's id in the journal is ``id``."""

    id: str
    flow: str
    inputs: dict[str, Any]
    state: JobState
    name: str | None = None
    priority: int = 0
    idempotency_key: str | None = None
    owner: str | None = None
    generation: int = 0
    attempts: int = 0
    available_at: float = 0.0
    created: float = 0.0
    updated: float = 0.0
    status: FlowStatus | None = None
    """The flow's final status once the job is COMPLETE or FAILED."""
    failures: dict[str, Failure] = field(default_factory=dict)
    """Atom (or ``"<conductor>"``) -> failure, for a FAILED job."""

    @property
    def flow_id(self) -> str:
        """The id of the job's flow in the journal (the job's own id)."""
        return self.id


# The column order every SQL backend selects, and :func:`job_from_row` reads.
COLUMNS = (
    "id, name, flow, inputs, priority, idempotency_key, state, owner, generation, attempts,"
    " available_at, created, updated, status, failures"
)


def job_from_row(row: Any, codec: Codec) -> Job:
    """A :class:`Job` from a row of :data:`COLUMNS`."""
    (
        job_id,
        name,
        flow,
        inputs,
        priority,
        key,
        state,
        owner,
        generation,
        attempts,
        available_at,
        created,
        updated,
        status,
        failures,
    ) = row
    decoded = {} if failures is None else cast("dict[str, Any]", codec.decode(failures))
    return Job(
        id=job_id,
        flow=flow,
        inputs=cast("dict[str, Any]", codec.decode(inputs)),
        state=JobState(state),
        name=name,
        priority=priority,
        idempotency_key=key,
        owner=owner,
        generation=generation,
        attempts=attempts,
        available_at=available_at,
        created=created,
        updated=updated,
        status=None if status is None else FlowStatus(status),
        failures={k: Failure.from_dict(v) for k, v in decoded.items()},
    )


def claimed_in_order(rows: Iterable[Any], codec: Codec) -> list[Job]:
    """The :class:`Job` of each row of :data:`COLUMNS` plus a last column that orders
    jobs of equal priority and age (a claim's ``RETURNING`` has no order), best first."""
    ordered = sorted((tuple(row) for row in rows), key=lambda r: (-r[4], r[11], r[-1]))
    return [job_from_row(row[:-1], codec) for row in ordered]


def encode_failures(failures: Mapping[str, Failure], codec: Codec) -> str | None:
    return codec.encode({k: f.to_dict() for k, f in failures.items()}) if failures else None


class JobBoard(abc.ABC):
    """Where producers post jobs and conductors claim them.

    Open one with :meth:`JobBoard.open`. It connects on first use; ``async with board``
    or :meth:`close` releases what it holds. Times are the ``clock`` of the process
    (seconds since the epoch by default), so the machines of one board need clocks in
    step to well within a lease.
    """

    url: str
    codec: Codec
    clock: Clock
    poll: float
    """Seconds between looks at the board when nothing wakes a waiter sooner."""
    purge_batch: int = 500
    """The most jobs one transaction of :meth:`purge` removes."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = time.time,
        sleep: Sleep = anyio.sleep,
        poll: float = 0.5,
        codec: Codec | str | None = None,
    ) -> None:
        self.url = url
        self.clock = clock
        self._sleep = sleep
        self.poll = poll
        self.codec = get_codec(codec)
        # Schedules changed through this object, and how many the last fire_due saw: a
        # conductor's sleeping ticker is woken by them (see wait_for_schedules).
        self._schedule_changes = 0
        self._schedule_changes_fired = 0
        self._schedules_changed: anyio.Event | None = None

    @staticmethod
    def open(
        url: str,
        *,
        clock: Clock = time.time,
        sleep: Sleep = anyio.sleep,
        poll: float = 0.5,
    ) -> JobBoard:
        """The board a URL names: ``memory://``, ``sqlite:///path.db``, ``postgresql://...``.

        Raises :class:`ValueError` for another scheme.
        """
        scheme = url.partition("://")[0].lower()
        kwargs: dict[str, Any] = {"clock": clock, "sleep": sleep, "poll": poll}
        if scheme == "memory":
            from .memory import MemoryJobBoard

            return MemoryJobBoard(url, **kwargs)
        if scheme == "sqlite":
            from .sqlite import SqliteJobBoard

            return SqliteJobBoard(url, **kwargs)
        if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
            from .postgres import PostgresJobBoard

            return PostgresJobBoard(url, **kwargs)
        raise ValueError(
            f"unknown jobboard URL {url!r}; accepted: memory://, sqlite:///path.db, "
            "postgresql://user@host/database"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:  # noqa: B027 - a board with nothing to release
        """Release connections; the board reconnects if used again."""

    # ------------------------------------------------------------------- producers

    @abc.abstractmethod
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
        """Post a job that runs ``flow`` (a reference or registry name) with ``inputs``.

        Higher ``priority`` is claimed first, then older jobs. A second post with the
        same ``idempotency_key`` posts nothing and returns the first job as it stands.
        Inputs the codec cannot store raise :class:`~aioflow.SerializationError`. With
        ``delay`` (seconds) or ``run_at`` (an aware datetime) no conductor claims the job
        before then (``available_at``, on the board's clock).
        """

    async def trace_of(self, job_id: str) -> dict[str, str]:
        """The trace context (W3C ``traceparent``, ``tracestate``) of the span that was
        current where job ``job_id`` was posted, or an empty dict: a conductor whose
        engine has instruments runs the job's flow as that span's child (see
        ``docs/observability.md``)."""
        return {}

    # ------------------------------------------------------------------- schedules

    async def schedule(
        self,
        name: str,
        flow: str,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        inputs: Mapping[str, Any] | None = None,
        timezone: str = "UTC",
        catchup: str = "latest",
    ) -> Schedule:
        """Post a job running ``flow`` with ``inputs`` at every tick of ``cron`` (in
        ``timezone``) or ``every`` seconds, exactly once per tick however many conductors
        run (conductors fire due schedules). A name already scheduled is updated (its
        next tick kept when its rule did not change): deploying the same schedule twice
        is harmless. Ticks missed while no conductor ran post one job for the latest
        (``catchup="latest"``) or none (``"none"``; a tick more than a minute late counts
        as missed). Bad input is a ValueError naming it."""
        values = check_post(flow, inputs, 0)
        now = self._now()
        cron_, every_ = check_schedule(name, flow, cron, every, timezone, catchup, now)
        self.codec.encode(values)  # refuse inputs the codec cannot store, before a write
        old = {s.name: s for s in await self._load_schedules()}.get(name)
        same_rule = old is not None and (old.cron, old.every, old.timezone) == (
            cron_,
            every_,
            timezone,
        )
        if old is not None and same_rule:
            next_run = old.next_run
        else:
            next_run = first_run(cron_, every_, timezone, now)
        schedule = Schedule(
            name,
            flow,
            cron_,
            every_,
            values,
            timezone,
            catchup,
            next_run,
            old.last_tick if old is not None else None,
        )
        await self._save_schedule(schedule, self.codec.encode(values), now)
        self._schedule_changed()
        return schedule

    async def schedules(self) -> list[Schedule]:
        """Every schedule of the board, by name."""
        return sorted(await self._load_schedules(), key=lambda s: s.name)

    async def unschedule(self, name: str) -> bool:
        """Remove schedule ``name`` (jobs it posted stay); False when there was none."""
        dropped = await self._drop_schedule(name)
        self._schedule_changed()
        return dropped

    async def fire_due(self) -> float | None:
        """Post the job of every due schedule's tick (see :meth:`schedule`) and move its
        ``next_run`` on; return when the earliest schedule is next due (None: none)."""
        self._schedule_changes_fired = self._schedule_changes
        now = self._now()
        earliest: float | None = None
        for s in await self._load_schedules():
            next_run = s.next_run
            if next_run <= now:
                try:
                    tick, following = due(s, now)
                except (ValueError, ImportError) as exc:
                    # Stored by a machine with a timezone or the cron extra this one
                    # lacks: left to conductors that have them, not the end of this one.
                    _LOG.warning("aioflow.schedule_skipped", schedule=s.name, error=str(exc))
                    continue
                if tick is not None:
                    # Posted first, under the tick's key: a conductor that dies before it
                    # moves next_run leaves the tick to another, which posts nothing new.
                    await self.post(
                        s.flow,
                        s.inputs,
                        name=tick_name(s.name, tick),
                        idempotency_key=f"schedule:{s.name}:{tick:.3f}",
                    )
                await self._move_schedule(s.name, next_run, following, tick, now)
                next_run = following
            earliest = next_run if earliest is None else min(earliest, next_run)
        return earliest

    async def wait_for_schedules(self, seconds: float) -> None:
        """Sleep ``seconds`` on the board's clock; return sooner when a schedule was
        added, changed or removed through this board object since the last
        :meth:`fire_due` began (other processes' changes are seen by looking again)."""
        if self._schedule_changes != self._schedule_changes_fired:
            await anyio.lowlevel.checkpoint()
            return
        if self._schedules_changed is None:
            self._schedules_changed = anyio.Event()
        changed = self._schedules_changed
        async with anyio.create_task_group() as tg:

            async def wake() -> None:
                await changed.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(wake)
            await self._sleep(seconds)
            tg.cancel_scope.cancel()

    def _schedule_changed(self) -> None:
        self._schedule_changes += 1
        changed, self._schedules_changed = self._schedules_changed, None
        if changed is not None:
            changed.set()

    async def _load_schedules(self) -> list[Schedule]:
        raise NotImplementedError(f"{type(self).__name__} keeps no schedules")

    async def _save_schedule(self, schedule: Schedule, inputs: str, now: float) -> None:
        raise NotImplementedError(f"{type(self).__name__} keeps no schedules")

    async def _drop_schedule(self, name: str) -> bool:
        raise NotImplementedError(f"{type(self).__name__} keeps no schedules")

    async def _move_schedule(
        self, name: str, old: float, new: float, tick: float | None, now: float
    ) -> bool:
        """Set ``next_run`` to ``new`` (and ``last_tick`` to ``tick`` unless None) if it
        is still ``old``; True when this call moved it."""
        raise NotImplementedError(f"{type(self).__name__} keeps no schedules")

    @abc.abstractmethod
    async def get(self, job_id: str) -> Job:
        """The job as it stands; :class:`~aioflow.NotFoundError` for an unknown id."""

    @abc.abstractmethod
    async def jobs(self, state: JobState | None = None) -> list[Job]:
        """The board's jobs, oldest first, optionally only those in ``state``."""

    @abc.abstractmethod
    async def trash(self, job_id: str) -> None:
        """Remove a job from the board. A conductor running it loses its claim (and with
        it the right to write its flow). :class:`~aioflow.NotFoundError` if unknown."""

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:  # noqa: ASYNC109
        """Wait until the job is COMPLETE or FAILED and return it.

        Raises :class:`TimeoutError` after ``timeout`` seconds, and
        :class:`~aioflow.NotFoundError` for an unknown (or trashed) job.
        """
        with anyio.fail_after(timeout):
            while True:
                job = await self.get(job_id)
                if job.state.is_final:
                    return job
                await anyio.sleep(self.poll)  # a poll: real time, as wait_for_work

    # ------------------------------------------------------------------- operators

    async def retry(self, job_id: str) -> Job:
        """Run a FAILED job again, and return the job that will run.

        A job whose flow never ended (``status`` None: a dead letter, whose conductors
        kept dying; a job cancelled before its flow started; an error around the flow)
        goes back to UNCLAIMED under the same id with its attempts, status and failures
        cleared, so a conductor claims it and resumes its flow from the journal. A job
        whose flow ended (REVERTED or FAILED: what ran was undone) stays as it is, and
        a new job with the same flow, inputs, name and priority (and no idempotency
        key) is posted; that one is returned.

        Raises :class:`~aioflow.NotFoundError` for an unknown job, and
        :class:`~aioflow.AioflowError` for a job that is not FAILED, or that another
        caller retried meanwhile (two retries at once change the board once).
        """
        job = await self.get(job_id)
        _check_retry(job)
        if job.status is None:
            if await self._requeue(job):
                _LOG.info("aioflow.job_retried", job=job_id)
                return await self.get(job_id)
        else:
            new = await self._repost(job)
            if new is not None:
                _LOG.info("aioflow.job_retried", job=job_id, new_job=new.id)
                return new
        _check_retry(await self.get(job_id))
        raise AioflowError(f"job {job_id} was retried by another caller meanwhile; nothing changed")

    async def cancel(self, job_id: str, *, engine: FlowCanceller) -> Job:
        """Stop a job for good and return it as it then stands.

        A job whose flow has not started (UNCLAIMED, or claimed under a lease that ran
        out) ends FAILED at once, with :class:`~aioflow.FlowCancelledError` under
        ``"<cancel>"`` in its failures. Otherwise ``engine`` (on the conductors' journal)
        records a cancel request for its flow: the engine running the flow reverts it
        within seconds (a resting flow is reverted by ``engine`` if it can build it, else
        by the next resume), and the job's conductor then finishes the job FAILED with
        the flow's failures, which hold ``"<cancel>"``; a WAITING job is made claimable
        so that a conductor does so. ``await board.wait(job_id)`` waits for that end.

        Raises :class:`~aioflow.NotFoundError` for an unknown job (or one whose flow is
        not in ``engine``'s journal although it runs), and
        :class:`~aioflow.AioflowError` for a job that has ended.
        """
        failures: dict[str, Failure] | None = None
        first: Job | None = None
        while True:
            job = await self.get(job_id)
            if job.state.is_final:
                status = "" if job.status is None else f", its flow {job.status.value}"
                raise AioflowError(
                    f"job {job_id} has ended ({job.state.value}{status}); there is nothing to"
                    " cancel"
                )
            try:
                await engine.cancel(job_id)
            except NotFoundError:
                pass  # its flow has not started (yet)
            else:
                if job.state is JobState.WAITING:
                    await self.unpark(job_id)
                _LOG.info("aioflow.job_cancel_requested", job=job_id)
                return await self.get(job_id)
            unclaimed = job.state is JobState.UNCLAIMED
            if unclaimed or (job.state is JobState.CLAIMED and job.available_at <= self._now()):
                if failures is None:
                    failures = {
                        CANCEL: Failure.from_exception(
                            FlowCancelledError("cancelled by an operator")
                        )
                    }
                if await self._cancel_unstarted(job, failures):
                    _LOG.info("aioflow.job_cancelled", job=job_id)
                    return await self.get(job_id)
                continue  # claimed (or changed) meanwhile: look again
            # Claimed by a live conductor whose engine starts the flow at once; a whole
            # lease without it means the flow is written to another journal.
            first = first if first is not None and first.generation == job.generation else job
            if job.state is JobState.WAITING or self._now() > first.available_at:
                raise NotFoundError(
                    f"job {job_id} is {job.state.value} but its flow is not in the journal of"
                    " the engine given to cancel it: give an engine on the conductors' journal"
                )
            await anyio.sleep(self.poll)  # a poll: real time, as wait

    async def purge(
        self,
        older_than: float | timedelta,
        states: JobState | Iterable[JobState] | None = None,
        *,
        dry_run: bool = False,
    ) -> int:
        """Remove the jobs that finished (COMPLETE or FAILED; with ``states``, only
        those) more than ``older_than`` (seconds, or a :class:`~datetime.timedelta`) ago
        on the board's clock, with their trace context. Returns how many it removed;
        with ``dry_run``, how many it would remove now, removing nothing.

        It works in transactions of at most :attr:`purge_batch` jobs, yielding to the
        event loop between two, and each checks again that its jobs are still finished
        and old (a job retried meanwhile is kept). A job that may still run (UNCLAIMED,
        CLAIMED, WAITING) is never removed: naming such a state raises
        :class:`ValueError`. The flows of the jobs stay in the journal: purge them with
        :meth:`Journal.purge <aioflow.journal.Journal.purge>`. A removed job's
        idempotency key may be used again.
        """
        wanted = _purge_states(states)
        cut = purge_cut(older_than, self._now())
        if dry_run:
            return await self._count_purgeable(wanted, cut)
        removed = await purge_in_batches(
            lambda after, limit: self._purge_batch(wanted, cut, after, limit),
            self.purge_batch,
            "jobs",
        )
        if removed:
            _LOG.info("aioflow.jobs_purged", jobs=removed, before=cut)
        return removed

    async def _purge_batch(
        self, states: frozenset[JobState], cut: float, after: str | None, limit: int
    ) -> tuple[int, str | None]:
        """Remove, in one transaction, the jobs in ``states`` last updated before ``cut``
        among the next ``limit`` such jobs by id after ``after``, with their trace rows;
        return how many it removed and the id to go on after (None once there were fewer
        than ``limit``: the last batch)."""
        raise NotImplementedError(f"{type(self).__name__} cannot purge jobs")

    async def _count_purgeable(self, states: frozenset[JobState], cut: float) -> int:
        """How many jobs :meth:`_purge_batch` would remove now, in all."""
        raise NotImplementedError(f"{type(self).__name__} cannot purge jobs")

    async def _requeue(self, job: Job) -> bool:
        """Make FAILED ``job`` (whose flow did not end) UNCLAIMED again, with its attempts,
        status and failures cleared and a new generation, if it is still FAILED in
        ``job.generation``; True when this call did it."""
        raise NotImplementedError(f"{type(self).__name__} cannot retry jobs")

    async def _repost(self, job: Job) -> Job | None:
        """Post a copy of FAILED ``job`` (flow, inputs, name, priority) as a new job, and
        move ``job`` to a new generation, both at once and only if ``job`` is still FAILED
        in ``job.generation``; the new job, or None when it was not."""
        raise NotImplementedError(f"{type(self).__name__} cannot retry jobs")

    async def _cancel_unstarted(self, job: Job, failures: Mapping[str, Failure]) -> bool:
        """End ``job`` FAILED with ``failures`` (a new generation, no owner) if it is in
        ``job.generation`` and UNCLAIMED, or CLAIMED under a lease that ran out; True when
        this call did it."""
        raise NotImplementedError(f"{type(self).__name__} cannot cancel jobs")

    # ------------------------------------------------------------------ conductors

    @abc.abstractmethod
    async def claim(self, owner: str, lease: float) -> Job | None:
        """Claim the best claimable job for ``owner`` (highest priority, then oldest):
        an UNCLAIMED job, or a CLAIMED one whose lease ran out. It becomes CLAIMED until
        now + ``lease`` with a new generation and one more attempt. None if there is none.
        """

    async def claim_many(self, owner: str, lease: float, n: int) -> list[Job]:
        """Claim up to ``n`` claimable jobs for ``owner`` at once, best first (the order
        of :meth:`claim`), each changed as :meth:`claim` changes one; fewer, or none,
        when fewer are claimable. The memory, SQLite and PostgreSQL boards claim them
        in one statement; this default, for other boards, calls :meth:`claim` ``n``
        times. :class:`ValueError` unless ``n`` is a whole number >= 1."""
        check_claim_count(n)
        jobs: list[Job] = []
        while len(jobs) < n:
            job = await self.claim(owner, lease)
            if job is None:
                break
            jobs.append(job)
        return jobs

    @abc.abstractmethod
    async def renew(self, job: Job, lease: float) -> bool:
        """Extend the claim to now + ``lease``; False if ``job.generation`` is stale."""

    async def renew_many(self, jobs: Sequence[Job], lease: float) -> set[str]:
        """Extend the claims of ``jobs`` to now + ``lease``; the ids of those extended (a
        stale claim is left out, as :meth:`renew` refuses it). A conductor renews all its
        jobs this way every ``lease / 3``. The SQLite and PostgreSQL boards renew them in
        one transaction (PostgreSQL: one statement); this default renews one by one."""
        return {job.id for job in jobs if await self.renew(job, lease)}

    @abc.abstractmethod
    async def release(self, job: Job, delay: float = 0.0) -> bool:
        """Give a claimed job back, UNCLAIMED, claimable again after ``delay`` seconds,
        without counting the attempt. False if the claim is stale."""

    @abc.abstractmethod
    async def finish(
        self,
        job: Job,
        state: JobState,
        status: FlowStatus | None,
        failures: Mapping[str, Failure] | None = None,
    ) -> bool:
        """Record the end of a claimed job: ``state`` COMPLETE or FAILED, the flow's final
        ``status`` and its ``failures``. False if the claim is stale."""

    @abc.abstractmethod
    async def park(self, job: Job) -> bool:
        """Set a claimed job WAITING (its flow rests on external waits) and drop the
        claim. False if the claim is stale."""

    @abc.abstractmethod
    async def unpark(self, job_id: str) -> bool:
        """Make a WAITING job claimable again (its wait was completed); False if it was
        not WAITING."""

    @abc.abstractmethod
    def shares_database(self, journal: Journal) -> bool:
        """True when ``journal`` is in the same SQLite file or PostgreSQL database and
        schema as this board."""

    def _table_in(self, journal: Journal) -> bool:
        """True when ``journal``'s commits can write this board's jobs table (the same
        SQLite file, or PostgreSQL database and schema): a conductor's job is then
        completed in the transaction of its flow's last events."""
        return False

    async def wait_for_work(self, seconds: float) -> None:
        """Return when a job may have become claimable, or after ``seconds`` of real time
        (a poll looks for what other processes did: it never follows a test clock)."""
        await anyio.sleep(seconds)

    def _now(self) -> float:
        return float(self.clock())


def _purge_states(states: JobState | Iterable[JobState] | None) -> frozenset[JobState]:
    """The states a purge removes jobs in: COMPLETE and FAILED by default, else those
    named; ValueError for a state in which a job may still run."""
    if states is None:
        return FINISHED
    if isinstance(states, JobState):
        named = [states]
    elif isinstance(states, str) or not isinstance(states, Iterable):
        raise TypeError(f"states is a JobState or several, not {states!r}")
    else:
        named = list(states)
    for state in named:
        if not isinstance(state, JobState):
            raise TypeError(f"states is a JobState or several, not {state!r}")
        if state not in FINISHED:
            raise ValueError(
                f"purge removes only finished jobs (COMPLETE, FAILED), not {state.value} ones:"
                " a conductor may still run them (cancel a job to end it FAILED first)"
            )
    if not named:
        raise ValueError("states names no state: give COMPLETE, FAILED or both")
    return frozenset(named)


def _check_retry(job: Job) -> None:
    """Refuse to retry a job that is not FAILED, saying what it is."""
    if job.state is JobState.FAILED:
        return
    if job.state is JobState.COMPLETE:
        why = "it completed; post it again to run its flow once more"
    else:
        why = "it has not failed; cancel it first to stop it"
    raise AioflowError(
        f"job {job.id} is {job.state.value}; only a FAILED job can be retried ({why})"
    )


def available_from(now: float, delay: object, run_at: object) -> float:
    """When a job posted at ``now`` with ``delay``/``run_at`` may first be claimed; a
    ValueError (TypeError for a wrong type) naming what is wrong."""
    if delay is not None and run_at is not None:
        raise ValueError("give a job's delay or its run_at, not both")
    if run_at is not None:
        return instant(run_at, "run_at")
    if delay is None:
        return now
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise TypeError(f"a job's delay is a number of seconds, not {delay!r}")
    if not (0 <= delay < math.inf):
        raise ValueError(f"a job's delay must be a finite number of seconds >= 0, not {delay!r}")
    return now + float(delay)


def check_claim_count(n: object) -> None:
    """Refuse a count of jobs to claim that is not a whole number >= 1, naming it."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"claim_many takes a whole number of jobs >= 1, not {n!r}")


def check_post(flow: object, inputs: object, priority: object) -> dict[str, Any]:
    """Refuse a malformed post, naming what is wrong; return the inputs as a dict."""
    if not isinstance(flow, str) or not flow:
        raise TypeError(f"a job's flow is a reference or registry name, not {flow!r}")
    if inputs is not None and not isinstance(inputs, Mapping):
        raise TypeError(f"a job's inputs are a mapping of symbol -> value, not {inputs!r}")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"a job's priority is an int, not {priority!r}")
    return dict(inputs or {})
