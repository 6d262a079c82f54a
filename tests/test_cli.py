"""The ``aioflow`` command, run for real in subprocesses against real SQLite files."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

import aioflow
from aioflow.cli import main

ROOT = Path(__file__).resolve().parent.parent
_SCRIPT = Path(sys.executable).parent / "aioflow"
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "aioflow.cli"]

pytestmark = pytest.mark.slow


def aioflow_cmd(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env.pop("AIOFLOW_JOURNAL", None)
    if env and "AIOFLOW_JOURNAL" in env:
        full_env["AIOFLOW_JOURNAL"] = env["AIOFLOW_JOURNAL"]
    return subprocess.run(
        [*COMMAND, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aioflow: error: ")
    for word in words:
        assert word in lines[0]


async def run_referenced(url: str) -> str:
    outcome = await aioflow.Engine(url).run("tests.flows_for_tests:make_flow", {"number": 2})
    return outcome.flow_id


def flow_status(db: Path, flow_id: str) -> str:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT status FROM aioflow_flows WHERE flow_id = ?", (flow_id,)
        ).fetchone()
    return str(row[0])


# ------------------------------------------------------------------------------ demo


def test_demo_runs_the_backup_with_bars_in_a_journal_in_the_current_directory(
    tmp_path: Path,
) -> None:
    result = aioflow_cmd("demo", "--fast", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    out = result.stdout
    for atom in ("create_snapshot", "copy_volume", "upload", "record"):
        assert atom in out
    assert "8.0 GiB / 8.0 GiB" in out
    assert "backup_id = 'backup-vol-1'" in out
    assert (tmp_path / "aioflow.db").is_file()

    listed = aioflow_cmd("flows", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "backup-demo" in listed.stdout and "SUCCESS" in listed.stdout
    assert "100%" in listed.stdout


def test_demo_interrupted_by_sigint_is_suspended_and_resume_finishes_it(tmp_path: Path) -> None:
    db = tmp_path / "aioflow.db"
    proc = subprocess.Popen(
        [*COMMAND, "demo", "--speed", "1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        deadline = time.monotonic() + 60
        while not copy_is_running(db):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the demo never started copying"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()

    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "SUSPENDED" in out
    hint = next(line for line in out.splitlines() if "aioflow resume" in line)
    flow_id = hint.split("aioflow resume", 1)[1].split()[0]
    assert flow_status(db, flow_id) == "SUSPENDED"

    resumed = aioflow_cmd("resume", flow_id, "--fast", cwd=tmp_path)

    assert resumed.returncode == 0, resumed.stderr
    assert f"flow {flow_id} SUCCESS" in resumed.stdout
    assert flow_status(db, flow_id) == "SUCCESS"
    outcome = anyio.run(aioflow.Engine(f"sqlite:///{db}").outcome, flow_id)
    assert outcome.atoms["create_snapshot"].attempts == 1  # finished work is not redone
    assert outcome.atoms["copy_volume"].attempts == 2  # interrupted, so run again

    again = aioflow_cmd("resume", flow_id, cwd=tmp_path)
    assert again.returncode == 0 and "already ended: SUCCESS" in again.stdout


def copy_is_running(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM aioflow_events WHERE atom = 'copy_volume'"
                " AND kind = 'PROGRESS'"
            ).fetchone()
    except sqlite3.OperationalError:  # the schema is not there yet
        return False
    return bool(row[0])


# ----------------------------------------------------------------- flows and show


def test_flows_and_show_read_the_journal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    flow_id = anyio.run(run_referenced, url)

    listed = aioflow_cmd("flows", "--journal", url)
    assert listed.returncode == 0, listed.stderr
    assert flow_id in listed.stdout and "referenced" in listed.stdout

    only_failed = aioflow_cmd("--journal", url, "flows", "--status", "reverted")
    assert only_failed.returncode == 0 and flow_id not in only_failed.stdout

    shown = aioflow_cmd("show", flow_id, env={"AIOFLOW_JOURNAL": url})
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"flow {flow_id}  referenced  SUCCESS" in out
    for atom in ("double", "halfway", "add_one"):
        assert atom in out
    assert "checkpoints reached:" in out
    assert "  halfway  at " in out
    assert "tests.flows_for_tests:make_flow" in out


def test_in_process_main_lists_flows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    flow_id = anyio.run(run_referenced, url)

    assert main(["flows", "--journal", url]) == 0

    assert flow_id in capsys.readouterr().out


# ----------------------------------------------------------------------------- graph


def test_graph_as_mermaid_and_dot() -> None:
    mermaid = aioflow_cmd("graph", "aioflow._demo:backup_flow", "--format", "mermaid")
    assert mermaid.returncode == 0, mermaid.stderr
    assert mermaid.stdout.splitlines() == [
        "flowchart TD",
        '    n0["create_snapshot"]',
        '    n1["copy_volume"]',
        '    n2["upload"]',
        '    n3["record"]',
        "    n0 --> n1",
        "    n1 --> n2",
        "    n2 --> n3",
    ]

    dot = aioflow_cmd("graph", "tests.flows_for_tests:make_flow", "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    assert dot.stdout.startswith('digraph "referenced" {')
    assert 'label="halfway", shape=hexagon' in dot.stdout
    assert dot.stdout.count("->") == 2


def test_graph_of_a_graph_flow_shows_branches_and_decided_edges() -> None:
    from aioflow._compile import compile_flow
    from aioflow.cli import render_graph

    @aioflow.task(provides="a")
    async def first() -> int:
        return 1

    @aioflow.task
    async def left(a: int) -> None:
        pass

    @aioflow.task
    async def right(a: int) -> None:
        pass

    @aioflow.task
    async def last() -> None:
        pass

    flow = aioflow.Linear(
        "g",
        first,
        aioflow.Unordered("both", left, right),
        aioflow.Graph("tail", last),
    )
    text = render_graph(compile_flow(flow), "mermaid")

    edges = sorted(line.strip() for line in text.splitlines() if "--" in line)
    names = {
        line.split("[")[0].strip(): line.split('"')[1]
        for line in text.splitlines()
        if '["' in line
    }
    named = sorted(
        f"{names[a]}->{names[b]}" for a, _, b in (e.split() for e in edges)
    )
    assert named == ["first->left", "first->right", "left->last", "right->last"]


# --------------------------------------------------------------------------- compact


def test_compact_folds_a_finished_flow(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    flow_id = anyio.run(run_referenced, url)

    result = aioflow_cmd("compact", flow_id, "--keep", "1", "--journal", url)

    assert result.returncode == 0, result.stderr
    assert f"flow {flow_id}: " in result.stdout and "events folded away" in result.stdout
    shown = aioflow_cmd("show", flow_id, "--journal", url)
    assert shown.returncode == 0 and "SUCCESS" in shown.stdout


# ------------------------------------------------------------------------- providers


def test_providers_lists_registry_entries(tmp_path: Path) -> None:
    (tmp_path / "my_providers.py").write_text(
        "import aioflow\n"
        "registry = aioflow.Registry()\n"
        "@registry.provides('backup', 'fast-backup', vendor='acme')\n"
        "@aioflow.task\n"
        "async def acme_backup() -> None: ...\n"
        "@registry.provides('restore', vendor='other')\n"
        "@aioflow.task\n"
        "async def other_restore() -> None: ...\n"
    )
    env = {"PYTHONPATH": str(tmp_path)}

    everything = aioflow_cmd("providers", "--registry", "my_providers:registry", env=env)
    backups = aioflow_cmd("providers", "--registry", "my_providers:registry", "backup", env=env)

    assert everything.returncode == 0, everything.stderr
    assert "acme_backup" in everything.stdout and "other_restore" in everything.stdout
    assert "backup, fast-backup" in everything.stdout and "vendor='acme'" in everything.stdout
    assert "acme_backup" in backups.stdout and "other_restore" not in backups.stdout
    assert_clean_error(
        aioflow_cmd("providers", "--registry", "my_providers:nothing", env=env), "nothing"
    )


# ----------------------------------------------------------------------------- watch

_WORKER = """
import sys, pathlib, anyio, aioflow

