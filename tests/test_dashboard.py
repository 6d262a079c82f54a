"""The dashboard at ``/``, in a real browser: Chromium from the distribution, driven by
Playwright, against a real uvicorn server on 127.0.0.1 serving ``create_app`` over a
SQLite journal and job board.

The server runs in the test's own event loop, beside the engine it serves, so the flows'
tasks can wait on events the test sets: a progress bar moves because the test lets the
task go on, never because time passed. Without ``chromium`` (or Playwright) the browser
tests are skipped, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

import aioflow
from aioflow import FlowStatus
from aioflow.jobs import JobState
from aioflow.web import create_app
from tests import test_external as ext
from tests.test_ownership_cli import DEAD, orphan_by_hand

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
"""The distribution's Chromium (Playwright cannot download its own browsers here)."""
SECRET = "dashboard-secret"
WAIT_MS = 20_000
"""How long a browser expectation may wait for the page to catch up (a hang guard, not a
timing assertion: every wait ends on a condition)."""

async def has_count(locator: Any, n: int) -> None:
    """Wait until ``locator`` matches ``n`` elements: the list re-renders while it is
    live, so a count read once may catch it between two renders."""
    from playwright.async_api import expect

    await expect(locator).to_have_count(n, timeout=WAIT_MS)


# Flows ----------------------------------------------------------------------------------

GATES: dict[str, anyio.Event] = {}
REACHED: dict[str, anyio.Event] = {}
ATTEMPTS: list[int] = []


def gate(name: str) -> anyio.Event:
    return GATES.setdefault(name, anyio.Event())


def reached(name: str) -> anyio.Event:
    return REACHED.setdefault(name, anyio.Event())


@aioflow.task(provides="greeting")
async def hello() -> str:
    return "hello"


@aioflow.task
async def prepare() -> None:
    pass


@aioflow.task(provides="crunched")
async def crunch(progress: aioflow.Progress) -> int:
    progress(0.25, stage="first quarter")
    reached("quarter").set()
    await gate("half").wait()
    progress(0.75, stage="three quarters")
    reached("three quarters").set()
    await gate("done").wait()
    return 42


@aioflow.task
async def publish(crunched: int) -> None:
    pass


@aioflow.task(provides="data")
async def fetch() -> str:
    return "data"


@aioflow.task
async def left(data: str) -> None:
    pass


@aioflow.task
async def right(data: str) -> None:
    pass


@aioflow.task(provides="x")
async def produce() -> int:
    return 1


@aioflow.task
async def consume(x: int) -> None:
    pass


@aioflow.task
async def other() -> None:
    pass


@aioflow.task(retry=aioflow.Retry.times(2))
async def flaky() -> None:
    ATTEMPTS.append(len(ATTEMPTS) + 1)
    raise ValueError(f"disk full on attempt {len(ATTEMPTS)}")


ODD = '<img src=x onerror="window.hacked=1"> & "odd"'
"""An atom name that would be markup if the page ever parsed data as HTML."""


@aioflow.task(provides=("approver",))
async def greet(approver: dict[str, str]) -> tuple[str]:
    return (approver["by"],)


def quick_flow() -> aioflow.Linear:
    return aioflow.Linear("quick", hello)


def gated_flow() -> aioflow.Linear:
    return aioflow.Linear("gated", prepare, crunch, publish)


def shapes_flow() -> aioflow.Linear:
    mesh = aioflow.Graph("mesh", produce, consume, other).link(other, consume)
    return aioflow.Linear(
        "shapes",
        fetch,
        aioflow.Unordered("fan", left, right),
        mesh,
        aioflow.Checkpoint("mid"),
        hello.using(name=ODD, provides="odd"),
        flaky,
    )


def steps_flow() -> aioflow.Linear:
    return aioflow.Linear(
        "steps",
        prepare,
        aioflow.Checkpoint("one"),
        hello,
        aioflow.Checkpoint("two"),
        fetch,
    )


