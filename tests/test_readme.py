"""The README's promises: its commands are the ones CI runs, and its example works."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    commands = _readme_commands()
    test_command = next(c for c in commands if "pytest" in c)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_the_test_command_installs_the_browser_the_dashboard_tests_drive() -> None:
    test_command = next(c for c in _readme_commands() if "pytest" in c)
    install, _, rest = test_command.partition(" && python3 -m venv")
    assert install.startswith("(command -v chromium >/dev/null ||"), test_command
    assert "apt-get install -y -qq chromium" in install
    assert rest, "the browser is installed before the suite runs"
    assert "playwright" in (ROOT / "pyproject.toml").read_text()


def test_readme_demo_command_runs_the_bundled_demo() -> None:
    demo = next(c for c in _readme_commands() if "pytest" not in c)
    assert demo.endswith(".venv/bin/aioflow demo")
    assert "'.[cli]'" in demo
    assert 'aioflow = "aioflow.cli:main"' in (ROOT / "pyproject.toml").read_text()
    # the demo itself is run (and interrupted, and resumed) in tests/test_cli.py


def test_readme_example_runs(tmp_path: Path, monkeypatch: object) -> None:
    text = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S)
    assert example is not None
    code = example.group(1)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "FlowStatus.SUCCESS s3://backups/snap-of-v1" in result.stdout
    assert (tmp_path / "flows.db").exists()


def test_backup_example_succeeds_then_reverts(tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "backup.py"), str(journal)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "-> SUCCESS, url=s3://backups/snap-vol-1.img" in out
    assert "revert: deleting snapshot snap-vol-2" in out
    assert "-> REVERTED: ConnectionError: object store refused the upload" in out
    assert out.index("revert: removed") < out.index("revert: deleting snapshot")


def test_example_journal_is_readable_afterwards(tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "backup.py"), str(journal)],
        check=True,
        capture_output=True,
        timeout=120,
    )

    async def read() -> list[str]:
        import aioflow

        async with aioflow.open_journal(f"sqlite:///{journal}") as j:
            return sorted(s.status.value for s in await j.flows())

    assert anyio.run(read) == ["REVERTED", "SUCCESS"]
