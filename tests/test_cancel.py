"""``engine.cancel(flow_id)``: a flow is stopped and reverted wherever it is.

- running in this engine (started in the background, or run in the foreground of an
  engine that is not entered): its running atoms are cancelled, what finished is
  reverted, and it ends REVERTED with FlowCancelledError under ``"<cancel>"``;
- running in another engine, in another process: that engine stops it within a second;
- resting (WAITING on a wait, SUSPENDED at a checkpoint): this engine takes it and
  reverts it, or, when it cannot build the flow, the next resume does;
- owned by a process killed with SIGKILL: the engine that recovers the orphan reverts it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioflow
from aioflow import AtomState, FlowStatus
from aioflow._failure import CANCEL

from .pg import pg_schema, pg_url
from .test_conductor import until
from .test_takeover import Children, ledger

__all__ = ["pg_schema", "pg_url"]

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/journal.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def kids(tmp_path: Path) -> Iterator[Children]:
    group = Children(tmp_path)
    try:
        yield group
    finally:
        group.stop()


class Tracker:
    """A three-step flow whose middle step waits until released; records what ran and
    what was undone."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.reverted: list[str] = []
        self.started = anyio.Event()
        self.release = anyio.Event()

    def flow(self, name: str = "tracked") -> aioflow.Linear:
        @aioflow.task(provides="a")
        async def first() -> int:
            self.ran.append("first")
            return 1

        @first.revert
        async def undo_first(result: int) -> None:
            self.reverted.append("first")

        @aioflow.task(provides="b")
        async def middle(a: int) -> int:
            self.ran.append("middle")
            self.started.set()
            await self.release.wait()
            return a + 1

        @middle.revert
        async def undo_middle(a: int) -> None:
            self.reverted.append("middle")

        @aioflow.task
        async def last(b: int) -> None:
            self.ran.append("last")

        return aioflow.Linear(name, first, middle, last)


def assert_cancelled(outcome: aioflow.Outcome) -> None:
    assert outcome.status is FlowStatus.REVERTED
    assert outcome.failures[CANCEL].matches(aioflow.FlowCancelledError)


async def test_cancel_a_flow_running_here(tmp_path: Path) -> None:
    tracker = Tracker()
    async with aioflow.Engine(f"sqlite:///{tmp_path / 'j.db'}") as engine:
        handle = await engine.start(tracker.flow())
        await tracker.started.wait()
        await engine.cancel(handle.flow_id)
        with pytest.raises(aioflow.FlowFailedError) as caught:
            await handle.wait()
        assert isinstance(caught.value.__cause__, aioflow.FlowCancelledError)
        assert_cancelled(caught.value.outcome)
        # The running step was cancelled (not reverted); the finished one was undone.
        assert tracker.reverted == ["first"]
        assert "last" not in tracker.ran
        outcome = await engine.outcome(handle.flow_id)
        assert_cancelled(outcome)
        assert outcome.atoms["first"].state is AtomState.REVERTED
        assert outcome.atoms["middle"].state is AtomState.PENDING
        # A second cancel of an ended flow is refused, with the status.
        with pytest.raises(aioflow.AioflowError, match="has ended"):
            await engine.cancel(handle.flow_id)


async def test_cancel_a_foreground_run_from_another_engine(tmp_path: Path) -> None:
    """engine.run in an engine that is not entered looks for requests while it runs."""
    url = f"sqlite:///{tmp_path / 'j.db'}"
    tracker = Tracker()
    runner = aioflow.Engine(url, lease=3.0)
    result: dict[str, Any] = {}

    async def run() -> None:
        with pytest.raises(aioflow.FlowFailedError) as caught:
            await runner.run(tracker.flow(), flow_id="fg")
        result["outcome"] = caught.value.outcome

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await tracker.started.wait()
        async with aioflow.Engine(url) as other:
            await other.cancel("fg")  # owned by the runner: left to it
            with anyio.fail_after(10):
                await until(lambda: "outcome" in result, "the run to end")
    assert_cancelled(result["outcome"])
    assert tracker.reverted == ["first"]


async def test_cancel_unknown_flow_and_reserved_topics() -> None:
    async with aioflow.Engine() as engine:
        with pytest.raises(aioflow.NotFoundError):
            await engine.cancel("nope")
        outcome = await engine.run(aioflow.Linear("one", aioflow.Checkpoint("c")))
        with pytest.raises(ValueError, match="reserved"):
            await engine.send(outcome.flow_id, CANCEL, "x")
    with pytest.raises(ValueError, match="reserved"):
        aioflow.Receive("r", CANCEL)


async def test_cancel_a_resting_waiting_flow_parked_here() -> None:
    reverted: list[str] = []

    @aioflow.task(provides="a")
    async def first() -> int:
        return 1

    @first.revert
    async def undo(result: int) -> None:
        reverted.append("first")

    flow = aioflow.Linear("sleepy", first, aioflow.Sleep("nap", 3600))
    async with aioflow.Engine() as engine:
        handle = await engine.start(flow)
        with pytest.raises(aioflow.FlowFailedError) as caught:
            with anyio.fail_after(10):
                await until(
                    lambda: engine._external.resting(handle.flow_id) is not None, "rest"
                )
                await engine.cancel(handle.flow_id)
                await handle.wait()
        assert_cancelled(caught.value.outcome)
        assert reverted == ["first"]
        assert caught.value.outcome.atoms["nap"].state is not AtomState.WAITING


