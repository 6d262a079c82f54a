"""The ASGI app: driven through httpx against the app (with its lifespan), and once
end to end through a real uvicorn server in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import aioflow
from aioflow.web import create_app
from tests import test_external as ext

SECRET = "web-secret"


def make_registry() -> aioflow.Registry:
    registry = aioflow.Registry()
    registry.provides("approval")(ext.approval_flow)
    return registry


@pytest.fixture(autouse=True)
def _reset() -> None:
    ext.CALLS.clear()
    ext.TOKENS.clear()


@asynccontextmanager
async def serve(journal_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app over a real ASGI transport, with the app's lifespan running.

    (A context manager, not a fixture: the engine's task group must be entered and left
    in the test's own task.)"""
    engine = aioflow.Engine(journal_url, secret=SECRET)
    app = create_app(
        engine, registry=make_registry(), public=True, max_body=4096, poll_interval=0.01
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            yield c


async def status_of(client: httpx.AsyncClient, flow_id: str, want: str) -> dict[str, Any]:
    with anyio.fail_after(10):
        while True:
            body: dict[str, Any] = (await client.get(f"/flows/{flow_id}")).json()
            if body["status"] == want:
                return body
            await anyio.sleep(0.005)


async def test_start_look_and_complete_a_waiting_flow(journal_url: str) -> None:
    async with serve(journal_url) as client:
        started = await client.post("/flows", json={"flow": "approval", "inputs": {"doc": "d1"}})
        assert started.status_code == 202
        flow_id = started.json()["flow_id"]
        shown = await status_of(client, flow_id, "WAITING")
        assert shown["waiting"] == [
            {"atom": "ask", "deadline": shown["waiting"][0]["deadline"], "info": {"doc": "d1"}}
        ]
        assert set(shown["progress"]) == {"fraction", "eta", "atoms"}
        token = ext.TOKENS[0]
        raw = (await client.get(f"/flows/{flow_id}")).text
        assert token not in raw and token.split(".")[2] not in raw
        assert "nonce" not in raw
        done = await client.post(f"/external/{token}", json={"result": "approved"})
        assert done.status_code == 200 and done.json() == {"ok": True}
        final = await status_of(client, flow_id, "SUCCESS")
        assert final["waiting"] == []
        again = await client.post(f"/external/{token}", json={"result": "twice"})
        assert again.status_code == 403
        assert token not in again.text


async def test_an_error_fails_the_wait_and_the_flow_reverts(journal_url: str) -> None:
    async with serve(journal_url) as client:
        flow_id = (
            await client.post("/flows", json={"flow": "approval", "inputs": {"doc": "d"}})
        ).json()["flow_id"]
        await status_of(client, flow_id, "WAITING")
        response = await client.post(f"/external/{ext.TOKENS[0]}", json={"error": "rejected"})
        assert response.status_code == 200
        await status_of(client, flow_id, "REVERTED")


async def test_the_event_stream_follows_the_flow_through_its_wait(
    journal_url: str,
) -> None:
    async with serve(journal_url) as client:
        flow_id = (
            await client.post("/flows", json={"flow": "approval", "inputs": {"doc": "d"}})
        ).json()["flow_id"]
        seen: list[dict[str, Any]] = []

        async def read() -> None:
            # httpx's ASGI transport hands over the body once the stream has ended, so the
            # completion below happens while this request is open.
            async with client.stream("GET", f"/flows/{flow_id}/events") as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: {}":  # {}: the end
                        seen.append(json.loads(line[6:]))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await status_of(client, flow_id, "WAITING")
                await client.post(f"/external/{ext.TOKENS[0]}", json={"result": "ok"})
        kinds = [(e["kind"], e["atom"], e["state"]) for e in seen]
        assert ("FLOW", None, "WAITING") in kinds
        assert kinds[-1] == ("FLOW", None, "SUCCESS")
        assert [e["seq"] for e in seen if e["kind"] != "PROGRESS"] == sorted(
            e["seq"] for e in seen if e["kind"] != "PROGRESS"
        )
        assert all("nonce" not in e["details"] for e in seen)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/flows", {"flow": "nope", "inputs": {}}, 404),
        ("POST", "/flows", {"flow": "tests.test_external:approval_flow"}, 404),
        ("POST", "/flows", {"flow": "approval", "inputs": {}}, 422),
        ("POST", "/flows", {"flow": "approval", "inputs": [1]}, 422),
        ("POST", "/flows", {"inputs": {}}, 422),
        ("POST", "/flows", [1, 2], 422),
        ("GET", "/flows/unknown", None, 404),
        ("GET", "/flows/unknown/events", None, 404),
        ("POST", "/external/v1.e30.AAAA", {"result": 1}, 403),
        ("POST", "/external/garbage", {"result": 1}, 403),
        ("POST", "/external/garbage", {"nothing": 1}, 422),
        ("POST", "/external/garbage", {"result": 1, "error": "x"}, 422),
    ],
)
async def test_bad_requests_get_clear_json_errors(
    journal_url: str, method: str, path: str, body: Any, status: int
) -> None:
    async with serve(journal_url) as client:
        response = await client.request(method, path, json=body)
        assert response.status_code == status
        assert isinstance(response.json()["error"], str)
        assert "Traceback" not in response.text


