"""Fixtures shared by the engine tests: journal URLs backed by real storage."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite journal in a fresh file (absolute path, hence four slashes)."""
    return f"sqlite:///{tmp_path}/journal.db"


@pytest.fixture(params=["memory", "sqlite"])
def journal_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each journal backend in turn: ``memory://`` and a SQLite file."""
    if request.param == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path}/journal.db"
