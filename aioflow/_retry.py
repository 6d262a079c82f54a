"""Retry policies: how often a failed task (or, later, a flow part) is tried again.

The policy only decides; the engine sleeps. Randomness for jitter comes from a seam
(``rng``) so tests are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ._failure import Failure

if TYPE_CHECKING:
    import random as _random

_ExcTypes = type[BaseException] | tuple[type[BaseException], ...]


@dataclass(frozen=True, slots=True)
class Retry:
    """A retry policy; build one with :meth:`times` or :meth:`for_each`."""

    attempts: int
    backoff: float = 0.0
    max_backoff: float | None = None
    jitter: bool = False
    on: tuple[type[BaseException], ...] = (Exception,)
    revert_all: bool = False
    values: tuple[Any, ...] | None = None
    provides: str | None = None
    rng: _random.Random | None = field(default=None, compare=False, repr=False)
    then: Literal["revert", "suspend"] = "revert"
    """What happens when the attempts run out on an error the policy retries: the flow
    reverts, or it stops SUSPENDED with the atom in FAILURE and nothing reverted (a
    later resume runs that atom again)."""

    @classmethod
    def times(
        cls,
        attempts: int,
        *,
        backoff: float = 0.0,
        max_backoff: float | None = None,
        jitter: bool = False,
        on: _ExcTypes = (Exception,),
        revert_all: bool = False,
        rng: _random.Random | None = None,
        then: Literal["revert", "suspend"] = "revert",
    ) -> Retry:
        """At most ``attempts`` executions in all, waiting ``backoff * 2**(n-1)`` seconds
        (capped by ``max_backoff``, randomised to [0.5, 1.0] of that with ``jitter``)
        before try n+1; only exceptions matching ``on`` are retried.

        ``then`` says what follows the last attempt's failure (an error matching ``on``):
        ``"revert"`` the flow, or ``"suspend"`` it with the atom in FAILURE and nothing
        reverted, so that an operator can fix the cause and ``resume``, which runs the
        failed atom again (once more; if it fails again, the flow suspends again).
        """
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"Retry.times needs attempts >= 1, not {attempts!r}")
        if backoff < 0 or (max_backoff is not None and max_backoff < 0):
            raise ValueError("Retry.times needs backoff and max_backoff >= 0")
        if then not in ("revert", "suspend"):
            raise ValueError(f"Retry.times: then must be 'revert' or 'suspend', not {then!r}")
        on_types = on if isinstance(on, tuple) else (on,)
        return cls(
            attempts, float(backoff), max_backoff, jitter, on_types, revert_all, rng=rng, then=then
        )

    @classmethod
    def for_each(cls, values: Sequence[Any], *, provides: str) -> Retry:
        """One attempt per value; attempt k publishes ``values[k]`` as ``provides``."""
        return cls(len(values), values=tuple(values), provides=provides)

    def should_retry(self, attempt: int, error: BaseException | Failure) -> bool:
        """True when try ``attempt`` failed with ``error`` (an exception, or a failure read
        back from the journal) and another try is allowed."""
        if attempt >= self.attempts:
            return False
        if isinstance(error, Failure):
            return error.matches(*self.on)
        return isinstance(error, self.on)

    def suspends(self, error: BaseException | Failure) -> bool:
        """True when a failure with ``error`` that this policy no longer retries suspends
        the flow instead of reverting it (``then="suspend"``)."""
        if self.then != "suspend":
            return False
        if isinstance(error, Failure):
            return error.matches(*self.on)
        return isinstance(error, self.on)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try ``attempt`` (1-based) before the next one."""
        if self.backoff <= 0:
            return 0.0
        wait = self.backoff * (2 ** (attempt - 1))
        if self.max_backoff is not None:
            wait = min(wait, self.max_backoff)
        if self.jitter:
            if self.rng is not None:
                draw = self.rng.random()
            else:
                # The module-level generator, imported here: random costs ms at import.
                import random

                draw = random.random()
            wait *= 0.5 + 0.5 * float(draw)
        return float(wait)
