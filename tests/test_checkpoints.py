"""Checkpoints: stopping at one, moving back (revert_to) and forth (goto), and keeping a
bounded journal by folding old history into a snapshot (compaction)."""

from __future__ import annotations

import sqlite3
from collections import Counter
from datetime import timedelta
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aioflow
from aioflow import AtomState, Checkpoint, EventKind, FlowStatus, Linear, Retry
from aioflow._replay import replay, snapshot
from aioflow.journal import MemoryJournal
from tests.strategies import DagSpec, dags, draw_index
from tests.test_properties import FLOW_ID, Recorder, atom_names, build_flow, run_once

LOG: list[str] = []
"""What the tasks did, in order: ``name`` for an execution, ``undo name`` for a revert."""


@pytest.fixture(autouse=True)
def fresh_log() -> None:
    LOG.clear()


def step(name: str, needs: str | None = None) -> aioflow.Task:
    """A task ``name`` providing ``name`` (its input + 1), logging runs and reverts."""
    if needs is None:

        async def first() -> int:
            LOG.append(name)
            return 1

        fn: Any = first
    else:

        async def later(value: int) -> int:
            LOG.append(name)
            return value + 1

        fn = later
    made = aioflow.task(name=name, provides=name, rebind={"value": needs} if needs else None)(fn)

    @made.revert
    async def undo() -> None:
        LOG.append(f"undo {name}")

    return made


def three_stages() -> Linear:
    """a, b -> checkpoint one -> c, d -> checkpoint two -> e."""
    return Linear(
        "stages",
        step("a"),
        step("b", "a"),
        Checkpoint("one"),
        step("c", "b"),
        step("d", "c"),
        Checkpoint("two"),
        step("e", "d"),
    )