def inbox_flow() -> aioflow.Linear:
    receive = aioflow.Receive("approval", topic="approved", provides="message")
    return aioflow.Linear("inbox", receive, greet.using(rebind={"approver": "message"}))


def make_registry() -> aioflow.Registry:
    registry = aioflow.Registry()
    for name, factory in [
        ("quick", quick_flow),
        ("gated", gated_flow),
        ("shapes", shapes_flow),
        ("steps", steps_flow),
        ("inbox", inbox_flow),
        ("approval", ext.approval_flow),
    ]:
        registry.provides(name)(factory)
    return registry


@pytest.fixture(autouse=True)
def _reset() -> None:
    GATES.clear()
    REACHED.clear()
    ATTEMPTS.clear()
    ext.CALLS.clear()
    ext.TOKENS.clear()


# The server and the browser ------------------------------------------------------------


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "Playwright is not installed (pip install playwright)"
    return None


@pytest.fixture
def browser_ready() -> None:
    """Skips a browser test when no browser can run, except in CI, where it fails."""
    reason = _browser_missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"the dashboard's browser tests cannot run in CI: {reason}")
    pytest.skip(reason)


@dataclass
class Dashboard:
    engine: aioflow.Engine
    board: aioflow.JobBoard
    base: str
    page: Any  # playwright.async_api.Page

    async def open(self, route: str = "#/") -> None:
        await self.page.goto(f"{self.base}/{route}")

    def row(self, flow_id: str) -> Any:
        return self.page.locator(f'tr[data-flow-id="{flow_id}"]')

    async def value_of(self, bar: Any) -> float:
        return float(await bar.get_attribute("aria-valuenow"))


@asynccontextmanager
async def dashboard(tmp_path: Path, **app_options: Any) -> AsyncIterator[Dashboard]:
    """A uvicorn server on a free port serving the app, and a Chromium page at 1280x800.

    (A context manager, not a fixture: the engine's task group and the server are entered
    and left in the test's own task.)"""
    from playwright.async_api import async_playwright

    options: dict[str, Any] = {"public": True}
    options.update(app_options)
    registry = make_registry()
    async with (
        aioflow.JobBoard.open(f"sqlite:///{tmp_path}/jobs.db") as board,
        aioflow.Engine(
            f"sqlite:///{tmp_path}/journal.db",
            secret=SECRET,
            registry=registry,
            progress_interval=0.0,
        ) as engine,
    ):
        if options.pop("board", True):
            options["board"] = board
        app = create_app(engine, registry, poll_interval=0.02, **options)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5
        )
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(20):
                while not server.started:
                    await anyio.sleep(0.01)
            try:
                async with async_playwright() as pw:
                    browser = await pw.chromium.launch(executable_path=CHROMIUM)
                    try:
                        context = await browser.new_context(viewport={"width": 1280, "height": 800})
                        page = await context.new_page()
                        page.set_default_timeout(WAIT_MS)
                        errors: list[str] = []
                        page.on("pageerror", lambda exc: errors.append(str(exc)))
                        page.on("dialog", lambda dialog: dialog.accept())
                        yield Dashboard(engine, board, f"http://127.0.0.1:{port}", page)
                        assert errors == [], f"the page raised: {errors}"
                        assert await page.evaluate("window.hacked") is None
                    finally:
                        await browser.close()
            finally:
                server.should_exit = True  # the browser is gone: no stream holds it up
        sock.close()


async def status_is(engine: aioflow.Engine, flow_id: str, *statuses: FlowStatus) -> None:
    with anyio.fail_after(20):
        while (await engine.journal.summary(flow_id)).status not in statuses:
            await anyio.sleep(0.01)


# Served files (no browser needed) -------------------------------------------------------


