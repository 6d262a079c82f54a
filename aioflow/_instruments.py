"""The engine's side of :mod:`aioflow.instrument`: calling the hooks safely, and carrying
trace context through the journal without depending on OpenTelemetry.

OpenTelemetry is looked up in ``sys.modules`` only: a program that never imported it
pays one dictionary lookup per flow start, and nothing is imported on its behalf.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from ._log import get_logger

if TYPE_CHECKING:
    from .instrument import Attempt, FlowRun, JobEvent
    from .jobs import Job

__all__ = ["Hooks", "attached", "capture"]

_LOG = get_logger("aioflow.instrument")

EARLIER_RUNS = 8
"""How many of a flow's earlier runs a new run is told of (``FlowRun.earlier``)."""


def _failed(hook: Any, exc: BaseException) -> None:
    name = getattr(hook, "__qualname__", None) or repr(hook)
    _LOG.warning(
        "aioflow.instrument_failed", hook=name, error_type=type(exc).__name__, error=str(exc)
    )


def _hooks(instruments: Iterable[Any], name: str) -> list[Any]:
    found = []
    for instrument in instruments:
        hook = getattr(instrument, name, None)
        if hook is not None:
            if not callable(hook):
                raise TypeError(f"instrument {instrument!r}: {name} must be callable")
            found.append(hook)
    return found


class Hooks:
    """The hooks of an engine's instruments, each called so that it cannot break a flow."""

    __slots__ = ("_attempt", "_ended", "_job", "_started")

    def __init__(self, instruments: Iterable[Any]) -> None:
        instruments = list(instruments)
        self._started = _hooks(instruments, "flow_started")
        self._ended = _hooks(instruments, "flow_ended")
        self._attempt = _hooks(instruments, "attempt")
        self._job = _hooks(instruments, "job")

    def flow_started(self, run: FlowRun) -> dict[str, str]:
        """Tell the instruments a run began; the carriers they return, merged."""
        carrier: dict[str, str] = {}
        for hook in self._started:
            try:
                got = hook(run)
                if got:
                    carrier.update({str(k): str(v) for k, v in dict(got).items()})
            except Exception as exc:
                _failed(hook, exc)
        return carrier

    def flow_ended(self, run: FlowRun) -> None:
        for hook in self._ended:
            try:
                hook(run)
            except Exception as exc:
                _failed(hook, exc)

    def enter(self, attempt: Attempt) -> list[AbstractContextManager[object]]:
        """Enter each instrument's block around ``attempt``; the blocks entered."""
        entered: list[AbstractContextManager[object]] = []
        for hook in self._attempt:
            try:
                block = hook(attempt)
                if block is None:
                    continue
                block.__enter__()
            except Exception as exc:
                _failed(hook, exc)
                continue
            entered.append(block)
        return entered

    @staticmethod
    def exit(entered: list[AbstractContextManager[object]], error: BaseException | None) -> None:
        """Leave the blocks ``enter`` entered, newest first, with the attempt's error (what
        they return is ignored: no instrument swallows an attempt's exception)."""
        for block in reversed(entered):
            try:
                if error is None:
                    block.__exit__(None, None, None)
                else:
                    block.__exit__(type(error), error, error.__traceback__)
            except Exception as exc:
                _failed(block, exc)

    def job(self, event: JobEvent, job: Job) -> None:
        for hook in self._job:
            try:
                hook(event, job)
            except Exception as exc:
                _failed(hook, exc)


def capture() -> dict[str, str]:
    """The current trace context as a W3C carrier (``traceparent``, ``tracestate``), or
    an empty dict when OpenTelemetry was never imported or no span is current."""
    propagate = sys.modules.get("opentelemetry.propagate")
    if propagate is None:
        return {}
    carrier: dict[str, str] = {}
    try:
        propagate.inject(carrier)
    except Exception as exc:  # a broken propagator must not stop a flow from starting
        _failed(propagate.inject, exc)
        return {}
    return carrier


@contextmanager
def attached(carrier: Mapping[str, str] | None) -> Iterator[None]:
    """Make the trace context in ``carrier`` current for the block (when OpenTelemetry is
    imported): what starts there is its child."""
    propagate = sys.modules.get("opentelemetry.propagate")
    context = sys.modules.get("opentelemetry.context")
    if not carrier or propagate is None or context is None:
        yield
        return
    token = context.attach(propagate.extract(dict(carrier)))
    try:
        yield
    finally:
        context.detach(token)