class TestRevertTo:
    async def test_revert_to_undoes_what_ran_after_the_checkpoint_newest_first(
        self, journal_url: str
    ) -> None:
        engine = aioflow.Engine(journal_url)
        flow = three_stages()
        stopped = await engine.run(flow, flow_id="f", stop_at="two")
        assert (stopped.status, stopped.checkpoint) == (FlowStatus.SUSPENDED, "two")
        LOG.clear()

        outcome = await engine.revert_to("f", "one", flow)

        assert LOG == ["undo d", "undo c"]
        assert outcome.status is FlowStatus.SUSPENDED
        assert outcome.checkpoint == "one"
        assert outcome.atoms["c"].state is AtomState.PENDING
        assert outcome.atoms["b"].state is AtomState.SUCCESS

    async def test_a_flow_moved_back_runs_on_from_the_checkpoint(self, journal_url: str) -> None:
        engine = aioflow.Engine(journal_url)
        flow = three_stages()
        await engine.run(flow, flow_id="f", stop_at="two")
        await engine.revert_to("f", "one", flow)
        LOG.clear()

        outcome = await engine.resume("f", flow)

        assert LOG == ["c", "d", "e"]
        assert outcome.status is FlowStatus.SUCCESS
        assert outcome["e"] == 5

    async def test_revert_to_is_recorded_so_another_process_sees_where_the_flow_stands(
        self, sqlite_url: str
    ) -> None:
        await aioflow.Engine(sqlite_url).run(three_stages(), flow_id="f", stop_at="two")
        await aioflow.Engine(sqlite_url).revert_to("f", "one", three_stages())

        async with aioflow.open_journal(sqlite_url) as journal:
            events = await journal.load("f")
        state = replay("f", events)
        assert (state.status, state.checkpoint, state.revert_to) == (
            FlowStatus.SUSPENDED,
            "one",
            None,
        )
        marks = [e.details for e in events if e.kind is EventKind.CHECKPOINT]
        assert marks[-1] == {"reverted_to": "one"}

    async def test_a_revert_to_cancelled_midway_is_finished_by_resume(
        self, sqlite_url: str
    ) -> None:
        held = anyio.Event()
        release = anyio.Event()

        @aioflow.task(provides="c")
        async def slow_undo_c(b: int) -> int:
            return b + 1

        @slow_undo_c.revert
        async def undo_c() -> None:
            held.set()
            await release.wait()
            LOG.append("undo c")

        flow = Linear(
            "stages",
            step("a"),
            step("b", "a"),
            Checkpoint("one"),
            slow_undo_c,
            step("d", "c"),
            Checkpoint("two"),
        )
        await aioflow.Engine(sqlite_url).run(flow, flow_id="f", stop_at="two")
        LOG.clear()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def cancel_when_held() -> None:
                    await held.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(cancel_when_held)
                await aioflow.Engine(sqlite_url).revert_to("f", "one", flow)
        state = replay("f", await aioflow.Engine(sqlite_url).journal.load("f"))
        assert (state.status, state.revert_to) == (FlowStatus.SUSPENDED, "one")
        release.set()

        outcome = await aioflow.Engine(sqlite_url).resume("f", flow)

        assert LOG == ["undo d", "undo c"]
        assert (outcome.status, outcome.checkpoint) == (FlowStatus.SUSPENDED, "one")

    async def test_revert_to_needs_a_suspended_flow_and_a_reached_checkpoint(
        self, journal_url: str
    ) -> None:
        engine = aioflow.Engine(journal_url)
        flow = three_stages()
        await engine.run(flow, flow_id="f", stop_at="one")

        with pytest.raises(aioflow.AioflowError, match="has not reached checkpoint 'two'"):
            await engine.revert_to("f", "two", flow)
        with pytest.raises(aioflow.InvalidFlowError, match="'three' is not a checkpoint"):
            await engine.revert_to("f", "three", flow)
        with pytest.raises(aioflow.NotFoundError):
            await engine.revert_to("nope", "one", flow)
        await engine.resume("f", flow)
        with pytest.raises(aioflow.AioflowError, match="is SUCCESS; revert_to moves only"):
            await engine.revert_to("f", "one", flow)

    async def test_a_failing_revert_leaves_the_flow_failed(self, journal_url: str) -> None:
        @aioflow.task(provides="c")
        async def c(b: int) -> int:
            return b + 1

        @c.revert
        async def undo_c() -> None:
            raise RuntimeError("cannot undo c")

        engine = aioflow.Engine(journal_url)
        flow = Linear("stages", step("a"), step("b", "a"), Checkpoint("one"), c, Checkpoint("two"))
        await engine.run(flow, flow_id="f", stop_at="two")

        with pytest.raises(aioflow.FlowFailedError) as info:
            await engine.revert_to("f", "one", flow)

        assert info.value.outcome.status is FlowStatus.FAILED
        assert info.value.outcome.atoms["c"].state is AtomState.REVERT_FAILURE


class TestCheckpointInAGraph:
    async def test_a_checkpoint_placed_by_links_stops_and_moves_back(
        self, journal_url: str
    ) -> None:
        a, b, c = step("a"), step("b", "a"), step("c", "b")
        mid = Checkpoint("mid")
        graph = aioflow.Graph("g", a, b, mid, c).link(b, mid).link(mid, c)
        engine = aioflow.Engine(journal_url)

        stopped = await engine.run(graph, flow_id="g", stop_at="mid")
        assert (stopped.status, stopped.atoms["c"].state) == (
            FlowStatus.SUSPENDED,
            AtomState.PENDING,
        )
        finished = await engine.resume("g", graph)
        assert finished["c"] == 3


class TestGoto:
    async def test_goto_moves_forward_to_a_checkpoint_not_reached_yet(
        self, journal_url: str
    ) -> None:
        engine = aioflow.Engine(journal_url)
        flow = three_stages()
        await engine.run(flow, flow_id="f", stop_at="one")
        LOG.clear()

        outcome = await engine.goto("f", "two", flow)

        assert LOG == ["c", "d"]
        assert (outcome.status, outcome.checkpoint) == (FlowStatus.SUSPENDED, "two")

    async def test_goto_moves_back_to_a_checkpoint_reached(self, journal_url: str) -> None:
        engine = aioflow.Engine(journal_url)
        flow = three_stages()
        await engine.run(flow, flow_id="f", stop_at="two")
        LOG.clear()

        outcome = await engine.goto("f", "one", flow)

        assert LOG == ["undo d", "undo c"]
        assert (outcome.status, outcome.checkpoint) == (FlowStatus.SUSPENDED, "one")

    async def test_goto_by_reference_needs_no_flow_object(self, sqlite_url: str) -> None:
        ref = "tests.flows_for_tests:make_flow"
        first = await aioflow.Engine(sqlite_url).run(ref, {"number": 2}, stop_at="halfway")

        moved = await aioflow.Engine(sqlite_url).goto(first.flow_id, "halfway")

        assert (moved.status, moved.checkpoint) == (FlowStatus.SUSPENDED, "halfway")
        assert (await aioflow.Engine(sqlite_url).resume(first.flow_id))["total"] == 5


