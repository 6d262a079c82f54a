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