async def test_a_body_that_is_not_json_is_refused(journal_url: str) -> None:
    async with serve(journal_url) as client:
        json_type = {"content-type": "application/json"}
        response = await client.post("/flows", content=b"{not json", headers=json_type)
        assert response.status_code == 422


async def test_bodies_are_size_limited(journal_url: str) -> None:
    async with serve(journal_url) as client:
        big = {"flow": "approval", "inputs": {"doc": "x" * 10_000}}
        assert (await client.post("/flows", json=big)).status_code == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for _ in range(10):
                yield b" " * 1000

        json_type = {"content-type": "application/json"}
        assert (await client.post("/flows", content=chunks(), headers=json_type)).status_code == 413


async def test_an_internal_error_is_a_500_without_a_stack_trace(journal_url: str) -> None:
    engine = aioflow.Engine(journal_url, secret=SECRET)

    async def broken(flow_id: str) -> Any:
        raise RuntimeError("a detail that must not leak")

    engine.progress = broken  # type: ignore[method-assign]
    app = create_app(engine, registry=make_registry())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            response = await c.get("/flows/x")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}


async def test_references_are_accepted_only_when_allowed(journal_url: str) -> None:
    engine = aioflow.Engine(journal_url, secret=SECRET)
    app = create_app(engine, allow_references=True, public=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            body = {"flow": "tests.test_external:approval_flow", "inputs": {"doc": "d"}}
            response = await c.post("/flows", json=body)
            assert response.status_code == 202
            await status_of(c, response.json()["flow_id"], "WAITING")


async def test_the_app_mounts_under_a_prefix_with_the_parent_entering_the_engine(
    journal_url: str,
) -> None:
    engine = aioflow.Engine(journal_url, secret=SECRET)
    inner = create_app(engine, registry=make_registry(), public=True)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with engine:  # a mounted app's own lifespan does not run
            yield

    outer = Starlette(routes=[Mount("/workflows", app=inner)], lifespan=lifespan)
    async with outer.router.lifespan_context(outer):
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            body = {"flow": "approval", "inputs": {"doc": "d"}}
            response = await c.post("/workflows/flows", json=body)
            assert response.status_code == 202
            flow_id = response.json()["flow_id"]
            with anyio.fail_after(10):
                while (await c.get(f"/workflows/flows/{flow_id}")).json()["status"] != "WAITING":
                    await anyio.sleep(0.005)
            token = ext.TOKENS[0]
            assert (await c.post(f"/workflows/external/{token}", json={"result": 1})).is_success


async def test_without_a_running_engine_the_app_answers_503(journal_url: str) -> None:
    app = create_app(aioflow.Engine(journal_url), registry=make_registry())
    transport = httpx.ASGITransport(app=app)  # no lifespan: the engine is not entered
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
        assert (await c.get("/flows/x")).status_code == 503


# End to end: uvicorn in a subprocess ------------------------------------------------------

_SERVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import aioflow
    from aioflow.web import create_app

    out = Path(sys.argv[1])

    @aioflow.task(provides="approval")
    async def ask(doc: str, external: aioflow.External) -> object:
        out.write_text(external.token)  # the "email" with the completion link
        return external.wait(timeout=600, info={"doc": doc})

    @aioflow.task(provides="done")
    async def finish(approval: str) -> str:
        return "done:" + approval

    registry = aioflow.Registry()

    @registry.provides("approval")
    def approval() -> aioflow.Linear:
        return aioflow.Linear("approval", ask, finish)

    engine = aioflow.Engine(sys.argv[2], secret="e2e")
    app = create_app(engine, registry=registry, public=True, poll_interval=0.05)

    if __name__ == "__main__":
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), access_log=False)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_end_to_end_through_uvicorn(tmp_path: Path, sqlite_url: str) -> None:
    script = tmp_path / "server.py"
    script.write_text(_SERVER)
    token_file = tmp_path / "token.txt"
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = await anyio.open_process(
        [sys.executable, str(script), str(token_file), sqlite_url, str(port)],
        env=env,
        cwd=str(tmp_path),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            with anyio.fail_after(30):
                while True:
                    try:
                        await c.get("/flows/none")
                        break
                    except httpx.TransportError:
                        await anyio.sleep(0.05)
                started = await c.post("/flows", json={"flow": "approval", "inputs": {"doc": "d"}})
                assert started.status_code == 202
                flow_id = started.json()["flow_id"]
                kinds: list[tuple[str, str | None]] = []
                async with c.stream("GET", f"/flows/{flow_id}/events") as stream:
                    async for line in stream.aiter_lines():
                        if not line.startswith("data: ") or line == "data: {}":  # {}: the end
                            continue
                        event = json.loads(line[6:])
                        kinds.append((event["kind"], event["state"]))
                        if (event["kind"], event["state"]) == ("FLOW", "WAITING"):
                            shown = (await c.get(f"/flows/{flow_id}")).json()
                            assert shown["waiting"][0]["info"] == {"doc": "d"}
                            token = token_file.read_text()
                            assert token not in json.dumps(shown)
                            bad = await c.post(f"/external/{token}x", json={"result": 1})
                            assert bad.status_code == 403
                            ok = await c.post(f"/external/{token}", json={"result": "yes"})
                            assert ok.status_code == 200
                assert kinds[-1] == ("FLOW", "SUCCESS")
                shown = (await c.get(f"/flows/{flow_id}")).json()
                assert shown["status"] == "SUCCESS"
    finally:
        proc.terminate()
        with anyio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.aclose()


async def test_the_delegated_backup_example_runs(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    script = root / "examples" / "delegated_backup.py"
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, str(script), str(tmp_path / "backup.db")], check=False
        )
    output = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "array called back: 200" in output
    assert output.rstrip().endswith("is SUCCESS")


