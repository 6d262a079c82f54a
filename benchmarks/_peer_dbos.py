"""DBOS's side of the benchmark, run by the harness inside DBOS's own venv.

Usage: ``python _peer_dbos.py SCENARIO JOURNAL N REPEAT BUDGET`` with SCENARIO one of
wide, chain, diamond, sleeps and JOURNAL ``sqlite`` (DBOS's system database on a fresh
SQLite file). Prints one JSON object: ``{"samples": [seconds, ...], "version": ...}``.
Each sample is one workflow whose steps are the scenario's tasks (concurrent steps through
``asyncio.gather`` in an async workflow); the timing covers the workflow call until its
result is back, which includes DBOS recording the workflow and each step's output.
Samples stop early once ``BUDGET`` seconds have been spent (one at least).

This file is standalone: it must not import aioflow or anything of the benchmarks package.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
import tempfile
import time
from importlib import metadata

from dbos import DBOS

SLEEP = 0.01


@DBOS.step()
async def noop() -> None:
    return None


@DBOS.step()
async def source() -> int:
    return 1


@DBOS.step()
async def middle(seed: int) -> None:
    return None


@DBOS.step()
async def nap() -> None:
    await asyncio.sleep(SLEEP)


@DBOS.workflow()
async def wide(n: int) -> None:
    await asyncio.gather(*[noop() for _ in range(n)])


@DBOS.workflow()
async def chain(n: int) -> None:
    for _ in range(n):
        await noop()


@DBOS.workflow()
async def diamond(n: int) -> None:
    seed = await source()
    await asyncio.gather(*[middle(seed) for _ in range(n)])
    await noop()


@DBOS.workflow()
async def sleeps(n: int) -> None:
    await asyncio.gather(*[nap() for _ in range(n)])


WORKFLOWS = {"wide": wide, "chain": chain, "diamond": diamond, "sleeps": sleeps}


async def measure(scenario: str, n: int, repeat: int, budget: float) -> list[float]:
    workflow = WORKFLOWS[scenario]
    samples: list[float] = []
    spent = 0.0
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        await workflow(n)
        samples.append(time.perf_counter() - t0)
        spent += samples[-1]
        if spent > budget:
            break
    return samples


def main() -> None:
    scenario, journal, n_text, repeat_text, budget_text = sys.argv[1:6]
    if journal != "sqlite":
        raise SystemExit(f"DBOS is measured on SQLite only, not {journal!r}")
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="dbos-bench-") as tmp:
        url = f"sqlite:///{os.path.join(tmp, 'dbos.sqlite')}"
        DBOS(config={"name": "aioflow-bench", "system_database_url": url, "log_level": "ERROR"})
        DBOS.launch()
        try:
            samples = asyncio.run(
                measure(scenario, int(n_text), int(repeat_text), float(budget_text))
            )
        finally:
            DBOS.destroy()
    print(json.dumps({"samples": samples, "version": metadata.version("dbos")}))


if __name__ == "__main__":
    main()
