"""Cancellation and resumption against a SQLite journal: a cancelled or interrupted flow
is SUSPENDED, and a new engine on the same file finishes it without redoing work."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

import aioflow
from aioflow import AtomState, EventKind, FlowStatus
from aioflow._replay import replay

RUNS: Counter[str] = Counter()
"""How often each task's code ran (execute under its name, revert under ``undo_<name>``)."""

GATES: dict[str, Gate] = {}
"""Gates the tasks pass through when a test set one (by task name)."""


class Boom(Exception):
    """The failure the tests inject."""


@dataclass
class Gate:
    """Holds a task until the test says go, and tells the test the task got there."""

    reached: anyio.Event
    go: anyio.Event

    @classmethod
    def new(cls) -> Gate:
        return cls(anyio.Event(), anyio.Event())

    async def pass_(self) -> None:
        self.reached.set()
        await self.go.wait()


async def gate(name: str) -> None:
    held = GATES.get(name)
    if held is not None:
        await held.pass_()


@pytest.fixture(autouse=True)
def fresh_counters() -> Iterator[None]:
    RUNS.clear()
    GATES.clear()
    yield
    GATES.clear()


@aioflow.task(provides="x")
async def step_a(seed: int) -> int:
    RUNS["step_a"] += 1
    return seed + 1


@aioflow.task(provides="y")
async def step_b(x: int, progress: aioflow.Progress) -> int:
    RUNS["step_b"] += 1
    progress(0.5, stage="halfway")
    await gate("step_b")
    return x * 10


@aioflow.task(provides="z")
async def step_c(y: int) -> int:
    RUNS["step_c"] += 1
    return y + 1


def make_flow(*, c: aioflow.Task = step_c, extra: tuple[aioflow.Task, ...] = ()) -> aioflow.Linear:
    return aioflow.Linear("resumable", step_a, step_b, aioflow.Checkpoint("after_b"), c, *extra)


async def interrupt_at_step_b(url: str, flow_id: str = "interrupted") -> str:
    """Run the flow in an engine and cancel the caller while ``step_b`` is running."""
    held = GATES["step_b"] = Gate.new()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def cancel_when_held() -> None:
                await held.reached.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_when_held)
            await aioflow.Engine(url).run(make_flow(), {"seed": 1}, flow_id=flow_id)
            pytest.fail("the run should have been cancelled")
    del GATES["step_b"]
    return flow_id


async def journal_state(url: str, flow_id: str) -> Any:
    return replay(flow_id, await aioflow.Engine(url).journal.load(flow_id))


# ------------------------------------------------------------------------- cancelling


async def test_cancelling_the_caller_leaves_the_flow_suspended(sqlite_url: str) -> None:
    flow_id = await interrupt_at_step_b(sqlite_url)

    [summary] = await aioflow.Engine(sqlite_url).journal.flows()
    assert summary.flow_id == flow_id
    assert summary.status is FlowStatus.SUSPENDED
    state = await journal_state(sqlite_url, flow_id)
    assert state.status is FlowStatus.SUSPENDED
    assert state.atoms["step_a"].state is AtomState.SUCCESS
    assert state.atoms["step_b"].state is AtomState.PENDING
    assert "step_c" not in state.atoms


async def test_move_on_after_cancels_running_atoms_and_suspends(sqlite_url: str) -> None:
    GATES["step_b"] = Gate.new()  # never opened: step_b waits until cancelled

    with anyio.move_on_after(0.2) as scope:
        await aioflow.Engine(sqlite_url).run(make_flow(), {"seed": 1}, flow_id="timed-out")

    assert scope.cancelled_caught
    assert (await journal_state(sqlite_url, "timed-out")).status is FlowStatus.SUSPENDED


