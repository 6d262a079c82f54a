"""Large values: encoded off the event loop, refused beyond ``Engine(max_value_bytes=...)``."""

from __future__ import annotations

import gc
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioflow
from aioflow import AtomState, FlowStatus, SerializationError
from aioflow._codec import Codec, JsonCodec, PickleCodec, encode_in_pieces, size_hint
from aioflow._values import DEFAULT_MAX_VALUE_BYTES

MB = 1024 * 1024
BIG = 100 * MB
STALL = 0.25
"""The longest the event loop may be held while a large value is encoded: a liveness
bound, far above a healthy loop's pauses and far below the seconds a value of 100 MB
takes to encode on the loop's thread."""

REVERTED: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    REVERTED.clear()


@aioflow.task(provides="first")
async def first() -> int:
    return 1


@first.revert
async def undo_first(result: object) -> None:
    REVERTED.append("first")


def returning(value: Any, name: str = "big") -> aioflow.Task:
    """A task returning ``value``, made before the run: what is measured is the engine's
    work with it, not the task's making it."""

    async def run() -> Any:
        return value

    return aioflow.task(name=name, provides=name)(run)


def blob() -> bytes:
    return b"\x00\x01\xfe\xff" * (BIG // 4)


async def max_stall(work: Callable[[], Awaitable[Any]], attempts: int = 3) -> tuple[Any, float]:
    """The result of ``work`` and the longest the event loop was held while it ran, over
    up to ``attempts`` runs: the first run held under :data:`STALL`, else the least held.

    A pause the engine causes comes back on every run, while one the machine causes
    (another process on the core, the kernel finding memory) seldom does twice: CI once
    saw 0.26 s where this machine's runs measure 0.02-0.06 s.
    """
    least = float("inf")
    for _ in range(attempts):
        outcome, stall = await _stall_of(work)
        least = min(least, stall)
        if stall < STALL:
            break
    return outcome, least


async def _stall_of(work: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
    """Run ``work`` while a ticker measures the longest the event loop was held."""
    stall = 0.0
    result: list[Any] = []

    async def tick(done: anyio.Event) -> None:
        nonlocal stall
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.002)
            now = time.perf_counter()
            stall = max(stall, now - last)
            last = now

    async def run(done: anyio.Event) -> None:
        try:
            result.append(await work())
        finally:
            done.set()

    # What is measured is the engine's own holding of the loop, not the collector's: a
    # full collection over the heap a long test session leaves can take 0.3 s by itself.
    gc.collect()
    gc.disable()
    try:
        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick, done)
            tg.start_soon(run, done)
    finally:
        gc.enable()
    return result[0], stall


# --------------------------------------------------------------------- off the loop


async def test_a_100_mb_result_does_not_block_the_event_loop() -> None:
    engine = aioflow.Engine(max_value_bytes=None)
    flow = aioflow.Linear("f", returning(blob()))
    outcome, stall = await max_stall(lambda: engine.run(flow))
    assert outcome.status is FlowStatus.SUCCESS
    assert len(outcome["big"]) == BIG
    assert stall < STALL, f"the event loop was held {stall:.3f} s"


async def test_a_long_list_of_records_does_not_block_the_event_loop() -> None:
    rows = [{"id": i, "name": f"row {i}", "ok": True} for i in range(300_000)]
    engine = aioflow.Engine()
    flow = aioflow.Linear("f", returning(rows))
    outcome, stall = await max_stall(lambda: engine.run(flow))
    assert stall < STALL, f"the event loop was held {stall:.3f} s"
    assert (await engine.outcome(outcome.flow_id))["big"] == rows


