"""OpenTelemetry traces and metrics of flows, atoms and jobs (extra ``otel``).

``Engine(..., instruments=[aioflow.otel.OpenTelemetry()])`` gives:

- a span ``flow <name>`` per run of a flow in an engine (its first run, and each resume,
  wake-up or takeover, linked to the spans of the earlier runs), the child of the span
  current where the flow was started (``engine.start``/``engine.run``) or its job posted
  (``board.post``), even in another process: the W3C trace context is kept with the
  flow and the job;
- a span ``atom <name>`` per attempt of an atom (``revert <name>`` per revert), a child of
  its run's span and the current span of the task's own code; a failure is recorded as
  an exception with status ERROR; a wait, a sleep or a receive is a span event
  (``aioflow.wait``);
- metrics: ``aioflow.flows`` (runs come to rest, by ``aioflow.status``),
  ``aioflow.atoms`` (attempts ended, by ``aioflow.state``), ``aioflow.atom.duration``
  (seconds, by ``aioflow.state``), ``aioflow.jobs`` (by ``aioflow.job.event``: claimed,
  completed, failed, dead_lettered).

Attributes: ``aioflow.flow_id``, ``aioflow.flow``, ``aioflow.atom``, ``aioflow.attempt``,
``aioflow.status`` / ``aioflow.state``, ``aioflow.resumed``, ``error.type``. No input,
result, token or message ever goes into a span or a metric. ``TaskContext.log`` of an
attempt has ``trace_id`` and ``span_id`` bound. See ``docs/observability.md``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, propagate, trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("aioflow.otel needs OpenTelemetry: pip install 'aioflow[otel]'") from exc

from ._states import AtomState, FlowStatus

if TYPE_CHECKING:
    from types import TracebackType

    from .instrument import Attempt, FlowRun, JobEvent
    from .jobs import Job

__all__ = ["OpenTelemetry"]

_SCOPE = "aioflow"
_KEY = "aioflow.otel"  # this instrument's room in FlowRun.data
_FAILED_FLOW = (FlowStatus.REVERTED, FlowStatus.FAILED)
_FAILED_ATOM = (AtomState.FAILURE, AtomState.REVERT_FAILURE)


class OpenTelemetry:
    """An instrument (see :mod:`aioflow.instrument`) that makes spans and metrics with
    OpenTelemetry's API: through ``tracer_provider`` and ``meter_provider``, or the global
    ones set up by the application (by default)."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        from . import __version__

        self._tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider)
        meter = metrics.get_meter(_SCOPE, __version__, meter_provider)
        self._flows = meter.create_counter(
            "aioflow.flows", unit="{run}", description="Runs of flows that came to rest"
        )
        self._atoms = meter.create_counter(
            "aioflow.atoms", unit="{attempt}", description="Attempts of atoms that ended"
        )
        self._durations = meter.create_histogram(
            "aioflow.atom.duration", unit="s", description="How long attempts of atoms took"
        )
        self._jobs = meter.create_counter(
            "aioflow.jobs", unit="{job}", description="Jobs claimed and ended by conductors"
        )

    # Hooks -----------------------------------------------------------------------------

    def flow_started(self, run: FlowRun) -> dict[str, str]:
        parent = propagate.extract(dict(run.parent)) if run.parent else None
        links = []
        for earlier_run in run.earlier:
            found = propagate.extract(dict(earlier_run))
            earlier = trace.get_current_span(found).get_span_context()
            if earlier.is_valid:
                links.append(Link(earlier))
        span = self._tracer.start_span(
            f"flow {run.flow}",
            context=parent,
            kind=SpanKind.INTERNAL,
            links=links,
            attributes={
                "aioflow.flow_id": run.flow_id,
                "aioflow.flow": run.flow,
                "aioflow.resumed": run.resumed,
            },
        )
        run.data[_KEY] = span
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    def flow_ended(self, run: FlowRun) -> None:
        span = run.data.pop(_KEY, None)
        if span is None:
            return
        status = run.status
        if status is not None:
            span.set_attribute("aioflow.status", status.value)
            self._flows.add(1, {"aioflow.flow": run.flow, "aioflow.status": status.value})
            if status in _FAILED_FLOW:
                span.set_status(Status(StatusCode.ERROR, f"the flow ended {status.value}"))
        elif run.error is not None:
            span.set_attribute("error.type", type(run.error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, "the run stopped before it came to rest"))
        span.end()

    def attempt(self, attempt: Attempt) -> _AttemptSpan:
        return _AttemptSpan(self, attempt)

    def job(self, event: JobEvent, job: Job) -> None:
        self._jobs.add(1, {"aioflow.job.event": event, "aioflow.flow": job.flow})


class _AttemptSpan:
    """The span of one attempt, current in the task's context while it runs."""

    __slots__ = ("_attempt", "_otel", "_span", "_started", "_token")

    def __init__(self, otel: OpenTelemetry, attempt: Attempt) -> None:
        self._otel = otel
        self._attempt = attempt
        self._span: Any = None
        self._token: Any = None
        self._started = 0.0

    def __enter__(self) -> _AttemptSpan:
        attempt = self._attempt
        flow_span = attempt.run.data.get(_KEY)
        parent = trace.set_span_in_context(flow_span) if flow_span is not None else None
        verb = "atom" if attempt.kind == "execute" else "revert"
        span = self._span = self._otel._tracer.start_span(
            f"{verb} {attempt.atom}",
            context=parent,
            attributes={
                "aioflow.flow_id": attempt.run.flow_id,
                "aioflow.flow": attempt.run.flow,
                "aioflow.atom": attempt.atom,
                "aioflow.attempt": attempt.attempt,
            },
        )
        self._token = otel_context.attach(trace.set_span_in_context(span))
        ids = span.get_span_context()
        attempt.log_fields["trace_id"] = format(ids.trace_id, "032x")
        attempt.log_fields["span_id"] = format(ids.span_id, "016x")
        self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = time.perf_counter() - self._started
        attempt, span = self._attempt, self._span
        try:
            state = attempt.state
            labels: Mapping[str, str] = {"aioflow.flow": attempt.run.flow}
            if state is not None:
                span.set_attribute("aioflow.state", state.value)
                labels = {**labels, "aioflow.state": state.value}
            if attempt.wait is not None:
                span.add_event("aioflow.wait", {"aioflow.wait.kind": attempt.wait})
            error = exc if exc is not None else attempt.error
            if error is not None or state in _FAILED_ATOM:
                if error is not None:
                    span.record_exception(error)
                    span.set_attribute("error.type", type(error).__qualname__)
                why = type(error).__qualname__ if error is not None else str(state)
                span.set_status(Status(StatusCode.ERROR, why))
            if attempt.kind == "execute" and state is not None:
                self._otel._atoms.add(1, labels)
                self._otel._durations.record(elapsed, labels)
        finally:
            span.end()
            otel_context.detach(self._token)
