"""Sleeping flows and messages: ``python -m benchmarks.waits``.

Two measurements, each beside its plain-asyncio counterpart in the same process:

- ``sleeping``: N flows, each one ``Sleep`` of an hour, started in one entered engine on
  a test clock (``aioflow.testing.FakeClock``) until all rest WAITING; then the clock is
  moved past the hour and the time until every flow is SUCCESS is taken (each wake-up
  is a resume: a take, one indexed read of the flow's events, three events). Memory is
  what the process's resident memory grew by then (RSS), per flow, and the asyncio tasks
  alive while they sleep. The counterpart: N asyncio tasks each waiting on an event,
  all set at once, until every task has ended.
- ``send``: the latency from ``await engine.send(...)`` to the moment the receiving
  flow's ``Receive`` atom has its result (a listener sees its SUCCESS event), for a
  flow whose receive is already waiting in a running engine. The counterpart: an
  ``asyncio.Queue`` put and the consumer's ``get`` signalling back.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aioflow
from aioflow import EventKind, FlowStatus
from aioflow.testing import FakeClock

HOUR = 3600.0


def rss() -> int:
    """This process's resident memory now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def sleeping(url: str, n: int) -> dict[str, Any]:
    clock = FakeClock()
    flow = aioflow.Linear("nap", aioflow.Sleep("s", seconds=HOUR))
    gc.collect()
    base = rss()
    async with aioflow.Engine(url, clock=clock.now, sleep=clock.sleep) as engine:
        started = time.perf_counter()
        for i in range(n):
            await engine.start(flow, flow_id=f"f{i}")
        while len(engine._slots):
            await asyncio.sleep(0.01)
        rest = time.perf_counter() - started
        gc.collect()
        memory = rss() - base
        tasks = len(asyncio.all_tasks())
        woken = time.perf_counter()
        clock.advance(HOUR)
        while True:
            await asyncio.sleep(0.01)
            if not engine._slots and not engine._external.parked:
                break
        wake = time.perf_counter() - woken
        done = await engine.journal.flows(FlowStatus.SUCCESS)
    assert len(done) == n, f"{len(done)} of {n} flows ended SUCCESS"
    return {"rest_s": rest, "wake_s": wake, "bytes_per_flow": memory / n, "tasks": tasks}


async def sleeping_floor(n: int) -> dict[str, Any]:
    gc.collect()
    base = rss()
    event = asyncio.Event()
    tasks = [asyncio.create_task(event.wait()) for _ in range(n)]
    await asyncio.sleep(0)
    memory = rss() - base
    started = time.perf_counter()
    event.set()
    await asyncio.gather(*tasks)
    return {"wake_s": time.perf_counter() - started, "bytes_per_flow": memory / n, "tasks": n}


async def send_latency(url: str, rounds: int) -> list[float]:
    got = asyncio.Event()

    def listen(event: aioflow.Event) -> None:
        if event.kind is EventKind.ATOM and event.state is aioflow.AtomState.SUCCESS:
            got.set()

    flow = aioflow.Linear("inbox", aioflow.Receive("r", "t", provides="m"))
    samples = []
    async with aioflow.Engine(url, listeners=[listen]) as engine:
        for i in range(rounds):
            await engine.start(flow, flow_id=f"m{i}")
            while (await engine.journal.summary(f"m{i}")).status is not FlowStatus.WAITING:
                await asyncio.sleep(0.001)
            got.clear()
            started = time.perf_counter()
            await engine.send(f"m{i}", "t", i)
            await got.wait()
            samples.append(time.perf_counter() - started)
    return samples


async def send_floor(rounds: int) -> list[float]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    got = asyncio.Event()

    async def consumer() -> None:
        while True:
            await queue.get()
            got.set()

    task = asyncio.create_task(consumer())
    samples = []
    for i in range(rounds):
        got.clear()
        started = time.perf_counter()
        await queue.put(i)
        await got.wait()
        samples.append(time.perf_counter() - started)
    task.cancel()
    return samples


async def main(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        journals = {"memory": "memory://", "sqlite": f"sqlite:///{Path(tmp) / 's.db'}"}
        floor = await sleeping_floor(n)
        print(f"## {n} sleeping flows (FakeClock; wake = until all SUCCESS)\n")
        print("| subject | rest s | wake s | wake / floor | bytes per flow | tasks |")
        print("|---|---:|---:|---:|---:|---:|")
        print(
            f"| asyncio tasks on an event | | {floor['wake_s']:.3f} | 1.0 |"
            f" {floor['bytes_per_flow']:.0f} | {floor['tasks']} |"
        )
        for name, url in journals.items():
            r = await sleeping(url, n)
            print(
                f"| aioflow, {name} | {r['rest_s']:.2f} | {r['wake_s']:.2f} |"
                f" {r['wake_s'] / floor['wake_s']:.0f} | {r['bytes_per_flow']:.0f} | {r['tasks']} |"
            )
        base = statistics.median(await send_floor(rounds)) * 1e6
        print(f"\n## send -> Receive result ({rounds} rounds, median)\n")
        print("| subject | µs | / asyncio.Queue |")
        print("|---|---:|---:|")
        print(f"| asyncio.Queue put -> get | {base:.1f} | 1.0 |")
        for name, url in journals.items():
            med = statistics.median(await send_latency(url, rounds)) * 1e6
            print(f"| aioflow, {name} | {med:.0f} | {med / base:.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.flows, args.rounds))