async def test_a_100_mb_result_round_trips_through_a_sqlite_journal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/journal.db"
    seen: list[aioflow.Event] = []
    expected = blob()
    async with aioflow.Engine(url, max_value_bytes=200 * MB, listeners=[seen.append]) as engine:
        outcome = await engine.run(aioflow.Linear("f", returning(expected)))
    assert outcome["big"] == expected
    # Listeners get the value itself, not its journal text.
    (success,) = [e for e in seen if e.atom == "big" and e.state is AtomState.SUCCESS]
    assert type(success.details) is dict and success.details["result"] == expected
    # Read back by another engine, from the file.
    again = await aioflow.Engine(url).outcome(outcome.flow_id)
    assert again.status is FlowStatus.SUCCESS
    assert again["big"] == expected


async def test_a_100_mb_result_does_not_block_the_event_loop_on_sqlite(tmp_path: Path) -> None:
    engine = aioflow.Engine(f"sqlite:///{tmp_path}/journal.db", max_value_bytes=None)
    flow = aioflow.Linear("f", returning(blob()))
    outcome, stall = await max_stall(lambda: engine.run(flow))
    assert len(outcome["big"]) == BIG
    assert stall < STALL, f"the event loop was held {stall:.3f} s"


async def test_a_large_result_round_trips_with_the_pickle_codec(sqlite_url: str) -> None:
    value = {"payload": bytes(range(256)) * 40_000, "tags": {"a", "b"}}
    engine = aioflow.Engine(sqlite_url, codec="pickle")
    outcome = await engine.run(aioflow.Linear("f", returning(value)))
    assert (await engine.outcome(outcome.flow_id))["big"] == value


# --------------------------------------------------------------------- the limit


async def test_a_result_over_the_limit_fails_its_atom_and_the_flow_is_reverted(
    sqlite_url: str, tmp_path: Path
) -> None:
    engine = aioflow.Engine(sqlite_url, max_value_bytes=MB)
    flow = aioflow.Linear("f", first, returning(b"x" * (2 * MB)))
    with pytest.raises(aioflow.FlowFailedError) as info:
        await engine.run(flow)
    outcome = info.value.outcome
    assert outcome.status is FlowStatus.REVERTED
    assert REVERTED == ["first"]
    failure = outcome.failures["big"]
    assert failure.exc_type == "SerializationError"
    message = failure.message
    assert "atom 'big'" in message
    assert "2,796,2" in message  # the size: 2 MB as base64, at least
    assert "1,048,576 bytes" in message  # the limit
    assert "Engine(max_value_bytes=...)" in message
    assert "return a reference" in message
    # Nothing of the value reached the journal.
    with sqlite3.connect(tmp_path / "journal.db") as db:
        (longest,) = db.execute("SELECT max(length(details)) FROM aioflow_events").fetchone()
    db.close()
    assert longest < 10_000


async def test_the_limit_counts_the_encoded_text_in_utf8_bytes() -> None:
    # {"result":"..."} is 13 bytes around the string; é takes 2 bytes in UTF-8.
    engine = aioflow.Engine(max_value_bytes=1013)
    ok = await engine.run(aioflow.Linear("f", returning("x" * 1000)))
    assert ok["big"] == "x" * 1000
    with pytest.raises(aioflow.FlowFailedError) as info:
        await engine.run(aioflow.Linear("f", returning("é" * 501)))
    assert "1,015 bytes once encoded, over the limit of 1,013 bytes" in str(info.value)


async def test_a_result_over_the_limit_is_retried_like_any_failure() -> None:
    sizes = iter([4 * MB, 10])

    @aioflow.task(provides="data", retry=aioflow.Retry.times(2))
    async def shrinking() -> bytes:
        return b"x" * next(sizes)

    outcome = await aioflow.Engine(max_value_bytes=MB).run(aioflow.Linear("f", shrinking))
    assert outcome["data"] == b"x" * 10
    assert outcome.atoms["shrinking"].attempts == 2


