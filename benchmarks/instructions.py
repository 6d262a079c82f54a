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
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile

import aioflow

SLEEP = 5.0


@aioflow.task
async def _nap() -> None:
    await asyncio.sleep(SLEEP)


@aioflow.task
async def _noop() -> None:
    return None


def _flow(scenario: str, n: int) -> aioflow.Flow:
    if scenario == "sleeps":
        return aioflow.Unordered("sleeps", *[_nap.using(name=f"s{i}") for i in range(n)])
    if scenario == "wide":
        return aioflow.Unordered("wide", *[_noop.using(name=f"t{i}") for i in range(n)])
    return aioflow.Linear("chain", *[_noop.using(name=f"t{i}") for i in range(n)])


async def _floor(scenario: str, n: int) -> None:
    async def nap() -> None:
        await asyncio.sleep(SLEEP)

    async def noop() -> None:
        return None

    if scenario == "chain":
        for _ in range(n):
            await noop()
        return
    await asyncio.gather(*[(nap if scenario == "sleeps" else noop)() for _ in range(n)])


async def _aioflow(scenario: str, journal: str, n: int, runs: int, slots: int) -> None:
    flow = _flow(scenario, n)
    with tempfile.TemporaryDirectory(prefix="aioflow-instr-") as tmp:
        if journal == "memory":
            engine = aioflow.Engine("memory://")
        else:
            engine = aioflow.Engine(f"sqlite:///{tmp}/j.db", durability=journal)  # type: ignore[arg-type]
        async with engine:
            for slot in range(slots):
                gc.collect()
                if slot < runs:
                    outcome = await engine.run(flow)
                    if outcome.status is not aioflow.FlowStatus.SUCCESS:
                        raise RuntimeError(f"the {scenario} flow ended {outcome.status}")


async def _asyncio(scenario: str, n: int, runs: int, slots: int) -> None:
    for slot in range(slots):
        gc.collect()
        if slot < runs:
            await _floor(scenario, n)


def _child(subject: str, scenario: str, n: int, runs: int, slots: int) -> None:
    """``runs`` runs (the first a warm-up) in one loop and, for aioflow, one engine, each
    after a full collection; ``slots`` collections in all, whatever ``runs`` is."""
    if subject == "asyncio":
        asyncio.run(_asyncio(scenario, n, runs, slots))
    else:
        asyncio.run(_aioflow(scenario, subject, n, runs, slots))


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
