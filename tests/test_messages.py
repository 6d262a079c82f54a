"""Messages: Receive members and engine.send, with a journaled mailbox."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

import aioflow
from aioflow import AtomState, FlowStatus
from aioflow.testing import FakeClock

from .pg import pg_schema, pg_url

__all__ = ["pg_schema", "pg_url"]

PROJECT = Path(__file__).resolve().parent.parent


def receivers(n: int, topic: str = "t") -> list[aioflow.Task]:
    return [aioflow.Receive(f"r{i}", topic, provides=f"m{i}") for i in range(n)]


async def rested(engine: aioflow.Engine, flow_id: str, status: FlowStatus) -> aioflow.Outcome:
    with anyio.fail_after(10):
        while True:
            outcome = await engine.outcome(flow_id)
            if outcome.status is status:
                return outcome
            await anyio.sleep(0.01)


async def test_messages_are_taken_in_the_order_sent_even_when_sent_early(
    journal_url: str,
) -> None:
    flow = aioflow.Linear("inbox", *receivers(3))
    async with aioflow.Engine(journal_url) as engine:
        handle = await engine.start(flow, flow_id="f")
        await engine.send("f", "t", "one")  # before any receive may have opened
        await engine.send("f", "t", {"two": 2})
        await engine.send("f", "t", [3])
        with anyio.fail_after(10):
            outcome = await handle.wait()
    assert outcome.results == {"m0": "one", "m1": {"two": 2}, "m2": [3]}


async def test_concurrent_receives_on_one_topic_each_take_another_message() -> None:
    flow = aioflow.Unordered("inbox", *receivers(4))
    async with aioflow.Engine() as engine:
        handle = await engine.start(flow, flow_id="f")
        for i in range(4):
            await engine.send("f", "t", i)
        with anyio.fail_after(10):
            outcome = await handle.wait()
    assert sorted(outcome.results.values()) == [0, 1, 2, 3]


async def test_topics_are_separate_and_a_message_waits_for_its_receive() -> None:
    flow = aioflow.Linear(
        "two",
        aioflow.Receive("a", "alpha", provides="a"),
        aioflow.Receive("b", "beta", provides="b"),
    )
    async with aioflow.Engine() as engine:
        handle = await engine.start(flow, flow_id="f")
        await engine.send("f", "beta", "B")
        outcome = await rested(engine, "f", FlowStatus.WAITING)
        assert outcome.atoms["a"].state is AtomState.WAITING
        await engine.send("f", "alpha", "A")
        with anyio.fail_after(10):
            outcome = await handle.wait()
    assert outcome.results == {"a": "A", "b": "B"}


async def test_an_idempotent_send_is_kept_once() -> None:
    flow = aioflow.Linear("inbox", *receivers(2))
    async with aioflow.Engine() as engine:
        handle = await engine.start(flow, flow_id="f")
        await engine.send("f", "t", "first", idempotency_key="k1")
        await engine.send("f", "t", "again", idempotency_key="k1")
        await engine.send("f", "t", "second", idempotency_key="k2")
        with anyio.fail_after(10):
            outcome = await handle.wait()
    assert outcome.results == {"m0": "first", "m1": "second"}


async def test_send_to_an_unknown_or_ended_flow_is_refused() -> None:
    @aioflow.task
    async def nothing() -> None:
        pass

    async with aioflow.Engine() as engine:
        with pytest.raises(aioflow.NotFoundError):
            await engine.send("nope", "t", 1)
        await engine.run(aioflow.Linear("done", nothing), flow_id="done")
        with pytest.raises(aioflow.AioflowError, match="has ended"):
            await engine.send("done", "t", 1)
        with pytest.raises(ValueError, match="topic"):
            await engine.send("done", "", 1)


async def test_a_receive_past_its_timeout_fails() -> None:
    clock = FakeClock()
    flow = aioflow.Linear("late", aioflow.Receive("r", "t", timeout=60))
    async with aioflow.Engine(clock=clock.now, sleep=clock.sleep) as engine:
        handle = await engine.start(flow, flow_id="f")
        await rested(engine, "f", FlowStatus.WAITING)
        clock.advance(61)
        with anyio.fail_after(10), pytest.raises(aioflow.FlowFailedError) as caught:
            await handle.wait()
    assert caught.value.outcome.failures["r"].matches(aioflow.ExternalTimeoutError)


async def test_a_send_to_a_resting_flow_is_delivered_and_survives_resumes(sqlite_url: str) -> None:
    flow = aioflow.Linear("inbox", *receivers(2))
    engine = aioflow.Engine(sqlite_url)  # not entered: nothing wakes the flow
    outcome = await engine.run(flow, flow_id="f")
    assert outcome.status is FlowStatus.WAITING
    await engine.send("f", "t", "one")
    await engine.send("f", "t", "two")
    outcome = await engine.outcome("f")
    assert outcome.atoms["r0"].state is AtomState.SUCCESS  # recorded by the send
    outcome = await engine.resume("f", flow)
    # r1 opens after the resume and takes the second message, never the first again.
    assert outcome.status is FlowStatus.SUCCESS
    assert outcome.results == {"m0": "one", "m1": "two"}


async def test_a_send_wakes_a_resting_flow_in_an_entered_engine(sqlite_url: str) -> None:
    flow = aioflow.Linear("inbox", *receivers(1))
    async with aioflow.Engine(sqlite_url) as engine:
        outcome = await engine.run(flow, flow_id="f")
        assert outcome.status is FlowStatus.WAITING
        await engine.send("f", "t", "hello")
        outcome = await rested(engine, "f", FlowStatus.SUCCESS)
    assert outcome.results == {"m0": "hello"}


SENDER = textwrap.dedent(
    """
    import sys, anyio, aioflow

    async def main(journal, name, count):
        async with aioflow.Engine(journal) as engine:
            for i in range(count):
                await engine.send("f", "t", f"{name}-{i}", idempotency_key=f"{name}-{i}")
                # Every message twice: a retried send must not deliver twice.
                await engine.send("f", "t", f"{name}-{i}", idempotency_key=f"{name}-{i}")

    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
    """
)


@pytest.fixture(params=["sqlite", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A journal several processes share: a SQLite file, a PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mail.db'}"
    return str(request.getfixturevalue("pg_url"))


async def test_the_mailbox_on_postgres(pg_url: str) -> None:
    flow = aioflow.Linear("inbox", *receivers(2))
    async with aioflow.Engine(pg_url) as engine:
        outcome = await engine.run(flow, flow_id="f")
        assert outcome.status is FlowStatus.WAITING
        await engine.send("f", "t", "one", idempotency_key="a")
        await engine.send("f", "t", "one again", idempotency_key="a")
        await engine.send("f", "t", "two")
        outcome = await rested(engine, "f", FlowStatus.SUCCESS)
        assert outcome.results == {"m0": "one", "m1": "two"}
        with pytest.raises(aioflow.NotFoundError):
            await engine.send("nope", "t", 1)


async def test_sends_from_several_processes_are_all_delivered_once_in_order(
    shared_url: str,
) -> None:
    journal = shared_url
    senders, each = 3, 15
    flow = aioflow.Linear("inbox", *receivers(senders * each))
    async with aioflow.Engine(journal) as engine:
        handle = await engine.start(flow, flow_id="f")
        await anyio.sleep(0.1)
        async with anyio.create_task_group() as tg:
            for s in range(senders):
                tg.start_soon(
                    anyio.run_process,
                    [sys.executable, "-c", SENDER, journal, f"s{s}", str(each)],
                )
        with anyio.fail_after(60):
            outcome = await handle.wait()
    taken = [outcome.results[f"m{i}"] for i in range(senders * each)]
    assert sorted(taken) == sorted(f"s{s}-{i}" for s in range(senders) for i in range(each))
    for s in range(senders):  # each sender's messages in the order it sent them
        mine = [m for m in taken if m.startswith(f"s{s}-")]
        assert mine == [f"s{s}-{i}" for i in range(each)]


def test_bad_receives_are_refused() -> None:
    with pytest.raises(ValueError, match="topic"):
        aioflow.Receive("r", "")
    with pytest.raises(ValueError, match="timeout"):
        aioflow.Receive("r", "t", timeout=-1)


def test_the_example_trial_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(PROJECT / "examples" / "trial.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ann: SUCCESS, invoice-ann" in done.stdout
    assert "bob: REVERTED" in done.stdout
    assert "the trial of bob ends" in done.stdout and "the trial of ann" not in done.stdout


async def test_a_message_beyond_max_value_bytes_is_refused_and_nothing_is_stored() -> None:
    async with aioflow.Engine(max_value_bytes=1000) as engine:
        handle = await engine.start(aioflow.Linear("inbox", aioflow.Receive("r", "t")))
        await engine.wait(handle.flow_id)
        with pytest.raises(aioflow.SerializationError, match="beyond the engine's max_value"):
            await engine.send(handle.flow_id, "t", "x" * 5000)
        await engine.send(handle.flow_id, "t", "small")
        outcome = await handle.wait()
    assert outcome.atoms["r"].result == "small"  # the big one never reached the mailbox


async def test_a_run_of_an_engine_that_is_not_entered_takes_messages_while_it_runs(
    tmp_path: Path,
) -> None:
    """The run stays live (a slow branch); a message sent from another engine reaches
    its receive while it runs, through the run's own mailbox poll."""
    url = f"sqlite:///{tmp_path / 'j.db'}"
    taken = anyio.Event()

    @aioflow.task
    async def slow() -> None:
        with anyio.fail_after(20):
            await taken.wait()

    def saw(event: aioflow.Event) -> None:
        if event.atom == "r" and event.state is aioflow.AtomState.SUCCESS:
            taken.set()

    runner = aioflow.Engine(url, listeners=[saw])
    flow = aioflow.Linear("both", aioflow.Unordered("b", slow, aioflow.Receive("r", "t")))
    result: dict[str, aioflow.Outcome] = {}

    async def run() -> None:
        result["outcome"] = await runner.run(flow, flow_id="live")

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        async with aioflow.Engine(url) as sender:
            with anyio.fail_after(10):
                while True:
                    try:
                        await sender.send("live", "t", "hello")
                        break
                    except aioflow.NotFoundError:
                        await anyio.sleep(0.02)
    assert result["outcome"].status is aioflow.FlowStatus.SUCCESS
    assert result["outcome"].atoms["r"].result == "hello"
