"""External waits: resting WAITING, completing by token, waking once, the watchdog."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioflow
from aioflow import AtomState, EventKind, FlowStatus

SECRET = "test-secret"

# Flows built by reference ("tests.test_external:...") so that any engine can wake them.
CALLS: dict[str, int] = {}
TOKENS: list[str] = []
REVERTED: list[Any] = []


def _count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    TOKENS.clear()
    REVERTED.clear()


@aioflow.task(provides="approval")
async def ask(doc: str, external: aioflow.External) -> object:
    _count("ask")
    TOKENS.append(external.token)
    return external.wait(timeout=3600, info={"doc": doc})


@ask.revert
async def forget(result: object) -> None:
    REVERTED.append(result)


@aioflow.task(provides="done")
async def after(approval: str) -> str:
    _count("after")
    return f"done:{approval}"


@aioflow.task(provides="side")
async def side() -> int:
    _count("side")
    return 1


def approval_flow() -> aioflow.Linear:
    return aioflow.Linear("approval", aioflow.Unordered("fan", ask, side), after)


def two_waits_flow() -> aioflow.Linear:
    second = ask.using(name="ask2", provides="approval2")
    both = aioflow.Unordered("both", ask, second)
    return aioflow.Linear("two", both, after)


def short_wait_flow() -> aioflow.Linear:
    @aioflow.task(provides="approval")
    async def brief(external: aioflow.External) -> object:
        _count("brief")
        TOKENS.append(external.token)
        return external.wait(timeout=0.05)

    return aioflow.Linear("short", brief, after)


def retried_wait_flow() -> aioflow.Linear:
    return aioflow.Linear("retried", ask.using(retry=aioflow.Retry.times(2)), after)


REF = "tests.test_external:approval_flow"


async def journal_bytes(path: Path) -> bytes:
    data = b""
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        p = path.parent / name
        if p.exists():
            data += p.read_bytes()
    return data


async def settled(engine: aioflow.Engine, flow_id: str) -> aioflow.Outcome:
    """The flow's outcome once a background wake-up has taken it to its end."""
    with anyio.fail_after(10):
        while True:
            outcome = await engine.outcome(flow_id)
            if outcome.status.is_final:
                return outcome
            await anyio.sleep(0.005)


