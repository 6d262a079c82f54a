"""Instruments: code of yours that sees each flow run and each atom attempt as it runs.

``Engine(instruments=[...])`` takes objects with any of the hooks of :class:`Instrument`
(all optional; a hook an object lacks costs nothing, and an engine without instruments
pays nothing at all, not even a check per atom beyond one attribute test):

- ``flow_started(run)`` / ``flow_ended(run)``: a run of a flow in this engine began (a
  start, a resume, a wake-up, a takeover) and came to rest (``run.status``);
- ``attempt(attempt)``: a context manager entered around one attempt of an atom's
  ``execute`` (``attempt.kind == "execute"``) or ``revert`` (``"revert"``), in the task's
  own context: a tracing span made current there is the current span of the task's code
  (and of what it calls: HTTP clients, database drivers). When the block ends,
  ``attempt.state`` says how (SUCCESS, FAILURE, WAITING with ``attempt.wait`` naming the
  kind of wait, PENDING when cancelled, REVERTED, REVERT_FAILURE) and ``attempt.error``
  holds the exception of a failure; the exception also goes through the block;
- ``job(event, job)``: a conductor ``"claimed"`` a job, or it ended ``"completed"``,
  ``"failed"`` or ``"dead_lettered"``.

A hook that raises is logged (``aioflow.instrument_failed``, with the hook's name) and
otherwise ignored: an instrument never breaks a flow, never changes an attempt's result,
and cannot swallow its exception.

Trace context crosses processes in the journal: where a flow is started (``engine.start``,
``engine.run``) or a job is posted (``board.post``) while an OpenTelemetry span is
current, its W3C ``traceparent`` is recorded with the flow (or the job), and each run
hands it to the instruments as ``run.parent``; ``flow_started`` may return a carrier of
its own (the run's span), which is recorded when the run rests and handed to later runs
of the flow as ``run.earlier``. :class:`aioflow.otel.OpenTelemetry` is the instrument
that turns all this into spans and metrics; see ``docs/observability.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from ._states import AtomState, FlowStatus
    from .jobs import Job

__all__ = ["Attempt", "FlowRun", "Instrument", "JobEvent"]

JobEvent = Literal["claimed", "completed", "failed", "dead_lettered"]


@dataclass(slots=True, eq=False)
class FlowRun:
    """One run of a flow in one engine, from its start (or resume) until it rests."""

    flow_id: str
    flow: str
    """The flow's name."""
    resumed: bool
    """False for the flow's first run; True for a resume, a wake-up or a takeover."""
    parent: Mapping[str, str] = field(default_factory=dict)
    """The trace context (W3C ``traceparent``, ``tracestate``) recorded where the flow was
    started or its job posted; empty when there was none."""
    earlier: tuple[Mapping[str, str], ...] = ()
    """The carriers that ``flow_started`` returned for the earlier runs of the flow."""
    status: FlowStatus | None = None
    """How the run came to rest (set before ``flow_ended``): SUCCESS, REVERTED, FAILED,
    SUSPENDED or WAITING; None when it was cancelled or its journal failed."""
    error: BaseException | None = None
    """What ended the run when it did not come to rest (a cancellation, a journal error)."""
    data: dict[str, Any] = field(default_factory=dict)
    """Free room for the instruments' own state of this run (one dict for all of them:
    key it by something of yours)."""


@dataclass(slots=True, eq=False)
class Attempt:
    """One attempt of an atom's execute, or its revert, within a :class:`FlowRun`."""

    run: FlowRun
    atom: str
    attempt: int
    kind: Literal["execute", "revert"]
    state: AtomState | None = None
    """How the attempt ended (set before the ``attempt`` block exits)."""
    wait: str | None = None
    """For an attempt that ended WAITING: ``"external"``, ``"sleep"`` or ``"receive"``."""
    error: BaseException | None = None
    """The exception of a failed attempt."""
    log_fields: dict[str, Any] = field(default_factory=dict)
    """Fields an instrument sets on entering its block, bound to the task's
    ``TaskContext.log`` (the OpenTelemetry instrument binds ``trace_id`` and
    ``span_id``)."""


class Instrument(Protocol):
    """The hooks an instrument may have; every one is optional (see the module's text).
    A class need not derive from this: any object with some of these methods will do."""

    def flow_started(self, run: FlowRun) -> Mapping[str, str] | None:
        """A run began; a carrier returned here is recorded and given to later runs."""
        ...

    def flow_ended(self, run: FlowRun) -> None:
        """The run came to rest (``run.status``) or stopped (``run.error``)."""
        ...

    def attempt(self, attempt: Attempt) -> AbstractContextManager[object]:
        """A context manager entered around the attempt, in the task's own context."""
        ...

    def job(self, event: JobEvent, job: Job) -> None:
        """A conductor claimed a job, or the job ended (completed, failed, dead-lettered)."""
        ...