async def test_the_page_and_its_files_are_served_from_the_package(sqlite_url: str) -> None:
    engine = aioflow.Engine(sqlite_url, secret=SECRET)
    app = create_app(engine, make_registry())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            page = await client.get("/")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            # Relative links only (the app may be mounted under a prefix), nothing remote.
            assert 'src="dashboard/app.js"' in page.text
            assert "http" not in page.text.replace('"http://www.w3.org', "")
            scripts = ["app.js", "common.js", "flows.js", "flow.js", "graph.js", "jobs.js"]
            assets = [*[(s, "text/javascript") for s in scripts], ("style.css", "text/css")]
            for name, kind in assets:
                asset = await client.get(f"/dashboard/{name}")
                assert asset.status_code == 200
                assert asset.headers["content-type"].startswith(kind)
                assert "innerHTML" not in asset.text and "https://" not in asset.text
                again = await client.get(
                    f"/dashboard/{name}", headers={"If-None-Match": asset.headers["etag"]}
                )
                assert again.status_code == 304
            missing = await client.get("/dashboard/index.html")
            assert missing.status_code == 404
            assert missing.json() == {"error": "no such route"}
            assert (await client.get("/dashboard/..%2Fweb.py")).status_code == 404


async def test_the_page_works_mounted_under_a_prefix(sqlite_url: str) -> None:
    engine = aioflow.Engine(sqlite_url, secret=SECRET)
    outer = Starlette(routes=[Mount("/workflows", app=create_app(engine, make_registry()))])
    transport = httpx.ASGITransport(app=outer)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        moved = await client.get("/workflows")
        assert moved.status_code in (307, 308)
        assert moved.headers["location"].endswith("/workflows/")
        page = await client.get("/workflows/")
        assert page.status_code == 200 and "<title>aioflow</title>" in page.text
        # The page's relative URLs resolve under the prefix, the API's included.
        assert (await client.get("/workflows/dashboard/app.js")).status_code == 200
        assert "`flows?${q}`" in (await client.get("/workflows/dashboard/flows.js")).text


# The flows list -------------------------------------------------------------------------


async def test_the_list_shows_finished_and_running_flows_with_a_moving_bar(
    browser_ready: None, tmp_path: Path
) -> None:
    async with dashboard(tmp_path) as d:
        done = await (await d.engine.start("quick")).wait()
        running = await d.engine.start("gated")
        await reached("quarter").wait()
        await d.open()

        finished_row = d.row(done.flow_id)
        await finished_row.locator('.badge[data-status="SUCCESS"]').wait_for()
        assert await d.value_of(finished_row.get_by_role("progressbar")) == 100.0
        assert await finished_row.locator("td.name a").inner_text() == "quick"

        row = d.row(running.flow_id)
        await row.locator('.badge[data-status="RUNNING"]').wait_for()
        bar = row.get_by_role("progressbar")
        await d.page.wait_for_function(
            "bar => Number(bar.getAttribute('aria-valuenow')) > 0", arg=await bar.element_handle()
        )
        before = await d.value_of(bar)
        assert 0 < before < 100
        assert await row.locator("td.owner code").inner_text() != ""

        gate("half").set()
        await reached("three quarters").wait()
        await d.page.wait_for_function(
            "([bar, before]) => Number(bar.getAttribute('aria-valuenow')) > before",
            arg=[await bar.element_handle(), before],
        )
        assert before < await d.value_of(bar) < 100

        gate("done").set()
        await row.locator('.badge[data-status="SUCCESS"]').wait_for()
        await d.page.wait_for_function(
            "bar => bar.getAttribute('aria-valuenow') === '100'", arg=await bar.element_handle()
        )


async def test_the_list_filters_by_status_and_name_and_loads_more(
    browser_ready: None, tmp_path: Path
) -> None:
    async with dashboard(tmp_path) as d:
        quick = [(await (await d.engine.start("quick")).wait()).flow_id for _ in range(3)]
        running = (await d.engine.start("gated")).flow_id
        await reached("quarter").wait()

        await d.open("#/?status=RUNNING")
        await d.row(running).wait_for()
        await has_count(d.page.locator("#flows tr"), 1)
        assert await d.page.locator("#status-filter").input_value() == "RUNNING"

        await d.page.select_option("#status-filter", "SUCCESS")
        await d.page.wait_for_url("**/#/?status=SUCCESS")
        for flow_id in quick:
            await d.row(flow_id).wait_for()
        await has_count(d.row(running), 0)

        await d.page.select_option("#status-filter", "")
        await d.page.fill("#name-filter", "gated")
        await d.page.press("#name-filter", "Enter")
        await d.page.wait_for_url("**/#/?name=gated")
        await d.row(running).wait_for()
        await has_count(d.page.locator("#flows tr"), 1)

        # Pages of two: the rest arrives with "Load more".
        await d.open("#/?limit=2")
        await d.page.locator("#flows tr").nth(1).wait_for()
        await has_count(d.page.locator("#flows tr"), 2)
        await d.page.click("#load-more")
        for flow_id in [*quick, running]:
            await d.row(flow_id).wait_for()
        await has_count(d.page.locator("#flows tr"), 4)
        gate("half").set()
        gate("done").set()


