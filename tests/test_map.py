"""aioflow.Map: a member copied once per element of a sequence known only at run time."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aioflow
from aioflow import AtomState, FlowStatus, Linear, Map, Retry, Unordered
from aioflow._replay import atom_names, replay
from aioflow.journal import MemoryJournal
from tests.pg import pg_schema, pg_url, sqlite_or_pg_url
from tests.strategies import cut_journal, draw_index

__all__ = ["pg_schema", "pg_url", "sqlite_or_pg_url"]  # fixtures

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def journal_url(sqlite_or_pg_url: str) -> str:
    return sqlite_or_pg_url


class Log:
    """What the tasks did: (what, atom) pairs, and the most copies at once."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.running = 0
        self.peak = 0

    def count(self, what: str) -> Counter[str]:
        return Counter(atom for w, atom in self.lines if w == what)


def album(
    log: Log,
    *,
    fails: set[int] | None = None,
    failures: dict[int, int] | None = None,
    delay: float = 0.0,
    **map_options: Any,
) -> aioflow.Linear:
    """``images`` (from input ``count``) mapped by ``resize`` (the square), then summed.
    Element ``i`` in ``fails`` always raises; ``failures[i]`` times raises first."""
    failures = dict(failures or {})

    @aioflow.task(provides="images")
    async def list_images(count: int) -> list[int]:
        log.lines.append(("list", "list_images"))
        return list(range(count))

    @aioflow.task(provides="thumb")
    async def resize(image: int, context: aioflow.TaskContext) -> int:
        log.lines.append(("start", context.atom))
        log.running += 1
        log.peak = max(log.peak, log.running)
        try:
            await anyio.sleep(delay)
        finally:
            log.running -= 1
        if image in (fails or ()) or failures.get(image, 0) > 0:
            failures[image] = failures.get(image, 0) - 1
            raise ValueError(f"cannot resize {image}")
        return image * image

    @resize.revert
    async def undo(context: aioflow.TaskContext) -> None:
        log.lines.append(("revert", context.atom))

    @aioflow.task(provides="total")
    async def publish(thumbs: list[int]) -> int:
        return sum(thumbs)

    options = {"item": "image", "provides": "thumbs", **map_options}
    return Linear("album", list_images, Map("thumbs", resize, over="images", **options), publish)


async def test_each_element_gets_a_copy_named_by_its_index_and_the_results_keep_order() -> None:
    log = Log()
    async with aioflow.Engine() as engine:
        outcome = await engine.run(album(log, delay=0.001), {"count": 7})
    assert outcome.status is FlowStatus.SUCCESS
    assert outcome.results["thumbs"] == [i * i for i in range(7)]
    assert outcome.results["total"] == sum(i * i for i in range(7))
    assert outcome.atoms["thumbs"].result == 7  # the Map journals how many copies
    assert [outcome.atoms[f"thumbs[{i}]"].result for i in range(7)] == outcome.results["thumbs"]
    assert log.count("start") == Counter(f"thumbs[{i}]" for i in range(7))
    assert log.peak > 1  # concurrently


async def test_an_empty_sequence_provides_an_empty_list_at_once() -> None:
    log = Log()
    async with aioflow.Engine() as engine:
        outcome = await engine.run(album(log), {"count": 0})
    assert outcome.results["thumbs"] == [] and outcome.results["total"] == 0
    assert outcome.atoms["thumbs"].result == 0 and not log.count("start")


async def test_max_parallel_bounds_the_copies_under_way() -> None:
    log = Log()
    async with aioflow.Engine() as engine:
        outcome = await engine.run(album(log, delay=0.005, max_parallel=3), {"count": 20})
    assert outcome.results["thumbs"] == [i * i for i in range(20)]
    assert log.peak == 3


async def test_max_parallel_counts_copies_of_a_flow_not_atoms() -> None:
    running = 0
    peak = 0

    @aioflow.task(provides="a")
    async def first(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.002)
        return x + 1

    @aioflow.task(provides="b")
    async def second(a: int) -> int:
        nonlocal running
        await anyio.sleep(0.002)
        running -= 1
        return a * 10

    member = Linear("each", first, second)
    flow = Linear("f", Map("m", member, over="xs", item="x", provides="out", max_parallel=2))
    async with aioflow.Engine() as engine:
        outcome = await engine.run(flow, {"xs": list(range(9))})
    # A flow member giving two symbols: a dict of them per element.
    assert outcome.results["out"] == [{"a": x + 1, "b": (x + 1) * 10} for x in range(9)]
    assert peak == 2
    assert "m[4].first" in outcome.atoms and "m[4].second" in outcome.atoms


