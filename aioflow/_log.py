"""aioflow's own loggers, which import structlog on first use rather than at import.

``import structlog`` imports its development console, and with it ``rich`` when that is
installed: most of the cost of ``import aioflow``. A :class:`LazyLogger` stands in for
``structlog.get_logger(name)`` until a log call (or ``bind``) is made, so a program that
never logs through aioflow never pays for it, and one that configures structlog first
gets exactly the logger it configured.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LazyLogger", "get_logger"]


class LazyLogger:
    """A structlog logger named ``name``, created on the first attribute looked up."""

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        logger = self._logger
        if logger is None:
            import structlog

            logger = self._logger = structlog.get_logger(self._name)
        return getattr(logger, attr)

    def __repr__(self) -> str:
        return f"<LazyLogger {self._name!r}>"


def get_logger(name: str) -> Any:
    """Like ``structlog.get_logger(name)``, without importing structlog until first used.

    Typed ``Any`` like structlog's own ``get_logger``: the calls are structlog's.
    """
    return LazyLogger(name)
