"""The flows of ``tests/test_takeover.py``, and the child process that runs them until the
test kills it (SIGKILL) or freezes it (SIGSTOP).

The flows are named by reference (``"tests.takeover_child:make_flow"``), so the child,
the test process and a recovering engine can all build them from the journal alone.
Every step appends to a **ledger** (a plain file opened with ``O_APPEND``: one short
write per line, so lines from several processes never mix)::

    start <atom> <tag> <pid>    the step began
    done <atom> <tag> <pid>     the step is about to return

so the test can tell which process ran which step, and how often. The step named by
the ``hold`` input waits, instead of pausing, until a file ``release-<pid>`` exists next
to the ledger: the test holds one process's run there and lets another's go on.

Commands (each prints one line per fact, flushed, for the test to read)::

    run URL FLOW_ID LEDGER PAUSE HOLD LEASE   runs make_flow in Engine(URL, lease=LEASE)
    conductor URL NAME LEASE                  a Conductor of capacity 4 (as test_conductor)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio

import aioflow
from aioflow.jobs import Job

FLOW = "tests.takeover_child:make_flow"
JOB = "tests.takeover_child:make_job"
STEPS = tuple(f"s{n}" for n in range(1, 7))
JOB_STEPS = ("j1", "j2", "j3")


def note(ledger: str, what: str, atom: str, tag: str) -> None:
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{what} {atom} {tag} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def release_file(ledger: str, pid: int) -> Path:
    """The file whose existence lets the held step of process ``pid`` return."""
    return Path(ledger).with_name(f"release-{pid}")


@aioflow.task
async def step(
    ledger: str, pause: float, hold: str, tag: str, context: aioflow.TaskContext
) -> None:
    note(ledger, "start", context.atom, tag)
    if context.atom == hold:
        release = release_file(ledger, os.getpid())
        while not release.exists():
            await anyio.sleep(0.02)
    else:
        await anyio.sleep(pause)
    note(ledger, "done", context.atom, tag)


def make_flow() -> aioflow.Linear:
    """Six steps in a row."""
    return aioflow.Linear("takeover", *(step.using(name) for name in STEPS))


def make_job() -> aioflow.Linear:
    """Three steps in a row: the flow of each job of the conductor test."""
    return aioflow.Linear("job", *(step.using(name) for name in JOB_STEPS))


def say(*words: object) -> None:
    print(*words, flush=True)


async def run(url: str, flow_id: str, ledger: str, pause: str, hold: str, lease: str) -> None:
    inputs = {"ledger": ledger, "pause": float(pause), "hold": hold, "tag": flow_id}
    async with aioflow.Engine(url, lease=float(lease)) as engine:
        say("engine", engine.id)
        try:
            outcome = await engine.run(FLOW, inputs, flow_id=flow_id)
        except Exception as exc:  # the test reads what the run ended with
            say("error", type(exc).__name__, str(exc).replace("\n", " "))
        else:
            say("outcome", outcome.status.value)


async def conduct(url: str, name: str, lease: str) -> None:
    board = aioflow.JobBoard.open(url, poll=0.05)
    claim_many = board.claim_many  # what a conductor claims with

    async def logged_claims(owner: str, lease: float, n: int) -> list[Job]:
        jobs = await claim_many(owner, lease, n)
        for job in jobs:
            say("claimed", job.id)
        return jobs

    board.claim_many = logged_claims  # type: ignore[method-assign]
    # The flows' ownership lapses with the claims.
    engine = aioflow.Engine(url, lease=float(lease))
    async with aioflow.Conductor(
        board, engine, name=name, lease=float(lease), capacity=4
    ) as conductor:
        say("ready", engine.id)
        await conductor.run()


async def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "run":
        await run(*args)
    elif command == "conductor":
        await conduct(*args)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
