"""What the job board tests share: a clock moved by hand, and one board (and journal) URL
per backend."""

from __future__ import annotations

from pathlib import Path

import pytest

BACKENDS = ["memory", "sqlite", "postgres"]
"""The backends a board test runs on (PostgreSQL through the ``pg_url`` fixture)."""


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def url_for(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of backend ``request.param``: the board's, and the journal's of any engine
    (the same file or database, so that the two can fence each other's writes)."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/jobs.db"
    return str(request.getfixturevalue("pg_url"))
