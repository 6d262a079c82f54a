"""The Engine: running flows, their outcomes, background runs, progress and the codec."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

import aioflow
from aioflow import AtomState, FlowStatus

REFERENCE = "tests.flows_for_tests:make_flow"


@aioflow.task(provides="x")
async def make_x(seed: int) -> int:
    return seed + 1


@aioflow.task(provides="y")
async def make_y(x: int) -> int:
    return x * 10


def simple_flow() -> aioflow.Linear:
    return aioflow.Linear("simple", make_x, make_y)


class Opaque:
    """A value JSON has no form for, but pickle has."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.value == self.value

    __hash__ = None  # type: ignore[assignment]


@dataclass
class Gate:
    """Lets a test hold a task until it says go, and know when the task got there."""

    reached: anyio.Event
    go: anyio.Event

    @classmethod
    def new(cls) -> Gate:
        return cls(anyio.Event(), anyio.Event())

    async def pass_(self) -> None:
        self.reached.set()
        await self.go.wait()


# ------------------------------------------------------------------------- outcomes


async def test_run_returns_a_successful_outcome_with_results_and_atoms() -> None:
    outcome = await aioflow.Engine().run(simple_flow(), inputs={"seed": 1})

    assert outcome.status is FlowStatus.SUCCESS
    assert outcome["x"] == 2
    assert outcome["y"] == 20
    assert outcome["seed"] == 1
    assert isinstance(outcome.flow_id, str) and outcome.flow_id
    assert set(outcome.atoms) == {"make_x", "make_y"}
    for name, result in (("make_x", 2), ("make_y", 20)):
        atom = outcome.atoms[name]
        assert atom.state is AtomState.SUCCESS
        assert atom.result == result
        assert atom.progress == 1.0
        assert atom.attempts == 1


async def test_outcome_lookup_of_an_unknown_symbol_names_the_known_ones() -> None:
    outcome = await aioflow.Engine().run(simple_flow(), inputs={"seed": 1})

    with pytest.raises(KeyError) as info:
        outcome["nope"]
    message = str(info.value)
    assert "'nope'" in message
    for known in ("'seed'", "'x'", "'y'"):
        assert known in message


async def test_run_uses_the_given_flow_id() -> None:
    outcome = await aioflow.Engine().run(simple_flow(), inputs={"seed": 1}, flow_id="my-flow")

    assert outcome.flow_id == "my-flow"


# -------------------------------------------------------------------- engine lifecycle


async def test_engine_runs_flows_inside_async_with(journal_url: str) -> None:
    async with aioflow.Engine(journal_url) as engine:
        first = await engine.run(simple_flow(), inputs={"seed": 1})
        second = await engine.run(simple_flow(), inputs={"seed": 2})
        flows = await engine.journal.flows()

    assert (first["y"], second["y"]) == (20, 30)
    assert {f.flow_id for f in flows} == {first.flow_id, second.flow_id}
    assert all(f.status is FlowStatus.SUCCESS for f in flows)


async def test_engine_runs_flows_without_async_with(journal_url: str) -> None:
    engine = aioflow.Engine(journal_url)

    first = await engine.run(simple_flow(), inputs={"seed": 1})
    second = await engine.run(simple_flow(), inputs={"seed": 2})

    assert (first["y"], second["y"]) == (20, 30)
    flows = await engine.journal.flows()
    assert {f.flow_id for f in flows} == {first.flow_id, second.flow_id}


async def test_memory_journal_lives_as_long_as_the_engine_object() -> None:
    engine = aioflow.Engine("memory://")
    outcome = await engine.run(simple_flow(), inputs={"seed": 1})

    again = await engine.resume(outcome.flow_id, simple_flow())

    assert again.status is FlowStatus.SUCCESS
    assert again["y"] == 20
    assert [f.flow_id for f in await engine.journal.flows()] == [outcome.flow_id]


