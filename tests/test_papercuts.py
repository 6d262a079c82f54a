"""Papercuts an operator met (issue 18): version, ``python -m aioflow``, ``--limit``, JSON
errors for unknown routes."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

import aioflow
from aioflow.cli import main
from aioflow.web import create_app


def test_version_and_python_dash_m(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"aioflow {aioflow.__version__}"
    done = subprocess.run(
        [sys.executable, "-m", "aioflow", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "usage: aioflow" in done.stdout


def test_a_negative_limit_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["flows", "--limit", "-1"])
    assert exited.value.code == 2
    assert "must be 0 (all) or more" in capsys.readouterr().err


async def test_unknown_routes_and_methods_answer_json() -> None:
    app = create_app(aioflow.Engine())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            missing = await client.get("/nowhere")
            assert missing.status_code == 404
            assert missing.headers["content-type"] == "application/json"
            assert missing.json() == {"error": "no such route"}
            wrong = await client.delete("/flows")
            assert wrong.status_code == 405 and "error" in wrong.json()


def test_the_command_finds_references_in_the_current_folder(
    tmp_path: pytest.TempPathFactory,
) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    (folder / "mymod.py").write_text(
        "import aioflow\n\n@aioflow.task\nasync def hello() -> None:\n    pass\n\n"
        "def flow() -> aioflow.Linear:\n    return aioflow.Linear('greet', hello)\n"
    )
    command = Path(sys.executable).parent / "aioflow"
    done = subprocess.run(
        [str(command), "graph", "mymod:flow"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "hello" in done.stdout


def test_jobs_post_checks_the_reference_and_inputs_first(
    tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    ref = "tests.test_papercuts:needs_volume"
    assert main(["jobs", "post", "nowhere.mod:flow", "--journal", url]) == 2
    assert "cannot import 'nowhere.mod'" in capsys.readouterr().err
    assert main(["jobs", "post", ref, "--journal", url]) == 2
    assert "volume" in capsys.readouterr().err
    assert main(["jobs", "post", ref, "--journal", url, "--inputs", '{"volume": "v1"}']) == 0
    capsys.readouterr()
    assert main(["jobs", "post", "nowhere.mod:flow", "--journal", url, "--no-check"]) == 0


@aioflow.task
async def backup(volume: str) -> None:
    pass


def needs_volume() -> aioflow.Flow:
    return aioflow.Linear("backup_volume", backup)