async def test_an_orphaned_flow_is_marked_and_resumed_from_its_page(
    browser_ready: None, tmp_path: Path
) -> None:
    async with dashboard(tmp_path) as d:
        flow_id = await orphan_by_hand(f"sqlite:///{tmp_path}/journal.db")
        await d.open()
        row = d.row(flow_id)
        await row.locator(".badge.orphan").wait_for()
        assert await row.locator("td.owner code").inner_text() == DEAD

        await row.locator("td.name a").click()
        await d.page.locator("#flow-facts .badge.orphan").wait_for()
        await d.page.click("#resume")  # a running flow can be resumed when orphaned
        await status_is(d.engine, flow_id, FlowStatus.SUCCESS)
        await d.page.locator('h1 .badge[data-status="SUCCESS"]').wait_for()
        assert await d.page.locator("#flow-facts .badge.orphan").count() == 0


# A flow's page --------------------------------------------------------------------------


async def test_the_flow_page_draws_the_graph_and_shows_a_failed_attempts_traceback(
    browser_ready: None, tmp_path: Path
) -> None:
    async with dashboard(tmp_path) as d:
        handle = await d.engine.start("shapes")
        with pytest.raises(aioflow.FlowFailedError):
            await handle.wait()
        await d.open(f"#/flows/{handle.flow_id}")

        graph = d.page.locator("#graph svg")
        await graph.wait_for()
        for atom in ["fetch", "left", "right", "produce", "consume", "other", "mid", "flaky"]:
            node = graph.locator(f'g.atom[data-atom="{atom}"]')
            assert await node.count() == 1, atom
            assert atom in await node.locator("title").text_content()
        for part in ["shapes", "fan", "mesh"]:
            assert await graph.locator(f'g.part[data-part="{part}"]').count() == 1
        # An edge per link of the chain and of the graph (data: produce -> consume; link:
        # other -> consume); none between the lanes of the Unordered.
        assert await graph.locator("path.edge").count() == 5 + 2
        # Coloured by state: the flow was reverted, and the atom that failed is marked.
        await graph.locator('g.atom[data-atom="flaky"].state-REVERTED.failed').wait_for()
        await graph.locator('g.atom[data-atom="fetch"].state-REVERTED:not(.failed)').wait_for()
        # A name that looks like markup is shown as text, never parsed.
        odd = graph.locator("g.atom").filter(has_text="<img")
        assert await odd.count() == 1
        assert await d.page.locator("#main img").count() == 0

        row = d.page.locator('#atoms tr[data-atom="flaky"]')
        await row.locator('.badge[data-status="REVERTED"]').wait_for()
        assert await row.locator("td.num").first.inner_text() == "2"
        failures = row.locator(".failure")
        await failures.filter(has_text="attempt 1: ValueError: disk full on attempt 1").wait_for()
        last = failures.filter(has_text="attempt 2: ValueError: disk full on attempt 2")
        await last.wait_for()
        traceback = last.locator("pre.traceback")
        assert await traceback.is_hidden()
        await last.locator("summary").click()
        assert await traceback.is_visible()
        text = await traceback.inner_text()
        assert "Traceback" in text and "in flaky" in text and "ValueError" in text

        # The events arrived over the live stream, the failure among them.
        events = d.page.locator("#events tr")
        await events.filter(has_text="disk full on attempt 2").first.wait_for()
        await d.page.locator('#events tr[data-kind="FLOW"]').filter(has_text="REVERTED").wait_for()


