"""Flows for the crash test, and the child process that runs them until it is killed.

``tests/test_crash.py`` starts ``python -m tests.crash_child run|resume ...`` and kills it
with SIGKILL. The flows are named by reference (``"tests.crash_child:make_chain"``), so
the child, a later child and the test process itself can all resume them from the
journal alone.

Every task writes to a **ledger** (a plain file, opened with ``O_APPEND`` and fsynced
per line) one line when it starts and one just before it returns or raises, and does
the same for its revert::

    start <atom> <pid>          execute began
    done <atom> <pid>           execute is about to return (or raise, for ``explode``)
    revert-start <atom> <pid>   revert began
    reverted <atom> <pid>       revert is about to return

so the test can count how often each atom's code ran, across processes.

``AIOFLOW_CRASH_HANG=execute:<atom>`` (or ``revert:<atom>``) makes that atom hang after
its start line, which pins a kill to a known place; ``execute-dies:<atom>`` (or
``revert-dies:<atom>``) makes the child SIGKILL itself as that atom (a coroutine task)
starts, before anything else can happen. It is read in the child only.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import anyio

import aioflow

STEP = 0.004
"""How long each task and revert works, in seconds: long enough to be caught mid-run."""

HANG_ENV = "AIOFLOW_CRASH_HANG"


class Boom(Exception):
    """The failure ``explode`` raises."""


def record(ledger: str, what: str, atom: str, *, fsync: bool = True) -> None:
    """Append one line to the ledger and make it durable before returning (without
    ``fsync`` it survives the process, which is all a SIGKILL takes, not the machine)."""
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{what} {atom} {os.getpid()}\n".encode())
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def hangs(phase: str, atom: str) -> bool:
    return os.environ.get(HANG_ENV) == f"{phase}:{atom}"


async def arecord(ledger: str, what: str, atom: str) -> None:
    await anyio.to_thread.run_sync(record, ledger, what, atom)


async def begin(ledger: str, phase: str, atom: str) -> None:
    line = "start" if phase == "execute" else "revert-start"
    if hangs(f"{phase}-dies", atom):
        # At once, without an await or an fsync: a commit in flight gets no time to end.
        record(ledger, line, atom, fsync=False)
        os.kill(os.getpid(), signal.SIGKILL)
    await arecord(ledger, line, atom)
    if hangs(phase, atom):
        await anyio.sleep_forever()
    await anyio.sleep(STEP)


def begin_sync(ledger: str, phase: str, atom: str) -> None:
    record(ledger, "start" if phase == "execute" else "revert-start", atom)
    while hangs(phase, atom):
        time.sleep(1.0)  # until the test kills the process
    time.sleep(STEP)


# Tasks ------------------------------------------------------------------------------


@aioflow.task
async def add(value: int, amount: int, ledger: str, context: aioflow.TaskContext) -> int:
    await begin(ledger, "execute", context.atom)
    await arecord(ledger, "done", context.atom)
    return value + amount


@add.revert
async def undo_add(ledger: str, context: aioflow.TaskContext) -> None:
    await begin(ledger, "revert", context.atom)
    await arecord(ledger, "reverted", context.atom)


@aioflow.task
def mul(value: int, factor: int, ledger: str, context: aioflow.TaskContext) -> int:
    """The same as ``add`` but multiplying, and a plain function (run in a thread)."""
    begin_sync(ledger, "execute", context.atom)
    record(ledger, "done", context.atom)
    return value * factor


@mul.revert
def undo_mul(ledger: str, context: aioflow.TaskContext) -> None:
    begin_sync(ledger, "revert", context.atom)
    record(ledger, "reverted", context.atom)


@aioflow.task(provides="total")
async def combine(
    p1: int, p2: int, p3: int, p4: int, ledger: str, context: aioflow.TaskContext
) -> int:
    await begin(ledger, "execute", context.atom)
    await arecord(ledger, "done", context.atom)
    return p1 + p2 + p3 + p4


@combine.revert
async def undo_combine(ledger: str, context: aioflow.TaskContext) -> None:
    await begin(ledger, "revert", context.atom)
    await arecord(ledger, "reverted", context.atom)


@aioflow.task(provides="never")
async def explode(base: int, ledger: str, context: aioflow.TaskContext) -> int:
    await begin(ledger, "execute", context.atom)
    await arecord(ledger, "done", context.atom)
    raise Boom(f"explode refuses base {base}")


@explode.revert
async def undo_explode(ledger: str, context: aioflow.TaskContext) -> None:
    await begin(ledger, "revert", context.atom)
    await arecord(ledger, "reverted", context.atom)


@aioflow.task
async def warm_up() -> None:
    """Does nothing: run once before the flow under test, to warm the child's engine."""


def _add(name: str, source: str, amount: int, provides: str) -> aioflow.Task:
    return add.using(name, provides=provides, rebind={"value": source}, inject={"amount": amount})


