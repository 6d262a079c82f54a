"""The ``map`` scenario: a :class:`~aioflow.Map` copy against an atom of a static Unordered.

Issue requirement: a Map item costs at most 1.5x an atom of a static ``Unordered``, and
memory per item is at most 3 KB at 100,000 items. Both flows start with the same task
(``make_list``, which provides the list ``xs`` of N integers), then:

- **unordered**: ``Linear(make_list, Unordered(N no-op tasks))``, built before the clock
  starts (as in ``wide``: building the task objects is reported apart, as
  ``build_us_per_task``);
- **map**: ``Linear(make_list, Map("m", noop, over="xs"))``, whose N copies the run grows
  itself, inside the timing;
- **map, item read**: the same with a member that takes its element (``item``), the way
  a Map is used.

Times are microseconds per item (the whole ``engine.run`` divided by N), taken in rounds
of one sample of every subject, so that all meet the same moments of a noisy machine;
each Map result carries ``vs_unordered``: the median over the rounds of the round's Map
sample divided by its Unordered sample (and the ratio of the medians, which the note
shows too). Memory is tracemalloc's peak while defining and running each flow on the
memory journal, per item, one sample (as in ``memory``).

    python -m benchmarks --only map --no-peers            # 10k items, memory at 100k
    python -m benchmarks.maps --n 10000 --journal memory --profile   # cProfile one Map run
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import aioflow

from . import _floor
from ._harness import AsyncSample, Result, sample_async
from ._scenarios import JOURNAL_LABEL, Config, K, engine_for, peak_bytes, per_task


@aioflow.task(provides="xs")
async def make_list(n: int) -> list[int]:
    return list(range(n))


@aioflow.task
async def noop() -> None:
    return None


@aioflow.task
async def use(item: int) -> None:
    return None


def unordered_flow(n: int) -> aioflow.Flow:
    tasks = [noop.using(name=f"t{i}") for i in range(n)]
    return aioflow.Linear("unordered", make_list, aioflow.Unordered("wide", *tasks))


def map_flow(n: int) -> aioflow.Flow:
    return aioflow.Linear("mapped", make_list, aioflow.Map("m", noop, over="xs"))


def map_item_flow(n: int) -> aioflow.Flow:
    return aioflow.Linear("mapped", make_list, aioflow.Map("m", use, over="xs"))


SUBJECTS: dict[str, Callable[[int], aioflow.Flow]] = {
    "unordered": unordered_flow,
    "map": map_flow,
    "map, item read": map_item_flow,
}
"""Each subject's flow of N items; the first is the one the others are divided by."""


async def run_once(engine: aioflow.Engine, flow: aioflow.Flow, n: int) -> float:
    """Seconds that ``engine.run(flow, {"n": n})`` took; raises unless it succeeded."""
    gc.collect()
    t0 = time.perf_counter()
    outcome = await engine.run(flow, inputs={"n": n})
    elapsed = time.perf_counter() - t0
    if outcome.status is not aioflow.FlowStatus.SUCCESS:
        raise RuntimeError(f"flow {flow.name} ended {outcome.status}")
    return elapsed


def times(cfg: Config, journal: str, n: int) -> list[Result]:
    """Every subject on one journal at N items, sampled in rounds."""
    builds: dict[str, list[float]] = {name: [] for name in SUBJECTS}

    async def one(name: str) -> float:
        t0 = time.perf_counter()
        flow = SUBJECTS[name](n)
        builds[name].append(time.perf_counter() - t0)
        async with engine_for(journal, cfg) as engine:
            return await run_once(engine, flow, n)

    subjects: list[tuple[str, AsyncSample]] = [(name, partial(one, name)) for name in SUBJECTS]
    samples: dict[str, list[float]] = {name: [] for name in SUBJECTS}
    for r in range(cfg.repeat * 2):
        turn = r % len(subjects)
        for name, fn in subjects[turn:] + subjects[:turn]:
            samples[name] += sample_async(1, fn)
    base_name = next(iter(SUBJECTS))
    base = samples[base_name]
    results = []
    for name in SUBJECTS:
        per = per_task(samples[name], n)
        extra: dict[str, Any] = {"build_us_per_task": statistics.median(builds[name]) / n * 1e6}
        note = ""
        if name != base_name:
            paired = statistics.median(s / b for s, b in zip(samples[name], base, strict=True))
            of_medians = statistics.median(samples[name]) / statistics.median(base)
            # With the build included: the static flow's task objects against none.
            built = (statistics.median(samples[name]) + statistics.median(builds[name])) / (
                statistics.median(base) + statistics.median(builds[base_name])
            )
            extra |= {
                "vs_unordered": paired,
                "vs_unordered_of_medians": of_medians,
                "vs_unordered_with_build": built,
            }
            note = (
                f"÷ unordered {paired:.2f}x (paired rounds; of medians {of_medians:.2f}x,"
                f" with its build {built:.2f}x)"
            )
        results.append(
            Result(
                "map",
                "aioflow",
                f"{name}, {JOURNAL_LABEL[journal]}",
                n,
                "us/item",
                per,
                extra,
                note=note,
            )
        )
    return results


