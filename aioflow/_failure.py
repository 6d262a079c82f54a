"""Failure: an exception captured so it can cross the journal and be looked at later."""

from __future__ import annotations

import builtins
import traceback as _traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ._errors import AioflowError

CANCEL = "<cancel>"
"""The key of a cancelled flow's failure, and the mailbox topic of a cancel request."""


def is_reserved(topic: str) -> bool:
    """True for a mailbox topic of aioflow's own (``<cancel>``), which no user sends."""
    return topic.startswith("<") and topic.endswith(">")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True, slots=True)
class Failure:
    """An exception's type name, message and traceback text, kept in the journal.

    ``exception`` is the live exception when the failure happened in this process; after
    a replay it is None and :meth:`reraise` rebuilds what it can.
    """

    exc_type: str
    message: str
    traceback: str = ""
    exc_types: tuple[str, ...] = ()
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failure:
        """Capture ``exc`` with its traceback and the names of its classes."""
        tb = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
        mro = tuple(_qualname(c) for c in type(exc).__mro__ if c not in (object,))
        return cls(type(exc).__name__, str(exc), tb, mro, exc)

    def matches(self, *exc_types: type[BaseException]) -> bool:
        """True when the captured exception is an instance of any of ``exc_types``.

        Works after a replay too: the check uses the recorded class names.
        """
        if self.exception is not None:
            return isinstance(self.exception, exc_types)
        names = set(self.exc_types) or {self.exc_type}
        return any(_qualname(t) in names or t.__name__ in names for t in exc_types)

    def reraise(self) -> NoReturn:
        """Raise the original exception, or, after a replay, a builtin of the same type
        with the same message, or else an :class:`AioflowError` that names the type."""
        if self.exception is not None:
            raise self.exception
        builtin = getattr(builtins, self.exc_type, None)
        if (
            isinstance(builtin, type)
            and issubclass(builtin, Exception)
            and f"builtins.{self.exc_type}" in (self.exc_types or (f"builtins.{self.exc_type}",))
        ):
            raise builtin(self.message)
        raise AioflowError(f"{self.exc_type}: {self.message}")

    def to_dict(self) -> dict[str, Any]:
        """The journal form: plain JSON types only."""
        return {
            "exc_type": self.exc_type,
            "message": self.message,
            "traceback": self.traceback,
            "exc_types": list(self.exc_types),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Failure:
        """Rebuild a failure from :meth:`to_dict`'s form."""
        return cls(
            str(data["exc_type"]),
            str(data.get("message", "")),
            str(data.get("traceback", "")),
            tuple(data.get("exc_types", ())),
        )

    def __str__(self) -> str:
        return f"{self.exc_type}: {self.message}"