class TestCompaction:
    async def test_compact_folds_history_before_the_last_checkpoints_into_a_snapshot(
        self, journal_url: str
    ) -> None:
        engine = aioflow.Engine(journal_url)
        flow = three_stages()
        await engine.run(flow, flow_id="f", stop_at="two")
        async with aioflow.open_journal(engine.journal) as journal:
            before = await journal.load("f")
            removed = await journal.compact("f", keep=1)
            after = await journal.load("f")

        assert removed > 0
        assert len(after) == len(before) - removed
        assert after[0].kind is EventKind.SNAPSHOT
        assert after[1].kind is EventKind.CHECKPOINT and after[1].atom == "two"
        assert [e.seq for e in after[1:]] == [e.seq for e in before[-len(after) + 1 :]]
        assert replay("f", after) == replay("f", before)

    async def test_a_compacted_flow_resumes_exactly_as_before(self, journal_url: str) -> None:
        engine = aioflow.Engine(journal_url)
        flow = three_stages()
        await engine.run(flow, flow_id="f", stop_at="two")
        async with aioflow.open_journal(engine.journal) as journal:
            await journal.compact("f")
        LOG.clear()

        outcome = await engine.resume("f", flow)

        assert LOG == ["e"]
        assert outcome.status is FlowStatus.SUCCESS
        assert outcome["e"] == 5
        progress = await engine.progress("f")
        assert progress.fraction == 1.0

    async def test_compact_with_nothing_to_fold_removes_nothing(self, journal_url: str) -> None:
        engine = aioflow.Engine(journal_url)
        await engine.run(Linear("plain", step("a")), flow_id="f")
        async with aioflow.open_journal(engine.journal) as journal:
            assert await journal.compact("f", keep=1) == 0
            assert await journal.compact("f", keep=5) == 0

    async def test_compact_refuses_bad_arguments_and_unknown_flows(self, journal_url: str) -> None:
        engine = aioflow.Engine(journal_url)
        await engine.run(three_stages(), flow_id="f")
        async with aioflow.open_journal(engine.journal) as journal:
            with pytest.raises(ValueError, match="keep must be"):
                await journal.compact("f", keep=0)
            with pytest.raises(aioflow.NotFoundError):
                await journal.compact("nope")

    async def test_compacting_twice_keeps_one_snapshot(self, journal_url: str) -> None:
        engine = aioflow.Engine(journal_url)
        flow = three_stages()
        await engine.run(flow, flow_id="f", stop_at="one")
        async with aioflow.open_journal(engine.journal) as journal:
            await journal.compact("f")
        await engine.resume("f", flow, stop_at="two")
        async with aioflow.open_journal(engine.journal) as journal:
            await journal.compact("f")
            events = await journal.load("f")
        assert [e.kind for e in events].count(EventKind.SNAPSHOT) == 1
        assert (await engine.resume("f", flow))["e"] == 5

    async def test_keep_for_folds_checkpoints_older_than_the_window(self) -> None:
        now = [1000.0]
        engine = aioflow.Engine(clock=lambda: now[0])
        flow = Linear(
            "timed",
            step("a"),
            Checkpoint("one"),
            step("b", "a"),
            Checkpoint("two", keep_for=timedelta(seconds=60)),
        )
        await engine.run(flow, flow_id="f")
        events = await engine.journal.load("f")
        assert events[0].kind is EventKind.FLOW  # every checkpoint is inside the window
        now[0] += 3600
        assert await engine.journal.compact("f", keep=None, before=now[0] - 60) > 0
        assert (await engine.journal.load("f"))[0].kind is EventKind.SNAPSHOT

    async def test_a_checkpoint_looping_ten_thousand_times_keeps_a_bounded_journal(self) -> None:
        loops = 10_000
        sizes: list[int] = []
        journal = MemoryJournal()

        calls = Counter[str]()

        @aioflow.task
        async def work(context: aioflow.TaskContext) -> None:
            calls["work"] += 1
            if calls["work"] < loops:
                if calls["work"] % 1000 == 0:
                    sizes.append(len(await journal.load(context.flow_id)))
                raise RuntimeError("not yet")

        flow = Linear("periodic", Checkpoint("tick", retry=Retry.times(loops), keep=1), work)
        async with aioflow.Engine(journal) as engine:
            outcome = await engine.run(flow, flow_id="periodic")

        assert outcome.status is FlowStatus.SUCCESS
        assert outcome.atoms["tick"].attempts == loops
        assert sizes and len(sizes) == loops // 1000 - 1
        assert max(sizes) < 40
        assert len(await journal.load("periodic")) < 40

    async def test_sqlite_keeps_a_bounded_file_for_a_looping_flow(self, sqlite_url: str) -> None:
        loops = 10_000
        flow = Linear(
            "periodic",
            Checkpoint("tick", retry=Retry.times(loops), keep=1),
            aioflow.task(name="work")(fails_until(loops)),
        )
        async with aioflow.Engine(sqlite_url) as engine:
            outcome = await engine.run(flow, flow_id="periodic")
            events = await engine.journal.load("periodic")
        assert outcome.status is FlowStatus.SUCCESS
        assert outcome.atoms["tick"].attempts == loops
        assert len(events) < 40
        assert replay("periodic", events).status is FlowStatus.SUCCESS
        with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as db:
            [(rows,)] = db.execute("SELECT count(*) FROM aioflow_flow_events").fetchall()
        assert rows == len(events)  # the rows in the file, not only what load() shows


