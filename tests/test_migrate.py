"""Migrating a flow in flight: ``engine.resume(flow_id, new_flow, migrate=True,
renames=...)`` and ``engine.check_migration``. What already happened must stay true;
every conflict is listed, and nothing changes when there is one."""

from __future__ import annotations

from pathlib import Path

import pytest

import aioflow
from aioflow import AtomState, Checkpoint, FlowStatus, Linear

pytestmark = pytest.mark.anyio

RAN: list[str] = []


@aioflow.task(provides="a")
async def fetch() -> int:
    RAN.append("fetch")
    return 1


@aioflow.task(provides="b")
async def build(a: int) -> int:
    RAN.append("build")
    return a + 1


@aioflow.task(provides="c")
async def publish(b: int) -> int:
    RAN.append("publish")
    return b * 10


@aioflow.task(provides="d")
async def announce(c: int) -> int:
    RAN.append("announce")
    return c + 5


@aioflow.task(provides="z")
async def audit() -> int:
    RAN.append("audit")
    return 0


def v1() -> Linear:
    return Linear("release", fetch, build, Checkpoint("built"), publish)


@pytest.fixture(autouse=True)
def clear() -> None:
    RAN.clear()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'j.db'}"


async def suspended(url: str) -> str:
    async with aioflow.Engine(url) as engine:
        outcome = await engine.run(v1(), stop_at="built")
    assert outcome.status is FlowStatus.SUSPENDED
    RAN.clear()
    return outcome.flow_id


async def test_adding_a_step_after_what_ran(url: str) -> None:
    flow_id = await suspended(url)
    v2 = Linear("release", fetch, build, Checkpoint("built"), publish, announce)
    async with aioflow.Engine(url) as engine:
        with pytest.raises(aioflow.FlowMismatchError):
            await engine.resume(flow_id, v2)  # without migrate: refused, as before
        assert await engine.check_migration(flow_id, v2) == []
        outcome = await engine.resume(flow_id, v2, migrate=True)
    assert outcome.status is FlowStatus.SUCCESS
    assert outcome["d"] == 25
    assert RAN == ["publish", "announce"]  # fetch and build kept their results
    # The journal records the migration; a fresh engine reads the flow as v2.
    async with aioflow.Engine(url) as engine:
        events = [e async for e in engine.watch(flow_id)]
        (migrated,) = [e.details["migrated"] for e in events if "migrated" in e.details]
        assert migrated["from"] != migrated["to"]
        again = await engine.resume(flow_id, v2)
        assert again.status is FlowStatus.SUCCESS and again["d"] == 25


async def test_a_bug_fixed_in_a_task_s_code_needs_no_migration(url: str) -> None:
    flow_id = await suspended(url)

    @aioflow.task(provides="c")
    async def publish(b: int) -> int:  # the same task, its code changed
        RAN.append("publish v2")
        return b * 100

    v2 = Linear("release", fetch, build, Checkpoint("built"), publish)
    async with aioflow.Engine(url) as engine:
        assert await engine.check_migration(flow_id, v2) == []
        outcome = await engine.resume(flow_id, v2)
    assert outcome["c"] == 200 and RAN == ["publish v2"]


async def test_renaming_a_finished_step(url: str) -> None:
    flow_id = await suspended(url)

    @aioflow.task(provides="a")
    async def download() -> int:
        RAN.append("download")
        return 1

    v2 = Linear("release", download, build, Checkpoint("built"), publish)
    async with aioflow.Engine(url) as engine:
        conflicts = await engine.check_migration(flow_id, v2)
        assert any("'fetch' has run" in c for c in conflicts)
        outcome = await engine.resume(flow_id, v2, migrate=True, renames={"fetch": "download"})
    assert outcome.status is FlowStatus.SUCCESS
    assert outcome.atoms["download"].state is AtomState.SUCCESS
    assert "fetch" not in outcome.atoms
    assert RAN == ["publish"]


async def test_every_conflict_is_listed_and_nothing_changes(url: str) -> None:
    flow_id = await suspended(url)

    @aioflow.task(provides="b2")
    async def build(a: int) -> int:  # a finished step now provides another symbol
        return a

    @aioflow.task(provides="c")
    async def publish(b2: int) -> int:
        return b2

    # audit is new, and put before fetch, which has finished; build provides b2 now.
    v2 = Linear("release", audit, fetch, build, Checkpoint("built"), publish)
    async with aioflow.Engine(url) as engine:
        before = (await engine.journal.summary(flow_id)).last_seq
        with pytest.raises(aioflow.FlowMismatchError) as caught:
            await engine.resume(flow_id, v2, migrate=True, renames={"nope": "fetch"})
        lines = caught.value.differences
        assert any("renames name atoms the flow does not have: nope" in c for c in lines)
        after = "'fetch' has finished but the new flow puts it after 'audit'"
        assert any(after in c for c in lines)
        assert any("'build' finished providing ['b']" in c for c in lines)
        assert (await engine.journal.summary(flow_id)).last_seq == before
        assert RAN == []
        # The flow still goes on under its own definition.
        outcome = await engine.resume(flow_id, v1())
    assert outcome.status is FlowStatus.SUCCESS


