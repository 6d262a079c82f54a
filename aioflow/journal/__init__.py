"""Journals: where flows' events are kept, and :func:`open_journal` to pick one by URL.

``memory://`` keeps events in the process; ``sqlite:///path.db`` (relative) or
``sqlite:////abs/path.db`` (absolute) keeps them in a SQLite file several processes can
share. The layout of that file is described in ``docs/journal.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._codec import Codec
from .._errors import JournalError
from ._base import FlowSummary, Journal
from .memory import MemoryJournal

if TYPE_CHECKING:
    from .sqlite import SqliteJournal

__all__ = ["FlowSummary", "Journal", "MemoryJournal", "SqliteJournal", "open_journal"]



def __getattr__(name: str) -> Any:
    # The SQLite journal (and aiosqlite) is imported when first named, not with aioflow.
    if name == "SqliteJournal":
        from .sqlite import SqliteJournal

        return SqliteJournal
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_SCHEMES = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "postgresql://user@host/database"
)


def open_journal(url: str | Journal, *, codec: Codec | str | None = None) -> Journal:
    """The journal a URL names, not yet opened: use it as ``async with open_journal(url)``.

    A :class:`Journal` passed in is returned as it is (``codec`` applies to URLs only).
    Raises :class:`ValueError` for a scheme aioflow does not know and
    :class:`~aioflow.JournalError` for PostgreSQL when asyncpg is not installed.
    """
    if isinstance(url, Journal):
        return url
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ValueError(f"not a journal URL: {url!r}; accepted: {_SCHEMES}")
    scheme = scheme.lower()
    if scheme == "memory":
        return MemoryJournal(codec=codec)
    if scheme == "sqlite":
        from .sqlite import SqliteJournal

        return SqliteJournal(url, codec=codec)
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        try:
            from .postgres import PostgresJournal
        except ImportError as exc:
            raise JournalError(
                f"cannot open {url!r}: the PostgreSQL journal needs the 'postgres' extra "
                "(pip install 'aioflow[postgres]')"
            ) from exc
        return PostgresJournal(url, codec=codec)
    raise ValueError(f"unknown journal URL scheme {scheme!r} in {url!r}; accepted: {_SCHEMES}")
