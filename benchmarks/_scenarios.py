"""The scenarios: aioflow on each journal, with the plain-asyncio floor beside it.

A scenario is a function of the :class:`Config` that returns :class:`Result` records.
Timing covers ``await engine.run(flow)`` in an entered engine (compiling the flow,
running it, and waiting for the journal to commit the end of the run); building the
flow's task objects and opening the journal are outside it, and reported separately
where they matter. Every sample gets a fresh engine, a fresh SQLite file (on PostgreSQL:
the same database, a new flow) and a fresh event loop.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import aioflow
from aioflow._replay import replay

from . import _floor
from ._harness import ROOT, AsyncSample, Result, sample_async

JOURNALS = ("memory", "strict", "batched")
"""The journal kinds always measured: memory, and SQLite with each durability."""

POSTGRES_JOURNALS = ("pg strict", "pg batched")
"""Added when ``open_journal("postgresql://...")`` works (see :func:`postgres_problem`)."""

JOURNAL_LABEL = {
    "memory": "memory",
    "strict": "sqlite strict",
    "batched": "sqlite batched",
    "pg strict": "postgres strict",
    "pg batched": "postgres batched",
}

POSTGRES_URL = os.environ.get(
    "AIOFLOW_BENCH_POSTGRES",
    os.environ.get("AIOFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"),
)

K = 1000


@dataclass(frozen=True, slots=True)
class Config:
    """What the command line asked for."""

    repeat: int = 5
    quick: bool = False
    sizes: tuple[int, ...] | None = None
    """``--sizes``: replaces the default sizes of ``wide``, ``chain`` and ``diamond``."""
    extra_sizes: tuple[int, ...] = ()
    """Sizes added to ``wide`` and ``chain`` so that peers have an aioflow figure to face."""
    tmp: str | None = None
    """Where SQLite journals are created (a fresh folder per sample)."""
    journals: tuple[str, ...] = JOURNALS
    """The journal kinds to measure (the PostgreSQL ones only when they can be opened)."""

    def sizes_for(self, scenario: str, journal: str) -> tuple[int, ...]:
        if self.sizes is not None:
            base: tuple[int, ...] = self.sizes
        elif self.quick:
            base = (1 * K,) if scenario == "diamond" else (100, 1 * K)
        else:
            base = DEFAULT_SIZES[scenario].get(journal, (1 * K, 10 * K))
        if scenario in ("wide", "chain"):
            base = tuple(sorted(set(base) | set(self.extra_sizes)))
        return base


DEFAULT_SIZES: dict[str, dict[str, tuple[int, ...]]] = {
    # Strict wide flows share commits, so 100k is as quick on strict as on batched.
    "wide": {j: (1 * K, 10 * K, 100 * K) for j in JOURNALS},
    "chain": {
        "memory": (1 * K, 10 * K, 100 * K),
        "strict": (1 * K, 10 * K),
        "batched": (1 * K, 10 * K),
        # A commit round trip to the server per step: 10k would take minutes.
        "pg strict": (1 * K,),
    },
    "diamond": {j: (1 * K, 10 * K) for j in JOURNALS},
}


# The tasks ------------------------------------------------------------------------------


@aioflow.task
async def noop() -> None:
    return None


@aioflow.task(provides="seed")
async def source() -> int:
    return 1


@aioflow.task
async def middle(seed: int) -> None:
    return None


SLEEP = 0.01


@aioflow.task
async def nap() -> None:
    # The floor's own sleep (asyncio.sleep), so that what differs is the engine's cost;
    # anyio.sleep adds ~1.5 us of its own on asyncio.
    await asyncio.sleep(SLEEP)


def wide_flow(n: int) -> aioflow.Flow:
    return aioflow.Unordered("wide", *[noop.using(name=f"t{i}") for i in range(n)])


def chain_flow(n: int) -> aioflow.Flow:
    return aioflow.Linear("chain", *[noop.using(name=f"t{i}") for i in range(n)])


def diamond_flow(n: int) -> aioflow.Flow:
    middles = aioflow.Unordered("middles", *[middle.using(name=f"m{i}") for i in range(n)])
    return aioflow.Linear("diamond", source, middles, noop.using(name="sink"))


def sleeps_flow(n: int) -> aioflow.Flow:
    return aioflow.Unordered("sleeps", *[nap.using(name=f"s{i}") for i in range(n)])


# Running --------------------------------------------------------------------------------


@asynccontextmanager
async def engine_for(journal: str, cfg: Config, **options: Any) -> AsyncIterator[aioflow.Engine]:
    """An entered engine on a fresh journal of the given kind."""
    if journal == "memory":
        async with aioflow.Engine("memory://", **options) as engine:
            yield engine
        return
    if journal.startswith("pg "):
        durability = journal.removeprefix("pg ")
        async with (
            fresh_schema(POSTGRES_URL) as url,
            aioflow.Engine(url, durability=durability, **options) as engine,  # type: ignore[arg-type]
        ):
            yield engine
        return
    with tempfile.TemporaryDirectory(prefix="aioflow-bench-", dir=cfg.tmp) as tmp:
        url = f"sqlite:///{os.path.join(tmp, 'journal.db')}"
        async with aioflow.Engine(url, durability=journal, **options) as engine:  # type: ignore[arg-type]
            yield engine


@asynccontextmanager
async def fresh_schema(url: str) -> AsyncIterator[str]:
    """``url`` with a ``search_path`` of a schema made for the caller, dropped after: each
    PostgreSQL measurement starts from empty tables, as the floor's do (a journal left
    in ``public`` by earlier runs grew to millions of events, and every step was slower
    for it)."""
    import asyncpg

    schema = f"aioflow_bench_{time.monotonic_ns()}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    try:
        yield f"{url}{'&' if '?' in url else '?'}search_path={schema}"
    finally:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await conn.close()


async def run_flow(engine: aioflow.Engine, flow: aioflow.Flow) -> float:
    """Seconds that ``engine.run(flow)`` took; raises unless the flow succeeded."""
    gc.collect()
    t0 = time.perf_counter()
    outcome = await engine.run(flow)
    elapsed = time.perf_counter() - t0
    if outcome.status is not aioflow.FlowStatus.SUCCESS:
        raise RuntimeError(f"flow {flow.name} ended {outcome.status}")
    return elapsed


def per_task(samples: Iterable[float], n: int) -> list[float]:
    return [s / n * 1e6 for s in samples]


def with_ratios(results: list[Result], floor: str) -> list[Result]:
    """Set each aioflow result's ratio to the ``floor`` variant of asyncio at its size."""
    floors = {r.n: r.median for r in results if r.subject == "asyncio" and r.variant == floor}
    for r in results:
        base = floors.get(r.n)
        if r.subject != "asyncio" and base:
            r.ratio_asyncio = r.median / base
    return results