class FakeTime:
    """A clock and a sleep that advances it: deadlines pass without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await anyio.lowlevel.checkpoint()


# Waiting --------------------------------------------------------------------------------


async def test_a_run_with_only_waits_left_returns_waiting_with_the_open_waits(
    journal_url: str,
) -> None:
    engine = aioflow.Engine(journal_url, secret=SECRET)
    outcome = await engine.run(approval_flow(), {"doc": "d1"})
    assert outcome.status is FlowStatus.WAITING
    assert outcome.atoms["side"].state is AtomState.SUCCESS  # the other branch went on
    assert outcome.atoms["ask"].state is AtomState.WAITING
    (waiting,) = outcome.waiting
    assert waiting.atom == "ask" and waiting.info == {"doc": "d1"}
    assert waiting.token == TOKENS[0]
    assert waiting.deadline is not None
    assert TOKENS[0] not in repr(outcome)


async def test_wait_then_complete_in_another_engine_on_the_same_sqlite_file(
    sqlite_url: str,
) -> None:
    outcome = await aioflow.Engine(sqlite_url, secret=SECRET).run(approval_flow(), {"doc": "d"})
    other = aioflow.Engine(sqlite_url, secret=SECRET)
    await other.complete(outcome.waiting[0].token, "yes")
    assert CALLS.get("after") is None  # not entered, no reference: resume does the rest
    done = await other.resume(outcome.flow_id, approval_flow())
    assert done.status is FlowStatus.SUCCESS
    assert done["done"] == "done:yes"
    assert CALLS == {"ask": 1, "side": 1, "after": 1}


async def test_the_wait_is_journaled_with_deadline_and_info_but_never_the_token(
    sqlite_url: str, tmp_path: Path
) -> None:
    seen: list[aioflow.Event] = []
    engine = aioflow.Engine(sqlite_url, secret=SECRET, listeners=[seen.append])
    outcome = await engine.run(approval_flow(), {"doc": "d"})
    token = outcome.waiting[0].token
    events = [e async for e in engine.journal.events(outcome.flow_id)]
    (wait,) = [e for e in events if e.state is AtomState.WAITING]
    assert wait.kind is EventKind.ATOM and wait.atom == "ask"
    assert wait.details["info"] == {"doc": "d"}
    assert wait.details["deadline"] == outcome.waiting[0].deadline
    assert all(token not in repr(e) for e in seen)
    await engine.complete(token, "yes")
    await engine.resume(outcome.flow_id, approval_flow())
    data = await journal_bytes(tmp_path / "journal.db")
    for part in [token, *token.split(".")[1:]]:
        assert part.encode() not in data


async def test_a_secret_is_created_once_and_kept_in_the_journal(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIOFLOW_SECRET", raising=False)
    outcome = await aioflow.Engine(sqlite_url).run(approval_flow(), {"doc": "d"})
    other = aioflow.Engine(sqlite_url)  # no secret given: reads the journal's
    await other.complete(outcome.waiting[0].token, "ok")
    assert (await other.resume(outcome.flow_id, approval_flow())).status is FlowStatus.SUCCESS


async def test_a_flow_whose_tasks_take_no_token_leaves_the_secret_unread(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reading (or creating) the journal's secret costs a round trip and a commit: a run
    # pays it only when one of its tasks can be handed a token.
    from aioflow._tokens import SECRET_META_KEY

    monkeypatch.delenv("AIOFLOW_SECRET", raising=False)
    plain = aioflow.Linear("plain", side)
    engine = aioflow.Engine(sqlite_url)
    assert (await engine.run(plain)).status is FlowStatus.SUCCESS
    async with engine._session():
        assert await engine.journal.get_meta(SECRET_META_KEY) is None

    @aioflow.task
    async def looks(context: aioflow.TaskContext) -> None:
        TOKENS.append(context.external.token)

    await engine.run(aioflow.Linear("with context", looks))
    async with engine._session():
        assert await engine.journal.get_meta(SECRET_META_KEY) is not None
    assert TOKENS and TOKENS[0]


async def test_the_secret_comes_from_aioflow_secret(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIOFLOW_SECRET", "from-env")
    outcome = await aioflow.Engine(sqlite_url).run(approval_flow(), {"doc": "d"})
    with pytest.raises(aioflow.InvalidTokenError):
        await aioflow.Engine(sqlite_url, secret="other").complete(outcome.waiting[0].token, 1)
    await aioflow.Engine(sqlite_url, secret="from-env").complete(outcome.waiting[0].token, 1)


# Refusals -------------------------------------------------------------------------------


async def _events(engine: aioflow.Engine, flow_id: str) -> list[aioflow.Event]:
    async with engine._session():
        return await engine.journal.load(flow_id)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda t: t.replace("v1.", "v2.", 1),
        lambda t: "v1.e30." + t.split(".")[2],
        lambda t: "nonsense",
        lambda t: "",
    ],
    ids=["bad-signature", "bad-version", "swapped-payload", "garbage", "empty"],
)
async def test_a_forged_token_is_refused_and_changes_nothing(
    journal_url: str, mangle: Callable[[str], str]
) -> None:
    engine = aioflow.Engine(journal_url, secret=SECRET)
    outcome = await engine.run(approval_flow(), {"doc": "d"})
    before = await _events(engine, outcome.flow_id)
    with pytest.raises(aioflow.InvalidTokenError):
        await engine.complete(mangle(outcome.waiting[0].token), "yes")
    assert await _events(engine, outcome.flow_id) == before


async def test_a_token_signed_with_another_secret_is_refused(sqlite_url: str) -> None:
    outcome = await aioflow.Engine(sqlite_url, secret=SECRET).run(approval_flow(), {"doc": "d"})
    other = aioflow.Engine(sqlite_url, secret="another")
    before = await _events(other, outcome.flow_id)
    with pytest.raises(aioflow.InvalidTokenError, match="another secret"):
        await other.complete(outcome.waiting[0].token, "yes")
    assert await _events(other, outcome.flow_id) == before


async def test_a_used_token_is_refused_and_changes_nothing(journal_url: str) -> None:
    engine = aioflow.Engine(journal_url, secret=SECRET)
    outcome = await engine.run(approval_flow(), {"doc": "d"})
    token = outcome.waiting[0].token
    await engine.complete(token, "yes")
    before = await _events(engine, outcome.flow_id)
    for again in (engine.complete(token, "no"), engine.fail(token, "boom")):
        with pytest.raises(aioflow.InvalidTokenError, match="used"):
            await again
    assert await _events(engine, outcome.flow_id) == before
    assert (await engine.resume(outcome.flow_id, approval_flow()))["done"] == "done:yes"


async def test_a_token_of_an_older_attempt_is_refused(journal_url: str) -> None:
    engine = aioflow.Engine(journal_url, secret=SECRET)
    outcome = await engine.run(retried_wait_flow(), {"doc": "d"})
    first = outcome.waiting[0].token
    await engine.fail(first, "the approver's system broke")
    again = await engine.resume(outcome.flow_id, retried_wait_flow())
    assert again.status is FlowStatus.WAITING and again.atoms["ask"].attempts == 2
    with pytest.raises(aioflow.InvalidTokenError):
        await engine.complete(first, "late")
    await engine.complete(again.waiting[0].token, "second")
    done = await engine.resume(outcome.flow_id, retried_wait_flow())
    assert done["done"] == "done:second"


async def test_failing_a_wait_reverts_the_flow_and_the_revert_sees_the_failure(
    journal_url: str,
) -> None:
    engine = aioflow.Engine(journal_url, secret=SECRET)
    outcome = await engine.run(approval_flow(), {"doc": "d"})
    await engine.fail(outcome.waiting[0].token, ValueError("rejected"))
    with pytest.raises(aioflow.FlowFailedError) as info:
        await engine.resume(outcome.flow_id, approval_flow())
    assert info.value.outcome.status is FlowStatus.REVERTED
    assert info.value.failures["ask"].matches(ValueError)
    assert isinstance(REVERTED[0], aioflow.Failure)


async def test_a_result_the_codec_cannot_store_is_refused_and_the_wait_stays_open(
    journal_url: str,
) -> None:
    engine = aioflow.Engine(journal_url, secret=SECRET)
    outcome = await engine.run(approval_flow(), {"doc": "d"})
    with pytest.raises(aioflow.SerializationError):
        await engine.complete(outcome.waiting[0].token, object())
    await engine.complete(outcome.waiting[0].token, "fine")


# Once, and concurrently -------------------------------------------------------------------


async def test_fifty_concurrent_completions_one_wins_and_the_flow_resumes_once(
    sqlite_url: str,
) -> None:
    wins: list[int] = []
    refused: list[int] = []
    async with AsyncExitStack() as stack:
        engine = await stack.enter_async_context(aioflow.Engine(sqlite_url, secret=SECRET))
        outcome = await engine.run(REF, {"doc": "d"})
        token = outcome.waiting[0].token
        others = [  # four more engines on the same file, as other processes would be
            await stack.enter_async_context(aioflow.Engine(sqlite_url, secret=SECRET))
            for _ in range(4)
        ]

        async def one(n: int) -> None:
            target = engine if n % 5 == 0 else others[n % 4]
            try:
                await target.complete(token, f"r{n}")
                wins.append(n)
            except aioflow.InvalidTokenError:
                refused.append(n)

        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(one, n)
        assert len(wins) == 1 and len(refused) == 49
        final = await settled(engine, outcome.flow_id)
    assert final.status is FlowStatus.SUCCESS
    assert CALLS["after"] == 1
    events = await _events(aioflow.Engine(sqlite_url), outcome.flow_id)
    woken = [e for e in events if e.kind is EventKind.FLOW and e.details.get("resumed")]
    assert len(woken) == 1
    assert [e.details["result"] for e in events if e.atom == "after" and e.details] == [
        f"done:r{wins[0]}"
    ]


async def test_two_waits_in_one_flow_completed_concurrently(journal_url: str) -> None:
    async with aioflow.Engine(journal_url, secret=SECRET) as engine:
        handle = await engine.start("tests.test_external:two_waits_flow", {"doc": "d"})
        with anyio.fail_after(10):
            while len(TOKENS) < 2:
                await anyio.sleep(0.001)
            async with anyio.create_task_group() as tg:
                for token in list(TOKENS):
                    tg.start_soon(engine.complete, token, "ok")
            done = await handle.wait()
    assert done.status is FlowStatus.SUCCESS
    assert CALLS == {"ask": 2, "after": 1}


async def test_a_started_flow_wakes_in_this_engine_without_resume(journal_url: str) -> None:
    flow = approval_flow()  # an object, not a reference: only this engine can wake it
    async with aioflow.Engine(journal_url, secret=SECRET) as engine:
        handle = await engine.start(flow, {"doc": "d"})
        with anyio.fail_after(10):
            while not TOKENS:
                await anyio.sleep(0.001)
            await engine.complete(TOKENS[0], "yes")
            done = await handle.wait()
    assert done["done"] == "done:yes"


async def test_a_completion_before_the_task_returns_its_wait_is_kept(journal_url: str) -> None:
    engine_box: list[aioflow.Engine] = []

    @aioflow.task(provides="approval")
    async def hasty(external: aioflow.External) -> object:
        await engine_box[0].complete(external.token, "instant")
        return external.wait(timeout=60)

    async with aioflow.Engine(journal_url, secret=SECRET) as engine:
        engine_box.append(engine)
        outcome = await engine.run(aioflow.Linear("hasty_flow", hasty, after))
    assert outcome["done"] == "done:instant"


async def test_a_revert_abandons_open_waits_and_reverts_them(journal_url: str) -> None:
    @aioflow.task
    async def boom(approval: str) -> None:
        raise RuntimeError("boom")

    @aioflow.task(provides="x")
    async def slow_fail() -> None:
        await anyio.sleep(0)
        raise RuntimeError("other branch failed")

    flow = aioflow.Unordered("u", ask, slow_fail)
    engine = aioflow.Engine(journal_url, secret=SECRET)
    with pytest.raises(aioflow.FlowFailedError) as info:
        await engine.run(flow, {"doc": "d"})
    assert info.value.outcome.atoms["ask"].state is AtomState.REVERTED
    assert isinstance(REVERTED[0], aioflow.Failure) and "abandoned" in REVERTED[0].message
    with pytest.raises(aioflow.InvalidTokenError):
        await engine.complete(TOKENS[0], "too late")


# The watchdog -----------------------------------------------------------------------------


async def test_an_entered_engine_times_out_a_wait_with_an_injected_clock(
    journal_url: str,
) -> None:
    fake = FakeTime()
    async with aioflow.Engine(
        journal_url, secret=SECRET, clock=fake.clock, sleep=fake.sleep
    ) as engine:
        handle = await engine.start(REF, {"doc": "d"})
        with anyio.fail_after(10), pytest.raises(aioflow.FlowFailedError) as info:
            await handle.wait()
    failure = info.value.failures["ask"]
    assert failure.matches(aioflow.ExternalTimeoutError)
    assert fake.now >= 1000.0 + 3600
    assert isinstance(REVERTED[0], aioflow.Failure)


async def test_a_timed_out_wait_is_retried_by_the_task_retry(journal_url: str) -> None:
    fake = FakeTime()
    async with aioflow.Engine(
        journal_url, secret=SECRET, clock=fake.clock, sleep=fake.sleep
    ) as engine:
        handle = await engine.start("tests.test_external:retried_wait_flow", {"doc": "d"})
        with anyio.fail_after(10), pytest.raises(aioflow.FlowFailedError):
            await handle.wait()
    assert CALLS["ask"] == 2  # timed out twice: two attempts, then reverted


async def test_a_real_short_timeout_fails_the_wait(journal_url: str) -> None:
    async with aioflow.Engine(journal_url, secret=SECRET) as engine:
        handle = await engine.start("tests.test_external:short_wait_flow")
        with anyio.fail_after(10), pytest.raises(aioflow.FlowFailedError) as info:
            await handle.wait()
    assert info.value.failures["brief"].matches(aioflow.ExternalTimeoutError)
    assert CALLS.get("after") is None


async def test_a_late_completion_is_refused_and_resume_fails_the_wait(journal_url: str) -> None:
    fake = FakeTime()
    engine = aioflow.Engine(journal_url, secret=SECRET, clock=fake.clock, sleep=fake.sleep)
    outcome = await engine.run(approval_flow(), {"doc": "d"})
    fake.now += 3601
    before = await _events(engine, outcome.flow_id)
    with pytest.raises(aioflow.InvalidTokenError, match="deadline"):
        await engine.complete(outcome.waiting[0].token, "late")
    assert await _events(engine, outcome.flow_id) == before
    with pytest.raises(aioflow.FlowFailedError) as info:
        await engine.resume(outcome.flow_id, approval_flow())
    assert info.value.failures["ask"].matches(aioflow.ExternalTimeoutError)


async def test_resume_before_the_deadline_keeps_the_wait_open(journal_url: str) -> None:
    engine = aioflow.Engine(journal_url, secret=SECRET)
    outcome = await engine.run(approval_flow(), {"doc": "d"})
    again = await engine.resume(outcome.flow_id, approval_flow())
    assert again.status is FlowStatus.WAITING
    assert again.waiting[0].token == outcome.waiting[0].token  # the same wait, still open
    assert CALLS["ask"] == 1
    await engine.complete(outcome.waiting[0].token, "y")
    assert (await engine.resume(outcome.flow_id, approval_flow()))["done"] == "done:y"


# A process that dies while its flow waits -------------------------------------------------

_WAITER = textwrap.dedent(
    """
    import sys, time, anyio, aioflow

    async def main():
        engine = aioflow.Engine(sys.argv[1], secret="test-secret")
        outcome = await engine.run("tests.test_external:approval_flow", {"doc": "d"})
        print(outcome.flow_id, outcome.waiting[0].token, flush=True)
        time.sleep(600)

    anyio.run(main)
    """
)


async def test_a_restart_between_wait_and_completion(sqlite_url: str) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = await anyio.open_process(
        [sys.executable, "-c", _WAITER, sqlite_url], env=env, cwd=str(root)
    )
    try:
        assert proc.stdout is not None
        line = b""
        with anyio.fail_after(30):
            async for chunk in proc.stdout:
                line += chunk
                if b"\n" in line:
                    break
        flow_id, token = line.decode().split()
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await proc.aclose()
    async with aioflow.Engine(sqlite_url, secret=SECRET) as engine:
        await engine.complete(token, "after the crash")
        final = await settled(engine, flow_id)
    assert final.status is FlowStatus.SUCCESS
    assert final.atoms["after"].result == "done:after the crash"


async def test_a_wait_completed_while_other_branches_run_goes_on_at_once(
    journal_url: str,
) -> None:
    gate = anyio.Event()

    @aioflow.task(provides="side")
    async def slow_side() -> int:
        await gate.wait()
        return 2

    flow = aioflow.Graph("live", ask, slow_side, after)  # after needs only the approval
    async with aioflow.Engine(journal_url, secret=SECRET) as engine:
        handle = await engine.start(flow, {"doc": "d"})
        with anyio.fail_after(10):
            while not TOKENS:
                await anyio.sleep(0.001)
            await engine.complete(TOKENS[0], "yes")
            recorded = await _events(engine, handle.flow_id)  # durable when complete returns
            assert any(e.atom == "ask" and e.state is AtomState.SUCCESS for e in recorded)
            while CALLS.get("after") is None:
                await anyio.sleep(0.001)
        assert not handle.done  # the run never rested: the completion went to it live
        gate.set()
        outcome = await handle.wait()
    assert outcome["done"] == "done:yes"
    events = await _events(engine, handle.flow_id)
    assert [e.state for e in events if e.kind is EventKind.FLOW] == [
        FlowStatus.RUNNING,
        FlowStatus.SUCCESS,
    ]


async def test_a_wait_times_out_while_another_branch_is_still_working() -> None:
    """The deadline is kept during the run, not only once the run rests."""
    seen: list[tuple[str | None, aioflow.AtomState | aioflow.FlowStatus | None]] = []

    @aioflow.task(provides="approval")
    async def quick_ask(external: aioflow.External) -> object:
        return external.wait(timeout=0.05)

    @aioflow.task(provides="copied")
    async def long_copy() -> str:
        await anyio.sleep(1.0)
        return "copied"

    flow = aioflow.Unordered("both", quick_ask, long_copy)
    engine = aioflow.Engine(secret=SECRET, listeners=[lambda e: seen.append((e.atom, e.state))])
    with anyio.fail_after(10), pytest.raises(aioflow.FlowFailedError) as info:
        await engine.run(flow)

    assert info.value.failures["quick_ask"].matches(aioflow.ExternalTimeoutError)
    timed_out = seen.index(("quick_ask", aioflow.AtomState.FAILURE))
    assert timed_out < seen.index(("long_copy", aioflow.AtomState.SUCCESS))
