"""Jobs, jobboards and conductors: run flows on many processes and machines.

Producers :meth:`~JobBoard.post` jobs (a flow reference plus inputs) to a board opened
with :meth:`JobBoard.open` (``memory://``, ``sqlite:///path.db``, ``postgresql://...``);
each :class:`Conductor` claims jobs under a renewed lease and runs their flows in its
engine. See ``docs/jobs.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._board import Job as Job
from ._board import JobBoard as JobBoard
from ._board import JobState as JobState
from ._conductor import Conductor as Conductor
from ._schedule import Schedule as Schedule
from .memory import MemoryJobBoard as MemoryJobBoard

if TYPE_CHECKING:
    from .sqlite import SqliteJobBoard as SqliteJobBoard

__all__ = [
    "Conductor",
    "Job",
    "JobBoard",
    "JobState",
    "MemoryJobBoard",
    "Schedule",
    "SqliteJobBoard",
]


def __getattr__(name: str) -> Any:
    # The SQLite board (and aiosqlite) is imported when first named, not with aioflow.
    if name == "SqliteJobBoard":
        from .sqlite import SqliteJobBoard

        return SqliteJobBoard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