def shape_scenario(
    cfg: Config,
    scenario: str,
    make: Callable[[int], aioflow.Flow],
    floors: dict[str, Callable[[int], Any]],
) -> list[Result]:
    """The floors and aioflow on each journal, at each size, sampled in turns: each round
    takes one sample of every subject, so a slow spell of the host falls on all of them
    alike rather than on the floor's block of samples (a run once measured
    ``asyncio.gather`` at 7.2 µs a task in all five samples, against 4.2 in the run
    before, while aioflow's figures were the same in both)."""
    sizes = sorted({n for j in cfg.journals for n in cfg.sizes_for(scenario, j)})
    results = []
    for n in sizes:
        subjects: list[tuple[str, str, AsyncSample]] = [
            ("anyio" if variant == "task group" else "asyncio", variant, partial(fn, n))
            for variant, fn in floors.items()
        ]
        builds: dict[str, list[float]] = {}
        for journal in cfg.journals:
            if n in cfg.sizes_for(scenario, journal):
                built = builds[JOURNAL_LABEL[journal]] = []
                run = partial(_run_shape, cfg, journal, make, n, built)
                subjects.append(("aioflow", JOURNAL_LABEL[journal], run))
        samples: dict[str, list[float]] = {variant: [] for _, variant, _ in subjects}
        for _ in range(cfg.repeat):
            for _, variant, one in subjects:
                samples[variant] += sample_async(1, one)
        for subject, variant, _ in subjects:
            extra = {}
            if variant in builds:
                extra["build_us_per_task"] = statistics.median(builds[variant]) / n * 1e6
            per = per_task(samples[variant], n)
            results.append(Result(scenario, subject, variant, n, "us/task", per, extra))
    return with_ratios(results, next(iter(floors)))


