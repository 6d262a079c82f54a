"""Delayed jobs: ``board.post(..., delay=, run_at=)`` on every backend."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aioflow.jobs import JobBoard, JobState
from aioflow.testing import FakeClock

from .pg import pg_schema, pg_url

__all__ = ["pg_schema", "pg_url"]

START = datetime(2026, 12, 4, 12, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def board_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/jobs.db"
    return str(request.getfixturevalue("pg_url"))


async def test_a_delayed_job_is_not_claimed_before_its_time(board_url: str) -> None:
    clock = FakeClock(START)
    async with JobBoard.open(board_url, clock=clock.now, sleep=clock.sleep) as board:
        later = await board.post("pkg.mod:flow", delay=600)
        at = await board.post("pkg.mod:flow", run_at=START + timedelta(hours=1))
        now = await board.post("pkg.mod:flow")
        assert later.available_at == clock.now() + 600
        assert at.available_at == (START + timedelta(hours=1)).timestamp()
        claimed = await board.claim("c", 1e6)
        assert claimed is not None and claimed.id == now.id
        assert await board.claim("c", 1e6) is None
        clock.advance(599)
        assert await board.claim("c", 1e6) is None
        clock.advance(1)
        claimed = await board.claim("c", 1e6)
        assert claimed is not None and claimed.id == later.id
        clock.advance(3000)
        claimed = await board.claim("c", 1e6)
        assert claimed is not None and claimed.id == at.id
        assert (await board.get(at.id)).state is JobState.CLAIMED


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"delay": -1}, ValueError, "delay must be a finite number of seconds >= 0"),
        ({"delay": math.nan}, ValueError, "delay must be a finite"),
        ({"delay": math.inf}, ValueError, "delay must be a finite"),
        ({"delay": "10"}, TypeError, "delay is a number of seconds"),
        ({"run_at": datetime(2026, 12, 5, 3)}, ValueError, "naive"),
        ({"run_at": 12.0}, TypeError, "aware datetime"),
        ({"delay": 1, "run_at": START}, ValueError, "not both"),
    ],
)
async def test_bad_timing_is_refused_naming_it(
    board_url: str, kwargs: dict[str, object], error: type[Exception], words: str
) -> None:
    async with JobBoard.open(board_url) as board:
        with pytest.raises(error, match=words):
            await board.post("pkg.mod:flow", **kwargs)  # type: ignore[arg-type]
        assert await board.jobs() == []


def test_the_cli_posts_a_delayed_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import anyio

    from aioflow.cli import main

    url = f"sqlite:///{tmp_path}/jobs.db"
    post = ["jobs", "post", "pkg.mod:flow", "--no-check", "--journal", url]
    assert main([*post, "--delay", "3600"]) == 0
    delayed = capsys.readouterr().out.strip()
    when = "2030-01-01T00:00:00+00:00"
    assert main([*post, "--run-at", when]) == 0
    at = capsys.readouterr().out.strip()
    naive = "2030-01-01T00:00:00"
    assert main([*post, "--run-at", naive]) == 2
    assert "offset" in capsys.readouterr().err

    async def look() -> tuple[float, float]:
        async with JobBoard.open(url) as board:
            return (await board.get(delayed)).available_at, (await board.get(at)).available_at

    first, second = anyio.run(look)
    assert first > datetime.now(UTC).timestamp() + 3000
    assert second == datetime.fromisoformat(when).timestamp()