async def test_resume_in_a_new_engine_finishes_without_redoing_finished_atoms(
    sqlite_url: str,
) -> None:
    flow_id = await interrupt_at_step_b(sqlite_url)
    seen: list[aioflow.Event] = []

    outcome = await aioflow.Engine(sqlite_url, listeners=[seen.append]).resume(flow_id, make_flow())

    assert outcome.status is FlowStatus.SUCCESS
    assert (outcome["x"], outcome["y"], outcome["z"]) == (2, 20, 21)
    assert RUNS == {"step_a": 1, "step_b": 2, "step_c": 1}
    assert outcome.atoms["step_b"].progress == 1.0
    b_events = [e for e in seen if e.atom == "step_b"]
    assert (b_events[0].kind, b_events[0].state) == (EventKind.ATOM, AtomState.RUNNING)
    assert b_events[0].progress == 0.0
    assert [e.progress for e in b_events if e.kind is EventKind.PROGRESS] == [0.5]


async def test_interrupted_atom_restarts_from_zero_progress(sqlite_url: str) -> None:
    flow_id = await interrupt_at_step_b(sqlite_url)

    progress = await aioflow.Engine(sqlite_url).progress(flow_id)

    assert progress.atoms["step_b"].fraction == 0.0
    assert progress.atoms["step_a"].fraction == 1.0


async def test_flow_crashed_in_the_middle_resumes(sqlite_url: str, tmp_path: Any) -> None:
    flow_id = await interrupt_at_step_b(sqlite_url)
    events = await aioflow.Engine(sqlite_url).journal.load(flow_id)
    # What a process that died while step_b ran leaves behind: the log up to that point.
    cut = next(
        i for i, e in enumerate(events) if e.atom == "step_b" and e.state is AtomState.RUNNING
    )
    crashed_url = f"sqlite:///{tmp_path}/crashed.db"
    async with aioflow.open_journal(crashed_url) as journal:
        for event in events[: cut + 1]:
            journal.append(event)
    crashed = await journal_state(crashed_url, flow_id)
    assert crashed.status is FlowStatus.RUNNING
    assert crashed.atoms["step_b"].state is AtomState.RUNNING
    RUNS.clear()

    outcome = await aioflow.Engine(crashed_url).resume(flow_id, make_flow())

    assert outcome.status is FlowStatus.SUCCESS
    assert outcome["z"] == 21
    assert RUNS == {"step_b": 1, "step_c": 1}


# --------------------------------------------------------------------------- reverting


@aioflow.task(provides="made")
async def make_thing() -> str:
    RUNS["make_thing"] += 1
    return "thing"


@make_thing.revert
async def undo_make_thing(result: object) -> None:
    await gate("undo_make_thing")
    RUNS["undo_make_thing"] += 1


@aioflow.task
async def explode(made: str) -> None:
    RUNS["explode"] += 1
    raise Boom(f"cannot use {made}")


@explode.revert
async def undo_explode() -> None:
    RUNS["undo_explode"] += 1


async def test_resuming_a_flow_that_was_reverting_goes_on_reverting(sqlite_url: str) -> None:
    flow = aioflow.Linear("reverting", make_thing, explode)
    held = GATES["undo_make_thing"] = Gate.new()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def cancel_when_held() -> None:
                await held.reached.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_when_held)
            await aioflow.Engine(sqlite_url).run(flow, flow_id="half-reverted")
    del GATES["undo_make_thing"]
    state = await journal_state(sqlite_url, "half-reverted")
    assert state.status is FlowStatus.SUSPENDED
    assert state.atoms["explode"].state is AtomState.REVERTED
    assert state.atoms["make_thing"].state is AtomState.REVERTING

    with anyio.fail_after(5), pytest.raises(aioflow.FlowFailedError) as info:
        await aioflow.Engine(sqlite_url).resume("half-reverted", flow)

    outcome = info.value.outcome
    assert outcome.status is FlowStatus.REVERTED
    assert outcome.atoms["make_thing"].state is AtomState.REVERTED
    assert info.value.failures["explode"].matches(Boom)
    assert RUNS == {"make_thing": 1, "explode": 1, "undo_explode": 1, "undo_make_thing": 1}