async def test_a_flow_member_providing_one_symbol_gives_its_values() -> None:
    @aioflow.task(provides="y")
    async def double(x: int, offset: int) -> int:  # offset comes from around the Map
        return 2 * x + offset

    @aioflow.task
    async def audit(y: int) -> None:
        return None

    flow = Linear("f", Map("m", Linear("each", double, audit), over="xs", item="x", provides="ys"))
    async with aioflow.Engine() as engine:
        outcome = await engine.run(flow, {"xs": [1, 2, 3], "offset": 100})
    assert outcome.results["ys"] == [102, 104, 106]


async def test_a_failing_copy_reverts_the_finished_copies() -> None:
    log = Log()
    async with aioflow.Engine() as engine:
        with pytest.raises(aioflow.FlowFailedError) as caught:
            await engine.run(album(log, fails={4}, delay=0.001, max_parallel=2), {"count": 8})
    outcome = caught.value.outcome
    assert outcome.status is FlowStatus.REVERTED
    assert "thumbs[4]" in outcome.failures
    assert "cannot resize 4" in str(outcome.failures["thumbs[4]"])
    finished = {f"thumbs[{i}]" for i in range(8) if i != 4 and f"thumbs[{i}]" in log.count("start")}
    assert set(log.count("revert")) >= finished - {"thumbs[4]"}
    assert all(n == 1 for n in log.count("revert").values())
    for name in finished:
        assert outcome.atoms[name].state is AtomState.REVERTED


async def test_a_retry_on_the_map_retries_that_element_alone() -> None:
    log = Log()
    flow = album(log, failures={2: 2}, retry=Retry.times(3))
    async with aioflow.Engine() as engine:
        outcome = await engine.run(flow, {"count": 5})
    assert outcome.results["thumbs"] == [0, 1, 4, 9, 16]
    starts = log.count("start")
    assert starts["thumbs[2]"] == 3
    assert all(starts[f"thumbs[{i}]"] == 1 for i in (0, 1, 3, 4))
    assert outcome.atoms["thumbs[2]"].attempts == 3


async def test_a_map_inside_a_retried_subflow_runs_again_with_it() -> None:
    failures = {3: 1}
    starts: Counter[str] = Counter()

    @aioflow.task(provides="xs")
    async def source() -> list[int]:
        return [1, 2, 3, 4]

    @aioflow.task(provides="y")
    async def step(x: int, context: aioflow.TaskContext) -> int:
        starts[context.atom] += 1
        if failures.get(x, 0) > 0:
            failures[x] -= 1
            raise ValueError(f"not yet {x}")
        return x * 3

    part = Linear("part", source, Map("m", step, over="xs", item="x", provides="ys"))
    part.retry = Retry.times(2)
    async with aioflow.Engine() as engine:
        outcome = await engine.run(Linear("f", part))
    assert outcome.status is FlowStatus.SUCCESS
    assert outcome.results["ys"] == [3, 6, 9, 12]
    assert outcome.atoms["part"].attempts == 2
    assert starts["m[2]"] == 2  # the element that failed, and its siblings, ran again


async def test_maps_nest() -> None:
    @aioflow.task(provides="cells")
    async def cells_of(row: list[int]) -> list[int]:
        return row

    @aioflow.task(provides="v")
    async def times_ten(cell: int, scale: int) -> int:
        return cell * scale

    row = Linear("row", cells_of, Map("cols", times_ten, over="cells", item="cell", provides="vs"))
    flow = Linear("grid", Map("rows", row, over="rows_in", item="row", provides="table"))
    async with aioflow.Engine() as engine:
        outcome = await engine.run(flow, {"rows_in": [[1, 2], [], [3]], "scale": 10})
    assert outcome.results["table"] == [
        {"cells": [1, 2], "vs": [10, 20]},
        {"cells": [], "vs": []},
        {"cells": [3], "vs": [30]},
    ]
    assert outcome.atoms["rows[0].cols[1]"].result == 20
    assert outcome.atoms["rows[2].cols"].result == 1