async def _run_shape(
    cfg: Config, journal: str, make: Callable[[int], aioflow.Flow], n: int, builds: list[float]
) -> float:
    """Seconds to run ``make(n)`` on a fresh engine of ``journal``; the time to build the
    flow goes to ``builds``."""
    t0 = time.perf_counter()
    flow = make(n)
    builds.append(time.perf_counter() - t0)
    async with engine_for(journal, cfg) as engine:
        return await run_flow(engine, flow)


# The scenarios -------------------------------------------------------------------------


def wide(cfg: Config) -> list[Result]:
    """An Unordered of N no-op tasks, against asyncio.gather (and an anyio task group)."""
    floors = {"gather": _floor.gather, "task group": _floor.task_group}
    return shape_scenario(cfg, "wide", wide_flow, floors)


def chain(cfg: Config) -> list[Result]:
    """A Linear of N no-op tasks, against N no-op coroutines awaited in turn, and (for
    the strict journals, which commit each step before the next starts) against N bare
    one-row transactions of the same store: ``BEGIN; INSERT; COMMIT`` on a SQLite WAL
    file and on PostgreSQL (``over_commit`` is the step ÷ that floor), and a lone
    ``INSERT`` on PostgreSQL, one round trip (``over_insert``)."""
    floors = {"await chain": _floor.chain, "sqlite commit": _floor.sqlite_commits}
    results = shape_scenario(cfg, "chain", chain_flow, floors)
    if "pg strict" in cfg.journals:
        # Only at the sizes the PostgreSQL journal runs: a round trip a row.
        for n in cfg.sizes_for("chain", "pg strict"):
            for variant, transaction in (("pg insert txn", True), ("pg insert", False)):
                one = partial(_floor.postgres_inserts, n, POSTGRES_URL, transaction=transaction)
                floor = per_task(sample_async(cfg.repeat, one), n)
                results.append(Result("chain", "asyncio", variant, n, "us/task", floor))
    floors = (
        ("sqlite commit", "strict", "over_commit"),
        ("pg insert txn", "pg strict", "over_commit"),
        ("pg insert", "pg strict", "over_insert"),
    )
    for floor, journal, key in floors:
        commits = {r.n: r.median for r in results if r.variant == floor}
        for r in results:
            base = commits.get(r.n)
            if r.subject == "aioflow" and r.variant == JOURNAL_LABEL[journal] and base:
                r.extra[key] = r.median / base
    return results


def diamond(cfg: Config) -> list[Result]:
    """A source, an Unordered of N tasks that each need its symbol, and a sink."""
    return shape_scenario(cfg, "diamond", diamond_flow, {"gather": _floor.diamond})


def sleeps(cfg: Config) -> list[Result]:
    """1,000 tasks that each sleep 10 ms at once: microseconds per task above 10 ms.

    A sample takes ~30 ms, and this machine's speed changes from one second to the next:
    so three times as many samples as elsewhere, taken in rounds of one sample of every
    subject (the floor and each journal, in turn), so that all meet the same moments."""
    n = 1000

    def over(samples: list[float]) -> list[float]:
        return [(s - SLEEP) / n * 1e6 for s in samples]

    async def run_on(journal: str) -> float:
        flow = sleeps_flow(n)
        async with engine_for(journal, cfg) as engine:
            return await run_flow(engine, flow)

    subjects: list[tuple[str, AsyncSample]] = [("gather", lambda: _floor.sleeps(n, SLEEP))]
    subjects += [(journal, partial(run_on, journal)) for journal in cfg.journals]
    samples: dict[str, list[float]] = {name: [] for name, _ in subjects}
    for r in range(cfg.repeat * 3):
        turn = r % len(subjects)
        for name, one in subjects[turn:] + subjects[:turn]:
            samples[name] += sample_async(1, one)
    floor = over(samples["gather"])
    results = [Result("sleeps", "asyncio", "gather", n, "us/task over ideal", floor)]
    for journal in cfg.journals:
        results.append(
            Result(
                "sleeps",
                "aioflow",
                JOURNAL_LABEL[journal],
                n,
                "us/task over ideal",
                over(samples[journal]),
                {"wall_ms": statistics.median(samples[journal]) * 1e3},
            )
        )
    return with_ratios(results, "gather")


