"""What a task is handed while it runs: its :class:`Progress` reporter, its
:class:`External` handle (a completion token, and the :class:`WaitRequest` it returns to
rest), and its :class:`TaskContext`. These are the task-facing side of the run kernel
(``aioflow/_kernel``); nothing here touches the engine, so tasks, flows and the kernel
all import this module without importing each other.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._errors import AioflowError

if TYPE_CHECKING:
    import structlog

__all__ = [
    "EXTERNAL",
    "RECEIVE",
    "SLEEP",
    "External",
    "Progress",
    "Reporter",
    "TaskContext",
    "WaitRequest",
]

EXTERNAL = "external"
SLEEP = "sleep"
RECEIVE = "receive"


@dataclass(frozen=True, slots=True)
class WaitRequest:
    """What ``external.wait()`` returns: the atom is to rest until completed or timed out.

    ``kind`` says what ends the wait: a token (``"external"``), its deadline, which a
    sleep reaches with success (``"sleep"``), or a message on ``topic`` (``"receive"``).
    ``until`` is an absolute deadline (the engine's clock), ``timeout`` a relative one."""

    timeout: float | None
    info: Mapping[str, Any] = field(default_factory=dict)
    kind: str = EXTERNAL
    until: float | None = None
    topic: str | None = None


class External:
    """Injected into a task that hands its work to an outside system.

    ``token`` is a bearer credential bound to this flow, atom and attempt; give it to the
    outside system, and ``return external.wait(timeout=..., info=...)`` from the task.
    """

    __slots__ = ("_token",)

    def __init__(self, token: str | None) -> None:
        self._token = token

    @property
    def token(self) -> str:
        """The completion token for this attempt (secret: never log it)."""
        if self._token is None:
            raise AioflowError(
                "no completion token here: the engine issues tokens only to tasks it runs"
            )
        return self._token

    def wait(
        self, timeout: float | None = None, info: Mapping[str, Any] | None = None
    ) -> WaitRequest:
        """Ask the engine to rest this atom until the token completes it, at most
        ``timeout`` seconds (then it fails with :class:`~aioflow.ExternalTimeoutError`).
        ``info`` (JSON-able) is journaled and shown with the open wait."""
        if timeout is not None and not timeout > 0:
            raise ValueError(f"external wait timeout must be positive, not {timeout!r}")
        return WaitRequest(timeout, dict(info or {}))

    def __repr__(self) -> str:
        return "External(token=<hidden>)"



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



class TaskContext:
    """What a running task may know about itself: ``flow_id``, ``atom``, ``attempt``, a
    structlog ``log`` with those bound, its ``progress`` and its ``external`` handle."""

    __slots__ = ("atom", "attempt", "external", "flow_id", "log", "progress")

    def __init__(
        self,
        flow_id: str,
        atom: str,
        attempt: int,
        log: structlog.typing.FilteringBoundLogger,
        progress: Progress,
        external: External,
    ) -> None:
        self.flow_id = flow_id
        self.atom = atom
        self.attempt = attempt
        self.log = log
        self.progress = progress
        self.external = external

    def __repr__(self) -> str:
        return f"TaskContext(flow_id={self.flow_id!r}, atom={self.atom!r}, attempt={self.attempt})"