url, gate, flow_id = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]

@aioflow.task
async def transfer(progress: aioflow.Progress) -> None:
    progress.update(1, total=4, bytes_done=1024, bytes_total=4096)
    while not gate.exists():
        await anyio.sleep(0.02)
    progress.update(4, total=4, bytes_done=4096, bytes_total=4096)

anyio.run(lambda: aioflow.Engine(url).run(aioflow.Linear("remote", transfer), flow_id=flow_id))
"""


def test_watch_follows_a_flow_another_process_runs_until_it_rests(tmp_path: Path) -> None:
    db, gate, flow_id = tmp_path / "j.db", tmp_path / "go", "remote-flow"
    url = f"sqlite:///{db}"
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, url, str(gate), flow_id], cwd=ROOT)
    watcher: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 60
        while not running(db, flow_id):
            assert worker.poll() is None, "the worker ended early"
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.05)
        watcher = subprocess.Popen(
            [*COMMAND, "watch", flow_id, "--journal", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        gate.touch()  # the flow was running when the watch began: it must follow it
        out, err = watcher.communicate(timeout=60)
        assert worker.wait(timeout=60) == 0
    finally:
        for proc in (worker, watcher):
            if proc is not None and proc.poll() is None:
                proc.kill()

    assert watcher.returncode == 0, err
    assert "transfer" in out and "100%" in out
    assert out.strip().endswith(f"flow {flow_id} SUCCESS")


def running(db: Path, flow_id: str) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM aioflow_flow_events WHERE flow_id = ? AND kind = 'PROGRESS'",
                (flow_id,),
            ).fetchone()
    except sqlite3.OperationalError:
        return False
    return bool(row[0])


# ----------------------------------------------------------------------- mistakes


def test_user_mistakes_get_one_line_and_status_two(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    anyio.run(run_referenced, url)

    assert_clean_error(aioflow_cmd("show", "nope", "--journal", url), "nope")
    assert_clean_error(aioflow_cmd("resume", "nope", "--journal", url), "nope")
    assert_clean_error(aioflow_cmd("watch", "nope", "--journal", url), "nope")
    missing = f"sqlite:///{tmp_path}/missing.db"
    assert_clean_error(aioflow_cmd("flows", "--journal", missing), "missing.db")
    assert not (tmp_path / "missing.db").exists()  # never created by a read
    assert_clean_error(aioflow_cmd("flows", "--journal", "ftp://x"), "ftp")
    assert_clean_error(aioflow_cmd("graph", "no_such_module:flow"), "no_such_module")
    assert_clean_error(aioflow_cmd("graph", "aioflow._demo:nothing"), "nothing")
    assert_clean_error(aioflow_cmd("flows", "--status", "sleepy", "--journal", url), "sleepy")
    assert_clean_error(aioflow_cmd("compact", "nope", "--journal", url), "nope")


def test_a_missing_default_journal_is_named(tmp_path: Path) -> None:
    result = aioflow_cmd("flows", cwd=tmp_path)

    assert_clean_error(result, "aioflow.db", "aioflow demo")


def test_without_rich_the_command_names_the_cli_extra() -> None:
    code = (
        "import sys; sys.modules['rich'] = None\n"
        "from aioflow.cli import main\n"
        "sys.exit(main(['flows']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )

    assert result.returncode == 1
    assert "aioflow[cli]" in result.stderr and "Traceback" not in result.stderr

