"""How a :class:`~aioflow.Map` is shown: as one node in ``aioflow graph`` (Mermaid and
dot), and on the dashboard's flow page, where its node counts its copies and fills a bar
as they finish, and the atoms table lists the copies after the Map.

The browser tests use the harness of :mod:`tests.test_dashboard` (the distribution's
Chromium, a real uvicorn over SQLite) and are skipped the same way without a browser.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import aioflow
from aioflow import FlowStatus
from aioflow._compile import compile_flow
from aioflow.cli import render_graph
from tests.test_cli import aioflow_cmd
from tests.test_dashboard import WAIT_MS, browser_ready, dashboard, status_is

__all__ = ["browser_ready"]  # a fixture, used by name

TIMES = "\u00d7"
"""The multiplication sign of the Map node's label (``thumbs \u00d75``)."""

# Flows ----------------------------------------------------------------------------------

GATE: dict[str, anyio.Event] = {}


def gate() -> anyio.Event:
    return GATE.setdefault("more", anyio.Event())


@pytest.fixture(autouse=True)
def _reset() -> None:
    GATE.clear()


@aioflow.task(provides="images")
async def list_images(n: int) -> list[int]:
    return list(range(n))


@aioflow.task(provides="thumb")
async def resize(image: int) -> int:
    return image * 10


@aioflow.task(provides="thumb")
async def resize_some(image: int) -> int:
    """The first two copies finish at once, the others when the test lets them."""
    if image >= 2:
        await gate().wait()
    return image * 10


@aioflow.task(provides="plus")
async def plus(thumb: int) -> int:
    return thumb + 1


@aioflow.task
async def report(thumbs: list[int]) -> None:
    pass


def album_flow() -> aioflow.Linear:
    """``list_images`` -> Map ``thumbs`` of ``resize`` over ``images`` -> ``report``."""
    return aioflow.Linear(
        "album",
        list_images,
        aioflow.Map("thumbs", resize, over="images", item="image", provides="thumbs"),
        report,
    )


# aioflow graph --------------------------------------------------------------------------


def labels(text: str) -> dict[str, str]:
    """Mermaid node id -> its label."""
    return {
        line.split("[")[0].strip(): line.split('"')[1] for line in text.splitlines() if '"' in line
    }


def test_a_map_is_one_node_in_mermaid_with_edges_in_and_out() -> None:
    text = render_graph(compile_flow(album_flow(), ["n"]), "mermaid")
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    names = labels(text)
    assert sorted(names.values()) == [
        "list_images",
        "report",
        "thumbs [map resize over images]",
    ]
    # A subroutine box, and nothing of the member nor of the collector.
    assert any(line.strip().endswith('[["thumbs [map resize over images]"]]') for line in lines)
    assert "<collect" not in text
    edges = sorted(
        f"{names[a]} -> {names[b]}" for a, _, b in (line.split() for line in lines if "-->" in line)
    )
    assert edges == [
        "list_images -> thumbs [map resize over images]",
        "thumbs [map resize over images] -> report",
    ]


def test_a_map_of_a_flow_in_a_graph_is_one_node_in_dot() -> None:
    item = aioflow.Linear("item", resize, plus)
    mapped = aioflow.Map("each", item, over="images", item="image", provides="plusses")

    @aioflow.task
    async def audit(plusses: list[int]) -> None:
        pass

    @aioflow.task
    async def aside() -> None:
        pass

    flow = aioflow.Graph("g", list_images, mapped, audit, aside).link(aside, audit)
    text = render_graph(compile_flow(flow, ["n"]), "dot")
    assert text.startswith('digraph "g" {')
    assert 'label="each [map item over images]", shape=box3d' in text
    for inner in ("resize", "plus", "<collect"):
        assert f'label="{inner}"' not in text
    ids = {line.split()[0]: line.split('"')[1] for line in text.splitlines() if "label=" in line}
    edges = sorted(
        f"{ids[a]} -> {ids[b.rstrip(';')]}"
        for a, _, b in (line.split() for line in text.splitlines() if "->" in line)
    )
    assert edges == [
        "aside -> audit",
        "each [map item over images] -> audit",
        "list_images -> each [map item over images]",
    ]


