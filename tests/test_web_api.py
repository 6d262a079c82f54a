"""The HTTP API of ``aioflow.web.create_app``: auth, the flow list, what a flow shows,
the actions, the event stream, jobs, errors and the OpenAPI description.

Real engines on real journals (memory, a SQLite file, PostgreSQL for the list), driven
through httpx's ASGI transport with the app's lifespan running."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import structlog.testing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

import aioflow
from aioflow import FlowStatus
from aioflow.jobs import JobBoard, JobState
from aioflow.web import create_app
from tests import test_external as ext

from .pg import pg_schema, pg_url

__all__ = ["pg_schema", "pg_url"]

SECRET = "web-api-secret"
JSON = {"content-type": "application/json"}

# The flows the tests start by name -----------------------------------------------------

STATE: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    STATE.clear()
    ext.CALLS.clear()
    ext.TOKENS.clear()


@aioflow.task(provides="greeting")
async def greet(who: str) -> str:
    return f"hello {who}"


@aioflow.task(provides="shout")
async def shout(greeting: str) -> str:
    return greeting.upper()


def hello_flow() -> aioflow.Flow:
    return aioflow.Linear("hello", greet, shout)


@aioflow.task(retry=aioflow.Retry.times(2))
async def always_fails(greeting: str) -> None:
    raise RuntimeError("no luck")


def failing_flow() -> aioflow.Flow:
    return aioflow.Linear("failing", greet, always_fails)


@aioflow.task(retry=aioflow.Retry.times(1, then="suspend"))
async def until_fixed(greeting: str) -> str:
    if not STATE.get("fixed"):
        raise ValueError("not fixed yet")
    return "fixed"


def suspending_flow() -> aioflow.Flow:
    if STATE.get("redeployed"):  # another shape: a resume no longer matches the journal
        return aioflow.Linear("suspending", greet)
    return aioflow.Linear("suspending", greet, until_fixed)


@aioflow.task
async def held(greeting: str) -> None:
    event = STATE.setdefault("release", anyio.Event())
    STATE.setdefault("started", anyio.Event()).set()
    await event.wait()


def held_flow() -> aioflow.Flow:
    return aioflow.Linear("held", greet, held)


@aioflow.task(provides="one")
async def step_one() -> int:
    STATE.setdefault("ran", []).append("one")
    return 1


@step_one.revert
async def undo_step_one() -> None:
    STATE.setdefault("reverted", []).append("one")


@aioflow.task(provides="two")
async def step_two(one: int) -> int:
    STATE.setdefault("ran", []).append("two")
    return one + 1


@step_two.revert
async def undo_step_two(one: int) -> None:
    STATE.setdefault("reverted", []).append("two")


def steps_flow() -> aioflow.Flow:
    return aioflow.Linear(
        "steps", step_one, aioflow.Checkpoint("first"), step_two, aioflow.Checkpoint("second")
    )


def broken_flow() -> aioflow.Flow:
    return aioflow.Unordered("broken", greet, greet)  # one member twice: cannot compile


def make_registry() -> aioflow.Registry:
    registry = aioflow.Registry()
    for factory in (hello_flow, failing_flow, suspending_flow, held_flow, steps_flow):
        registry.register(factory, name=factory.__name__.removesuffix("_flow"))
    registry.register(broken_flow, name="broken")
    registry.provides("approval")(ext.approval_flow)
    return registry


# Serving --------------------------------------------------------------------------------


@dataclass
class Served:
    client: httpx.AsyncClient
    engine: aioflow.Engine
    app: Starlette

    async def status_of(self, flow_id: str, want: str) -> dict[str, Any]:
        with anyio.fail_after(10):
            while True:
                body: dict[str, Any] = (await self.client.get(f"/flows/{flow_id}")).json()
                if body["status"] == want:
                    return body
                await anyio.sleep(0.005)

    async def post(self, path: str, body: Any = None) -> httpx.Response:
        return await self.client.post(path, json=body if body is not None else {})


@asynccontextmanager
async def serve(
    url: str = "memory://",
    *,
    public: bool = True,
    auth: Callable[[Request], Awaitable[bool]] | None = None,
    board: JobBoard | None = None,
    registry: aioflow.Registry | None = None,
    **options: Any,
) -> AsyncIterator[Served]:
    engine = aioflow.Engine(url, secret=SECRET)
    registry = registry if registry is not None else make_registry()
    app = create_app(
        engine, registry, board=board, auth=auth, public=public, poll_interval=0.01, **options
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield Served(client, engine, app)


def is_utc_iso(text: Any) -> bool:
    return isinstance(text, str) and dt.datetime.fromisoformat(text).utcoffset() == dt.timedelta(0)


async def sse(response: httpx.Response) -> list[tuple[str, str, Any]]:
    """(event, id, data) of each message of a server-sent event stream."""
    out: list[tuple[str, str, Any]] = []
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if fields:
                data = json.loads(fields.get("data", "null"))
                out.append((fields.get("event", "message"), fields.get("id", ""), data))
            fields = {}
            continue
        name, _, value = line.partition(": ")
        fields[name] = value
    return out


# Auth -------------------------------------------------------------------------------------

POSTS = [
    ("/flows", {"flow": "hello", "inputs": {"who": "x"}}),
    ("/flows/f1/cancel", {}),
    ("/flows/f1/resume", {}),
    ("/flows/f1/revert-to/first", {}),
    ("/flows/f1/goto/first", {}),
    ("/flows/f1/messages/topic", {"message": 1}),
    ("/jobs/j1/retry", {}),
    ("/jobs/j1/cancel", {}),
]


@pytest.mark.parametrize(("path", "body"), POSTS)
async def test_without_auth_every_route_that_changes_things_answers_401(
    path: str, body: Any
) -> None:
    async with serve(public=False, board=JobBoard.open("memory://")) as served:
        refused = await served.post(path, body)
        assert refused.status_code == 401
        assert "pass auth= or public=True" in refused.json()["error"]
        # ... and nothing happened: no flow was started.
        assert (await served.client.get("/flows")).json() == {"flows": [], "next": None}


async def test_without_auth_the_get_routes_answer() -> None:
    async with serve(public=False, board=JobBoard.open("memory://")) as served:
        outcome = await served.engine.run("hello", {"who": "x"})
        for path in ("/flows", f"/flows/{outcome.flow_id}", "/jobs", "/openapi.json"):
            assert (await served.client.get(path)).status_code == 200, path
        stream = await served.client.get(f"/flows/{outcome.flow_id}/events")
        assert stream.status_code == 200


async def test_the_completion_route_never_asks_auth_its_token_is_the_credential() -> None:
    asked: list[str] = []

    async def deny(request: Request) -> bool:
        asked.append(request.url.path)
        return False

    async with serve(auth=deny, public=False) as served:
        handle = await served.engine.start("approval", {"doc": "d"})
        with anyio.fail_after(10):
            while not ext.TOKENS:
                await anyio.sleep(0.005)
        garbage = await served.post("/external/not-a-token", {"result": 1})
        assert garbage.status_code == 403
        done = await served.post(f"/external/{ext.TOKENS[0]}", {"result": "yes"})
        assert done.status_code == 200
        assert (await handle.wait()).status is FlowStatus.SUCCESS
    assert asked == []


async def test_an_auth_hook_decides_for_every_other_route() -> None:
    async def bearer(request: Request) -> bool:
        return request.headers.get("authorization") == "Bearer sesame"

    async with serve(auth=bearer, public=False) as served:
        for path in ("/flows", "/flows/nope", "/openapi.json"):
            refused = await served.client.get(path)
            assert refused.status_code == 401 and refused.json() == {"error": "not authorized"}
        started = await served.post("/flows", {"flow": "hello", "inputs": {"who": "x"}})
        assert started.status_code == 401
        served.client.headers["authorization"] = "Bearer sesame"
        started = await served.post("/flows", {"flow": "hello", "inputs": {"who": "x"}})
        assert started.status_code == 202
        await served.status_of(started.json()["flow_id"], "SUCCESS")
        # Unknown routes and methods stay 404 and 405, asked or not.
        assert (await served.client.get("/nowhere")).status_code == 404
        assert (await served.client.delete("/flows")).status_code == 405


async def test_an_auth_hook_that_raises_is_a_logged_500_never_an_open_door() -> None:
    async def broken(request: Request) -> bool:
        raise RuntimeError("the session store is down")

    async with serve(auth=broken, public=True) as served:
        with structlog.testing.capture_logs() as logs:
            response = await served.post("/flows", {"flow": "hello", "inputs": {"who": "x"}})
        assert response.status_code == 500
        assert "auth hook failed" in response.json()["error"]
        assert "session store" not in response.text
        assert (await served.engine.journal.flows()) == []
    failed = [log for log in logs if log["event"] == "aioflow.web.auth_failed"]
    assert failed and failed[0]["log_level"] == "error" and "session store" in failed[0]["error"]


async def test_a_hook_must_say_true_a_truthy_value_is_not_enough() -> None:
    async def sloppy(request: Request) -> Any:
        return "yes"

    async with serve(auth=sloppy) as served:
        assert (await served.client.get("/flows")).status_code == 401


async def test_public_opens_the_app_to_anyone() -> None:
    async with serve(public=True) as served:
        started = await served.post("/flows", {"flow": "hello", "inputs": {"who": "x"}})
        assert started.status_code == 202


async def test_mounted_under_a_prefix_the_app_still_asks_before_it_changes_things() -> None:
    engine = aioflow.Engine(registry=make_registry())
    inner = create_app(engine)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with engine:
            yield

    outer = Starlette(routes=[Mount("/workflows", app=inner)], lifespan=lifespan)
    async with outer.router.lifespan_context(outer):
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            body = {"flow": "hello", "inputs": {"who": "x"}}
            refused = await client.post("/workflows/flows", json=body)
            listed = await client.get("/workflows/flows")
    assert refused.status_code == 401
    assert listed.status_code == 200 and listed.json()["flows"] == []


async def test_a_post_that_is_not_json_is_refused_so_other_pages_cannot_post_here() -> None:
    async with serve(public=True) as served:
        body = json.dumps({"flow": "hello", "inputs": {"who": "x"}})
        for headers in ({"content-type": "text/plain"}, {}):
            refused = await served.client.post("/flows", content=body, headers=headers)
            assert refused.status_code == 415
            assert "application/json" in refused.json()["error"]
        no_body = await served.client.post("/flows/x/cancel")  # a body-less form post
        assert no_body.status_code == 415
        assert await served.engine.journal.flows() == []
        typed = await served.client.post(
            "/flows", content=body, headers={"content-type": "application/json; charset=utf-8"}
        )
        assert typed.status_code == 202


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"flow": ' + b"[" * 65 + b"]" * 65 + b"}", b"NaN"],
)
async def test_deep_or_non_standard_json_is_a_422_not_a_500(body: bytes) -> None:
    async with serve(public=True) as served:
        response = await served.client.post("/flows", content=body, headers=JSON)
        assert response.status_code == 422
        assert "error" in response.json()


# The list of flows -----------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/j.db"
    return str(request.getfixturevalue("pg_url"))


async def all_pages(served: Served, query: str) -> list[list[dict[str, Any]]]:
    pages = []
    url = f"/flows?{query}"
    while True:
        response = await served.client.get(url)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["flows"])
        if body["next"] is None:
            return pages
        url = f"/flows?{query}&before={body['next']}"


async def test_the_list_pages_newest_first_with_filters(any_url: str) -> None:
    async with serve(any_url) as served:
        for i in range(7):
            if i % 3 == 2:
                with pytest.raises(aioflow.FlowFailedError):
                    await served.engine.run("failing", {"who": str(i)})
            else:
                await served.engine.run("hello", {"who": str(i)})
        summaries = await served.engine.journal.flows()
        newest = sorted(summaries, key=lambda s: (s.created, s.flow_id), reverse=True)

        pages = await all_pages(served, "limit=3")
        assert [len(page) for page in pages] == [3, 3, 1]
        listed = [flow for page in pages for flow in page]
        assert [f["flow_id"] for f in listed] == [s.flow_id for s in newest]
        first = listed[0]
        fields = {"flow_id", "name", "status", "created", "updated", "owner", "orphaned"}
        assert set(first) == fields
        assert is_utc_iso(first["created"]) and is_utc_iso(first["updated"])
        assert first["owner"] is None and first["orphaned"] is False

        reverted = [f for page in await all_pages(served, "status=REVERTED&limit=1") for f in page]
        assert [f["name"] for f in reverted] == ["failing", "failing"]
        hello = [f for page in await all_pages(served, "name=hello&limit=2") for f in page]
        assert len(hello) == 5 and {f["status"] for f in hello} == {"SUCCESS"}
        default = (await served.client.get("/flows")).json()
        assert len(default["flows"]) == 7 and default["next"] is None


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=many", "limit"),
        ("status=DONE", "status"),
        ("before=not-a-cursor", "before"),
    ],
)
async def test_bad_list_parameters_are_422s_naming_the_parameter(query: str, named: str) -> None:
    async with serve() as served:
        response = await served.client.get(f"/flows?{query}")
        assert response.status_code == 422
        assert response.json()["error"].startswith(named)


# What a flow shows ----------------------------------------------------------------------


async def test_a_reverted_flow_shows_each_failed_attempt_with_its_traceback(
    journal_url: str,
) -> None:
    async with serve(journal_url) as served:
        with pytest.raises(aioflow.FlowFailedError) as failed:
            await served.engine.run("failing", {"who": "hunter2-secret"})
        flow_id = failed.value.outcome.flow_id
        response = await served.client.get(f"/flows/{flow_id}")
    assert "hunter2-secret" not in response.text
    shown = response.json()
    assert shown["status"] == "REVERTED" and shown["name"] == "failing"
    assert shown["results"] == {}
    failure = shown["failures"]["always_fails"]
    assert failure["type"] == "RuntimeError" and failure["attempt"] == 2
    assert "Traceback" in failure["traceback"] and "always_fails" in failure["traceback"]
    attempts = shown["attempts"]["always_fails"]
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert all(a["type"] == "RuntimeError" and "Traceback" in a["traceback"] for a in attempts)
    atom = shown["progress"]["atoms"]["always_fails"]
    assert atom["attempt"] == 2 and is_utc_iso(atom["started"]) and is_utc_iso(atom["ended"])
    assert isinstance(atom["duration"], float) and atom["duration"] >= 0
    assert is_utc_iso(shown["created"]) and is_utc_iso(shown["updated"])
    assert shown["owner"] is None and shown["orphaned"] is False


async def test_a_successful_flow_shows_its_results_checkpoints_and_structure(
    journal_url: str,
) -> None:
    async with serve(journal_url) as served:
        outcome = await served.engine.run("steps")
        shown = (await served.client.get(f"/flows/{outcome.flow_id}")).json()
        hello = await served.engine.run("hello", {"who": "you"})
        greeting = (await served.client.get(f"/flows/{hello.flow_id}")).json()
    assert shown["status"] == "SUCCESS"
    assert shown["results"] == {"one": 1, "two": 2}
    assert shown["checkpoints"] == ["first", "second"] and shown["checkpoint"] == "second"
    assert shown["structure"][:2] == ["linear", "steps"]
    assert shown["failures"] == {} and shown["attempts"] == {}
    assert greeting["results"] == {"greeting": "hello you", "shout": "HELLO YOU"}  # no "who"
    step = shown["progress"]["atoms"]["step_two"]
    assert step["state"] == "SUCCESS" and step["attempt"] == 1 and step["duration"] is not None


async def test_a_running_flow_has_no_results_yet_and_no_end_times() -> None:
    async with serve() as served:
        handle = await served.engine.start("held", {"who": "x"})
        with anyio.fail_after(10):
            await STATE.setdefault("started", anyio.Event()).wait()
        shown = (await served.client.get(f"/flows/{handle.flow_id}")).json()
        STATE["release"].set()
        await handle.wait()
    assert shown["status"] == "RUNNING" and shown["results"] is None
    atom = shown["progress"]["atoms"]["held"]
    assert atom["state"] == "RUNNING" and is_utc_iso(atom["started"])
    assert atom["ended"] is None and atom["duration"] is None
    assert shown["owner"] is not None


# The event stream -------------------------------------------------------------------------


async def test_the_event_stream_resumes_after_last_event_id_and_never_sends_inputs(
    journal_url: str,
) -> None:
    async with serve(journal_url) as served:
        outcome = await served.engine.run("hello", {"who": "hunter2"})
        path = f"/flows/{outcome.flow_id}/events"
        async with served.client.stream("GET", path) as response:
            everything = await sse(response)
        async with served.client.stream("GET", path, headers={"Last-Event-ID": "3"}) as response:
            resumed = await sse(response)
        async with served.client.stream("GET", f"{path}?after=2") as response:
            after = await sse(response)
        async with served.client.stream(
            "GET", f"{path}?after=1", headers={"Last-Event-ID": "4"}
        ) as response:
            header_wins = await sse(response)
        bad = await served.client.get(path, headers={"Last-Event-ID": "x"})
    seqs = [int(i) for kind, i, _ in everything if kind != "end"]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 4
    assert everything[-1] == ("end", "", {})
    assert [int(i) for kind, i, _ in resumed if kind != "end"] == seqs[3:]
    assert [int(i) for kind, i, _ in after if kind != "end"] == seqs[2:]
    assert [int(i) for kind, i, _ in header_wins if kind != "end"] == seqs[4:]
    first = everything[0][2]
    assert first["kind"] == "FLOW" and first["details"]["name"] == "hello"
    assert "inputs" not in first["details"]
    streamed = json.dumps([data for _, _, data in everything])
    assert '"who"' not in streamed  # the result "hello hunter2" is no input
    assert bad.status_code == 422 and "Last-Event-ID" in bad.json()["error"]


async def test_a_stream_resumed_after_the_end_of_a_finished_flow_just_ends() -> None:
    async with serve() as served:
        outcome = await served.engine.run("hello", {"who": "x"})
        path = f"/flows/{outcome.flow_id}/events"
        async with served.client.stream("GET", path, headers={"Last-Event-ID": "999"}) as r:
            assert await sse(r) == [("end", "", {})]


async def test_a_compacted_flow_streams_its_snapshot_without_inputs_or_nonces(
    sqlite_url: str,
) -> None:
    async with serve(sqlite_url) as served:
        outcome = await served.engine.run("steps", {"password": "s3cret"})
        assert await served.engine.journal.compact(outcome.flow_id) > 0
        async with served.client.stream("GET", f"/flows/{outcome.flow_id}/events") as r:
            events = await sse(r)
    assert events[0][2]["kind"] == "SNAPSHOT"
    assert "inputs" not in events[0][2]["details"]["state"]
    assert "s3cret" not in json.dumps(events)


async def test_the_event_streams_are_capped_and_give_their_place_back() -> None:
    async with serve(max_streams=1) as served:
        handle = await served.engine.start("approval", {"doc": "d"})
        await served.status_of(handle.flow_id, "WAITING")
        path = f"/flows/{handle.flow_id}/events"
        opened = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold_stream, served.app, path, opened)
            with anyio.fail_after(10):
                await opened.wait()
            full = await served.client.get(path)
            assert full.status_code == 503 and "max_streams=1" in full.json()["error"]
            tg.cancel_scope.cancel()  # the client goes away
        await served.post(f"/external/{ext.TOKENS[0]}", {"result": "ok"})
        await served.status_of(handle.flow_id, "SUCCESS")
        assert (await served.client.get(path)).status_code == 200


async def hold_stream(app: Starlette, path: str, opened: anyio.Event) -> None:
    """GET ``path`` straight through ASGI and hold the stream open until cancelled."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"app")],
        "client": ("127.0.0.1", 1),
        "server": ("app", 80),
    }

    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
            opened.set()

    await app(scope, receive, send)