async def test_cancel_from_the_flow_page_reverts_a_running_flow(
    browser_ready: None, tmp_path: Path
) -> None:
    async with dashboard(tmp_path) as d:
        handle = await d.engine.start("gated")
        await reached("quarter").wait()
        await d.open(f"#/flows/{handle.flow_id}")
        await d.page.locator('#graph g.atom[data-atom="crunch"].state-RUNNING').wait_for()
        await d.page.click("#cancel")
        await status_is(d.engine, handle.flow_id, FlowStatus.REVERTED)
        await d.page.locator("#action-result.ok").wait_for()
        await d.page.locator('h1 .badge[data-status="REVERTED"]').wait_for()
        await d.page.locator("#flow-failures").filter(has_text="FlowCancelledError").wait_for()
        assert await d.page.locator("#cancel").is_disabled()


async def test_revert_to_and_resume_from_the_flow_page(browser_ready: None, tmp_path: Path) -> None:
    async with dashboard(tmp_path) as d:
        outcome = await d.engine.run("steps", stop_at="two")
        assert outcome.status is FlowStatus.SUSPENDED
        await d.open(f"#/flows/{outcome.flow_id}")
        await d.page.locator('#graph g.atom[data-atom="hello"].state-SUCCESS').wait_for()
        assert await d.page.locator("#checkpoint option").all_inner_texts() == ["one", "two"]

        await d.page.select_option("#checkpoint", "one")
        await d.page.click("#revert-to")
        await d.page.locator("#action-result.ok").wait_for()
        # Reverted, and ready to run again from "one".
        events = d.page.locator('#events tr[data-kind="ATOM"][data-atom="hello"]')
        await events.filter(has_text="REVERTED").wait_for()
        await d.page.locator('#graph g.atom[data-atom="hello"].state-PENDING').wait_for()

        await d.page.click("#resume")
        await status_is(d.engine, outcome.flow_id, FlowStatus.SUCCESS)
        await d.page.locator('h1 .badge[data-status="SUCCESS"]').wait_for()
        await d.page.locator('#graph g.atom[data-atom="fetch"].state-SUCCESS').wait_for()


async def test_a_message_sent_from_the_flow_page_is_received(
    browser_ready: None, tmp_path: Path
) -> None:
    async with dashboard(tmp_path) as d:
        flow_id = (await d.engine.start("inbox")).flow_id
        await status_is(d.engine, flow_id, FlowStatus.WAITING)
        await d.open(f"#/flows/{flow_id}")
        await d.page.locator('#atoms tr[data-atom="approval"][data-state="WAITING"]').wait_for()

        await d.page.fill("#message", "{not json")
        await d.page.fill("#topic", "approved")
        await d.page.click("#send")
        await d.page.locator("#action-result.failed").filter(has_text="not JSON").wait_for()

        await d.page.fill("#message", json.dumps({"by": "ann <admin>"}))
        await d.page.click("#send")
        await status_is(d.engine, flow_id, FlowStatus.SUCCESS)
        await d.page.locator('h1 .badge[data-status="SUCCESS"]').wait_for()
        await d.page.locator("#results pre").filter(has_text="ann <admin>").wait_for()


async def test_open_waits_are_shown_without_their_token(
    browser_ready: None, tmp_path: Path
) -> None:
    async with dashboard(tmp_path) as d:
        flow_id = (await d.engine.start("approval", {"doc": "d-7"})).flow_id
        await status_is(d.engine, flow_id, FlowStatus.WAITING)
        await d.open(f"#/flows/{flow_id}")
        wait = d.page.locator('#waits tr[data-atom="ask"]')
        await wait.filter(has_text='"doc": "d-7"').wait_for()
        await d.page.locator('#events tr[data-kind="FLOW"]').filter(has_text="WAITING").wait_for()
        [token] = ext.TOKENS
        html = await d.page.content()
        assert token not in html and token.split(".")[-1] not in html


