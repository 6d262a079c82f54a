"""A child process for the sleep restart test: ``python -m tests.sleep_child JOURNAL
LEDGER`` starts ``make_trial`` (begin, a 60 s Sleep, finish) in an entered engine and
stays until it is killed. Each task appends a line to LEDGER, so the test can count how
often each one ran across processes."""

from __future__ import annotations

import os
import sys

import anyio

import aioflow

LEDGER_ENV = "AIOFLOW_SLEEP_LEDGER"


def _note(atom: str) -> None:
    fd = os.open(os.environ[LEDGER_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{atom} {os.getpid()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@aioflow.task
async def begin() -> None:
    _note("begin")


@aioflow.task(provides="done")
async def finish() -> str:
    _note("finish")
    return "finished"


def make_trial() -> aioflow.Flow:
    return aioflow.Linear("trial", begin, aioflow.Sleep("cool_off", seconds=60), finish)


async def main(journal: str, flow_id: str) -> None:
    async with aioflow.Engine(journal) as engine:
        await engine.start("tests.sleep_child:make_trial", flow_id=flow_id)
        await anyio.sleep_forever()


if __name__ == "__main__":
    os.environ[LEDGER_ENV] = sys.argv[2]
    anyio.run(main, sys.argv[1], sys.argv[3])