# Actions ----------------------------------------------------------------------------------


async def test_cancel_reverts_a_running_flow_and_says_so(journal_url: str) -> None:
    async with serve(journal_url) as served:
        handle = await served.engine.start("held", {"who": "x"})
        with anyio.fail_after(10):
            await STATE.setdefault("started", anyio.Event()).wait()
        cancelled = await served.post(f"/flows/{handle.flow_id}/cancel")
        assert cancelled.status_code == 202 and cancelled.json() == {"ok": True}
        shown = await served.status_of(handle.flow_id, "REVERTED")
        again = await served.post(f"/flows/{handle.flow_id}/cancel")
        unknown = await served.post("/flows/nope/cancel")
    assert shown["failures"]["<cancel>"]["type"] == "FlowCancelledError"
    assert shown["attempts"]["<cancel>"][0]["type"] == "FlowCancelledError"
    assert again.status_code == 409 and "ended" in again.json()["error"]
    assert unknown.status_code == 404


async def test_resume_runs_a_suspended_flow_on_in_the_background(journal_url: str) -> None:
    async with serve(journal_url) as served:
        started = await served.post("/flows", {"flow": "suspending", "inputs": {"who": "x"}})
        flow_id = started.json()["flow_id"]
        suspended = await served.status_of(flow_id, "SUSPENDED")
        assert suspended["failures"]["until_fixed"]["message"] == "not fixed yet"
        await served.engine.wait(flow_id)  # its run has let it go
        STATE["fixed"] = True
        resumed = await served.post(f"/flows/{flow_id}/resume")
        assert resumed.status_code == 202
        done = await served.status_of(flow_id, "SUCCESS")
        ended = await served.post(f"/flows/{flow_id}/resume")
        unknown = await served.post("/flows/nope/resume")
    assert done["results"]["greeting"] == "hello x"
    assert [a["attempt"] for a in done["attempts"]["until_fixed"]] == [1]
    assert ended.status_code == 409 and "has ended" in ended.json()["error"]
    assert unknown.status_code == 404