async def test_a_map_of_ten_thousand_elements() -> None:
    @aioflow.task(provides="y")
    async def inc(x: int) -> int:
        return x + 1

    flow = Linear("f", Map("m", inc, over="xs", item="x", provides="ys"))
    async with aioflow.Engine() as engine:
        outcome = await engine.run(flow, {"xs": list(range(10_000))})
        report = await engine.progress(outcome.flow_id)
    assert outcome.results["ys"] == list(range(1, 10_001))
    assert outcome.atoms["m[9999]"].result == 10_000
    assert report.fraction == 1.0 and len(report.atoms) == 10_001


async def test_the_journal_tells_the_copies_to_outcome_progress_and_show(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'j.db'}"
    log = Log()
    async with aioflow.Engine(url) as engine:
        await engine.run(album(log), {"count": 3}, flow_id="a")
    async with aioflow.Engine(url) as engine:
        outcome = await engine.outcome("a")
        report = await engine.progress("a")
        events = await engine.journal.load("a")
    assert outcome.results["thumbs"] == [0, 1, 4]
    assert [n for n in report.atoms] == [
        "list_images", "thumbs", "thumbs[0]", "thumbs[1]", "thumbs[2]", "publish"
    ]
    state = replay("a", events)
    assert ("thumbs", "map") in atom_names(state.structure, state.atoms)
    assert ("thumbs[2]", "task") in atom_names(state.structure, state.atoms)


async def test_a_resume_neither_reads_the_sequence_again_nor_redoes_finished_copies(
    journal_url: str,
) -> None:
    """The copies of a flow member wait for a message after their first step: the flow
    rests, a new engine resumes it, and only the steps after the wait run."""
    url = journal_url
    starts: Counter[str] = Counter()

    def make() -> aioflow.Flow:
        @aioflow.task(provides="xs")
        async def source() -> list[int]:
            starts["source"] += 1
            return [5, 6, 7]

        @aioflow.task(provides="a")
        async def first(x: int, context: aioflow.TaskContext) -> int:
            starts[context.atom] += 1
            return x + 1

        @aioflow.task(provides="b")
        async def last(a: int, context: aioflow.TaskContext) -> int:
            starts[context.atom] += 1
            return a * 2

        member = Linear("each", first, aioflow.Receive("go", "go"), last)
        return Linear("f", source, Map("m", member, over="xs", item="x", provides="out"))

    async with aioflow.Engine(url) as engine:
        outcome = await engine.run(make(), flow_id="r")
    assert outcome.status is FlowStatus.WAITING
    assert starts == Counter({"source": 1, "m[0].first": 1, "m[1].first": 1, "m[2].first": 1})
    async with aioflow.Engine(url) as engine:
        for _ in range(3):  # one message for each copy's receive
            await engine.send("r", "go", "now")
        outcome = await engine.resume("r", make())
    assert outcome.status is FlowStatus.SUCCESS, outcome.failures
    assert outcome.results["out"] == [{"a": x + 1, "b": (x + 1) * 2} for x in (5, 6, 7)]
    assert starts["source"] == 1 and all(starts[f"m[{i}].first"] == 1 for i in range(3))
    assert all(starts[f"m[{i}].last"] == 1 for i in range(3))


async def test_a_map_killed_mid_way_resumes_without_redoing_finished_copies(
    tmp_path: Path,
) -> None:
    db, ledger = tmp_path / "j.db", tmp_path / "ledger"
    url = f"sqlite:///{db}"
    count = 40
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.map_child", url, str(ledger), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines = ledger.read_text().splitlines() if ledger.exists() else []
            if sum(1 for line in lines if line.startswith("done")) >= 12:
                break
            await anyio.sleep(0.005)
        else:
            pytest.fail(f"the child never got going: {child.stderr and child.stderr.read()!r}")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    async with aioflow.Engine(url) as engine:
        events = await engine.journal.load("album")
        before = replay("album", events)
        committed = {n for n, r in before.atoms.items() if r.state is AtomState.SUCCESS}
        assert 0 < len({n for n in committed if n.startswith("thumbs[")}) < count
        kept = len(ledger.read_text().splitlines())
        while True:
            try:
                outcome = await engine.resume("album")
                break
            except aioflow.FlowBusyError as busy:
                await anyio.sleep(max((busy.expires or 0) - time.time(), 0) + 0.01)
    assert outcome.status is FlowStatus.SUCCESS
    assert outcome.results["thumbs"] == [i * i for i in range(count)]
    after = ledger.read_text().splitlines()
    assert after.count("list") == 1  # the sequence was not computed again
    again = Counter(line.split()[1] for line in after[kept:] if line.startswith("start"))
    assert not {n for n in again if n in committed}, "finished copies ran again"
    assert set(again) | committed >= {f"thumbs[{i}]" for i in range(count)}


