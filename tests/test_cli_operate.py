"""The operator's command line (issue 18): ``events``, ``show`` with each failed attempt,
``cancel``, ``--json``, the advice of ``resume``, and ``jobs show|retry|cancel``.

Run as a user runs it: ``main([...])`` in this process, or the installed command in a
subprocess where another process must be running a flow; real SQLite files throughout.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

import aioflow
from aioflow import Conductor, Engine, FlowStatus, JobBoard, JobState
from aioflow.cli import main

from .test_cli import COMMAND, ROOT, aioflow_cmd, running

pytestmark = pytest.mark.slow

HERE = "tests.test_cli_operate"


@pytest.fixture(autouse=True)
def _structlog_as_it_was() -> Iterator[None]:
    yield
    structlog.reset_defaults()  # the commands send aioflow's logs to stderr


# ------------------------------------------------------------------------ the flows


@aioflow.task(provides="copied", retry=aioflow.Retry.times(2))
async def copy(progress: aioflow.Progress) -> int:
    progress.update(
        512 * 2**20,
        total=2**30,
        bytes_done=512 * 2**20,
        bytes_per_second=1386355995.59,
        ratio=1 / 3,
    )
    raise OSError("disk full")


@aioflow.task(provides="prepared")
async def prepare() -> int:
    return 1


def failing_flow() -> aioflow.Linear:
    return aioflow.Linear("copying", prepare, copy)


def suspending_flow() -> aioflow.Linear:
    return aioflow.Linear(
        "copying", prepare, copy.using(retry=aioflow.Retry.times(1, then="suspend"))
    )


@aioflow.task(provides="total")
async def finish(prepared: int) -> int:
    return prepared + 1


def checkpointed() -> aioflow.Linear:
    return aioflow.Linear("stepped", prepare, aioflow.Checkpoint("half"), finish)


registry = aioflow.Registry()
registry.register(checkpointed, "stepped", name="stepped")


@aioflow.task
async def hold(gate: str, progress: aioflow.Progress) -> None:
    progress(0.5, stage="holding")
    while not Path(gate).exists():
        await anyio.sleep(0.02)


def held_flow() -> aioflow.Linear:
    return aioflow.Linear("held", prepare, hold)


@aioflow.task(provides="approval")
async def ask(external: aioflow.External) -> object:
    return external.wait(timeout=3600, info={"doc": "d-1"})


def waiting_flow() -> aioflow.Linear:
    return aioflow.Linear("approval", ask)


def run_flow(url: str, flow: Any, **kwargs: Any) -> str:
    async def go() -> str:
        try:
            return (await Engine(url).run(flow, **kwargs)).flow_id
        except aioflow.FlowFailedError as exc:
            return exc.outcome.flow_id

    return anyio.run(go)


def outcome(url: str, flow_id: str) -> aioflow.Outcome:
    return anyio.run(Engine(url).outcome, flow_id)


# ---------------------------------------------------------------------------- show


def test_show_gives_each_failed_attempt_with_rounded_details_and_utc_times(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    flow_id = run_flow(url, f"{HERE}:failing_flow")

    assert main(["show", flow_id, "--journal", url]) == 0

    out = capsys.readouterr().out
    assert re.search(r"started \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", out), out
    assert "failures:" in out
    for attempt in (1, 2):
        assert re.search(rf"copy  attempt {attempt}  failed at \S+\+00:00", out), out
    assert out.count("OSError: disk full") == 2
    assert 'test_cli_operate.py", line' in out and "in copy" in out  # where it was raised
    assert "Traceback (most recent call last)" not in out
    assert "--traceback" in out

    assert main(["show", flow_id, "--journal", url, "--traceback"]) == 0
    full = capsys.readouterr().out
    assert full.count("Traceback (most recent call last)") == 2
    assert 'raise OSError("disk full")' in full


def test_show_and_events_round_details_and_give_bytes_in_units(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    flow_id = run_flow(url, f"{HERE}:suspending_flow")  # copy rests in FAILURE, details kept
    assert outcome(url, flow_id).status is FlowStatus.SUSPENDED

    assert main(["show", flow_id, "--journal", url]) == 0
    shown = capsys.readouterr().out
    assert main(["events", flow_id, "--journal", url]) == 0
    events = capsys.readouterr().out

    for out in (shown, events):
        assert "bytes_done=512.0 MiB" in out
        assert "bytes_per_second=1.3 GiB/s" in out
        assert "ratio=0.33" in out
        assert "1386355995" not in out and "0.3333" not in out
    assert "FAILURE" in shown and "OSError: disk full" in shown


# -------------------------------------------------------------------------- --json


def test_json_of_flows_show_and_events_parses_with_stable_keys_and_utc_times(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    failed = run_flow(url, f"{HERE}:failing_flow")
    done = run_flow(url, f"{HERE}:checkpointed")

    assert main(["flows", "--journal", url, "--json"]) == 0
    flows = json.loads(capsys.readouterr().out)["flows"]
    assert [f["flow_id"] for f in flows] == [failed, done]
    assert set(flows[0]) == {
        "flow_id", "name", "status", "reference", "progress", "eta", "created", "updated",
        "owner", "orphaned",
    }  # fmt: skip
    assert flows[0]["status"] == "REVERTED" and flows[1]["status"] == "SUCCESS"
    assert flows[0]["created"].endswith("+00:00")

    assert main(["show", failed, "--journal", url, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "REVERTED" and shown["results"] is None
    assert [a["name"] for a in shown["atoms"]] == ["prepare", "copy"]
    assert [(f["atom"], f["attempt"], f["type"], f["message"]) for f in shown["failures"]] == [
        ("copy", 1, "OSError", "disk full"),
        ("copy", 2, "OSError", "disk full"),
    ]
    assert "Traceback" in shown["failures"][0]["traceback"]
    assert shown["failures"][0]["time"].endswith("+00:00")

    assert main(["show", done, "--journal", url, "--json"]) == 0
    ok = json.loads(capsys.readouterr().out)
    assert ok["results"] == {"prepared": 1, "total": 2}
    assert [c["name"] for c in ok["checkpoints"]] == ["half"]

    assert main(["events", failed, "--journal", url, "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert set(events[0]) == {
        "flow_id", "seq", "time", "kind", "atom", "state", "attempt", "progress", "details",
    }  # fmt: skip
    assert events[0]["kind"] == "FLOW" and events[-1]["state"] == "REVERTED"
    assert all(e["time"].endswith("+00:00") for e in events)


def test_events_never_show_a_waits_nonce_or_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/j.db"

    async def wait() -> tuple[str, str]:
        outcome = await Engine(url, secret="s3cret").run(f"{HERE}:waiting_flow")
        return outcome.flow_id, outcome.waiting[0].token

    flow_id, token = anyio.run(wait)

    assert main(["events", flow_id, "--journal", url]) == 0
    text = capsys.readouterr().out
    assert main(["events", flow_id, "--journal", url, "--json"]) == 0
    lines = capsys.readouterr().out
    assert main(["show", flow_id, "--journal", url, "--json"]) == 0
    shown = capsys.readouterr().out

    waiting = next(json.loads(line) for line in lines.splitlines() if '"WAITING"' in line)
    assert waiting["details"]["info"] == {"doc": "d-1"}
    assert "WAITING" in text and "d-1" in text
    for out in (text, lines, shown):
        assert "nonce" not in out
        assert token not in out


# -------------------------------------------------------------------------- events


def test_events_of_an_unknown_flow_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    run_flow(url, f"{HERE}:checkpointed")

    assert main(["events", "nope", "--journal", url]) == 2
    assert "nope" in capsys.readouterr().err


# -------------------------------------------------------------------------- cancel


def test_cancel_reverts_a_suspended_flow_and_refuses_an_ended_or_unknown_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    flow_id = run_flow(url, f"{HERE}:checkpointed", stop_at="half")
    assert outcome(url, flow_id).status is FlowStatus.SUSPENDED

    assert main(["cancel", flow_id, "--journal", url]) == 0

    assert f"flow {flow_id} cancelled: REVERTED" in capsys.readouterr().out
    after = outcome(url, flow_id)
    assert after.status is FlowStatus.REVERTED
    assert after.failures["<cancel>"].matches(aioflow.FlowCancelledError)
    assert main(["cancel", flow_id, "--journal", url]) == 1
    assert "has ended (REVERTED); there is nothing to cancel" in capsys.readouterr().err
    assert main(["cancel", "nope", "--journal", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aioflow: error: ") and "nope" in err


def test_cancel_of_a_flow_started_from_an_object_is_applied_by_its_next_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    flow_id = run_flow(url, checkpointed(), stop_at="half")

    assert main(["cancel", flow_id, "--journal", url]) == 0

    out = capsys.readouterr().out
    assert "cancel requested" in out and "--flow package.module:factory" in out
    assert main(["resume", flow_id, "--journal", url, "--flow", f"{HERE}:checkpointed"]) == 1
    assert "REVERTED" in capsys.readouterr().out
    assert "<cancel>" in outcome(url, flow_id).failures


def test_cancel_stops_a_flow_another_process_runs_and_events_follow_it_to_the_end(
    tmp_path: Path,
) -> None:
    db, gate, flow_id = tmp_path / "j.db", tmp_path / "gate", "remote"
    url = f"sqlite:///{db}"
    worker_code = (
        "import sys, anyio, aioflow\n"
        "async def main():\n"
        "    try:\n"
        f"        await aioflow.Engine(sys.argv[1]).run('{HERE}:held_flow',"
        " {'gate': sys.argv[2]}, flow_id=sys.argv[3])\n"
        "    except aioflow.FlowFailedError as exc:\n"
        "        print(exc.outcome.status.value)\n"
        "anyio.run(main)\n"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", worker_code, url, str(gate), flow_id],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    follower: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 60
        while not running(db, flow_id):
            assert worker.poll() is None, "the worker ended early"
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.05)
        follower = subprocess.Popen(
            [*COMMAND, "events", flow_id, "--follow", "--journal", url],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        cancelled = aioflow_cmd("cancel", flow_id, "--journal", url, cwd=tmp_path)

        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancel requested; engine " in cancelled.stdout
        assert f"aioflow watch {flow_id}" in cancelled.stdout
        worker_out, _ = worker.communicate(timeout=60)
        followed, err = follower.communicate(timeout=60)
    finally:
        for proc in (worker, follower):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    assert worker_out.strip() == "REVERTED"
    assert follower.returncode == 0, err
    last = followed.strip().splitlines()[-1]
    assert "FLOW" in last and "REVERTED" in last
    assert "FlowCancelledError" in followed  # the REVERTING event carries why
    shown = aioflow_cmd("show", flow_id, "--journal", url, "--json", cwd=tmp_path)
    document = json.loads(shown.stdout)
    assert document["status"] == "REVERTED"
    assert document["atoms"][0]["name"] == "prepare"
    assert document["atoms"][0]["state"] == "REVERTED"
    assert any(
        f["atom"] == "<cancel>" and f["type"] == "FlowCancelledError" for f in document["failures"]
    )


# -------------------------------------------------------------------------- resume


def test_resume_of_a_flow_started_from_an_object_says_to_pass_flow_and_exits_2(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    flow_id = run_flow(url, checkpointed(), stop_at="half")

    refused = aioflow_cmd("resume", flow_id, "--journal", url, cwd=tmp_path)

    assert refused.returncode == 2, refused.stderr
    assert refused.stdout == ""  # no bars drawn before the error
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"aioflow: error: flow {flow_id} (stepped) was started from a flow")
    assert f"aioflow resume {flow_id} --journal {url} --flow package.module:factory" in line
    assert "--registry MODULE:ATTR" in line
    assert outcome(url, flow_id).status is FlowStatus.SUSPENDED  # nothing changed

    resumed = aioflow_cmd(
        "resume", flow_id, "--journal", url, "--flow", f"{HERE}:checkpointed", cwd=ROOT
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"flow {flow_id} SUCCESS" in resumed.stdout


def test_resume_of_a_flow_started_by_registry_name_asks_for_the_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/j.db"

    async def start() -> str:
        engine = Engine(url, registry=registry)
        return (await engine.run("stepped", stop_at="half")).flow_id

    flow_id = anyio.run(start)

    assert main(["resume", flow_id, "--journal", url]) == 2
    err = capsys.readouterr().err
    assert "registry name 'stepped'" in err and "--registry MODULE:ATTR" in err
    assert main(["resume", flow_id, "--journal", url, "--registry", f"{HERE}:registry"]) == 0
    assert f"flow {flow_id} SUCCESS" in capsys.readouterr().out


# ---------------------------------------------------------------------------- jobs


JOB_FLOW = "tests.test_job_retry_cancel:make_flow"


def conduct(url: str, jobs: int) -> None:
    async def go() -> None:
        board = JobBoard.open(url, poll=0.01)
        async with board, Conductor(board, Engine(url), name="c1", lease=30) as conductor:
            with anyio.fail_after(60):
                await conductor.run(max_jobs=jobs)

    anyio.run(go)


def test_jobs_show_retry_and_cancel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    inputs = json.dumps({"workdir": str(tmp_path)})
    assert (
        main(["jobs", "post", JOB_FLOW, "--inputs", inputs, "--name", "n1", "--journal", url]) == 0
    )
    job_id = capsys.readouterr().out.strip()
    assert main(["jobs", "retry", job_id, "--journal", url]) == 1
    assert "is UNCLAIMED; only a FAILED job can be retried" in capsys.readouterr().err
    conduct(url, 1)  # its last task fails: REVERTED

    assert main(["jobs", "show", job_id, "--journal", url]) == 0
    out = capsys.readouterr().out
    assert f"job {job_id}  n1  FAILED (its flow REVERTED)" in out
    assert "last: ValueError: not fixed yet" in out and 'test_job_retry_cancel.py", line' in out
    assert re.search(r"posted \S+\+00:00", out), out
    assert main(["jobs", "show", job_id, "--journal", url, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["id"], shown["state"], shown["status"], shown["name"]) == (
        job_id,
        "FAILED",
        "REVERTED",
        "n1",
    )
    assert shown["failures"]["last"]["type"] == "ValueError"
    assert shown["created"].endswith("+00:00")

    assert main(["jobs", "retry", job_id, "--journal", url]) == 0
    said = capsys.readouterr().out
    new_id = said.split("posted again as job ")[1].split()[0]
    assert new_id != job_id and "its flow ended REVERTED" in said

    assert main(["jobs", "list", "--journal", url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["jobs"]
    assert [(j["id"], j["state"]) for j in listed] == [(job_id, "FAILED"), (new_id, "UNCLAIMED")]

    assert main(["jobs", "cancel", new_id, "--journal", url]) == 0
    assert f"job {new_id} cancelled: FAILED" in capsys.readouterr().out
    assert main(["jobs", "cancel", new_id, "--journal", url]) == 1
    assert "has ended (FAILED); there is nothing to cancel" in capsys.readouterr().err
    assert main(["jobs", "cancel", "nope", "--journal", url]) == 2
    assert main(["jobs", "show", "nope", "--journal", url]) == 2
    capsys.readouterr()
    # Cancelled before its flow started: retried, it is queued again under its id.
    assert main(["jobs", "retry", new_id, "--journal", url, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["id"], again["state"], again["attempts"]) == (new_id, "UNCLAIMED", 0)
    (tmp_path / "fixed").touch()
    conduct(url, 1)
    assert anyio.run(JobBoard.open(url).get, new_id).state is JobState.COMPLETE
