"""``Retry.times(..., then="suspend")``: when the attempts run out the flow stops
SUSPENDED with the atom in FAILURE and nothing reverted; a resume runs the atom again."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import aioflow
from aioflow import AtomState, FlowStatus, Retry

pytestmark = pytest.mark.anyio


class Broken:
    """Tasks that fail until ``fixed`` is set, counting every run and revert."""

    def __init__(self) -> None:
        self.fixed = False
        self.runs: dict[str, int] = {}
        self.reverted: list[str] = []

    def ran(self, name: str) -> None:
        self.runs[name] = self.runs.get(name, 0) + 1

    def tasks(self, retry: Retry | None) -> tuple[aioflow.Task, aioflow.Task]:
        @aioflow.task(provides="a")
        async def prepare() -> int:
            self.ran("prepare")
            return 1

        @prepare.revert
        async def unprepare(result: int) -> None:
            self.reverted.append("prepare")

        @aioflow.task(provides="b", retry=retry)
        async def publish(a: int) -> int:
            self.ran("publish")
            if not self.fixed:
                raise ConnectionError("the server is down")
            return a + 1

        @publish.revert
        async def unpublish(a: int) -> None:
            self.reverted.append("publish")

        return prepare, publish


async def test_a_task_suspends_when_its_attempts_run_out(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'j.db'}"
    broken = Broken()
    flow = aioflow.Linear("deploy", *broken.tasks(Retry.times(3, then="suspend")))
    async with aioflow.Engine(url) as engine:
        outcome = await engine.run(flow)
    assert outcome.status is FlowStatus.SUSPENDED
    assert outcome.atoms["publish"].state is AtomState.FAILURE
    assert outcome.atoms["publish"].attempts == 3
    assert outcome.atoms["prepare"].state is AtomState.SUCCESS
    assert outcome.failures["publish"].matches(ConnectionError)
    assert broken.reverted == []
    assert broken.runs == {"prepare": 1, "publish": 3}

    # A new process (engine) on the same journal: still suspended, still failing once more.
    async with aioflow.Engine(url) as engine:
        again = await engine.resume(outcome.flow_id, flow)
        assert again.status is FlowStatus.SUSPENDED
        assert broken.runs["publish"] == 4  # one more attempt, at once, then suspended
        broken.fixed = True
        done = await engine.resume(outcome.flow_id, flow)
    assert done.status is FlowStatus.SUCCESS
    assert done["b"] == 2
    assert broken.runs == {"prepare": 1, "publish": 5}
    assert broken.reverted == []


async def test_an_error_the_policy_does_not_retry_still_reverts() -> None:
    broken = Broken()
    prepare, _ = broken.tasks(None)

    @aioflow.task(retry=Retry.times(3, on=KeyError, then="suspend"))
    async def wrong(a: int) -> None:
        raise ConnectionError("not a KeyError")

    async with aioflow.Engine() as engine:
        with pytest.raises(aioflow.FlowFailedError) as caught:
            await engine.run(aioflow.Linear("f", prepare, wrong))
    assert caught.value.outcome.status is FlowStatus.REVERTED
    assert broken.reverted == ["prepare"]


async def test_a_part_suspends_after_its_attempts_and_resume_runs_only_the_failed_atom() -> None:
    broken = Broken()
    prepare, publish = broken.tasks(None)
    part = aioflow.Linear("part", prepare, publish, retry=Retry.times(2, then="suspend"))
    async with aioflow.Engine() as engine:
        outcome = await engine.run(aioflow.Linear("outer", part))
        assert outcome.status is FlowStatus.SUSPENDED
        # The first attempt of the part was reverted and run again; the last was not.
        assert broken.reverted == ["publish", "prepare"]
        assert broken.runs == {"prepare": 2, "publish": 2}
        assert outcome.atoms["publish"].state is AtomState.FAILURE
        assert outcome.atoms["prepare"].state is AtomState.SUCCESS
        broken.fixed = True
        done = await engine.resume(outcome.flow_id, aioflow.Linear("outer", part))
    assert done.status is FlowStatus.SUCCESS
    assert broken.runs == {"prepare": 2, "publish": 3}


async def test_other_branches_finish_before_the_flow_suspends() -> None:
    broken = Broken()
    finished: list[str] = []

    @aioflow.task(retry=Retry.times(1, then="suspend"))
    async def fails_fast() -> None:
        raise ConnectionError("down")

    @aioflow.task
    async def slow() -> None:
        await anyio.sleep(0.05)
        finished.append("slow")

    @aioflow.task
    async def after(a: int = 0) -> None:
        finished.append("after")

    flow = aioflow.Linear("f", aioflow.Unordered("both", fails_fast, slow), after)
    async with aioflow.Engine() as engine:
        outcome = await engine.run(flow)
    assert outcome.status is FlowStatus.SUSPENDED
    assert finished == ["slow"]
    assert outcome.atoms["slow"].state is AtomState.SUCCESS
    assert broken.reverted == []


async def test_cancel_reverts_a_flow_suspended_on_failure() -> None:
    broken = Broken()
    flow = aioflow.Linear("deploy", *broken.tasks(Retry.times(1, then="suspend")))
    async with aioflow.Engine() as engine:
        outcome = await engine.run(flow)
        assert outcome.status is FlowStatus.SUSPENDED
    # An engine that is not entered reverts it before cancel returns; it holds the object.
    engine2 = aioflow.Engine(engine.journal)
    await engine2.cancel(outcome.flow_id)  # started from an object: the resume reverts
    with pytest.raises(aioflow.FlowFailedError) as caught:
        await engine2.resume(outcome.flow_id, flow)
    assert caught.value.outcome.status is FlowStatus.REVERTED
    assert sorted(broken.reverted) == ["prepare", "publish"]


def test_bad_then_is_refused() -> None:
    with pytest.raises(ValueError, match="then must be 'revert' or 'suspend'"):
        Retry.times(2, then="pause")  # type: ignore[arg-type]


async def test_structlog_listener_logs_failures_at_error_with_the_exception() -> None:
    from structlog.testing import capture_logs

    broken = Broken()
    flow = aioflow.Linear("deploy", *broken.tasks(Retry.times(1)))
    with capture_logs() as logs:
        async with aioflow.Engine(listeners=[aioflow.StructlogListener()]) as engine:
            with pytest.raises(aioflow.FlowFailedError):
                await engine.run(flow)
    errors = [e for e in logs if e["log_level"] == "error" and e["event"] == "aioflow.event"]
    failed = [e for e in errors if e.get("state") == "FAILURE"]
    assert failed and failed[0]["atom"] == "publish"
    assert failed[0]["error_type"] == "ConnectionError"
    assert failed[0]["error"] == "the server is down"
    assert all(e["log_level"] == "info" for e in logs if e.get("state") == "SUCCESS")