async def test_a_completion_over_the_limit_is_refused_and_the_wait_stays_open() -> None:
    @aioflow.task(provides="answer")
    async def ask(external: aioflow.External) -> object:
        return external.wait(timeout=3600)

    flow = aioflow.Linear("f", ask)
    engine = aioflow.Engine(secret="s", max_value_bytes=MB)
    outcome = await engine.run(flow)
    token = outcome.waiting[0].token
    with pytest.raises(SerializationError, match=r"completing the wait of atom 'ask'") as info:
        await engine.complete(token, "y" * (2 * MB))
    assert info.value.atom == "ask"
    assert "Engine(max_value_bytes=...)" in str(info.value)
    assert (await engine.outcome(outcome.flow_id)).atoms["ask"].state is AtomState.WAITING
    await engine.complete(token, "y" * (MB // 2))  # large: encoded off the loop
    done = await engine.resume(outcome.flow_id, flow)
    assert done["answer"] == "y" * (MB // 2)


async def test_a_large_completion_of_a_running_flow_reaches_it_and_its_listeners() -> None:
    tokens: list[str] = []
    gate = anyio.Event()

    @aioflow.task(provides="answer")
    async def ask(external: aioflow.External) -> object:
        tokens.append(external.token)
        return external.wait(timeout=3600)

    @aioflow.task(provides="other")
    async def slow() -> int:
        await gate.wait()
        return 1

    answer = "z" * (3 * MB)
    seen: list[aioflow.Event] = []
    async with aioflow.Engine(secret="s", listeners=[seen.append]) as engine:
        handle = await engine.start(aioflow.Unordered("f", ask, slow))
        while not tokens:
            await anyio.sleep(0.001)
        await engine.complete(tokens[0], answer)  # the run is live: slow still runs
        gate.set()
        outcome = await handle.wait()
    assert outcome["answer"] == answer
    (success,) = [e for e in seen if e.atom == "ask" and e.state is AtomState.SUCCESS]
    assert success.details == {"result": answer}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "64MB"])
def test_max_value_bytes_must_be_a_positive_number_of_bytes_or_none(bad: object) -> None:
    with pytest.raises(ValueError, match="max_value_bytes must be a positive number of bytes"):
        aioflow.Engine(max_value_bytes=bad)  # type: ignore[arg-type]


def test_the_default_limit_is_64_mib_and_none_means_no_limit() -> None:
    assert aioflow.Engine().max_value_bytes == DEFAULT_MAX_VALUE_BYTES == 64 * MB
    assert aioflow.Engine(max_value_bytes=None).max_value_bytes is None


# --------------------------------------------------------------------- the codec side


@pytest.mark.parametrize(
    "value",
    [
        b"\x00\xff" * 400_000,
        'é\x00x"' * 300_000,
        ["ab"] * 300_000 + [b"z" * 700_000, 1.5, None, True],
        (1, b"y" * 700_000, {"k": "v" * 600_000}),
        {1: b"w" * 700_000, "s": {"t"}},
        [[1, 2, 3]] * 200_000,
        "\ud800x" * 200_000,
        bytearray(b"q" * 700_000),
        [],
    ],
    ids=["bytes", "str", "list", "tuple", "dict", "nested", "surrogates", "bytearray", "empty"],
)
@pytest.mark.parametrize("codec", [JsonCodec(), PickleCodec()], ids=["json", "pickle"])
def test_pieces_join_to_the_text_encode_makes(codec: Codec, value: object) -> None:
    details = {"result": value}
    pieces = encode_in_pieces(codec, details)
    assert "".join(pieces) == codec.encode(details)
    assert max(map(len, pieces)) < 4 * MB


def test_the_size_hint_is_cheap_and_never_above_the_json_text() -> None:
    codec = JsonCodec()
    for value in [7, "hi", b"abc", [1, "a", None], {"a": [1.5, {"b": b"xy"}]}, ("t", 2)]:
        hint = size_hint(value)
        assert hint is not None and hint <= len(codec.encode(value).encode())
    assert size_hint(list(range(100_000))) is None  # too many parts to look at
    cycle: list[object] = []
    cycle.append(cycle)
    assert size_hint(cycle) is None
