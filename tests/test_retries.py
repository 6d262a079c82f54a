"""Retries on tasks, flows and checkpoints: what runs again, what is reverted, what is
journaled, and that a resume (also after a real SIGKILL) continues the attempt count."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import aioflow
from aioflow import AtomState, Checkpoint, EventKind, FlowStatus, Linear, Retry, Unordered
from aioflow._replay import replay
from tests.crash_child import resume_orphan

LOG: list[str] = []
"""``name`` for an execution, ``undo name`` for a revert, in order."""
FAILS: Counter[str] = Counter()
"""How many more times each task fails before it succeeds."""


class Boom(Exception):
    """What a failing task raises."""


@pytest.fixture(autouse=True)
def fresh() -> None:
    LOG.clear()
    FAILS.clear()


def step(name: str, *, retry: Retry | None = None) -> aioflow.Task:
    """Task ``name`` providing ``name``; fails while ``FAILS[name]`` is positive."""

    async def run() -> str:
        LOG.append(name)
        if FAILS[name] > 0:
            FAILS[name] -= 1
            raise Boom(f"{name} failed")
        return name

    made = aioflow.task(name=name, provides=name, retry=retry)(run)

    @made.revert
    async def undo() -> None:
        LOG.append(f"undo {name}")

    return made


class Sleeps:
    """An injected sleep that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await anyio.lowlevel.checkpoint()


# -------------------------------------------------------------------------- on a task


class TestTaskRetry:
    async def test_a_task_runs_again_until_it_succeeds_and_attempts_are_counted(
        self, journal_url: str
    ) -> None:
        FAILS["flaky"] = 2
        engine = aioflow.Engine(journal_url)
        flow = Linear("f", step("before"), step("flaky", retry=Retry.times(3)), step("after"))

        outcome = await engine.run(flow, flow_id="f")

        assert LOG == ["before", "flaky", "flaky", "flaky", "after"]
        assert outcome.atoms["flaky"].attempts == 3
        states = [e.state for e in await engine.journal.load("f") if e.atom == "flaky" and e.state]
        assert states == [
            AtomState.RUNNING,
            AtomState.FAILURE,
            AtomState.RETRYING,
            AtomState.RUNNING,
            AtomState.FAILURE,
            AtomState.RETRYING,
            AtomState.RUNNING,
            AtomState.SUCCESS,
        ]

    async def test_after_the_last_attempt_the_flow_reverts_with_the_last_error(self) -> None:
        FAILS["flaky"] = 5
        flow = Linear("f", step("before"), step("flaky", retry=Retry.times(3)))

        with pytest.raises(aioflow.FlowFailedError) as info:
            await aioflow.Engine().run(flow)

        assert LOG == ["before", "flaky", "flaky", "flaky", "undo flaky", "undo before"]
        assert info.value.failures["flaky"].matches(Boom)
        assert info.value.outcome.atoms["flaky"].attempts == 3

    async def test_backoff_doubles_up_to_its_cap_through_the_injected_sleep(self) -> None:
        FAILS["flaky"] = 4
        sleeps = Sleeps()
        retry = Retry.times(5, backoff=1.0, max_backoff=5.0)

        await aioflow.Engine(sleep=sleeps).run(Linear("f", step("flaky", retry=retry)))

        assert sleeps.delays == [1.0, 2.0, 4.0, 5.0]

    async def test_jitter_draws_from_the_injected_random_source(self) -> None:
        FAILS["flaky"] = 2
        sleeps = Sleeps()
        retry = Retry.times(3, backoff=2.0, jitter=True, rng=random.Random(7))
        expected = random.Random(7)

        await aioflow.Engine(sleep=sleeps).run(Linear("f", step("flaky", retry=retry)))

        assert sleeps.delays == [
            2.0 * (0.5 + 0.5 * expected.random()),
            4.0 * (0.5 + 0.5 * expected.random()),
        ]

    async def test_only_matching_errors_are_retried(self) -> None:
        FAILS["flaky"] = 1
        flow = Linear("f", step("flaky", retry=Retry.times(3, on=(KeyError,))))

        with pytest.raises(aioflow.FlowFailedError):
            await aioflow.Engine().run(flow)

        assert LOG.count("flaky") == 1


# -------------------------------------------------------------------------- on a flow


