"""Failure semantics (TaskFlow's): when an atom fails nothing new starts, what is running
finishes, and everything that ran is reverted, dependents before their dependencies."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import aioflow
from aioflow import AtomState, FlowStatus


class Boom(Exception):
    """The failure the tests inject."""


class Recorder:
    """Makes tasks that log their executions and reverts (with what revert received)."""

    def __init__(self) -> None:
        self.executed: list[str] = []
        self.reverted: list[str] = []
        self.revert_args: dict[str, dict[str, Any]] = {}

    def task(self, name: str, *, fail: bool = False) -> aioflow.Task:
        async def execute() -> str:
            self.executed.append(name)
            if fail:
                raise Boom(f"{name} failed")
            return f"{name}-result"

        async def revert(result: object, flow_failures: dict[str, aioflow.Failure]) -> None:
            self.reverted.append(name)
            self.revert_args[name] = {"result": result, "flow_failures": flow_failures}

        t = aioflow.task(name=name)(execute)
        t.revert(revert)
        return t


async def run_failing(flow: aioflow.Flow, **kwargs: Any) -> aioflow.FlowFailedError:
    with anyio.fail_after(5), pytest.raises(aioflow.FlowFailedError) as info:
        await aioflow.Engine().run(flow, **kwargs)
    return info.value


# ------------------------------------------------------------------ nothing new starts


async def test_nothing_after_the_failed_atom_runs_in_a_linear() -> None:
    rec = Recorder()
    flow = aioflow.Linear("lin", rec.task("a"), rec.task("b", fail=True), rec.task("c"))

    error = await run_failing(flow)

    assert rec.executed == ["a", "b"]
    assert error.outcome.atoms["c"].state is AtomState.PENDING
    assert "c" not in rec.reverted


async def test_running_sibling_finishes_and_is_then_reverted() -> None:
    rec = Recorder()
    failed = anyio.Event()
    slow_finished = False

    @aioflow.task
    async def fail_now() -> None:
        failed.set()
        raise Boom("fast failure")

    @aioflow.task(provides="slow_value")
    async def slow() -> str:
        nonlocal slow_finished
        await failed.wait()  # still running when its sibling fails
        await anyio.sleep(0)
        slow_finished = True
        return "slow-result"

    @slow.revert
    async def undo_slow(result: object) -> None:
        rec.reverted.append(f"slow:{result}")

    error = await run_failing(aioflow.Unordered("fan", fail_now, slow))

    assert slow_finished
    assert rec.reverted == ["slow:slow-result"]
    assert error.outcome.atoms["slow"].state is AtomState.REVERTED
    assert error.outcome.atoms["fail_now"].state is AtomState.REVERTED


# ------------------------------------------------------------------------ revert order


async def test_linear_reverts_newest_first_including_the_failed_atom() -> None:
    rec = Recorder()
    flow = aioflow.Linear(
        "lin",
        rec.task("a"),
        rec.task("b"),
        rec.task("c"),
        rec.task("d", fail=True),
        rec.task("e"),
    )

    error = await run_failing(flow)

    assert rec.reverted == ["d", "c", "b", "a"]
    assert rec.revert_args["c"]["result"] == "c-result"
    failure = rec.revert_args["d"]["result"]
    assert isinstance(failure, aioflow.Failure)
    assert failure.matches(Boom)
    assert failure.message == "d failed"
    assert error.outcome.status is FlowStatus.REVERTED
    for name in "abcd":
        assert error.outcome.atoms[name].state is AtomState.REVERTED
    assert error.outcome.atoms["e"].state is AtomState.PENDING


async def test_graph_reverts_dependents_before_their_dependencies() -> None:
    rec = Recorder()
    a, b, c, d = (rec.task(n) for n in "abcd")
    boom = rec.task("boom", fail=True)
    graph = (
        aioflow.Graph("g", a, b, c, d, boom)
        .link(a, b)
        .link(a, c)
        .link(b, d)
        .link(c, d)
        .link(d, boom)
    )

    await run_failing(graph)

    order = rec.reverted
    assert sorted(order) == ["a", "b", "boom", "c", "d"]
    position = {name: i for i, name in enumerate(order)}
    for before, after in [("boom", "d"), ("d", "b"), ("d", "c"), ("b", "a"), ("c", "a")]:
        assert position[before] < position[after], order


async def test_nested_flows_revert_newest_first() -> None:
    rec = Recorder()
    flow = aioflow.Linear(
        "root",
        rec.task("a"),
        aioflow.Linear("sub", rec.task("b"), aioflow.Linear("subsub", rec.task("c"))),
        rec.task("d", fail=True),
        aioflow.Linear("never", rec.task("e")),
    )

    error = await run_failing(flow)

    assert rec.executed == ["a", "b", "c", "d"]
    assert rec.reverted == ["d", "c", "b", "a"]
    assert error.outcome.atoms["e"].state is AtomState.PENDING


async def test_nested_unordered_reverts_before_what_came_before_it() -> None:
    rec = Recorder()
    flow = aioflow.Linear(
        "root",
        rec.task("first"),
        aioflow.Unordered("middle", rec.task("left"), rec.task("right")),
        rec.task("boom", fail=True),
    )

    await run_failing(flow)

    assert rec.reverted[0] == "boom"
    assert sorted(rec.reverted[1:3]) == ["left", "right"]
    assert rec.reverted[3] == "first"


async def test_independent_branches_revert_concurrently() -> None:
    arrived = 0
    both_reverting = anyio.Event()

    async def wait_for_the_other() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both_reverting.set()
        await both_reverting.wait()  # deadlocks if the reverts run one after the other

    @aioflow.task
    async def left() -> None:
        pass

    @left.revert
    async def undo_left() -> None:
        await wait_for_the_other()

    @aioflow.task
    async def right() -> None:
        pass

    @right.revert
    async def undo_right() -> None:
        await wait_for_the_other()

    @aioflow.task
    async def boom() -> None:
        raise Boom("after both branches")

    flow = aioflow.Linear("root", aioflow.Unordered("branches", left, right), boom)

    error = await run_failing(flow)

    assert arrived == 2
    assert error.outcome.status is FlowStatus.REVERTED


# ----------------------------------------------------------------- what is reverted


async def test_atoms_that_never_ran_are_not_reverted() -> None:
    rec = Recorder()
    flow = aioflow.Linear(
        "lin", rec.task("a", fail=True), rec.task("b"), aioflow.Unordered("u", rec.task("c"))
    )

    error = await run_failing(flow)

    assert rec.reverted == ["a"]
    assert error.outcome.atoms["b"].state is AtomState.PENDING
    assert error.outcome.atoms["c"].state is AtomState.PENDING
    assert error.outcome.atoms["b"].attempts == 0


async def test_revert_receives_flow_failures_by_atom_name() -> None:
    rec = Recorder()
    flow = aioflow.Linear("lin", rec.task("a"), rec.task("b", fail=True))

    await run_failing(flow)

    for name in ("a", "b"):
        failures = rec.revert_args[name]["flow_failures"]
        assert set(failures) == {"b"}
        assert isinstance(failures["b"], aioflow.Failure)
        assert failures["b"].matches(Boom)


# ------------------------------------------------------------------- FlowFailedError


async def test_flow_failed_error_reports_every_failed_atom_and_the_first_cause() -> None:
    raised: list[Exception] = []
    arrived = 0
    both_running = anyio.Event()

    def failing(name: str) -> aioflow.Task:
        async def execute() -> None:
            nonlocal arrived
            arrived += 1
            if arrived == 2:
                both_running.set()
            await both_running.wait()
            exc = Boom(f"{name} broke")
            raised.append(exc)
            raise exc

        return aioflow.task(name=name)(execute)

    flow = aioflow.Unordered("pair", failing("left"), failing("right"))

    error = await run_failing(flow)

    assert error.outcome.status is FlowStatus.REVERTED
    assert set(error.failures) == {"left", "right"}
    assert error.failures["left"].message == "left broke"
    assert error.failures["right"].message == "right broke"
    assert error.__cause__ is raised[0]
    assert isinstance(error, aioflow.AioflowError)


async def test_a_revert_that_raises_leaves_the_flow_failed() -> None:
    @aioflow.task
    async def stubborn() -> None:
        pass

    @stubborn.revert
    async def undo_stubborn() -> None:
        raise RuntimeError("cannot undo")

    @aioflow.task
    async def boom() -> None:
        raise Boom("boom")

    error = await run_failing(aioflow.Linear("lin", stubborn, boom))

    assert error.outcome.status is FlowStatus.FAILED
    assert error.outcome.atoms["stubborn"].state is AtomState.REVERT_FAILURE
    assert error.outcome.atoms["boom"].state is AtomState.REVERTED
    assert error.failures["stubborn"].matches(RuntimeError)
    assert error.failures["boom"].matches(Boom)
    assert isinstance(error.__cause__, Boom)