async def test_cancel_a_suspended_flow_from_a_new_engine(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'j.db'}"
    flow_ref = "tests.flows_for_tests:make_flow"
    async with aioflow.Engine(url) as engine:
        outcome = await engine.run(flow_ref, {"number": 2}, stop_at="halfway")
        assert outcome.status is FlowStatus.SUSPENDED
    engine = aioflow.Engine(url)  # not entered: cancel reverts it before it returns
    await engine.cancel(outcome.flow_id)
    after = await engine.outcome(outcome.flow_id)
    assert_cancelled(after)
    assert after.atoms["double"].state is AtomState.REVERTED
    with pytest.raises(aioflow.FlowFailedError):
        await engine.wait(outcome.flow_id)


async def test_cancel_of_a_flow_only_its_object_builds_waits_for_resume(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'j.db'}"
    tracker = Tracker()
    flow = tracker.flow()
    async with aioflow.Engine(url) as engine:
        handle = await engine.start(flow, stop_at=None)
        await tracker.started.wait()
        handle.cancel()  # suspends it (handle.cancel only suspends)
        with pytest.raises(anyio.get_cancelled_exc_class()):
            await handle.wait()
    async with aioflow.Engine(url) as engine:
        await engine.cancel(handle.flow_id)  # stored; nothing here can build the flow
        assert (await engine.outcome(handle.flow_id)).status is FlowStatus.SUSPENDED
        tracker.release.set()
        with pytest.raises(aioflow.FlowFailedError) as caught:
            await engine.resume(handle.flow_id, flow)
        assert_cancelled(caught.value.outcome)
        assert tracker.ran.count("middle") == 1  # resumed into a revert: nothing re-ran
        assert tracker.reverted == ["first"]


async def test_cancel_while_reverting_changes_nothing() -> None:
    gate = anyio.Event()
    entered = anyio.Event()

    @aioflow.task(provides="a")
    async def first() -> int:
        return 1

    @first.revert
    async def slow_undo(result: int) -> None:
        entered.set()
        await gate.wait()

    @aioflow.task
    async def boom(a: int) -> None:
        raise RuntimeError("boom")

    async with aioflow.Engine() as engine:
        handle = await engine.start(aioflow.Linear("failing", first, boom))
        await entered.wait()
        await engine.cancel(handle.flow_id)
        gate.set()
        with pytest.raises(aioflow.FlowFailedError) as caught:
            await handle.wait()
        outcome = caught.value.outcome
        assert outcome.status is FlowStatus.REVERTED
        assert "boom" in outcome.failures
        assert isinstance(caught.value.__cause__, RuntimeError)


async def test_cancel_in_another_process(
    tmp_path: Path, kids: Children, shared_url: str
) -> None:
    """A child process runs the flow, held at its third step; the test process cancels
    it, and the child's engine stops and reverts it (within a second)."""
    url = shared_url
    book = tmp_path / "ledger"
    child = kids.start("owner", "run", url, "far", str(book), "0", "s3", "30")
    await child.said("engine")
    await until(lambda: any(a == "s3" for _, a, _, _ in ledger(book)), "s3 to start")
    async with aioflow.Engine(url) as engine:
        await engine.cancel("far")
        with anyio.fail_after(15), pytest.raises(aioflow.FlowFailedError) as caught:
            await engine.wait("far")
    assert_cancelled(caught.value.outcome)
    said = await child.said("error")
    assert said.startswith("FlowFailedError")
    atoms = caught.value.outcome.atoms
    assert [atoms[s].state for s in ("s1", "s2", "s3")] == [
        AtomState.REVERTED,
        AtomState.REVERTED,
        AtomState.PENDING,
    ]
    assert "s4" not in atoms  # never started


async def test_cancel_of_a_killed_owners_flow_is_applied_by_recovery(
    tmp_path: Path, kids: Children, shared_url: str
) -> None:
    url = shared_url
    book = tmp_path / "ledger"
    child = kids.start("owner", "run", url, "dead", str(book), "0", "s3", "1")
    await child.said("engine")
    await until(lambda: any(a == "s3" for _, a, _, _ in ledger(book)), "s3 to start")
    child.proc.kill()
    await child.exited()
    async with aioflow.Engine(url) as engine:
        await engine.cancel("dead")  # its owner's lease still runs: left to recovery
    async with aioflow.Engine(url, lease=1.0, recover=True) as engine:
        with anyio.fail_after(20), pytest.raises(aioflow.FlowFailedError) as caught:
            await engine.wait("dead")
    assert_cancelled(caught.value.outcome)
    # Nothing ran again: the recovery went straight to reverting.
    assert [a for what, a, _, _ in ledger(book) if what == "start"] == ["s1", "s2", "s3"]