class TestFlowRetry:
    async def test_only_the_retried_subflow_is_reverted_and_run_again(
        self, journal_url: str
    ) -> None:
        FAILS["inner_b"] = 1
        flow = Linear(
            "outer",
            step("before"),
            Linear("inner", step("inner_a"), step("inner_b"), retry=Retry.times(2)),
            step("after"),
        )

        outcome = await aioflow.Engine(journal_url).run(flow)

        assert outcome.status is FlowStatus.SUCCESS
        assert LOG == [
            "before",
            "inner_a",
            "inner_b",
            "undo inner_b",
            "undo inner_a",
            "inner_a",
            "inner_b",
            "after",
        ]
        assert outcome.atoms["inner"].attempts == 2

    async def test_when_the_inner_retry_gives_up_the_outer_one_takes_over(self) -> None:
        FAILS["deep"] = 2  # the inner retry allows 1 execution, the outer 3
        flow = Linear(
            "outer",
            step("before"),
            Linear(
                "middle",
                step("mid"),
                Linear("inner", step("deep"), retry=Retry.times(1)),
                retry=Retry.times(3),
            ),
        )

        outcome = await aioflow.Engine().run(flow)

        assert outcome.status is FlowStatus.SUCCESS
        assert LOG.count("before") == 1
        assert LOG.count("mid") == 3
        assert LOG.count("undo mid") == 2
        assert LOG.count("deep") == 3

    async def test_without_an_enclosing_retry_the_whole_flow_reverts(self) -> None:
        FAILS["inner_b"] = 9
        flow = Linear(
            "outer",
            step("before"),
            Linear("inner", step("inner_a"), step("inner_b"), retry=Retry.times(2)),
            step("after"),
        )

        with pytest.raises(aioflow.FlowFailedError) as info:
            await aioflow.Engine().run(flow)

        assert "after" not in LOG
        assert LOG[-3:] == ["undo inner_b", "undo inner_a", "undo before"]
        assert info.value.failures["inner_b"].message == "inner_b failed"

    async def test_revert_all_reverts_everything_and_runs_the_whole_flow_again(self) -> None:
        FAILS["inner_b"] = 1
        flow = Linear(
            "outer",
            step("before"),
            Linear("inner", step("inner_a"), step("inner_b")),
            retry=Retry.times(2, revert_all=True),
        )

        outcome = await aioflow.Engine().run(flow)

        assert outcome.status is FlowStatus.SUCCESS
        assert LOG.count("before") == 2
        assert "undo before" in LOG

    async def test_for_each_publishes_the_next_value_on_every_attempt(self) -> None:
        tried: list[str] = []

        @aioflow.task(provides="mirror")
        async def fetch(url: str) -> str:
            tried.append(url)
            if url != "c":
                raise Boom(f"{url} is down")
            return url

        flow = Linear(
            "download",
            Linear("try-mirrors", fetch, retry=Retry.for_each(["a", "b", "c"], provides="url")),
        )

        outcome = await aioflow.Engine().run(flow)

        assert tried == ["a", "b", "c"]
        assert outcome["mirror"] == "c"

    def test_for_each_with_no_values_is_refused_when_the_flow_is_compiled(self) -> None:
        flow = Linear("f", Linear("empty", step("x"), retry=Retry.for_each([], provides="v")))

        with pytest.raises(aioflow.InvalidFlowError, match="at least one value"):
            aioflow.compile_flow(flow)

    async def test_an_unordered_subflow_retry_reruns_every_member(self) -> None:
        FAILS["left"] = 1
        flow = Linear("f", Unordered("pair", step("left"), step("right"), retry=Retry.times(2)))

        await aioflow.Engine().run(flow)

        assert LOG.count("left") == 2 and LOG.count("right") == 2


# -------------------------------------------------------------------- on a checkpoint


class TestCheckpointRetry:
    async def test_a_failure_after_the_checkpoint_goes_back_to_it_and_runs_on(self) -> None:
        FAILS["deploy"] = 2
        flow = Linear(
            "release",
            step("build"),
            Checkpoint("built", retry=Retry.times(3)),
            step("test"),
            step("deploy"),
        )

        outcome = await aioflow.Engine().run(flow)

        assert outcome.status is FlowStatus.SUCCESS
        assert LOG.count("build") == 1
        assert LOG.count("test") == 3
        assert LOG.count("undo test") == 2
        assert outcome.atoms["built"].attempts == 3

    async def test_after_its_last_attempt_the_normal_failure_path_follows(self) -> None:
        FAILS["deploy"] = 9
        flow = Linear(
            "release", step("build"), Checkpoint("built", retry=Retry.times(2)), step("deploy")
        )

        with pytest.raises(aioflow.FlowFailedError):
            await aioflow.Engine().run(flow)

        assert LOG.count("deploy") == 2
        assert LOG[-1] == "undo build"


