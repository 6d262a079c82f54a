"""How the engine runs atoms on asyncio: in workers that start each atom in place.

An atom that never waits runs inside the worker that took it; one that waits keeps that
worker (its cancel scopes and context stay in the task they began in) while more workers
take what is still ready. In strict durability an atom whose successors need its result
committed is released once the commit lands, without a task waiting for it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

import aioflow
import aioflow._kernel.run
from aioflow import AtomState, FlowStatus
from aioflow._scope import membership


@aioflow.task
async def instant() -> None:
    return None


@pytest.fixture(params=["group scope", "own scopes"])
def worker_scopes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways workers are cancelled: as members of the run's task group scope (with
    the anyio we test with), and each in a scope of its own (the fallback)."""
    if request.param == "own scopes":
        monkeypatch.setattr(aioflow._kernel.run, "membership", lambda scope: None)
    return str(request.param)


async def test_workers_join_the_task_groups_scope_with_this_anyio() -> None:
    async with anyio.create_task_group() as tg:
        assert membership(tg.cancel_scope) is not None
    assert membership(object()) is None  # type: ignore[arg-type]


async def test_a_worker_leaves_the_scope_when_it_ends() -> None:
    async with anyio.create_task_group() as tg:
        members = membership(tg.cancel_scope)
        assert members is not None
        before = len(tg.cancel_scope._tasks)  # type: ignore[attr-defined]
        async with aioflow.Engine("memory://") as engine:
            flow = aioflow.Unordered("f", *[instant.using(name=f"i{k}") for k in range(20)])
            assert (await engine.run(flow)).status is FlowStatus.SUCCESS
        assert len(tg.cancel_scope._tasks) == before  # type: ignore[attr-defined]


async def test_cancelling_the_run_cancels_every_waiting_atom(worker_scopes: str) -> None:
    started = 0
    all_started = anyio.Event()

    @aioflow.task
    async def forever() -> None:
        nonlocal started
        started += 1
        if started == 100:
            all_started.set()
        await anyio.sleep(60)

    flow = aioflow.Unordered("f", *[forever.using(name=f"w{k}") for k in range(100)])
    async with aioflow.Engine("memory://") as engine:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    await engine.run(flow, flow_id="f1")

                tg.start_soon(run)
                await all_started.wait()
                tg.cancel_scope.cancel()
        outcome = await engine.outcome("f1")
    assert outcome.status is FlowStatus.SUSPENDED
    assert {a.state for a in outcome.atoms.values()} == {AtomState.PENDING}


def test_sleeping_atoms_all_run_at_once() -> None:
    """1,000 atoms that wait are all waiting together: none waits for another's turn."""
    n = 1000
    waiting = 0
    most = 0
    gate = anyio.Event()

    @aioflow.task
    async def nap() -> None:
        nonlocal waiting, most
        waiting += 1
        most = max(most, waiting)
        if waiting == n:
            gate.set()
        with anyio.fail_after(10):
            await gate.wait()
        waiting -= 1

    async def main() -> aioflow.Outcome:
        async with aioflow.Engine("memory://") as engine:
            flow = aioflow.Unordered("naps", *[nap.using(name=f"n{i}") for i in range(n)])
            return await engine.run(flow)

    outcome = anyio.run(main)
    assert outcome.status is FlowStatus.SUCCESS
    assert most == n


async def test_cancel_scopes_of_an_atom_span_its_waits(worker_scopes: str) -> None:
    """A task's own cancel scopes, entered before its first wait and left after it, work
    whether or not other atoms ran in place before it."""

    @aioflow.task(provides="late")
    async def bounded() -> bool:
        with anyio.move_on_after(0.01) as scope:
            await anyio.sleep(5)
        return scope.cancelled_caught

    @aioflow.task(provides="inner")
    async def nested() -> int:
        with anyio.CancelScope():
            await anyio.sleep(0)
            with anyio.fail_after(5):
                await anyio.sleep(0)
        return 1

    flow = aioflow.Unordered(
        "scopes",
        *[instant.using(name=f"i{k}") for k in range(100)],
        bounded,
        nested,
        *[instant.using(name=f"j{k}") for k in range(100)],
    )
    async with aioflow.Engine("memory://") as engine:
        outcome = await engine.run(flow)
    assert outcome.status is FlowStatus.SUCCESS
    assert outcome["late"] is True
    assert outcome["inner"] == 1