def inbox_flow() -> aioflow.Flow:
    return aioflow.Linear("inbox", aioflow.Receive("ask", "answers", provides="answer"))


async def test_a_message_posted_to_a_flow_is_received(journal_url: str) -> None:
    engine = aioflow.Engine(journal_url, secret=SECRET)
    registry = aioflow.Registry()
    registry.register(inbox_flow, "inbox", name="inbox")
    app = create_app(engine, registry=registry, public=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            started = await client.post("/flows", json={"flow": "inbox"})
            flow_id = started.json()["flow_id"]
            await status_of(client, flow_id, "WAITING")
            sent = await client.post(
                f"/flows/{flow_id}/messages/answers",
                json={"message": {"yes": True}},
                headers={"Idempotency-Key": "a1"},
            )
            assert sent.status_code == 202, sent.text
            again = await client.post(
                f"/flows/{flow_id}/messages/answers",
                json={"message": {"yes": False}, "idempotency_key": "a1"},
            )
            assert again.status_code == 202
            await status_of(client, flow_id, "SUCCESS")
            assert (await engine.outcome(flow_id)).results == {"answer": {"yes": True}}
            ended = await client.post(f"/flows/{flow_id}/messages/answers", json={"message": 1})
            assert ended.status_code == 409 and "has ended" in ended.json()["error"]
            unknown = await client.post("/flows/nope/messages/answers", json={"message": 1})
            assert unknown.status_code == 404
            bad = await client.post(f"/flows/{flow_id}/messages/answers", json={"msg": 1})
            assert bad.status_code == 422


def shutdown() -> None:
    raise AssertionError("a reference to a callable that is no flow factory was called")


async def test_a_reference_to_a_callable_that_is_no_flow_factory_is_never_called() -> None:
    """With allow_references=True, {"flow": "os:abort"} once killed the server."""
    engine = aioflow.Engine()
    app = create_app(engine, allow_references=True, public=True)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://app") as client,
    ):
        for ref in ("os:abort", "tests.test_web:shutdown"):
            response = await client.post("/flows", json={"flow": ref, "inputs": {}})
            assert response.status_code == 404, response.text
            assert "not a flow factory" in response.json()["error"]
        ok = await client.post(
            "/flows", json={"flow": "tests.flows_for_tests:make_flow", "inputs": {"number": 1}}
        )
        assert ok.status_code == 202