def memory(cfg: Config) -> list[Result]:
    """Bytes per item at peak (definition + run, memory journal), one sample each."""
    n = 10 * K if cfg.quick else 100 * K
    figures = {name: asyncio.run(peak_bytes(make, n, {"n": n})) for name, make in SUBJECTS.items()}
    base = figures["unordered"]["total_peak"]
    results = []
    for name, extra in figures.items():
        note = "definition + run peak, tracemalloc, one sample"
        if name != "unordered":
            extra["vs_unordered"] = extra["total_peak"] / base
            note += f"; ÷ unordered {extra['vs_unordered']:.2f}x"
        results.append(
            Result(
                "map",
                "aioflow",
                f"{name}, memory journal, peak",
                n,
                "bytes/item",
                [extra["total_peak"]],
                extra,
                note=note,
            )
        )
    return results


def sizes(cfg: Config) -> tuple[int, ...]:
    if cfg.sizes is not None:
        return cfg.sizes
    return (1 * K,) if cfg.quick else (10 * K,)


def scenario(cfg: Config) -> list[Result]:
    """Time per item of a Map and of a static Unordered on each journal, next to
    ``asyncio.gather`` of as many no-op coroutines; then bytes per item."""
    results = []
    for n in sizes(cfg):
        floor = per_task(sample_async(cfg.repeat, partial(_floor.gather, n)), n)
        results.append(Result("map", "asyncio", "gather", n, "us/item", floor))
        gather = statistics.median(floor)
        for journal in cfg.journals:
            for r in times(cfg, journal, n):
                r.ratio_asyncio = r.median / gather if gather else None
                results.append(r)
    return results + memory(cfg)


def _profile(n: int, journal: str, subject: str, top: int) -> None:
    import cProfile
    import pstats

    cfg = Config(repeat=1)
    make = SUBJECTS[subject]

    async def once(profiler: cProfile.Profile | None) -> float:
        flow = make(n)
        async with engine_for(journal, cfg) as engine:
            if profiler is not None:
                profiler.enable()
            try:
                return await run_once(engine, flow, n)
            finally:
                if profiler is not None:
                    profiler.disable()

    asyncio.run(once(None))
    profiler = cProfile.Profile()
    seconds = asyncio.run(once(profiler))
    print(f"{subject} {n} on {journal}: {seconds / n * 1e6:.1f} us/item under cProfile")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.maps",
        description="The map scenario alone (see also python -m benchmarks --only map).",
    )
    parser.add_argument("--n", type=int, default=10 * K)
    parser.add_argument("--journal", choices=list(JOURNAL_LABEL), default="memory")
    parser.add_argument("--subject", choices=list(SUBJECTS), default="map")
    parser.add_argument("--profile", action="store_true", help="one run under cProfile")
    parser.add_argument("--top", type=int, default=30, help="rows of the profile")
    args = parser.parse_args(argv)
    if args.profile:
        _profile(args.n, args.journal, args.subject, args.top)
        return
    from ._report import results_table

    cfg = Config(sizes=(args.n,), journals=(args.journal,))
    print(results_table(scenario(cfg), []))


if __name__ == "__main__":
    main()