async def test_a_step_that_never_ran_may_be_removed_or_changed(url: str) -> None:
    flow_id = await suspended(url)

    @aioflow.task(provides="e")
    async def finish(b: int) -> int:
        RAN.append("finish")
        return b

    v2 = Linear("release", fetch, build, Checkpoint("built"), finish)  # publish is gone
    async with aioflow.Engine(url) as engine:
        outcome = await engine.resume(flow_id, v2, migrate=True)
    assert outcome["e"] == 2 and RAN == ["finish"]
    assert "publish" not in outcome.atoms


async def test_bad_migrations_are_refused(url: str) -> None:
    flow_id = await suspended(url)
    async with aioflow.Engine(url) as engine:
        with pytest.raises(ValueError, match="migrate=True"):
            await engine.resume(flow_id, v1(), renames={"fetch": "x"})
        with pytest.raises(ValueError, match="needs the new flow"):
            await engine.resume(flow_id, migrate=True)
        await engine.resume(flow_id, v1())
        with pytest.raises(aioflow.AioflowError, match="nothing to migrate"):
            await engine.resume(flow_id, v1(), migrate=True)


async def test_a_waiting_atom_keeps_its_name() -> None:
    @aioflow.task
    async def approve(external: aioflow.External) -> object:
        return external.wait(timeout=60)

    async with aioflow.Engine() as engine:
        outcome = await engine.run(Linear("ask", fetch, approve))
        assert outcome.status is FlowStatus.WAITING

        @aioflow.task
        async def approval(external: aioflow.External) -> object:
            return external.wait(timeout=60)

        v2 = Linear("ask", fetch, approval)
        conflicts = await engine.check_migration(
            outcome.flow_id, v2, renames={"approve": "approval"}
        )
        assert conflicts == ["atom 'approve' waits (its token names it): it cannot be renamed"]


async def test_migrating_a_flow_running_here_is_busy() -> None:
    import anyio

    gate = anyio.Event()

    @aioflow.task
    async def slow() -> None:
        await gate.wait()

    async with aioflow.Engine() as engine:
        handle = await engine.start(Linear("busy", slow))
        await anyio.sleep(0.01)
        with pytest.raises(aioflow.FlowBusyError):
            await engine.resume(handle.flow_id, Linear("busy", slow, audit), migrate=True)
        gate.set()
        await handle.wait()


RELEASES = '''
import aioflow

@aioflow.task(provides="a")
async def fetch() -> int:
    return 1

@aioflow.task(provides="b")
async def build(a: int) -> int:
    return a + 1

@aioflow.task(provides="c")
async def publish(b: int) -> int:
    return b * 10

@aioflow.task(provides="z")
async def audit() -> int:
    return 0

def v1() -> aioflow.Linear:
    return aioflow.Linear("release", fetch, build, aioflow.Checkpoint("built"), publish)

def v2() -> aioflow.Linear:  # audit after what ran: fine
    return aioflow.Linear("release", fetch, build, aioflow.Checkpoint("built"), publish, audit)

def v3() -> aioflow.Linear:  # audit before fetch, which ran: refused
    return aioflow.Linear("release", audit, fetch, build, aioflow.Checkpoint("built"), publish)
'''


async def test_the_command_line_checks_and_migrates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .test_cli import aioflow_cmd

    (tmp_path / "releases.py").write_text(RELEASES)
    monkeypatch.syspath_prepend(str(tmp_path))
    url = f"sqlite:///{tmp_path / 'j.db'}"
    async with aioflow.Engine(url) as engine:
        outcome = await engine.run("releases:v1", stop_at="built")
    flow_id = outcome.flow_id
    ok = aioflow_cmd("check", flow_id, "releases:v2", "--journal", url, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert f"flow {flow_id} can be migrated to releases:v2" in ok.stdout
    refused = aioflow_cmd("check", flow_id, "releases:v3", "--journal", url, cwd=tmp_path)
    assert refused.returncode == 1, refused.stderr
    assert "cannot be migrated" in refused.stdout
    assert "'fetch' has finished but the new flow puts it after 'audit'" in refused.stdout
    bad = aioflow_cmd(
        "check", flow_id, "releases:v2", "--rename", "fetch", "--journal", url, cwd=tmp_path
    )
    assert bad.returncode == 2 and "OLD=NEW" in bad.stderr
    moved = aioflow_cmd(
        "resume", flow_id, "--flow", "releases:v2", "--migrate", "--journal", url, cwd=tmp_path
    )
    assert moved.returncode == 0, moved.stderr + moved.stdout
    async with aioflow.Engine(url) as engine:
        done = await engine.outcome(flow_id)
    assert done.status is FlowStatus.SUCCESS and done["z"] == 0
