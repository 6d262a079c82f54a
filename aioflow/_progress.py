"""Progress: what a running task reports about how far along it is.

A :class:`Progress` is injected into a task. Reporting is cheap and never awaits: the
value is stored and handed to the engine, which tells listeners at once and keeps a
throttled record in the journal. It may be called from a sync task's worker thread.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Reporter = Callable[[float, dict[str, Any]], None]


def _check(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"progress {what} must be a number, not {type(value).__name__}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"progress {what} must not be NaN")
    return number


class Progress:
    """Reports how far a task is, as a fraction in [0, 1] with free-form details.

    ``progress(0.25, stage="copy")`` sets the fraction; ``progress.update(512, total=1024,
    bytes_done=512)`` derives it from a count and ``progress.advance(n)`` adds to that
    count. Values outside [0, 1] are clamped; NaN or a non-number raises ``ValueError``
    and changes nothing. Every method may be called from any thread (a sync task runs in
    a worker thread); a call stores the value and hands it on without ever awaiting.
    """

    __slots__ = ("_current", "_details", "_fraction", "_lock", "_report", "_total")

    def __init__(self, report: Reporter | None = None) -> None:
        self._report = report
        self._fraction = 0.0
        self._details: dict[str, Any] = {}
        self._total: float | None = None
        self._current = 0.0
        # Reentrant: a sync listener run from the report may itself read this object.
        self._lock = threading.RLock()

    @property
    def fraction(self) -> float:
        """The last fraction reported (0.0 before any report)."""
        return self._fraction

    @property
    def details(self) -> dict[str, Any]:
        """A copy of the details reported so far (later reports update earlier keys)."""
        with self._lock:
            return dict(self._details)

    @property
    def current(self) -> float:
        """The count :meth:`update` and :meth:`advance` reached (0.0 before any)."""
        return self._current

    @property
    def total(self) -> float | None:
        """The total that :meth:`update` and :meth:`advance` count towards, if set."""
        return self._total

    @total.setter
    def total(self, value: float | None) -> None:
        if value is not None:
            value = _check(value, "total")
            if value <= 0:
                raise ValueError(f"progress total must be positive, not {value}")
        self._total = value

    def __call__(self, fraction: float, **details: Any) -> None:
        """Report ``fraction`` (clamped to [0, 1]) and any details."""
        value = _check(fraction, "fraction")
        with self._lock:
            self._set(value, details)

    def update(self, current: float, total: float | None = None, **details: Any) -> None:
        """Report ``current`` out of ``total`` (or out of :attr:`total` set earlier)."""
        current = _check(current, "current")
        with self._lock:
            if total is not None:
                self.total = total
            if self._total is None:
                raise ValueError(
                    "progress.update needs a total: pass total= or set progress.total"
                )
            self._current = current
            self._set(current / self._total, details)

    def advance(self, n: float = 1, **details: Any) -> None:
        """Add ``n`` to the current count and report it against :attr:`total`.

        Concurrent calls from several threads add up: none is lost.
        """
        step = _check(n, "step")
        with self._lock:
            if self._total is None:
                raise ValueError("progress.advance needs a total: set progress.total first")
            self._current += step
            self._set(self._current / self._total, details)

    def _set(self, fraction: float, details: Mapping[str, Any]) -> None:
        # Called with the lock held, and reports under it, so reports from several
        # threads reach the engine in the order their values were set.
        fraction = 0.0 if fraction < 0.0 else 1.0 if fraction > 1.0 else fraction
        self._fraction = fraction
        if details:
            self._details.update(details)
        if self._report is not None:
            self._report(fraction, dict(self._details))


@dataclass(frozen=True, slots=True)
class AtomProgress:
    """How far one atom is: its state's name, fraction and details; while it runs, its
    observed ``rate`` (fraction per second since its attempt started); its ``weight`` in
    the flow's fraction (0.0 for checkpoints); and ``eta``, the seconds it is expected
    still to need (None when unknown or when the flow is not running)."""

    state: str
    fraction: float
    details: Mapping[str, Any] = field(default_factory=dict)
    rate: float | None = None
    weight: float = 1.0
    eta: float | None = None


@dataclass(frozen=True, slots=True)
class FlowProgress:
    """How far a whole flow is: the weighted ``fraction`` of its non-ignored atoms, each
    atom's progress, and an ``eta`` in seconds when one can be estimated (0.0 once the
    flow succeeded; None when it is not running). How the ETA is made is described in
    :mod:`aioflow._eta` and ``docs/progress.md``."""

    flow_id: str
    status: str
    fraction: float
    atoms: Mapping[str, AtomProgress]
    eta: float | None = None