def _mul(name: str, source: str, factor: int, provides: str) -> aioflow.Task:
    return mul.using(name, provides=provides, rebind={"value": source}, inject={"factor": factor})


# Flows, their predecessors, and what a plain sequential evaluation gives --------------


def make_chain() -> aioflow.Linear:
    """Six steps in a row, alternating coroutines and threads."""
    return aioflow.Linear(
        "chain",
        _add("c1", "seed", 1, "v1"),
        _mul("c2", "v1", 3, "v2"),
        _add("c3", "v2", 5, "v3"),
        _mul("c4", "v3", 2, "v4"),
        _add("c5", "v4", 7, "v5"),
        _add("c6", "v5", -1, "v6"),
    )


def make_fanout() -> aioflow.Linear:
    """A step, a fan-out of four (``Unordered``), a join, then a ``Linear`` tail."""
    return aioflow.Linear(
        "fanout",
        _add("prepare", "seed", 10, "base"),
        aioflow.Unordered(
            "spread",
            _add("w1", "base", 1, "p1"),
            _mul("w2", "base", 2, "p2"),
            _add("w3", "base", 3, "p3"),
            _mul("w4", "base", 4, "p4"),
        ),
        combine,
        aioflow.Linear("tail", _add("t1", "total", 100, "t"), _mul("t2", "t", 2, "final")),
    )


def make_failing() -> aioflow.Linear:
    """A fan-out in which ``explode`` fails: everything that ran is reverted."""
    return aioflow.Linear(
        "failing",
        _add("prepare", "seed", 10, "base"),
        aioflow.Unordered(
            "spread",
            _add("w1", "base", 1, "p1"),
            _mul("w2", "base", 2, "p2"),
            explode,
            _add("w3", "base", 3, "p3"),
        ),
        combine.using(rebind={"p4": "never"}),
    )


PREDECESSORS: dict[str, dict[str, tuple[str, ...]]] = {
    "chain": {f"c{i}": (f"c{i - 1}",) if i > 1 else () for i in range(1, 7)},
    "fanout": {
        "prepare": (),
        **{w: ("prepare",) for w in ("w1", "w2", "w3", "w4")},
        "combine": ("w1", "w2", "w3", "w4"),
        "t1": ("combine",),
        "t2": ("t1",),
    },
    "failing": {
        "prepare": (),
        **{w: ("prepare",) for w in ("w1", "w2", "explode", "w3")},
        "combine": ("w1", "w2", "explode", "w3"),
    },
}
"""Each atom's predecessors in the execution graph, by flow: what it waits for."""


def expected(shape: str, seed: int) -> dict[str, int]:
    """The symbols a flow publishes, computed step by step without aioflow."""
    if shape == "chain":
        v1 = seed + 1
        v2 = v1 * 3
        v3 = v2 + 5
        v4 = v3 * 2
        v5 = v4 + 7
        return {"v1": v1, "v2": v2, "v3": v3, "v4": v4, "v5": v5, "v6": v5 - 1}
    base = seed + 10
    parts = {"p1": base + 1, "p2": base * 2, "p3": base + 3, "p4": base * 4}
    if shape == "failing":
        return {}
    total = sum(parts.values())
    return {"base": base, **parts, "total": total, "t": total + 100, "final": (total + 100) * 2}


# The child process ------------------------------------------------------------------


async def main(argv: list[str]) -> None:
    """``run URL FLOW_ID DURABILITY REF SEED LEDGER`` or ``resume URL FLOW_ID DURABILITY``;
    prints the flow's final status."""
    command, url, flow_id, durability = argv[:4]
    assert durability in ("strict", "batched")
    outcome: Any
    # A short lease: a killed run's flow is orphaned, and may be resumed, soon after.
    async with aioflow.Engine(url, durability=durability, lease=_LEASE) as engine:
        # A flow first, as a long-lived process would have run: the engine is warm.
        await engine.run(aioflow.Linear("warm-up", warm_up))
        try:
            if command == "run":
                ref, seed, ledger = argv[4:7]
                outcome = await engine.run(
                    ref, {"seed": int(seed), "ledger": ledger}, flow_id=flow_id
                )
            elif command == "resume":
                outcome = await resume_orphan(engine, flow_id)
            else:
                raise SystemExit(f"unknown command {command!r}")
        except aioflow.FlowFailedError as exc:
            outcome = exc.outcome
    print(outcome.status.value, flush=True)


_LEASE = 0.25
"""Seconds of the engines' lease here: a killed process's flow is orphaned that soon."""


async def resume_orphan(engine: aioflow.Engine, flow_id: str) -> aioflow.Outcome:
    """Resume a flow whose process was killed, once its lease has run out."""
    while True:
        try:
            return await engine.resume(flow_id)
        except aioflow.FlowBusyError as busy:
            # The killed process owned it: its lease has yet to run out.
            await anyio.sleep(max((busy.expires or 0) - time.time(), 0) + 0.01)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