def _reporter(calls: int, elapsed: list[float]) -> aioflow.Task:
    @aioflow.task
    async def reporter(progress: aioflow.Progress) -> None:
        t0 = time.perf_counter()
        for i in range(calls):
            progress(i / calls)
        elapsed.append(time.perf_counter() - t0)

    return reporter


def progress(cfg: Config) -> list[Result]:
    """One task calls ``progress(i / N)`` N times: microseconds per call, timed inside it."""
    calls = 10_000 if cfg.quick else 100_000
    results = []
    for variant, listeners in (("no listener", ()), ("1 sync listener", (_count,))):
        elapsed: list[float] = []
        reporter = _reporter(calls, elapsed)

        async def one(
            reporter: aioflow.Task = reporter, listeners: Any = listeners, out: Any = elapsed
        ) -> float:
            async with aioflow.Engine("memory://", listeners=listeners) as engine:
                await run_flow(engine, aioflow.Linear("progress", reporter))
            return float(out[-1])

        samples = sample_async(cfg.repeat, one)
        results.append(
            Result(
                "progress",
                "aioflow",
                f"memory, {variant}",
                calls,
                "us/call",
                [s / calls * 1e6 for s in samples],
            )
        )
    results.append(engine_progress(cfg))
    return results


def engine_progress(cfg: Config) -> Result:
    """``await engine.progress(flow_id)`` of a finished wide flow read back from SQLite
    (the journal's events loaded and replayed): microseconds per call."""
    n = 1_000 if cfg.quick else 10_000

    async def go() -> list[float]:
        out = []
        async with engine_for("strict", cfg) as engine:
            outcome = await engine.run(wide_flow(n))
            for _ in range(cfg.repeat):
                gc.collect()
                t0 = time.perf_counter()
                report = await engine.progress(outcome.flow_id)
                out.append((time.perf_counter() - t0) * 1e6)
                if report.fraction != 1.0:
                    raise RuntimeError(f"a finished flow reports progress {report.fraction}")
        return out

    return Result(
        "progress",
        "aioflow",
        f"engine.progress(), finished {n // K}k-atom flow, sqlite",
        n,
        "us/call",
        asyncio.run(go()),
    )


_seen = 0


def _count(event: aioflow.Event) -> None:
    global _seen
    _seen += 1