async def test_resume_of_a_flow_started_from_an_object_is_a_clear_409() -> None:
    async with serve() as served:
        outcome = await served.engine.run(suspending_flow(), {"who": "x"})
        assert outcome.status is FlowStatus.SUSPENDED
        refused = await served.post(f"/flows/{outcome.flow_id}/resume")
    assert refused.status_code == 409
    assert "started from a flow object" in refused.json()["error"]


async def test_resume_of_a_flow_whose_definition_changed_is_a_409_naming_the_change() -> None:
    async with serve() as served:
        outcome = await served.engine.run("suspending", {"who": "x"})
        assert outcome.status is FlowStatus.SUSPENDED
        STATE["redeployed"] = True
        refused = await served.post(f"/flows/{outcome.flow_id}/resume")
    assert refused.status_code == 409
    assert "until_fixed" in refused.json()["error"]


async def test_revert_to_and_goto_move_a_suspended_flow(journal_url: str) -> None:
    async with serve(journal_url) as served:
        outcome = await served.engine.run("steps", stop_at="second")
        flow_id = outcome.flow_id
        assert outcome.status is FlowStatus.SUSPENDED
        unknown = await served.post(f"/flows/{flow_id}/revert-to/third")
        assert unknown.status_code == 404
        assert "'first', 'second'" in unknown.json()["error"]
        moved = await served.post(f"/flows/{flow_id}/revert-to/first")
        assert moved.status_code == 202
        await moved_to(served, flow_id, "first")
        assert STATE["reverted"] == ["two"]
        not_reached = await served.post(f"/flows/{flow_id}/revert-to/second")
        assert not_reached.status_code == 409 and "not reached" in not_reached.json()["error"]
        forward = await served.post(f"/flows/{flow_id}/goto/second")
        assert forward.status_code == 202
        shown = await moved_to(served, flow_id, "second")
        assert STATE["ran"] == ["one", "two", "two"]
        finished = await served.engine.resume(flow_id)
        assert finished.status is FlowStatus.SUCCESS
        ended = await served.post(f"/flows/{flow_id}/goto/first")
    assert shown["checkpoints"] == ["first", "second"]
    assert ended.status_code == 409