# Jobs -----------------------------------------------------------------------------------


async def test_the_jobs_page_shows_dead_letters_and_retries_them(
    browser_ready: None, tmp_path: Path
) -> None:
    async with dashboard(tmp_path) as d:
        failure = aioflow.Failure.from_exception(ValueError("disk full on attempt 2"))
        dead_letter = await d.board.post("quick", {}, name="lost")  # its conductors died
        claimed = await d.board.claim("conductor-1", lease=60)
        assert claimed is not None and claimed.id == dead_letter.id
        await d.board.finish(claimed, JobState.FAILED, None, {"<conductor>": failure})
        reverted = await d.board.post("shapes", {}, name="reverted")  # its flow failed
        claimed = await d.board.claim("conductor-1", lease=60)
        assert claimed is not None and claimed.id == reverted.id
        await d.board.finish(claimed, JobState.FAILED, FlowStatus.REVERTED, {"flaky": failure})
        waiting = await d.board.post("quick", {}, name="queued")

        await d.open("#/jobs")
        letters = d.page.locator("#dead-letters article")
        for job in (dead_letter, reverted):
            letter = letters.and_(d.page.locator(f'[data-job-id="{job.id}"]'))
            await letter.filter(has_text="ValueError: disk full on attempt 2").wait_for()
        assert await letters.count() == 2
        queued = d.page.locator(f'#jobs tr[data-job-id="{waiting.id}"][data-state="UNCLAIMED"]')
        await queued.wait_for()

        # A dead letter goes back to the queue under its own id...
        letter = letters.and_(d.page.locator(f'[data-job-id="{dead_letter.id}"]'))
        await letter.get_by_role("button", name="Retry").click()
        await d.page.locator("#job-result.ok").filter(has_text="UNCLAIMED").wait_for()
        await letter.wait_for(state="detached")
        assert (await d.board.get(dead_letter.id)).state is JobState.UNCLAIMED
        # ...a job whose flow was reverted is posted again as a new job.
        letter = letters.and_(d.page.locator(f'[data-job-id="{reverted.id}"]'))
        await letter.get_by_role("button", name="Retry").click()
        result = d.page.locator("#job-result.ok").filter(has_text="as a new job")
        await result.wait_for()
        new_id = await result.locator("a").inner_text()
        await d.page.locator(f'#jobs tr[data-job-id="{new_id}"][data-state="UNCLAIMED"]').wait_for()

        await queued.locator("button.cancel").click()
        await d.page.locator("#job-result.ok").filter(has_text=f"cancel {waiting.id}").wait_for()
        assert (await d.board.get(waiting.id)).state is JobState.FAILED
        await letters.and_(d.page.locator(f'[data-job-id="{waiting.id}"]')).wait_for()


async def test_without_a_board_the_jobs_page_says_so(browser_ready: None, tmp_path: Path) -> None:
    async with dashboard(tmp_path, board=False) as d:
        await d.open("#/jobs")
        await d.page.locator(".problem").filter(has_text="board=").wait_for()


# Auth -----------------------------------------------------------------------------------


async def test_without_auth_the_actions_are_disabled_with_the_reason(
    browser_ready: None, tmp_path: Path
) -> None:
    async with dashboard(tmp_path, public=False) as d:
        outcome = await d.engine.run("steps", stop_at="two")
        await d.open()
        banner = d.page.locator("#auth")
        await banner.filter(has_text="401").wait_for()
        assert "public=True" in await banner.inner_text()
        await d.row(outcome.flow_id).wait_for()  # reading still works

        await d.open(f"#/flows/{outcome.flow_id}")
        await d.page.locator('h1 .badge[data-status="SUSPENDED"]').wait_for()
        for button in ["#cancel", "#resume", "#revert-to", "#goto", "#send"]:
            assert await d.page.locator(button).is_disabled(), button
            assert "401" in (await d.page.locator(button).get_attribute("title") or "")
        assert "401" in await d.page.locator("#actions-denied").inner_text()