def fails_until(n: int) -> Any:
    calls = [0]

    async def work() -> None:
        calls[0] += 1
        if calls[0] < n:
            raise RuntimeError("again")

    return work


# ------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(spec=st.one_of(dags(), dags(failures=True)), data=st.data())
def test_replaying_a_compacted_log_gives_the_state_of_the_whole_log(
    spec: DagSpec, data: st.DataObject
) -> None:
    _, _, events = anyio.run(run_once, spec, Recorder())
    k = draw_index(data, len(events), "cut")
    fold = draw_index(data, k, "fold")
    prefix = events[:k]
    compacted = [snapshot(replay(FLOW_ID, prefix[:fold]), prefix[fold - 1].time), *prefix[fold:]]

    assert replay(FLOW_ID, compacted) == replay(FLOW_ID, prefix)


@settings(max_examples=60, deadline=None)
@given(spec=dags(), data=st.data())
def test_resuming_after_compaction_does_exactly_what_resuming_before_it_would(
    spec: DagSpec, data: st.DataObject
) -> None:
    async def resume(log: list[aioflow.Event]) -> tuple[aioflow.Outcome, Counter[str]]:
        journal = MemoryJournal()
        async with journal:
            for event in log:
                journal.append(event)
            rec = Recorder()
            outcome = await aioflow.Engine(journal).resume(FLOW_ID, build_flow(spec, rec))
        return outcome, rec.count("start")

    async def scenario() -> None:
        _, _, events = await run_once(spec, Recorder())
        k = draw_index(data, len(events), "cut")
        fold = draw_index(data, k, "fold")
        prefix = events[:k]
        folded = snapshot(replay(FLOW_ID, prefix[:fold]), prefix[fold - 1].time)

        plain, plain_runs = await resume(prefix)
        compact, compact_runs = await resume([folded, *prefix[fold:]])

        assert compact.status is plain.status is FlowStatus.SUCCESS
        assert dict(compact.results) == dict(plain.results)
        assert compact_runs == plain_runs
        for name in atom_names(spec):
            assert compact.atoms[name].result == plain.atoms[name].result

    anyio.run(scenario)


def test_the_checkpoints_example_runs() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(root / "examples" / "checkpoints.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "-> SUSPENDED at 'built'" in done.stdout
    assert "-> SUCCESS after 500 rounds" in done.stdout