# Bad input -----------------------------------------------------------------------------


async def test_over_a_value_that_is_no_sequence_fails_the_map_with_a_type_error() -> None:
    log = Log()
    flow = Linear("f", Map("m", album(log).members[1].members[0], over="xs", item="image"))
    async with aioflow.Engine() as engine:
        for value, hint in [(5, "not int"), ({1, 2}, "a set has no order"), ("abc", "not str")]:
            with pytest.raises(aioflow.FlowFailedError) as caught:
                await engine.run(flow, {"xs": value})
            failure = caught.value.outcome.failures["m"]
            assert failure.exc_type.endswith("TypeError")
            assert "map 'm'" in failure.message and "'xs'" in failure.message
            assert hint in failure.message


def test_bad_definitions_are_refused_with_what_is_wrong() -> None:
    @aioflow.task(provides="image")
    async def makes_image(x: int) -> int:
        return x

    @aioflow.task
    async def noop() -> None:
        return None

    with pytest.raises(ValueError, match="max_parallel must be >= 1"):
        Map("m", noop, over="xs", max_parallel=0)
    with pytest.raises(TypeError, match="max_parallel must be an int"):
        Map("m", noop, over="xs", max_parallel=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a task or a flow"):
        Map("m", lambda: None, over="xs")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="over must be a non-empty symbol"):
        Map("m", noop, over="")
    with pytest.raises(TypeError, match="one member"):
        Map("m", noop, over="xs").add(noop)
    clash = Linear("f", Map("m", makes_image, over="xs", item="image"))
    with pytest.raises(aioflow.InvalidFlowError, match="provides 'image'"):
        aioflow.compile_flow(clash, ["xs", "x"])
    with pytest.raises(aioflow.MissingInputsError) as missing:
        aioflow.compile_flow(Linear("f", Map("m", makes_image, over="xs", item="x")))
    assert "xs" in str(missing.value)
    taken = Linear("f", Map("m", noop, over="xs"), noop.using(name="m[0]"))
    with pytest.raises(aioflow.InvalidFlowError, match=r"'m\[0\]'"):
        aioflow.compile_flow(taken, ["xs"])


# A property: crashes anywhere ------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 4), min_size=0, max_size=6),
    nested=st.booleans(),
    limit=st.one_of(st.none(), st.integers(1, 3)),
    data=st.data(),
)
def test_a_run_cut_at_any_event_resumes_to_the_results_of_an_uninterrupted_one(
    sizes: list[int], nested: bool, limit: int | None, data: st.DataObject
) -> None:
    """For random lists (and Maps in Maps) and a journal cut at a random event, a resume
    ends as the uninterrupted run did, and no copy that had finished runs again."""

    def make(starts: Counter[str]) -> aioflow.Flow:
        @aioflow.task(provides="rows")
        async def source(sizes_in: list[int]) -> list[list[int]]:
            starts["source"] += 1
            return [list(range(n)) for n in sizes_in]

        @aioflow.task(provides="v")
        async def cell(x: int, context: aioflow.TaskContext) -> int:
            starts[context.atom] += 1
            await anyio.sleep(0)
            return x * 7 + 1

        @aioflow.task(provides="s")
        async def total(row: list[int], context: aioflow.TaskContext) -> int:
            starts[context.atom] += 1
            return sum(row)

        if nested:
            @aioflow.task(provides="xs")
            async def cells_of(row: list[int]) -> list[int]:
                return row

            member: aioflow.Task | aioflow.Flow = Linear(
                "row", cells_of, Map("cells", cell, over="xs", item="x", provides="vs")
            )
        else:
            member = total
        mapped = Map("rows", member, over="rows", item="row", provides="out", max_parallel=limit)
        return Linear("f", source, mapped)

    async def scenario() -> None:
        first: Counter[str] = Counter()
        engine = aioflow.Engine(durability="strict")
        outcome = await engine.run(make(first), {"sizes_in": sizes}, flow_id="p")
        events = [e async for e in engine.journal.events("p")]
        prefix, committed = cut_journal(data, events)
        journal = MemoryJournal()
        async with journal:
            for event in prefix:
                journal.append(event)
            second: Counter[str] = Counter()
            resumed = await aioflow.Engine(journal).resume("p", make(second))
        assert resumed.status is FlowStatus.SUCCESS
        assert resumed.results["out"] == outcome.results["out"]
        assert not {a for a in second if a in committed}, "finished work ran again"
        assert set(resumed.atoms) == set(outcome.atoms)

    anyio.run(scenario)