# ---------------------------------------------------------------------------- resuming


async def test_a_resume_continues_the_attempt_count_and_the_backoff_owed(sqlite_url: str) -> None:
    FAILS["flaky"] = 3
    now = [1000.0]
    sleeps: list[float] = []
    cancelled = anyio.Event()

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        cancelled.set()
        await anyio.sleep_forever()  # the process "dies" during the backoff

    flow = Linear("f", step("flaky", retry=Retry.times(5, backoff=10.0)))
    async with anyio.create_task_group() as tg:

        async def kill_when_sleeping() -> None:
            await cancelled.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(kill_when_sleeping)
        await aioflow.Engine(sqlite_url, clock=lambda: now[0], sleep=sleep).run(flow, flow_id="f")
    assert sleeps == [10.0]
    now[0] += 4.0  # four of the ten seconds owed have passed
    waited: list[float] = []

    async def record(seconds: float) -> None:
        waited.append(seconds)

    outcome = await aioflow.Engine(sqlite_url, clock=lambda: now[0], sleep=record).resume("f", flow)

    assert outcome.atoms["flaky"].attempts == 4
    assert waited[0] == pytest.approx(6.0)
    assert waited[1:] == [20.0, 40.0]


# -------------------------------------------------------- a real process, killed mid-retry

CHILD = """
import sys, anyio, aioflow
anyio.run(
    lambda: aioflow.Engine(sys.argv[1], lease=0.5).run("tests.test_retries:flaky_flow", flow_id="k")
)
"""


def _attempts_file() -> Path:
    return Path(os.environ["AIOFLOW_RETRY_DIR"]) / "attempts"


@aioflow.task(provides="value", retry=Retry.times(6))
async def flaky_in_child() -> str:
    """Fails on its first three attempts (counted in a file, across processes), then
    hangs on the fourth in the first process, so the parent can kill it there."""
    path = _attempts_file()
    count = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(count))
    if count <= 3:
        raise Boom(f"attempt {count}")
    if os.environ.get("AIOFLOW_RETRY_HANG") == "1":
        await anyio.sleep_forever()
    return f"done on execution {count}"


def flaky_flow() -> Linear:
    return Linear("killed-retry", flaky_in_child)


@pytest.mark.slow
async def test_retries_resumed_after_a_real_sigkill_continue_their_attempt_count(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/journal.db"
    env = {
        **os.environ,
        "AIOFLOW_RETRY_DIR": str(tmp_path),
        "AIOFLOW_RETRY_HANG": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    child = subprocess.Popen([sys.executable, "-c", CHILD, url], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "attempts").exists() or (tmp_path / "attempts").read_text() != "4":
            assert child.poll() is None, "the child ended before its fourth attempt"
            assert time.monotonic() < deadline
            await anyio.sleep(0.01)
        await anyio.sleep(0.05)  # let the RUNNING of attempt 4 be committed
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    async with aioflow.open_journal(url) as journal:
        before = replay("k", await journal.load("k"))
    assert before.atoms["flaky_in_child"].attempt == 4
    os.environ["AIOFLOW_RETRY_DIR"] = str(tmp_path)
    try:
        outcome = await resume_orphan(aioflow.Engine(url), "k")
    finally:
        del os.environ["AIOFLOW_RETRY_DIR"]

    assert outcome.status is FlowStatus.SUCCESS
    assert outcome.atoms["flaky_in_child"].attempts == 5  # 4 before the kill, not 1 again
    assert outcome["value"] == "done on execution 5"
    async with aioflow.open_journal(url) as journal:
        events = await journal.load("k")
    runs = [
        e.attempt for e in events if e.atom == "flaky_in_child" and e.state is AtomState.RUNNING
    ]
    assert runs == [1, 2, 3, 4, 5]
    assert [e for e in events if e.kind is EventKind.FLOW][-1].state is FlowStatus.SUCCESS
