"""Operators see who runs a flow: ``aioflow flows``, ``show``, ``watch`` and ``resume``
run as a user would (subprocesses, real SQLite files), and the web app's flow status."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest

import aioflow
from aioflow._events import Event, EventKind
from aioflow._states import FlowStatus
from aioflow.journal import open_journal
from aioflow.journal._base import Fence
from aioflow.web import create_app

ROOT = Path(__file__).resolve().parent.parent
_SCRIPT = Path(sys.executable).parent / "aioflow"
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "aioflow.cli"]
DEAD = "dead-host:4242:abcdef"
"""The owner of a hand-made orphan: an engine that took a flow and never beat again."""
UTC_ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    env.pop("AIOFLOW_JOURNAL", None)
    return env


def aioflow_cmd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def row_of(out: str, flow_id: str) -> str:
    return next(line for line in out.splitlines() if flow_id in line)


# --------------------------------------------------------------------------- flows


@aioflow.task(provides="opened")
async def wait_for_gate(gate: str, progress: aioflow.Progress) -> str:
    """Runs until the file ``gate`` exists; says it started in ``gate.started``."""
    Path(gate + ".started").touch()
    progress.update(1, total=2)
    while not Path(gate).exists():
        await anyio.sleep(0.02)
    return "opened"


def gated_flow() -> aioflow.Linear:
    return aioflow.Linear("gated", wait_for_gate)


async def orphan_by_hand(url: str, *, lease_left: float | None = None) -> str:
    """A flow stopped half way, then taken by engine :data:`DEAD`, which wrote that it
    runs it again and never anything more: orphaned at once (no heartbeat), or once
    ``lease_left`` seconds have passed. Returns its id."""
    outcome = await aioflow.Engine(url).run(
        "tests.flows_for_tests:make_flow", {"number": 2}, stop_at="halfway"
    )
    assert outcome.status is FlowStatus.SUSPENDED
    flow_id = outcome.flow_id
    async with open_journal(url) as journal:
        generation, last_seq = await journal.take(flow_id, DEAD)
        if lease_left is not None:
            await journal.heartbeat(DEAD, time.time() + lease_left)
        journal.set_fence(flow_id, Fence(DEAD, generation))
        journal.append(
            Event(
                flow_id,
                last_seq + 1,
                time.time(),
                EventKind.FLOW,
                state=FlowStatus.RUNNING,
                details={"resumed": True},
            )
        )
        await journal.flush()
    return flow_id


def owned_and_running(db: Path, flow_id: str) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute(
                "SELECT status, owner FROM aioflow_flows WHERE flow_id = ?", (flow_id,)
            ).fetchone()
    except sqlite3.OperationalError:
        return False
    return row is not None and row[0] == "RUNNING" and row[1] is not None


# ------------------------------------------------------------ a real crash, end to end

_CHILD = """
import sys, anyio, aioflow

url, flow_id, gate = sys.argv[1:4]

async def main():
    engine = aioflow.Engine(url, lease=0.3)
    print(engine.id, flush=True)
    await engine.run("tests.test_ownership_cli:gated_flow", {"gate": gate}, flow_id=flow_id)

