"""``Engine.progress`` of a flow that has finished: read once, then kept until the flow's
journal grows, and always the same report a fresh engine would read back."""

from __future__ import annotations

import math

import pytest

import aioflow
from aioflow import EventKind, FlowStatus


@aioflow.task
def step(x: int = 1) -> int:
    return x


@aioflow.task
def breaks() -> None:
    raise RuntimeError("no")


def _flow(name: str = "settled") -> aioflow.Flow:
    return aioflow.Unordered(name, *[step.using(name=f"s{i}") for i in range(5)])


async def test_a_finished_flow_reads_the_same_report_cached_and_fresh(sqlite_url: str) -> None:
    async with aioflow.Engine(sqlite_url) as engine:
        outcome = await engine.run(_flow())
        first = await engine.progress(outcome.flow_id)
        second = await engine.progress(outcome.flow_id)
    async with aioflow.Engine(sqlite_url) as fresh:
        cold = await fresh.progress(outcome.flow_id)
    assert first == second == cold
    assert first.status == FlowStatus.SUCCESS.value
    assert first.fraction == 1.0
    assert first.eta == 0.0


async def test_a_failed_flow_is_reported_the_same_cached_and_fresh(sqlite_url: str) -> None:
    with pytest.raises(aioflow.FlowFailedError):
        await _fail(sqlite_url)
    async with aioflow.Engine(sqlite_url) as engine:
        first = await engine.progress("f")
        second = await engine.progress("f")
    async with aioflow.Engine(sqlite_url) as fresh:
        assert await fresh.progress("f") == first == second
    assert FlowStatus(first.status).is_final
    assert first.status != FlowStatus.SUCCESS.value


async def _fail(sqlite_url: str) -> None:
    flow = aioflow.Linear("fails", step.using(name="ok"), breaks)
    async with aioflow.Engine(sqlite_url) as engine:
        await engine.run(flow, flow_id="f")


async def test_an_event_appended_after_the_end_is_seen_by_the_next_call() -> None:
    journal = aioflow.open_journal("memory://")
    async with aioflow.Engine(journal) as engine:
        outcome = await engine.run(_flow())
        before = await engine.progress(outcome.flow_id)
        assert before.atoms["s0"].fraction == 1.0
        last = (await journal.load(outcome.flow_id))[-1]
        journal.append(
            aioflow.Event(
                outcome.flow_id, last.seq + 1, last.time, EventKind.PROGRESS, "s0", progress=0.5
            )
        )
        after = await engine.progress(outcome.flow_id)
        assert after.atoms["s0"].fraction == 0.5
        assert math.isclose(after.fraction, 0.9)
        assert await engine.progress(outcome.flow_id) == after


async def test_changing_a_returned_report_does_not_change_the_next_one() -> None:
    async with aioflow.Engine() as engine:
        outcome = await engine.run(_flow())
        report = await engine.progress(outcome.flow_id)
        report.atoms.clear()  # type: ignore[attr-defined]
        again = await engine.progress(outcome.flow_id)
    assert sorted(again.atoms) == [f"s{i}" for i in range(5)]
