"""The run kernel's rooms, seen from outside: a run holds its workers, its reverter and
its waits as components, and its graph can grow while it runs (what a fan-out decided at
run time builds on)."""

from __future__ import annotations

import pytest

import aioflow
from aioflow import FlowStatus, Linear
from aioflow._compile import TASK, Node
from aioflow._kernel import Run
from aioflow._kernel.reverting import Reverter
from aioflow._kernel.waits import Waits
from aioflow._kernel.workers import Workers

pytestmark = pytest.mark.anyio


@aioflow.task(provides="x")
async def first() -> int:
    return 20


@aioflow.task(provides="y")
async def second(x: int) -> int:
    return x + 1


@aioflow.task(provides="z")
async def third(x: int) -> int:
    return x + 2


def appended(run: Run, task: aioflow.Task, name: str, after: str) -> Node:
    provider = run.graph.index[after]
    (needs,) = task.requires
    return Node(
        index=len(run.graph.nodes),
        name=name,
        kind=TASK,
        preds=(provider,),
        task=task,
        args=((needs.param, provider, needs.symbol),),
        provides=tuple(task.provides),
    )


async def test_a_run_is_made_of_rooms() -> None:
    async with aioflow.Engine() as engine:
        run, _ = engine._prepare(Linear("f", first), {}, None, None)
    assert isinstance(run.workers, Workers) and run.workers.run is run
    assert isinstance(run.reverter, Reverter) and run.reverter.run is run
    assert isinstance(run.waits, Waits) and run.waits.run is run


async def test_a_run_grows_by_appending_nodes_and_runs_them() -> None:
    flow = Linear("f", first)
    async with aioflow.Engine() as engine:
        run, start = engine._prepare(flow, {}, None, None)
        shared = run.graph
        run.grow([appended(run, second, "second", after="first")])
        run.grow([appended(run, third, "third", after="first")])
        assert run.graph is not shared and len(shared.nodes) == 1  # others' graph untouched
        assert [n.name for n in run.graph.nodes] == ["first", "second", "third"]
        with engine._holding(run.flow_id):
            await engine._begin(run, start, check=False)
            outcome = await engine._drive(run)
    assert outcome.status is FlowStatus.SUCCESS
    assert outcome.atoms["second"].result == 21
    assert outcome.atoms["third"].result == 22


async def test_growing_refuses_a_node_out_of_place() -> None:
    async with aioflow.Engine() as engine:
        run, _ = engine._prepare(Linear("f", first), {}, None, None)
    node = appended(run, second, "second", after="first")
    with pytest.raises(ValueError, match="cannot be appended"):
        run.grow([Node(**{**_fields(node), "index": 5})])
    with pytest.raises(ValueError, match="has a node of that name"):
        run.grow([Node(**{**_fields(node), "name": "first"})])
    with pytest.raises(ValueError, match="predecessor 7 is not in the graph"):
        run.grow([Node(**{**_fields(node), "preds": (7,)})])


def _fields(node: Node) -> dict[str, object]:
    return {f: getattr(node, f) for f in node.__dataclass_fields__}