async def test_a_map_in_an_unordered_runs_beside_its_siblings() -> None:
    @aioflow.task(provides="y")
    async def inc(x: int) -> int:
        return x + 1

    @aioflow.task(provides="other")
    async def other() -> str:
        return "ok"

    flow = Unordered("u", Map("m", inc, over="xs", item="x", provides="ys"), other)
    async with aioflow.Engine() as engine:
        outcome = await engine.run(flow, {"xs": [1, 2]})
    assert outcome.results["ys"] == [2, 3] and outcome.results["other"] == "ok"


async def test_a_flow_resting_mid_map_migrates_when_the_map_stays_as_it_was(
    journal_url: str,
) -> None:
    url = journal_url

    @aioflow.task(provides="a")
    async def first(x: int) -> int:
        return x + 1

    @aioflow.task(provides="z")
    async def extra(a: int) -> int:
        return a

    @aioflow.task(provides="report")
    async def report(out: list[dict[str, Any]]) -> int:
        return len(out)

    def make(*after: aioflow.Task, name: str = "m", more: bool = False) -> aioflow.Flow:
        member = Linear("each", first, aioflow.Receive("go", "go"), *([extra] if more else []))
        return Linear("f", Map(name, member, over="xs", item="x", provides="out"), *after)

    async with aioflow.Engine(url) as engine:
        outcome = await engine.run(make(), {"xs": [1, 2]}, flow_id="g")
        assert outcome.status is FlowStatus.WAITING
        changed = await engine.check_migration("g", make(report, more=True))
        assert any("map 'm' has grown its copies" in c for c in changed)
        renamed = await engine.check_migration("g", make(report, name="n"), renames={"m": "n"})
        assert any("cannot be renamed" in c for c in renamed)
        assert await engine.check_migration("g", make(report)) == []
        outcome = await engine.resume("g", make(report), migrate=True)
        assert outcome.status is FlowStatus.WAITING
        for _ in range(2):
            await engine.send("g", "go", "ok")
        outcome = await engine.wait("g")
    assert outcome.status is FlowStatus.SUCCESS
    assert outcome.results["report"] == 2
    assert outcome.results["out"] == [2, 3]  # the member provides one symbol: its values


async def test_the_copies_of_a_flow_member_have_their_own_checkpoints_and_retries() -> None:
    tries: Counter[str] = Counter()

    @aioflow.task(provides="a")
    async def prepare(x: int) -> int:
        return x

    @aioflow.task(provides="b")
    async def flaky(a: int, context: aioflow.TaskContext) -> int:
        tries[context.atom] += 1
        if a == 1 and tries[context.atom] == 1:
            raise ValueError("once")
        return a * 100

    member = Linear("each", prepare, aioflow.Checkpoint("ready", retry=Retry.times(2)), flaky)
    flow = Linear("f", Map("m", member, over="xs", item="x", provides="out"))
    async with aioflow.Engine() as engine:
        outcome = await engine.run(flow, {"xs": [0, 1, 2]})
    assert outcome.status is FlowStatus.SUCCESS, outcome.failures
    assert [o["b"] for o in outcome.results["out"]] == [0, 100, 200]
    assert tries == Counter({"m[0].flaky": 1, "m[1].flaky": 2, "m[2].flaky": 1})
    assert outcome.atoms["m[1].ready"].state is AtomState.SUCCESS