# ----------------------------------------------------------------------- flow mismatch


async def suspended_at_checkpoint(url: str) -> str:
    outcome = await aioflow.Engine(url).run(make_flow(), {"seed": 1}, stop_at="after_b")
    assert outcome.status is FlowStatus.SUSPENDED
    return outcome.flow_id


@aioflow.task
async def extra_step() -> None:
    RUNS["extra_step"] += 1


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        pytest.param(
            lambda: aioflow.Linear(
                "resumable",
                step_a,
                step_b.using(name="step_b_renamed"),
                aioflow.Checkpoint("after_b"),
                step_c,
            ),
            "step_b_renamed",
            id="renamed-task",
        ),
        pytest.param(lambda: make_flow(extra=(extra_step,)), "extra_step", id="extra-task"),
        pytest.param(lambda: make_flow(c=step_c.using(provides="w")), "step_c", id="provides"),
        # provides=("z",) unpacks a one-item result where provides="z" keeps it whole.
        pytest.param(
            lambda: make_flow(c=step_c.using(provides=("z",))), "(unpacked)", id="unpacking"
        ),
    ],
)
async def test_resuming_with_a_different_structure_is_refused(
    sqlite_url: str, changed: Any, named: str
) -> None:
    flow_id = await suspended_at_checkpoint(sqlite_url)

    with pytest.raises(aioflow.FlowMismatchError) as info:
        await aioflow.Engine(sqlite_url).resume(flow_id, changed())

    assert info.value.flow_id == flow_id
    assert any(named in line for line in info.value.differences), info.value.differences
    assert RUNS["step_c"] == 0
    assert RUNS["extra_step"] == 0
    assert (await journal_state(sqlite_url, flow_id)).status is FlowStatus.SUSPENDED


async def test_resuming_with_changed_task_code_is_allowed(sqlite_url: str) -> None:
    flow_id = await suspended_at_checkpoint(sqlite_url)

    @aioflow.task(name="step_c", provides="z")
    async def fixed_step_c(y: int) -> int:
        return y + 100

    outcome = await aioflow.Engine(sqlite_url).resume(flow_id, make_flow(c=fixed_step_c))

    assert outcome.status is FlowStatus.SUCCESS
    assert outcome["z"] == 120
    assert RUNS == {"step_a": 1, "step_b": 1}


# ---------------------------------------------------------------------- resume errors


async def test_resume_without_the_flow_object_asks_for_it(sqlite_url: str) -> None:
    flow_id = await suspended_at_checkpoint(sqlite_url)

    with pytest.raises(aioflow.AioflowError, match="pass the flow"):
        await aioflow.Engine(sqlite_url).resume(flow_id)


async def test_resume_of_an_unknown_flow_raises_not_found(sqlite_url: str) -> None:
    await suspended_at_checkpoint(sqlite_url)

    with pytest.raises(aioflow.NotFoundError, match="no-such-flow"):
        await aioflow.Engine(sqlite_url).resume("no-such-flow", make_flow())


# ------------------------------------------------------------------------ checkpoints


async def test_flow_stopped_at_a_checkpoint_resumes_to_success(sqlite_url: str) -> None:
    stopped = await aioflow.Engine(sqlite_url).run(make_flow(), {"seed": 1}, stop_at="after_b")

    assert stopped.status is FlowStatus.SUSPENDED
    assert stopped.checkpoint == "after_b"
    assert stopped.atoms["step_c"].state is AtomState.PENDING
    assert RUNS == {"step_a": 1, "step_b": 1}

    outcome = await aioflow.Engine(sqlite_url).resume(stopped.flow_id, make_flow())

    assert outcome.status is FlowStatus.SUCCESS
    assert (outcome["x"], outcome["y"], outcome["z"]) == (2, 20, 21)
    assert RUNS == {"step_a": 1, "step_b": 1, "step_c": 1}