async def moved_to(served: Served, flow_id: str, checkpoint: str) -> dict[str, Any]:
    """The flow once a move in the background left it SUSPENDED at ``checkpoint``, and
    the move's run has let it go (so the next action finds it free)."""
    with anyio.fail_after(10):
        while (shown := await served.status_of(flow_id, "SUSPENDED"))["checkpoint"] != checkpoint:
            await anyio.sleep(0.005)
    await served.engine.wait(flow_id)
    return shown


async def test_a_move_of_a_flow_that_is_not_suspended_is_a_409() -> None:
    async with serve() as served:
        handle = await served.engine.start("held", {"who": "x"})
        with anyio.fail_after(10):
            await STATE.setdefault("started", anyio.Event()).wait()
        busy = await served.post(f"/flows/{handle.flow_id}/goto/first")
        STATE["release"].set()
        await handle.wait()
    assert busy.status_code == 409 and "running in this engine" in busy.json()["error"]


# Errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shared_registry", [True, False])
async def test_a_flow_that_cannot_compile_is_the_servers_500_and_is_logged(
    shared_registry: bool,
) -> None:
    registry = make_registry()
    engine = aioflow.Engine(registry=registry if shared_registry else aioflow.Registry())
    app = create_app(engine, registry, public=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            with structlog.testing.capture_logs() as logs:
                broken = await client.post("/flows", json={"flow": "broken", "inputs": {}})
            missing = await client.post("/flows", json={"flow": "hello", "inputs": {}})
    assert broken.status_code == 500
    assert broken.json()["error"].startswith("the flow 'broken' cannot be compiled: ")
    assert any(log["event"] == "aioflow.web.flow_does_not_compile" for log in logs)
    assert missing.status_code == 422 and "missing inputs 'who'" in missing.json()["error"]


async def test_every_error_is_json() -> None:
    async with serve() as served:
        for method, path in [
            ("GET", "/nowhere"),
            ("DELETE", "/flows"),
            ("GET", "/flows/nope"),
            ("GET", "/flows/nope/events"),
            ("GET", "/jobs"),
            ("POST", "/flows/nope/cancel"),
        ]:
            response = await served.client.request(method, path, json={})
            assert response.status_code >= 400
            assert response.headers["content-type"] == "application/json", path
            assert isinstance(response.json()["error"], str)
        no_board = await served.client.get("/jobs/j1")
        assert no_board.status_code == 404 and "no job board" in no_board.json()["error"]


# Jobs -------------------------------------------------------------------------------------


async def test_jobs_are_listed_newest_first_and_shown_with_their_inputs(tmp_path: Path) -> None:
    board = JobBoard.open(f"sqlite:///{tmp_path}/jobs.db")
    async with board:
        posted = [
            await board.post("hello", {"who": f"w{i}"}, name=f"job {i}", delay=i * 1000.0)
            for i in range(4)
        ]
        async with serve(board=board) as served:
            listed = (await served.client.get("/jobs")).json()["jobs"]
            limited = (await served.client.get("/jobs?limit=2&state=unclaimed")).json()["jobs"]
            shown = (await served.client.get(f"/jobs/{posted[0].id}")).json()
            unknown = await served.client.get("/jobs/nope")
            bad_state = await served.client.get("/jobs?state=LOST")
    newest = sorted(posted, key=lambda j: (j.created, j.id), reverse=True)
    assert [j["id"] for j in listed] == [j.id for j in newest]
    assert [j["id"] for j in limited] == [j.id for j in newest[:2]]
    assert all("inputs" not in j for j in listed)
    assert shown["inputs"] == {"who": "w0"} and shown["state"] == "UNCLAIMED"
    assert shown["name"] == "job 0" and shown["flow"] == "hello" and shown["attempts"] == 0
    assert is_utc_iso(shown["created"]) and is_utc_iso(shown["available_at"])
    assert shown["available_at"] < listed[0]["available_at"]
    assert shown["failures"] == {} and shown["status"] is None
    assert unknown.status_code == 404
    assert bad_state.status_code == 422 and bad_state.json()["error"].startswith("state")


async def failed_job(board: JobBoard) -> str:
    job = await board.post("hello", {"who": "x"})
    claimed = await board.claim("tester", 30.0)
    assert claimed is not None and claimed.id == job.id
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        failure = aioflow.Failure.from_exception(exc)
    assert await board.finish(claimed, JobState.FAILED, FlowStatus.REVERTED, {"greet": failure})
    return job.id


async def test_a_failed_job_is_retried_and_shows_its_failure_before() -> None:
    board = JobBoard.open("memory://")
    async with serve(board=board) as served:
        job_id = await failed_job(board)
        before = (await served.client.get(f"/jobs/{job_id}")).json()
        retried = await served.post(f"/jobs/{job_id}/retry")
        new_id = retried.json()["job"]["id"]
        not_failed = await served.post(f"/jobs/{new_id}/retry")
        unknown = await served.post("/jobs/nope/retry")
    assert before["state"] == "FAILED" and before["status"] == "REVERTED"
    assert before["failures"]["greet"]["type"] == "RuntimeError"
    assert "Traceback" in before["failures"]["greet"]["traceback"]
    assert retried.status_code == 202 and retried.json()["ok"] is True
    # Its flow was reverted: a new job runs it again (see JobBoard.retry).
    assert retried.json()["job"]["state"] == "UNCLAIMED" and new_id != job_id
    assert not_failed.status_code == 409
    assert unknown.status_code == 404


async def test_a_job_is_cancelled_and_a_second_cancel_is_a_409() -> None:
    board = JobBoard.open("memory://")
    async with serve(board=board) as served:
        job = await board.post("hello", {"who": "x"})
        cancelled = await served.post(f"/jobs/{job.id}/cancel")
        again = await served.post(f"/jobs/{job.id}/cancel")
        unknown = await served.post("/jobs/nope/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["job"]["state"] == "FAILED"
    assert again.status_code == 409
    assert unknown.status_code == 404


# OpenAPI ----------------------------------------------------------------------------------


async def test_the_openapi_description_lists_every_route() -> None:
    async with serve(board=JobBoard.open("memory://")) as served:
        document = (await served.client.get("/openapi.json")).json()
        routes = {
            (route.path, method.lower())
            for route in served.app.routes
            if route.path.startswith(("/flows", "/jobs", "/external"))  # type: ignore[attr-defined]
            for method in route.methods - {"HEAD"}  # type: ignore[attr-defined]
        }
    described = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert document["openapi"].startswith("3.")
    assert described == routes