async def test_a_part_run_again_over_a_sequence_of_another_length() -> None:
    lengths = [3, 1, 4]
    attempts: Counter[str] = Counter()

    @aioflow.task(provides="xs")
    async def source() -> list[int]:
        return list(range(lengths.pop(0)))

    @aioflow.task(provides="y")
    async def step(x: int, context: aioflow.TaskContext) -> int:
        attempts[context.atom] += 1
        if len(lengths) > 0 and x == 0:
            raise ValueError("again")
        return x + 10

    part = Linear("part", source, Map("m", step, over="xs", item="x", provides="ys"))
    part.retry = Retry.times(3)
    async with aioflow.Engine() as engine:
        outcome = await engine.run(Linear("f", part))
    assert outcome.status is FlowStatus.SUCCESS, outcome.failures
    assert outcome.results["ys"] == [10, 11, 12, 13]
    assert outcome.atoms["part"].attempts == 3


def test_the_album_example_runs_as_a_user_would_run_it(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parent.parent / "examples" / "album.py"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "album.db")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "album SUCCESS: 10 images" in done.stdout
    assert "10 copies of resize, progress 100%" in done.stdout
    assert "thumbs[9] done" in done.stdout


async def test_a_decider_inside_a_copy_sees_the_member_s_own_names() -> None:
    @aioflow.task(provides="size")
    async def measure(x: int) -> int:
        return x

    @aioflow.task(provides="big")
    async def shout(size: int) -> str:
        return f"big {size}"

    member = aioflow.Graph("each", measure, shout).link(
        "measure", "shout", decider=lambda results: results["measure"] > 1
    )
    flow = Linear("f", Map("m", member, over="xs", item="x", provides="out"))
    async with aioflow.Engine() as engine:
        outcome = await engine.run(flow, {"xs": [1, 2, 3]})
    assert outcome.status is FlowStatus.SUCCESS, outcome.failures
    assert outcome.atoms["m[0].shout"].state is AtomState.IGNORED
    assert [o.get("big") for o in outcome.results["out"]] == [None, "big 2", "big 3"]


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(1, 6),
    failing=st.integers(0, 5),
    limit=st.one_of(st.none(), st.integers(1, 3)),
    data=st.data(),
)
def test_a_failed_map_cut_at_any_event_reverts_each_finished_copy_once(
    size: int, failing: int, limit: int | None, data: st.DataObject
) -> None:
    failing %= size

    def make(log: list[tuple[str, str]]) -> aioflow.Flow:
        @aioflow.task(provides="xs")
        async def source() -> list[int]:
            return list(range(size))

        @aioflow.task(provides="y")
        async def work(x: int, context: aioflow.TaskContext) -> int:
            log.append(("run", context.atom))
            await anyio.sleep(0)
            if x == failing:
                raise ValueError(f"element {x}")
            return x

        @work.revert
        async def undo(context: aioflow.TaskContext) -> None:
            log.append(("revert", context.atom))

        return Linear("f", source, Map("m", work, over="xs", item="x", max_parallel=limit))

    async def scenario() -> None:
        first: list[tuple[str, str]] = []
        engine = aioflow.Engine(durability="strict")
        with pytest.raises(aioflow.FlowFailedError) as caught:
            await engine.run(make(first), flow_id="p")
        assert caught.value.outcome.status is FlowStatus.REVERTED
        events = [e async for e in engine.journal.events("p")]
        prefix = events[: draw_index(data, len(events), "cut")]
        done = {e.atom for e in prefix if e.state in (AtomState.SUCCESS, AtomState.REVERTED)}
        undone = {e.atom for e in prefix if e.state is AtomState.REVERTED}
        journal = MemoryJournal()
        async with journal:
            for event in prefix:
                journal.append(event)
            second: list[tuple[str, str]] = []
            with pytest.raises(aioflow.FlowFailedError) as again:
                await aioflow.Engine(journal).resume("p", make(second))
        outcome = again.value.outcome
        assert outcome.status is FlowStatus.REVERTED
        assert f"m[{failing}]" in outcome.failures
        ran = [a for w, a in second if w == "run"]
        assert not set(ran) & done, "a finished copy ran again"
        reverted = Counter(a for w, a in second if w == "revert")
        assert not set(reverted) & undone and all(n == 1 for n in reverted.values())
        for name, atom in outcome.atoms.items():
            if name.startswith("m[") and name != f"m[{failing}]":
                assert atom.state in (AtomState.REVERTED, AtomState.PENDING), name

    anyio.run(scenario)