async def test_a_failure_in_an_atom_that_never_waits_reverts_the_others(
    worker_scopes: str,
) -> None:
    reverted: list[str] = []

    @aioflow.task
    async def good(name: str) -> None:
        return None

    @good.revert
    async def _(name: str) -> None:
        reverted.append(name)

    @aioflow.task
    async def bad() -> None:
        raise ValueError("no")

    members = [good.using(name=f"g{k}", inject={"name": f"g{k}"}) for k in range(50)]
    flow = aioflow.Linear("f", aioflow.Unordered("goods", *members), bad)
    async with aioflow.Engine("memory://") as engine:
        with pytest.raises(aioflow.FlowFailedError) as info:
            await engine.run(flow)
    assert info.value.outcome.status is FlowStatus.REVERTED
    assert sorted(reverted) == sorted(f"g{k}" for k in range(50))
    assert info.value.failures["bad"].exc_type == "ValueError"


async def test_a_shielded_part_of_an_atom_finishes_when_the_run_is_cancelled(
    tmp_path: Path, worker_scopes: str
) -> None:
    finished: list[str] = []
    started = anyio.Event()

    @aioflow.task
    async def careful() -> None:
        with anyio.CancelScope(shield=True):
            started.set()
            await anyio.sleep(0.05)
            finished.append("careful")
        await anyio.sleep(5)

    @aioflow.task
    async def slow() -> None:
        await anyio.sleep(5)

    url = f"sqlite:///{tmp_path / 'j.db'}"
    flow = aioflow.Unordered("f", careful, slow, *[instant.using(name=f"i{k}") for k in range(10)])
    async with aioflow.Engine(url) as engine:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await engine.run(flow, flow_id="f1")

            tg.start_soon(run)
            await started.wait()
            await anyio.sleep(0.01)  # the atoms that never wait are done by now
            tg.cancel_scope.cancel()
        outcome = await engine.outcome("f1")
        assert outcome.status is FlowStatus.SUSPENDED
        assert finished == ["careful"]
        assert outcome.atoms["i3"].state is AtomState.SUCCESS
        assert outcome.atoms["slow"].state is AtomState.PENDING


async def test_strict_successors_start_only_after_their_inputs_are_committed(
    tmp_path: Path,
) -> None:
    """A fan-out in strict durability: when the join runs, every SUCCESS it builds on is
    in the file, as a second connection reads it."""
    path = tmp_path / "j.db"
    seen: list[int] = []

    @aioflow.task(provides="seed")
    async def source() -> int:
        return 1

    @aioflow.task
    async def middle(seed: int) -> int:
        return seed

    @aioflow.task
    async def join() -> None:
        with sqlite3.connect(path) as db:
            (count,) = db.execute(
                "SELECT count(*) FROM aioflow_events WHERE atom LIKE 'm%' AND state = 'SUCCESS'"
            ).fetchone()
        seen.append(count)

    n = 2000
    middles = aioflow.Unordered("middles", *[middle.using(name=f"m{k}") for k in range(n)])
    flow = aioflow.Linear("diamond", source, middles, join)
    async with aioflow.Engine(f"sqlite:///{path}", durability="strict") as engine:
        outcome = await engine.run(flow)
    assert outcome.status is FlowStatus.SUCCESS
    assert seen == [n]


@pytest.mark.parametrize("durability", ["strict", "batched"])
async def test_a_chain_on_sqlite_runs_in_order(tmp_path: Path, durability: str) -> None:
    order: list[int] = []

    @aioflow.task
    async def step(k: int) -> None:
        order.append(k)

    flow = aioflow.Linear("chain", *[step.using(name=f"s{k}", inject={"k": k}) for k in range(300)])
    url = f"sqlite:///{tmp_path / 'j.db'}"
    async with aioflow.Engine(url, durability=durability) as engine:  # type: ignore[arg-type]
        outcome = await engine.run(flow)
    assert outcome.status is FlowStatus.SUCCESS
    assert order == list(range(300))


@pytest.mark.anyio
async def test_a_release_deferred_for_its_commit_does_not_wait_for_the_next_atom(
    tmp_path: Path,
) -> None:
    """A worker that finished ``make`` (its successor waits for the commit) and then takes
    ``held``, which blocks, must not hold ``use`` back until ``held`` ends."""
    gate = anyio.Event()
    used = anyio.Event()

    @aioflow.task(provides="made")
    async def make() -> int:
        return 1

    @aioflow.task
    async def use(made: int) -> None:
        used.set()

    @aioflow.task
    async def held() -> None:
        await gate.wait()

    flow = aioflow.Unordered("both", aioflow.Linear("chain", make, use), held)
    async with aioflow.Engine(f"sqlite:///{tmp_path / 'j.db'}", durability="strict") as engine:
        handle = await engine.start(flow)
        with anyio.fail_after(10):
            await used.wait()  # before held ends
        gate.set()
        assert (await handle.wait()).status is FlowStatus.SUCCESS