async def peak_bytes(
    make: Callable[[int], aioflow.Flow], n: int, inputs: dict[str, Any] | None = None
) -> dict[str, float]:
    """tracemalloc's figures per item of defining ``make(n)`` and running it on the
    memory journal (with ``inputs``): the definition, the run's peak, what the run kept,
    and the whole peak."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        flow = make(n)
        defined = tracemalloc.get_traced_memory()[0] - base
        async with aioflow.Engine("memory://") as engine:
            tracemalloc.reset_peak()
            before_run = tracemalloc.get_traced_memory()[0]
            outcome = await engine.run(flow, inputs=inputs or {})
            current, peak = tracemalloc.get_traced_memory()
            if outcome.status is not aioflow.FlowStatus.SUCCESS:
                raise RuntimeError(f"flow {flow.name} ended {outcome.status}")
            del outcome
    finally:
        tracemalloc.stop()
    return {
        "definition": defined / n,
        "run_peak": (peak - before_run) / n,
        "retained_after_run": (current - before_run) / n,
        "total_peak": (peak - base) / n,
    }


def memory(cfg: Config) -> list[Result]:
    """Peak traced memory of building and running an N-atom wide flow on the memory journal.

    One sample: tracemalloc's counts do not vary between runs the way times do.
    """
    n = 10_000 if cfg.quick else 100_000

    figures = asyncio.run(peak_bytes(wide_flow, n))
    return [
        Result(
            "memory",
            "aioflow",
            "memory journal, wide",
            n,
            "bytes/atom",
            [figures["total_peak"]],
            figures,
            note="definition + run peak, tracemalloc, one sample",
        )
    ]


_IMPORTTIME = re.compile(r"import time:\s+\d+\s+\|\s+(\d+)\s+\|\s+aioflow$")


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def import_time(cfg: Config) -> list[Result]:
    """``import aioflow`` in a fresh interpreter: ``-X importtime``'s cumulative figure,
    and wall time of ``python -c "import aioflow"`` minus ``python -c pass``."""
    repeat = max(3 if cfg.quick else 5, cfg.repeat)
    _python("-c", "import aioflow")  # writes the .pyc files the timed runs read
    cumulative = []
    for _ in range(repeat):
        lines = _python("-X", "importtime", "-c", "import aioflow").stderr.splitlines()
        match = next(m for m in map(_IMPORTTIME.search, reversed(lines)) if m)
        cumulative.append(int(match.group(1)) / 1e3)
    wall = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        _python("-c", "import aioflow")
        t1 = time.perf_counter()
        _python("-c", "pass")
        t2 = time.perf_counter()
        wall.append(((t1 - t0) - (t2 - t1)) * 1e3)
    return [
        Result("import", "aioflow", "-X importtime, cumulative", None, "ms", cumulative),
        Result("import", "aioflow", "wall, minus python -c pass", None, "ms", wall),
    ]


def synthetic_events(flow_id: str, total: int) -> list[aioflow.Event]:
    """A successful wide flow's journal of about ``total`` events, as the engine writes it:
    the flow's start, each atom's RUNNING and SUCCESS (with its result), a PROGRESS event
    for one atom in ten, and the flow's end."""
    atoms = max(1, (total - 2) * 10 // 21)
    names = [f"t{i}" for i in range(atoms)]
    structure = ["flow", "wide", [["task", name] for name in names]]
    now = time.time()
    ok: dict[str, Any] = {"result": None}
    half: dict[str, Any] = {"step": "half"}
    start = {"name": "wide", "ref": None, "fingerprint": "x", "structure": structure}
    events = [
        aioflow.Event(
            flow_id, 1, now, aioflow.EventKind.FLOW, None, aioflow.FlowStatus.RUNNING, details=start
        )
    ]
    append = events.append
    atom, progress = aioflow.EventKind.ATOM, aioflow.EventKind.PROGRESS
    running, success = aioflow.AtomState.RUNNING, aioflow.AtomState.SUCCESS
    seq = 1
    for i, name in enumerate(names):
        append(aioflow.Event(flow_id, seq + 1, now, atom, name, running, 1, 0.0))
        seq += 1
        if i % 10 == 0:
            append(aioflow.Event(flow_id, seq + 1, now, progress, name, None, 1, 0.5, half))
            seq += 1
        append(aioflow.Event(flow_id, seq + 1, now, atom, name, success, 1, 1.0, ok))
        seq += 1
    events.append(
        aioflow.Event(
            flow_id, seq + 1, now, aioflow.EventKind.FLOW, None, aioflow.FlowStatus.SUCCESS
        )
    )
    return events


def replay_scenario(cfg: Config) -> list[Result]:
    """``aioflow._replay.replay`` over a synthetic 1,000,000-event journal, in events/s;
    and, for scale, ``journal.load`` of a real wide flow's events from SQLite."""
    total = 100_000 if cfg.quick else 1_000_000
    events = synthetic_events("replayed", total)
    rates = []
    for _ in range(cfg.repeat):
        gc.collect()
        t0 = time.perf_counter()
        state = replay("replayed", events)
        elapsed = time.perf_counter() - t0
        if state.status is not aioflow.FlowStatus.SUCCESS:
            raise RuntimeError(f"replay gave {state.status}, not SUCCESS")
        rates.append(len(events) / elapsed)
        del state
    atoms = sum(1 for e in events if e.kind is aioflow.EventKind.ATOM) // 2
    del events
    results = [
        Result(
            "replay",
            "aioflow",
            "replay(), synthetic",
            total,
            "events/s",
            rates,
            {"atoms": atoms},
        )
    ]
    size = 5_000 if cfg.quick else 50_000

    async def load() -> list[float]:
        with tempfile.TemporaryDirectory(prefix="aioflow-bench-", dir=cfg.tmp) as tmp:
            url = f"sqlite:///{os.path.join(tmp, 'replay.db')}"
            async with aioflow.Engine(url, durability="batched") as engine:
                outcome = await engine.run(wide_flow(size))
                out = []
                for _ in range(cfg.repeat):
                    gc.collect()
                    t0 = time.perf_counter()
                    loaded = await engine.journal.load(outcome.flow_id)
                    out.append(len(loaded) / (time.perf_counter() - t0))
                return out

    loads = asyncio.run(load())
    results.append(
        Result(
            "replay",
            "aioflow",
            f"sqlite journal.load(), {size // K}k-atom flow",
            None,
            "events/s",
            loads,
        )
    )
    return results


def postgres_problem(url: str = POSTGRES_URL) -> str | None:
    """Why the PostgreSQL journal cannot be measured, or None when it can."""

    async def probe() -> None:
        async with aioflow.open_journal(url):
            pass

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _otel_instrument() -> Any:
    """``aioflow.otel.OpenTelemetry`` on the SDK with an exporter that drops every span
    (what it costs to make spans and metrics, not to ship them)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from aioflow.otel import OpenTelemetry

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(Drop()))
    return OpenTelemetry(tracer_provider, MeterProvider())


def instruments(cfg: Config) -> list[Result]:
    """A chain of N no-op tasks on ``memory://``: without instruments, and with the
    OpenTelemetry instrument (a span per attempt and per run, metrics, spans dropped by
    the exporter), against N coroutines awaited in turn. Samples in rounds of one of
    each, so that all meet the same moments of a noisy machine."""
    n = 200 if cfg.quick else 2 * K
    otel = _otel_instrument()

    async def run_with(instrumented: bool) -> float:
        flow = chain_flow(n)
        options = {"instruments": [otel]} if instrumented else {}
        async with engine_for("memory", cfg, **options) as engine:
            return await run_flow(engine, flow)

    subjects: list[tuple[str, AsyncSample]] = [
        ("await chain", lambda: _floor.chain(n)),
        ("memory", partial(run_with, False)),
        ("memory + OpenTelemetry", partial(run_with, True)),
    ]
    samples: dict[str, list[float]] = {name: [] for name, _ in subjects}
    for r in range(cfg.repeat * 2):
        turn = r % len(subjects)
        for name, one in subjects[turn:] + subjects[:turn]:
            samples[name] += sample_async(1, one)
    floor = per_task(samples["await chain"], n)
    results = [Result("instruments", "asyncio", "await chain", n, "us/task", floor)]
    bare = statistics.median(per_task(samples["memory"], n))
    for name in ("memory", "memory + OpenTelemetry"):
        per = per_task(samples[name], n)
        extra = {"over_bare_us": statistics.median(per) - bare}
        results.append(Result("instruments", "aioflow", name, n, "us/task", per, extra))
    return with_ratios(results, "await chain")


def map_scenario(cfg: Config) -> list[Result]:
    """A Map's copies against a static Unordered's atoms: time and memory per item
    (``benchmarks/maps.py``, which builds on this module)."""
    from . import maps

    return maps.scenario(cfg)


SCENARIOS: dict[str, Callable[[Config], list[Result]]] = {
    "wide": wide,
    "chain": chain,
    "diamond": diamond,
    "sleeps": sleeps,
    "replay": replay_scenario,
    "progress": progress,
    "memory": memory,
    "import": import_time,
    "instruments": instruments,
    "map": map_scenario,
}
"""Every scenario by name, in the order the suite runs them."""
