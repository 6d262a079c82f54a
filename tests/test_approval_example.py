"""examples/approval_server.py as a user runs it: a real uvicorn, real HTTP requests."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import aioflow

PROJECT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_flow_may_share_its_name_with_a_member() -> None:
    @aioflow.task
    async def publish() -> None:
        pass

    graph = aioflow.compile_flow(aioflow.Linear("publish", publish))
    assert [n.name for n in graph.atoms] == ["publish"]
    with pytest.raises(aioflow.InvalidFlowError, match="'publish'"):
        # With a retry the flow has an atom of its own, named like it: that would clash.
        aioflow.compile_flow(aioflow.Linear("publish", publish, retry=aioflow.Retry.times(2)))
    with pytest.raises(aioflow.InvalidFlowError, match="'publish'"):
        aioflow.compile_flow(aioflow.Unordered("two", publish, publish))


def test_the_approval_server_example_publishes_once_approved(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "APPROVAL_JOURNAL": f"sqlite:///{tmp_path}/approval.db",
        "APPROVAL_BASE_URL": f"http://127.0.0.1:{port}",
        "PYTHONUNBUFFERED": "1",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.approval_server:app",
            "--port",
            str(port),
            "--no-access-log",
        ],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.get("/flows/none")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the server did not start"
                    time.sleep(0.1)
            started = client.post("/flows", json={"flow": "publish", "inputs": {"doc_id": "d-42"}})
            assert started.status_code == 202, started.text
            flow_id = started.json()["flow_id"]
            assert server.stdout is not None
            link = ""
            while not link:
                line = server.stdout.readline()
                assert line, "the server ended before printing the approval link"
                found = re.search(r"curl -X POST (\S+/external/\S+)", line)
                link = found.group(1) if found else ""
            while client.get(f"/flows/{flow_id}").json()["status"] != "WAITING":
                time.sleep(0.05)
            token_path = link.removeprefix(base)
            assert client.post(token_path, json={"result": "approved"}).status_code == 200
            assert client.post(token_path, json={"result": "approved"}).status_code == 403
            while (status := client.get(f"/flows/{flow_id}").json()["status"]) != "SUCCESS":
                assert status in ("WAITING", "RUNNING"), status
                time.sleep(0.05)
    finally:
        server.terminate()
        server.wait(timeout=30)
