"""External (delegated) work: what a task is handed to give its work to an outside system.

The task returns ``external.wait(...)``; the atom rests WAITING until a signed token
completes it. This module holds the task-facing half.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import AioflowError


@dataclass(frozen=True, slots=True)
class WaitRequest:
    """What ``external.wait()`` returns: the atom is to rest until completed or timed out."""

    timeout: float | None
    info: Mapping[str, Any] = field(default_factory=dict)


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
                "external waits are not available in this version of aioflow yet:"
                " the engine issues no completion tokens"
            )
        return self._token

    def wait(
        self, timeout: float | None = None, info: Mapping[str, Any] | None = None
    ) -> WaitRequest:
        """Ask the engine to rest this atom until the token completes it."""
        if timeout is not None and not timeout > 0:
            raise ValueError(f"external wait timeout must be positive, not {timeout!r}")
        return WaitRequest(timeout, dict(info or {}))

    def __repr__(self) -> str:
        return "External(token=<hidden>)"