anyio.run(main)
"""


def test_a_sigkilled_owner_is_named_by_watch_flows_and_show_and_resume_takes_over(
    tmp_path: Path,
) -> None:
    db, gate, flow_id = tmp_path / "j.db", tmp_path / "gate", "crashed-flow"
    url = f"sqlite:///{db}"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, flow_id, str(gate)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    watcher: subprocess.Popen[str] | None = None
    try:
        assert child.stdout is not None
        owner = child.stdout.readline().strip()
        assert owner.split(":")[1] == str(child.pid)
        deadline = time.monotonic() + 60
        while not (Path(f"{gate}.started").exists() and owned_and_running(db, flow_id)):
            assert child.poll() is None, "the child ended early"
            assert time.monotonic() < deadline, "the child never started the flow"
            time.sleep(0.02)
        watcher = subprocess.Popen(
            [*COMMAND, "watch", flow_id, "--journal", url],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2.0)  # many leases of the live owner: the watch keeps following
        assert watcher.poll() is None, watcher.communicate()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        out, err = watcher.communicate(timeout=30)
    finally:
        for proc in (child, watcher):
            if proc is not None and proc.poll() is None:
                proc.kill()
        if child.stdout is not None:
            child.stdout.close()

    assert watcher.returncode == 3, (out, err)
    assert "Traceback" not in err
    assert f"flow {flow_id} is ORPHANED: it is RUNNING but no live engine runs it" in out
    assert f"its owner, engine {owner}, stopped renewing its lease" in out
    assert re.search(f"which expired at {UTC_ISO}", out)
    assert f"aioflow resume {flow_id} --journal {url}" in out
    assert "recover=True" in out

    listed = aioflow_cmd("flows", "--journal", url)
    assert listed.returncode == 0, listed.stderr
    row = row_of(listed.stdout, flow_id)
    assert "RUNNING ORPHANED" in row and owner in row and "gated" in row

    shown = aioflow_cmd("show", flow_id, "--journal", url)
    assert shown.returncode == 0, shown.stderr
    assert f"flow {flow_id}  gated  RUNNING  ORPHANED" in shown.stdout
    assert re.search(
        f"owner {re.escape(owner)}  generation 1  lease expired at {UTC_ISO} \\(",
        shown.stdout,
    ), shown.stdout
    assert "ETA" not in shown.stdout
    assert f"aioflow resume {flow_id} --journal {url}" in shown.stdout

    gate.touch()
    resumed = aioflow_cmd("resume", flow_id, "--journal", url)
    assert resumed.returncode == 0, resumed.stderr
    assert f"flow {flow_id} is orphaned: taking it over from engine {owner}" in resumed.stdout
    assert f"flow {flow_id} SUCCESS" in resumed.stdout

    after = aioflow_cmd("show", flow_id, "--journal", url)
    assert f"flow {flow_id}  gated  SUCCESS\n" in after.stdout
    assert "owner none  generation 2\n" in after.stdout
    listed = aioflow_cmd("flows", "--journal", url)
    assert "ORPHANED" not in listed.stdout and owner not in listed.stdout


# ------------------------------------------------------------------ orphans by hand


def test_flows_and_show_mark_an_orphan_whose_owner_never_beat(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    orphan = anyio.run(orphan_by_hand, url)
    rested = anyio.run(
        lambda: aioflow.Engine(url).run("tests.flows_for_tests:make_flow", {"number": 1})
    ).flow_id

    listed = aioflow_cmd("flows", "--journal", url)

    assert listed.returncode == 0, listed.stderr
    header = listed.stdout.splitlines()[1]
    assert re.search(r"id .* name .* status .* progress .* started .* owner", header), header
    assert "RUNNING ORPHANED" in row_of(listed.stdout, orphan)
    assert DEAD in row_of(listed.stdout, orphan)
    assert "SUCCESS" in row_of(listed.stdout, rested)
    assert "ORPHANED" not in row_of(listed.stdout, rested)

    shown = aioflow_cmd("show", orphan, "--journal", url)

    assert shown.returncode == 0, shown.stderr
    assert f"flow {orphan}  referenced  RUNNING  ORPHANED" in shown.stdout
    assert f"owner {DEAD}  generation 2  no heartbeat on record" in shown.stdout
    assert f"aioflow resume {orphan} --journal {url}" in shown.stdout
    for atom in ("double", "halfway", "add_one"):  # the rest of show is as it was
        assert atom in shown.stdout


def test_watch_of_an_orphaned_flow_says_so_and_exits_3_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    flow_id = anyio.run(orphan_by_hand, url)

    started = time.monotonic()
    watched = aioflow_cmd("watch", flow_id, "--journal", url, timeout=30)

    assert watched.returncode == 3, (watched.stdout, watched.stderr)
    assert time.monotonic() - started < 20
    assert f"flow {flow_id} is ORPHANED" in watched.stdout
    assert f"its owner, engine {DEAD}, has no heartbeat on record" in watched.stdout
    assert f"aioflow resume {flow_id} --journal {url}" in watched.stdout
    assert watched.stderr == ""


def test_watch_exits_3_when_the_owners_lease_runs_out_while_watching(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    flow_id = anyio.run(lambda: orphan_by_hand(url, lease_left=3.0))

    watched = aioflow_cmd("watch", flow_id, "--journal", url, timeout=30)
    ended = time.time()

    assert watched.returncode == 3, (watched.stdout, watched.stderr)
    expired = re.search(f"which expired at ({UTC_ISO})", watched.stdout)
    assert expired is not None, watched.stdout
    from datetime import datetime

    assert datetime.fromisoformat(expired[1]).timestamp() <= ended
    assert f"its owner, engine {DEAD}, stopped renewing its lease" in watched.stdout


# ------------------------------------------------------------------- a busy flow


async def test_resume_of_a_flow_a_live_engine_runs_exits_2_naming_the_owner(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    release = anyio.Event()

    @aioflow.task(provides="done")
    async def hold() -> str:
        await release.wait()
        return "done"

    async with aioflow.Engine(url) as engine:
        handle = await engine.start(aioflow.Linear("held", hold))
        with anyio.fail_after(20):
            while (await engine.journal.summary(handle.flow_id)).owner != engine.id:
                await anyio.sleep(0.01)

        result = await anyio.to_thread.run_sync(
            lambda: aioflow_cmd("resume", handle.flow_id, "--journal", url)
        )

        release.set()
        outcome = await handle.wait()

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""  # no bars were drawn before the refusal
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aioflow: error: "), result.stderr
    assert f"flow {handle.flow_id} is being run by engine {engine.id}" in lines[0]
    assert re.search(f"its lease ends at {UTC_ISO} unless renewed", lines[0])
    assert f"aioflow watch {handle.flow_id} --journal {url}" in lines[0]
    assert outcome.status is FlowStatus.SUCCESS  # the refused resume changed nothing
    assert outcome.atoms["hold"].attempts == 1


# --------------------------------------------------------------------------- web


async def test_the_web_status_of_a_flow_carries_its_owner_and_whether_it_is_orphaned(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    orphan = await orphan_by_hand(url)
    release = anyio.Event()

    @aioflow.task
    async def hold() -> None:
        await release.wait()

    engine = aioflow.Engine(url)
    app = create_app(engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            handle = await engine.start(aioflow.Linear("held", hold))
            live = (await client.get(f"/flows/{handle.flow_id}")).json()
            dead = (await client.get(f"/flows/{orphan}")).json()
            release.set()
            await handle.wait()
            rested = (await client.get(f"/flows/{handle.flow_id}")).json()

    assert (live["status"], live["owner"], live["orphaned"]) == ("RUNNING", engine.id, False)
    assert (dead["status"], dead["owner"], dead["orphaned"]) == ("RUNNING", DEAD, True)
    assert (rested["status"], rested["owner"], rested["orphaned"]) == ("SUCCESS", None, False)
