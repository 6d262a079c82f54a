"""Delegated work, the Mistral way: an action asks a third-party system to do the work,
and that system calls back when it is done.

A storage array (here a small fake that runs beside the app) takes a backup request with
a callback URL, works on it for a while, and POSTs the result to the callback. The flow
rests WAITING meanwhile: no worker is held, and the wait survives a restart of the app.
If the array never calls back, the wait's timeout fails the atom, and the flow reverts.

    python examples/delegated_backup.py     # needs the web extra and httpx
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
from pathlib import Path

import anyio
import httpx
import uvicorn

import aioflow
from aioflow.web import create_app

# The fake storage array's inbox: what it is asked to do and where to report.
to_array, array_inbox = anyio.create_memory_object_stream[dict[str, str]](100)


@aioflow.task(provides="snapshot_id")
async def create_snapshot(volume_id: str) -> str:
    return f"snap-{volume_id}"


@aioflow.task(provides="backup_id")
async def request_backup(
    snapshot_id: str, callback_base: str, external: aioflow.External
) -> object:
    """Hand the copy to the array; its callback completes this atom."""
    await to_array.send(
        {"snapshot": snapshot_id, "callback": f"{callback_base}/external/{external.token}"}
    )
    return external.wait(timeout=60, info={"array": "acme-1", "snapshot": snapshot_id})


@request_backup.revert
async def cancel_backup(snapshot_id: str, result: object) -> None:
    print(f"cancelling the array's copy of {snapshot_id} ({result})")


@aioflow.task(provides="catalog_entry")
async def record_backup(volume_id: str, backup_id: str) -> str:
    return f"{volume_id} -> {backup_id}"


def backup_flow() -> aioflow.Linear:
    return aioflow.Linear("delegated-backup", create_snapshot, request_backup, record_backup)


async def storage_array() -> None:
    """The third party: takes jobs, works, and calls back over HTTP."""
    async with httpx.AsyncClient() as client:
        async for job in array_inbox:
            await anyio.sleep(0.2)  # the copy
            response = await client.post(
                job["callback"], json={"result": f"backup-of-{job['snapshot']}"}
            )
            print(f"array called back: {response.status_code} {response.json()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main(journal: str) -> None:
    registry = aioflow.Registry()
    registry.provides("backup")(backup_flow)
    engine = aioflow.Engine(journal)
    # A demo on 127.0.0.1: anyone who reaches it may start flows. In production pass
    # auth= (see docs/web.md) instead of public=True.
    app = create_app(engine, registry=registry, public=True)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    base = f"http://127.0.0.1:{port}"
    array = anyio.CancelScope()

    async def run_array() -> None:
        with array:
            await storage_array()

    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        tg.start_soon(run_array)
        async with httpx.AsyncClient(base_url=base) as client:
            while not server.started:  # noqa: ASYNC110 (uvicorn has no event to wait for)
                await anyio.sleep(0.01)
            inputs = {"volume_id": "vol-7", "callback_base": base}
            started = await client.post("/flows", json={"flow": "backup", "inputs": inputs})
            flow_id = started.json()["flow_id"]
            print(f"started flow {flow_id}")
            async with client.stream("GET", f"/flows/{flow_id}/events") as events:
                async for line in events.aiter_lines():
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        if event.get("kind") in ("FLOW", "ATOM"):  # "end" closes it
                            print(
                                f"  {event['kind']:<5} {event['atom'] or '':<16} {event['state']}"
                            )
            shown = (await client.get(f"/flows/{flow_id}")).json()
            print(f"flow {flow_id} is {shown['status']}")
        server.should_exit = True
        array.cancel()


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else str(Path(tempfile.mkdtemp()) / "backup.db")
    anyio.run(main, f"sqlite:///{path}")
