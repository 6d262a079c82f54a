"""TaskFlow's side of the benchmark, run by the harness inside TaskFlow's own venv.

Usage: ``python _peer_taskflow.py SCENARIO JOURNAL N REPEAT BUDGET`` with SCENARIO one of
wide, chain, diamond, sleeps and JOURNAL ``memory`` or ``sqlite``. Prints one JSON object:
``{"samples": [seconds, ...], "version": ...}``. Timing covers ``engines.load`` and
``engine.run`` (TaskFlow's compile and run), not building the flow's task objects, as on
aioflow's side. Samples stop early once ``BUDGET`` seconds have been spent (one at least).

This file is standalone: it must not import aioflow or anything of the benchmarks package.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import tempfile
import time
from importlib import metadata

from taskflow import engines, task
from taskflow.patterns import linear_flow, unordered_flow

SLEEP = 0.01


class Noop(task.Task):
    def execute(self) -> None:
        return None


class Source(task.Task):
    default_provides = "seed"

    def execute(self) -> int:
        return 1


class Middle(task.Task):
    def execute(self, seed: int) -> None:
        return None


class Nap(task.Task):
    def execute(self) -> None:
        time.sleep(SLEEP)


def build(scenario: str, n: int):  # type: ignore[no-untyped-def]
    if scenario == "wide":
        return unordered_flow.Flow("wide").add(*[Noop(name=f"t{i}") for i in range(n)])
    if scenario == "chain":
        return linear_flow.Flow("chain").add(*[Noop(name=f"t{i}") for i in range(n)])
    if scenario == "diamond":
        middles = unordered_flow.Flow("middles").add(*[Middle(name=f"m{i}") for i in range(n)])
        return linear_flow.Flow("diamond").add(Source(name="source"), middles, Noop(name="sink"))
    if scenario == "sleeps":
        return unordered_flow.Flow("sleeps").add(*[Nap(name=f"s{i}") for i in range(n)])
    raise SystemExit(f"unknown scenario {scenario!r}")


def one(scenario: str, journal: str, n: int, tmp: str, k: int) -> float:
    flow = build(scenario, n)
    options: dict[str, object] = {}
    if scenario == "sleeps":
        # Threads, one per task, so the naps overlap as aioflow's do on the event loop.
        options = {"engine": "parallel", "executor": "threaded", "max_workers": n}
    else:
        options = {"engine": "serial"}
    backend = None
    if journal == "sqlite":
        from taskflow.persistence import backends
        from taskflow.utils import persistence_utils

        backend = backends.fetch({"connection": f"sqlite:///{os.path.join(tmp, f'tf{k}.db')}"})
        with contextlib.closing(backend.get_connection()) as conn:
            conn.upgrade()
        book, detail = persistence_utils.temporary_flow_detail(backend)
        options.update(backend=backend, book=book, flow_detail=detail)
    gc.collect()
    t0 = time.perf_counter()
    engine = engines.load(flow, **options)
    engine.run()
    elapsed = time.perf_counter() - t0
    if backend is not None:
        backend.close()
    return elapsed


def main() -> None:
    scenario, journal, n_text, repeat_text, budget_text = sys.argv[1:6]
    n, repeat, budget = int(n_text), int(repeat_text), float(budget_text)
    samples: list[float] = []
    with tempfile.TemporaryDirectory(prefix="taskflow-bench-") as tmp:
        spent = 0.0
        for k in range(repeat):
            samples.append(one(scenario, journal, n, tmp, k))
            spent += samples[-1]
            if spent > budget:
                break
    print(json.dumps({"samples": samples, "version": metadata.version("taskflow")}))


if __name__ == "__main__":
    main()