async def test_explicit_flow_id_that_already_exists_is_refused(journal_url: str) -> None:
    engine = aioflow.Engine(journal_url)
    await engine.run(simple_flow(), inputs={"seed": 1}, flow_id="taken")

    with pytest.raises(aioflow.AioflowError, match="taken"):
        await engine.run(simple_flow(), inputs={"seed": 2}, flow_id="taken")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"durability": "fast"}, ValueError),
        ({"max_concurrency": 0}, ValueError),
        ({"max_concurrency": -3}, ValueError),
        ({"listeners": [42]}, TypeError),
    ],
)
def test_invalid_engine_arguments_are_refused(kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        aioflow.Engine(**kwargs)


# ------------------------------------------------------------------------- concurrency


async def test_independent_branches_run_concurrently() -> None:
    arrived = 0
    everyone_here = anyio.Event()

    @aioflow.task
    async def meet() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 5:
            everyone_here.set()
        await everyone_here.wait()  # deadlocks unless all five run at once

    flow = aioflow.Unordered("fan", *(meet.using(name=f"meet{i}") for i in range(5)))

    with anyio.fail_after(5):
        outcome = await aioflow.Engine().run(flow)

    assert outcome.status is FlowStatus.SUCCESS
    assert arrived == 5


async def test_max_concurrency_bounds_how_many_tasks_run_at_once() -> None:
    inside = peak = 0

    @aioflow.task
    async def nap() -> None:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        await anyio.sleep(0.02)
        inside -= 1

    flow = aioflow.Unordered("naps", *(nap.using(name=f"nap{i}") for i in range(10)))

    outcome = await aioflow.Engine(max_concurrency=2).run(flow)

    assert outcome.status is FlowStatus.SUCCESS
    assert peak == 2


@pytest.mark.parametrize("durability", ["strict", "batched"])
async def test_durability_modes_give_the_same_results(sqlite_url: str, durability: str) -> None:
    @aioflow.task(provides="z")
    async def combine(x: int, y: int) -> int:
        return x + y

    flow = aioflow.Linear("chain", make_x, make_y, combine)

    async with aioflow.Engine(sqlite_url, durability=durability) as engine:  # type: ignore[arg-type]
        outcome = await engine.run(flow, inputs={"seed": 4})

    assert outcome.status is FlowStatus.SUCCESS
    assert (outcome["x"], outcome["y"], outcome["z"]) == (5, 50, 55)
    resumed = await aioflow.Engine(sqlite_url).resume(outcome.flow_id, flow)
    assert resumed.results == outcome.results


# -------------------------------------------------------------------- flow references


async def test_flow_given_by_reference_is_recorded_and_resumes_without_the_object(
    sqlite_url: str,
) -> None:
    first = await aioflow.Engine(sqlite_url).run(REFERENCE, {"number": 5}, stop_at="halfway")
    assert first.status is FlowStatus.SUSPENDED
    [summary] = await aioflow.Engine(sqlite_url).journal.flows()
    assert summary.ref == REFERENCE

    resumed = await aioflow.Engine(sqlite_url).resume(first.flow_id)

    assert resumed.status is FlowStatus.SUCCESS
    assert resumed["doubled"] == 10
    assert resumed["total"] == 11


@pytest.mark.parametrize(
    "reference",
    [
        "tests.no_such_module:make_flow",
        "tests.flows_for_tests:no_such_factory",
        "tests.flows_for_tests:NOT_A_FLOW",
        "tests.flows_for_tests:",
        "no_colon_and_no_registry",
    ],
)
async def test_bad_flow_reference_raises_not_found_naming_it(reference: str) -> None:
    with pytest.raises(aioflow.NotFoundError) as info:
        await aioflow.Engine().run(reference, {"number": 1})

    assert reference in str(info.value)


# ---------------------------------------------------------------- background runs


async def test_start_needs_an_entered_engine() -> None:
    engine = aioflow.Engine()

    with pytest.raises(aioflow.AioflowError, match="async with"):
        await engine.start(simple_flow(), {"seed": 1})


async def test_started_flow_reports_progress_and_its_handle_gives_the_outcome() -> None:
    gate = Gate.new()

    @aioflow.task(provides="held")
    async def hold(y: int) -> int:
        await gate.pass_()
        return y

    async with aioflow.Engine() as engine:
        handle = await engine.start(aioflow.Linear("bg", make_x, make_y, hold), {"seed": 1})
        with anyio.fail_after(5):
            await gate.reached.wait()
        progress = handle.progress
        assert isinstance(progress, aioflow.FlowProgress)
        assert progress.flow_id == handle.flow_id
        assert progress.status == FlowStatus.RUNNING.value
        assert progress.atoms["make_x"].fraction == 1.0
        assert progress.atoms["hold"].state == AtomState.RUNNING.value
        gate.go.set()
        with anyio.fail_after(5):
            outcome = await handle.wait()

    assert outcome.flow_id == handle.flow_id
    assert outcome.status is FlowStatus.SUCCESS
    assert outcome["held"] == 20
    assert handle.done


async def test_cancelled_handle_leaves_the_flow_suspended(journal_url: str) -> None:
    gate = Gate.new()

    @aioflow.task
    async def hold() -> None:
        await gate.pass_()

    async with aioflow.Engine(journal_url) as engine:
        handle = await engine.start(aioflow.Linear("bg", hold))
        with anyio.fail_after(5):
            await gate.reached.wait()
        handle.cancel()
        with anyio.fail_after(5), pytest.raises(anyio.get_cancelled_exc_class()):
            await handle.wait()
        [summary] = await engine.journal.flows()
        events = await engine.journal.load(handle.flow_id)

    assert summary.status is FlowStatus.SUSPENDED
    state = aioflow._replay.replay(handle.flow_id, events)
    assert state.status is FlowStatus.SUSPENDED
    assert state.atoms["hold"].state is AtomState.PENDING


# -------------------------------------------------------------------------- progress


@aioflow.task(weight=3)
async def heavy() -> None:
    pass


async def test_progress_of_a_live_flow_is_weighted() -> None:
    gate = Gate.new()

    @aioflow.task
    async def light() -> None:
        await gate.pass_()

    async with aioflow.Engine() as engine:
        handle = await engine.start(aioflow.Linear("weighted", heavy, light))
        with anyio.fail_after(5):
            await gate.reached.wait()
        live = await engine.progress(handle.flow_id)
        gate.go.set()
        with anyio.fail_after(5):
            await handle.wait()
        after = await engine.progress(handle.flow_id)

    assert live.fraction == pytest.approx(0.75)
    assert live.atoms["heavy"].weight == 3
    assert live.atoms["light"].fraction == 0.0
    assert after.status == FlowStatus.SUCCESS.value
    assert after.fraction == 1.0


async def test_progress_read_from_the_journal_is_weighted(journal_url: str) -> None:
    @aioflow.task
    async def light() -> None:
        pass

    flow = aioflow.Linear("weighted", heavy, aioflow.Checkpoint("after_heavy"), light)
    engine = aioflow.Engine(journal_url)
    stopped = await engine.run(flow, stop_at="after_heavy")

    progress = await engine.progress(stopped.flow_id)

    assert progress.status == FlowStatus.SUSPENDED.value
    assert progress.fraction == pytest.approx(0.75)
    assert progress.atoms["light"].fraction == 0.0

    await engine.resume(stopped.flow_id, flow)
    assert (await engine.progress(stopped.flow_id)).fraction == 1.0


async def test_progress_of_a_finished_flow_from_the_journal_is_complete(sqlite_url: str) -> None:
    outcome = await aioflow.Engine(sqlite_url).run(simple_flow(), {"seed": 1})

    progress = await aioflow.Engine(sqlite_url).progress(outcome.flow_id)

    assert progress.status == FlowStatus.SUCCESS.value
    assert progress.fraction == 1.0
    assert {name: a.fraction for name, a in progress.atoms.items()} == {
        "make_x": 1.0,
        "make_y": 1.0,
    }


# --------------------------------------------------------------------------- codecs


async def test_result_the_codec_cannot_store_fails_and_reverts_the_flow(journal_url: str) -> None:
    reverted: list[str] = []

    @aioflow.task(provides="first")
    async def fine() -> int:
        return 1

    @fine.revert
    async def undo_fine() -> None:
        reverted.append("fine")

    @aioflow.task(provides="junk")
    async def unstorable(first: int) -> object:
        return object()

    engine = aioflow.Engine(journal_url)
    with pytest.raises(aioflow.FlowFailedError) as info:
        await engine.run(aioflow.Linear("bad", fine, unstorable))

    error = info.value
    assert error.outcome.status is FlowStatus.REVERTED
    failure = error.failures["unstorable"]
    assert failure.matches(aioflow.SerializationError)
    assert "unstorable" in failure.message
    assert isinstance(error.__cause__, aioflow.SerializationError)
    assert error.__cause__.atom == "unstorable"
    assert reverted == ["fine"]
    states = [e.state async for e in engine.journal.events(error.flow_id) if e.atom == "unstorable"]
    assert AtomState.SUCCESS not in states
    assert states[:2] == [AtomState.RUNNING, AtomState.FAILURE]


async def test_inputs_the_codec_cannot_store_are_refused_before_anything_runs(
    journal_url: str,
) -> None:
    ran = Counter[str]()

    @aioflow.task
    async def use(thing: object) -> None:
        ran["use"] += 1

    engine = aioflow.Engine(journal_url)
    with pytest.raises(aioflow.SerializationError):
        await engine.run(aioflow.Linear("bad_inputs", use), {"thing": object()})

    assert ran["use"] == 0
    assert await engine.journal.flows() == []


async def test_pickle_codec_stores_what_json_cannot(sqlite_url: str) -> None:
    @aioflow.task(provides="thing")
    async def make_thing() -> Opaque:
        return Opaque(3)

    flow = aioflow.Linear("pickled", make_thing)
    outcome = await aioflow.Engine(sqlite_url, codec="pickle").run(flow)

    assert outcome["thing"] == Opaque(3)
    again = await aioflow.Engine(sqlite_url, codec="pickle").resume(outcome.flow_id, flow)
    assert again["thing"] == Opaque(3)


async def test_an_error_inside_an_entered_engine_is_not_wrapped_in_a_group() -> None:
    @aioflow.task
    async def boom() -> None:
        raise ValueError("broken")

    with pytest.raises(aioflow.FlowFailedError):
        async with aioflow.Engine() as engine:
            await engine.run(aioflow.Linear("wrapped", boom))
    with pytest.raises(KeyError):
        async with aioflow.Engine():
            raise KeyError("the caller's own error")


async def test_the_outcome_read_back_tells_a_one_symbol_tuple_from_a_symbol(
    sqlite_url: str,
) -> None:
    @aioflow.task(provides=("x",))
    async def unpacked() -> list[int]:
        return [5]

    @aioflow.task(provides="y")
    async def whole() -> list[int]:
        return [6]

    @aioflow.task(provides=("z",))
    async def by_name() -> dict[str, int]:
        return {"z": 7, "other": 8}

    live = await aioflow.Engine(sqlite_url).run(aioflow.Unordered("ones", unpacked, whole, by_name))
    read = await aioflow.Engine(sqlite_url).outcome(live.flow_id)

    assert dict(read.results) == dict(live.results) == {"x": 5, "y": [6], "z": 7}


async def test_the_outcome_read_back_from_the_journal_has_the_results_and_open_waits(
    sqlite_url: str,
) -> None:
    @aioflow.task(provides=("host", "port"))
    async def allocate(size: int) -> tuple[str, int]:
        return "10.0.0.7", 5432 + size

    @aioflow.task(provides="approval")
    async def approve(host: str, external: aioflow.External) -> object:
        return external.wait(timeout=60, info={"host": host})

    flow = aioflow.Linear("read-back", allocate, approve)
    live = await aioflow.Engine(sqlite_url, secret="k").run(flow, {"size": 1})

    read = await aioflow.Engine(sqlite_url, secret="k").outcome(live.flow_id)

    assert read.status is aioflow.FlowStatus.WAITING
    assert dict(read.results) == dict(live.results) == {"size": 1, "host": "10.0.0.7", "port": 5433}
    assert [(w.atom, w.info) for w in read.waiting] == [("approve", {"host": "10.0.0.7"})]
    assert read.waiting[0].token == live.waiting[0].token
    await aioflow.Engine(sqlite_url, secret="k").complete(read.waiting[0].token, "yes")
    done = await aioflow.Engine(sqlite_url, secret="k").resume(live.flow_id, flow)
    assert done["approval"] == "yes"