async def test_a_flow_moves_back_to_a_checkpoint_of_one_copy(journal_url: str) -> None:
    runs: Counter[str] = Counter()

    @aioflow.task(provides="a")
    async def prep(x: int, context: aioflow.TaskContext) -> int:
        runs[context.atom] += 1
        return x

    @aioflow.task(provides="b")
    async def finish(a: int, context: aioflow.TaskContext) -> int:
        runs[context.atom] += 1
        return a * 10

    @finish.revert
    async def undo(context: aioflow.TaskContext) -> None:
        runs[f"undo {context.atom}"] += 1

    @aioflow.task(provides="t")
    async def total(out: list[Any]) -> int:
        return len(out)

    def make() -> aioflow.Flow:
        member = Linear("each", prep, aioflow.Checkpoint("ready"), finish)
        mapped = Map("m", member, over="xs", item="x", provides="out")
        return Linear("f", mapped, aioflow.Checkpoint("end"), total)

    async with aioflow.Engine(journal_url) as engine:
        outcome = await engine.run(make(), {"xs": [1, 2, 3]}, stop_at="end")
        assert outcome.status is FlowStatus.SUSPENDED
        outcome = await engine.revert_to(outcome.flow_id, "m[1].ready", make())
        assert outcome.checkpoint == "m[1].ready"
        assert outcome.atoms["m[1].finish"].state is AtomState.PENDING
        assert outcome.atoms["m[0].finish"].state is AtomState.SUCCESS
        outcome = await engine.resume(outcome.flow_id, make())
    assert outcome.results["out"] == [{"a": x, "b": 10 * x} for x in (1, 2, 3)]
    assert runs["m[1].finish"] == 2 and runs["undo m[1].finish"] == 1
    assert runs["m[0].finish"] == 1 and runs["m[1].prep"] == 1


async def test_a_registered_flow_with_a_map_is_built_twice_under_new_names() -> None:
    @aioflow.task(provides="y")
    async def inc(x: int) -> int:
        return x + 1

    registry = aioflow.Registry()
    entry = registry.register(
        Linear("fan", Map("m", inc, over="xs", item="x", provides="ys")), "fan"
    )
    first, second = entry.build(), entry.build()  # the second's atoms are renamed
    flow = Linear("both", first, Linear("again", second))
    async with aioflow.Engine() as engine:
        outcome = await engine.run(flow, {"xs": [1, 2]})
    assert outcome.status is FlowStatus.SUCCESS
    maps = [name for name in outcome.atoms if "[" not in name and name.startswith("m")]
    assert len(maps) == 2 and outcome.results["ys"] == [2, 3]


async def test_a_watch_that_stops_reading_never_breaks_the_flow() -> None:
    gate = anyio.Event()

    @aioflow.task(provides="y")
    async def step(x: int) -> int:
        await gate.wait()
        return x

    flow = Linear("f", Map("m", step, over="xs", item="x", provides="ys"))
    async with aioflow.Engine() as engine:
        handle = await engine.start(flow, {"xs": [1, 2, 3]})
        await anyio.sleep(0.1)  # the copies run (and wait): the watch is of the live run
        async with contextlib.aclosing(engine.watch(handle.flow_id)) as events:
            async for _event in events:
                break  # the reader goes away; the flow emits on
        gate.set()
        outcome = await handle.wait()
    assert outcome.results["ys"] == [1, 2, 3]


async def test_each_copy_has_its_own_deadline_and_the_rest_revert_once() -> None:
    reverts: Counter[str] = Counter()

    @aioflow.task(provides="y")
    async def work(x: int) -> int:
        await anyio.sleep(5 if x == 2 else 0.01)
        return x

    @work.revert
    async def undo(context: aioflow.TaskContext) -> None:
        reverts[context.atom] += 1

    member = Linear("each", work)
    flow = Linear("f", Map("m", member, over="xs", item="x", provides="ys", timeout=0.3))
    async with aioflow.Engine() as engine:
        with anyio.fail_after(4), pytest.raises(aioflow.FlowFailedError) as caught:
            await engine.run(flow, {"xs": [1, 2, 3]})
    outcome = caught.value.outcome
    assert outcome.status is FlowStatus.REVERTED
    assert outcome.failures["m[1]"].matches(aioflow.DeadlineExceededError)
    # The copies that finished are reverted once each (a join that ended a copy used to
    # free them twice), and the copy past its deadline with them.
    assert reverts == Counter({"m[0].work": 1, "m[1].work": 1, "m[2].work": 1})
