"""Members that wait durably: :class:`Sleep` (until a deadline) and :class:`Receive`
(until a message is sent to the flow).

Both are tasks whose atom rests WAITING at once. What ends the wait is journaled with
it: a sleep's deadline (so a crash or a resume never restarts the timer), a receive's
topic and optional deadline. No process is held meanwhile: a run with nothing but waits
left rests, and an entered engine wakes it when its deadline passes or a message comes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._failure import is_reserved
from ._flow import instant, is_datetime, seconds_of
from ._handles import RECEIVE, SLEEP, WaitRequest
from ._task import Task

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime, timedelta

__all__ = ["Receive", "Sleep"]


class Sleep(Task):
    """A member whose atom rests WAITING for ``seconds`` after it starts, or until
    ``until`` (an aware datetime, or the name of a symbol holding one), then succeeds.

    The deadline is in the journal: a crash or a resume never restarts the sleep, and a
    resume after the deadline finishes it at once. It provides nothing."""

    def __init__(
        self,
        name: str,
        seconds: float | timedelta | None = None,
        *,
        until: datetime | str | None = None,
    ) -> None:
        if (seconds is None) == (until is None):
            raise ValueError(f"Sleep {name!r}: give seconds or until (one of them)")
        self.seconds = seconds_of(seconds, f"Sleep {name!r}: seconds", zero=True)
        self.at: float | None = None
        self.symbol: str | None = None
        if isinstance(until, str):
            if not until:
                raise ValueError(f"Sleep {name!r}: until must name a symbol, not ''")
            self.symbol = until
        elif until is not None:
            if not is_datetime(until):
                raise TypeError(
                    f"Sleep {name!r}: until must be an aware datetime or the name of a symbol"
                    f" holding one, not {until!r}"
                )
            self.at = instant(until, f"Sleep {name!r}: until")
        if self.symbol is None:
            super().__init__(name, provides=None, inject={"until": None})
        else:
            super().__init__(name, provides=None, rebind={"until": self.symbol})

    async def execute(self, until: Any) -> WaitRequest:
        if self.seconds is not None:
            return WaitRequest(self.seconds, kind=SLEEP)
        at = (
            self.at
            if self.symbol is None
            else instant(until, f"symbol {self.symbol!r}", seconds=True)
        )
        return WaitRequest(None, kind=SLEEP, until=at)

    def __repr__(self) -> str:
        what = (
            f"{self.seconds} s" if self.seconds is not None else f"until {self.symbol or self.at}"
        )
        return f"<Sleep {self.name!r} {what}>"


class Receive(Task):
    """A member whose atom waits for a message on ``topic`` (see
    :meth:`Engine.send <aioflow.Engine.send>`) and provides it as ``provides``. Messages
    are taken in the order sent, each by one receive; one sent before the receive
    opened waits for it. Past ``timeout`` seconds the atom fails with
    :class:`~aioflow.ExternalTimeoutError`."""

    def __init__(
        self,
        name: str,
        topic: str,
        *,
        provides: str | Sequence[str] | None = None,
        timeout: float | timedelta | None = None,
    ) -> None:
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"Receive {name!r}: topic must be a non-empty string, not {topic!r}")
        if is_reserved(topic):
            raise ValueError(f"Receive {name!r}: topic {topic!r} is reserved for aioflow")
        self.topic = topic
        self.wait_timeout = seconds_of(timeout, f"Receive {name!r}: timeout")
        super().__init__(name, provides=provides)

    async def execute(self) -> WaitRequest:
        return WaitRequest(self.wait_timeout, {"topic": self.topic}, kind=RECEIVE, topic=self.topic)

    def __repr__(self) -> str:
        return f"<Receive {self.name!r} on {self.topic!r}>"
