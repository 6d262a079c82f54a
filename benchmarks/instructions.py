"""Instructions per run, counted by valgrind's callgrind: figures no busy machine can move.

On a shared machine the same run can take twice as long from one minute to the next; the
number of instructions it executes barely changes (callgrind counts them by simulating
the CPU). Each figure is the difference between a child process doing ``k + 1`` runs and
one doing 1 (each after a warm-up run, in one event loop and one engine, with the same
number of full collections), divided by ``k``: imports, start-up and building the flow
cancel out, and what is left is ``engine.run`` (or the floor's gather) and the garbage it
leaves.

    python -m benchmarks.instructions                     # 1,000 sleeps: asyncio, memory, SQLite
    python -m benchmarks.instructions --scenario wide --n 2000

Needs ``valgrind`` on the PATH. Under callgrind a run is ~50x slower, so the sleeping
tasks sleep 5 s instead of 10 ms: every task has started before the first one wakes, as
in the real run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable

import aioflow

from . import _floor, _scenarios

SLEEP = 5.0

_FLOWS: dict[str, Callable[[int], aioflow.Flow]] = {
    "sleeps": _scenarios.sleeps_flow,
    "wide": _scenarios.wide_flow,
    "chain": _scenarios.chain_flow,
}
_FLOORS: dict[str, Callable[[int], Awaitable[float]]] = {
    "sleeps": lambda n: _floor.sleeps(n, SLEEP),
    "wide": _floor.gather,
    "chain": _floor.chain,
}


async def _runs(subject: str, scenario: str, n: int, runs: int, slots: int) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if subject == "asyncio":

            async def run() -> None:
                gc.collect()
                await _FLOORS[scenario](n)

        else:
            config = _scenarios.Config()
            engine = await stack.enter_async_context(_scenarios.engine_for(subject, config))
            flow = _FLOWS[scenario](n)

            async def run() -> None:
                await _scenarios.run_flow(engine, flow)  # a full collection first

        for slot in range(slots):
            if slot < runs:
                await run()
            else:
                gc.collect()


def _child(subject: str, scenario: str, n: int, runs: int, slots: int) -> None:
    """``runs`` runs (the first a warm-up) in one loop and, for aioflow, one engine, each
    after a full collection; ``slots`` collections in all, whatever ``runs`` is."""
    _scenarios.SLEEP = SLEEP  # the suite's sleeping task reads it each time it sleeps
    asyncio.run(_runs(subject, scenario, n, runs, slots))


def _count(subject: str, scenario: str, n: int, runs: int, slots: int) -> int:
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--child",
        subject,
        "--scenario",
        scenario,
        "--n",
        str(n),
        "--runs",
        str(runs),
        "--slots",
        str(slots),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{done.stderr}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["sleeps", "wide", "chain"], default="sleeps")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--subjects", default="asyncio,memory,strict,batched")
    parser.add_argument("--k", type=int, default=2, help="extra runs the difference is of")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--slots", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.scenario, args.n, args.runs, args.slots)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    floor = None
    print(f"{args.scenario}, {args.n:,} tasks: instructions per run (callgrind)")
    for subject in args.subjects.split(","):
        slots = 2 + args.k
        one = _count(subject, args.scenario, args.n, 2, slots)
        more = _count(subject, args.scenario, args.n, 2 + args.k, slots)
        per_run = (more - one) / args.k
        floor = per_run if subject == "asyncio" else floor
        ratio = f"  {per_run / floor:.2f}x asyncio" if floor and subject != "asyncio" else ""
        label = "asyncio" if subject == "asyncio" else f"aioflow {subject}"
        print(f"  {label:<18} {per_run / 1e6:8.1f}M  ({per_run / args.n / 1e3:.1f}k a task){ratio}")


if __name__ == "__main__":
    main()