@pytest.mark.slow
def test_graph_command_draws_a_map() -> None:
    mermaid = aioflow_cmd("graph", "tests.test_map_views:album_flow")
    assert mermaid.returncode == 0, mermaid.stderr
    assert '[["thumbs [map resize over images]"]]' in mermaid.stdout
    assert mermaid.stdout.count("-->") == 2

    dot = aioflow_cmd("graph", "tests.test_map_views:album_flow", "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    assert 'label="thumbs [map resize over images]", shape=box3d' in dot.stdout
    assert dot.stdout.count("->") == 2


# The dashboard --------------------------------------------------------------------------


async def test_the_flow_page_draws_a_map_with_its_copies(
    browser_ready: None, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    async with dashboard(tmp_path) as d:
        handle = await d.engine.start(album_flow(), {"n": 5})
        outcome = await handle.wait()
        assert outcome.status is FlowStatus.SUCCESS
        await d.open(f"#/flows/{handle.flow_id}")

        graph = d.page.locator("#graph svg")
        await graph.wait_for()
        node = graph.locator('g.atom[data-atom="thumbs"]')
        await expect(node).to_have_attribute("data-copies", "5", timeout=WAIT_MS)
        assert await node.get_attribute("data-kind") == "map"
        await expect(node.locator("text")).to_have_text(f"thumbs {TIMES}5", timeout=WAIT_MS)
        await graph.locator('g.atom[data-atom="thumbs"].state-SUCCESS').wait_for()
        assert "5 of 5 copies finished" in await node.locator("title").text_content()
        # One node: no copy and nothing of the member is drawn.
        assert await graph.locator("g.atom").count() == 3
        assert await graph.locator("path.edge").count() == 2

        # The atoms table: the Map, then its copies in order, then what follows.
        rows = d.page.locator("#atoms tr")
        await expect(rows).to_have_count(8, timeout=WAIT_MS)
        assert [await r.get_attribute("data-atom") for r in await rows.all()] == [
            "list_images",
            "thumbs",
            *[f"thumbs[{i}]" for i in range(5)],
            "report",
        ]


async def test_the_map_node_fills_as_its_copies_finish(browser_ready: None, tmp_path: Path) -> None:
    from playwright.async_api import expect

    flow = aioflow.Linear(
        "album",
        list_images,
        aioflow.Map("thumbs", resize_some, over="images", item="image", provides="thumbs"),
        report,
    )
    async with dashboard(tmp_path) as d:
        handle = await d.engine.start(flow, {"n": 5})
        await d.open(f"#/flows/{handle.flow_id}")
        node = d.page.locator('#graph g.atom[data-atom="thumbs"]')
        await node.wait_for()
        # Two copies done, three held: the node runs, its bar at 2/5 of its width.
        title = node.locator("title")
        await expect(title).to_contain_text("2 of 5 copies finished", timeout=WAIT_MS)
        await expect(node).to_have_attribute("data-state", "RUNNING", timeout=WAIT_MS)
        await expect(node.locator("text")).to_have_text(f"thumbs {TIMES}5", timeout=WAIT_MS)
        bar = float(await node.locator("rect.meter").get_attribute("width") or 0)
        front = float(await node.locator("rect.shape:not(.behind)").get_attribute("width") or 0)
        assert bar == pytest.approx((front - 2) * 2 / 5)
        await expect(d.page.locator('#atoms tr[data-atom="thumbs[4]"]')).to_have_attribute(
            "data-state", "RUNNING", timeout=WAIT_MS
        )

        gate().set()
        await status_is(d.engine, handle.flow_id, FlowStatus.SUCCESS)
        await expect(node).to_have_attribute("data-state", "SUCCESS", timeout=WAIT_MS)
        await expect(title).to_contain_text("5 of 5 copies finished", timeout=WAIT_MS)
        assert await node.locator("rect.meter").get_attribute("width") == "0"


@pytest.mark.slow
def test_show_lists_the_copies_and_the_map_s_count(tmp_path: Path) -> None:
    import json

    journal = f"sqlite:///{tmp_path / 'album.db'}"

    async def run_album() -> str:
        from examples.album import make_album

        album_dir = tmp_path / "album"
        album_dir.mkdir()
        for n in range(3):
            (album_dir / f"p{n}.img").write_bytes(b"x" * 100)
        async with aioflow.Engine(journal) as engine:
            outcome = await engine.run(make_album(), {"album_dir": str(album_dir)})
        return outcome.flow_id

    flow_id = anyio.run(run_album)
    shown = aioflow_cmd("show", flow_id, "--json", "--journal", journal)
    assert shown.returncode == 0, shown.stderr
    atoms = {a["name"]: a for a in json.loads(shown.stdout)["atoms"]}
    assert atoms["thumbs"]["kind"] == "map" and atoms["thumbs"]["details"] == {"copies": 3}
    assert [n for n in atoms if n.startswith("thumbs[")] == ["thumbs[0]", "thumbs[1]", "thumbs[2]"]
