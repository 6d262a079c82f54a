"""Jobs claimed and completed per second on PostgreSQL: ``python -m benchmarks.jobboard``.

Each sample gets a fresh schema (dropped afterwards), posts ``--jobs`` jobs whose flow is
one no-op task (:func:`noop_flow`), then starts K processes and times from the moment
all of them are connected and told to go until the last job is COMPLETE (the largest
``updated`` of the board's rows, on this machine's clock). Two subjects per K:

- ``conductors``: K processes, each one ``Conductor(board, Engine(url), capacity=C)``
  on the same URL (so the flow's journal appends are fenced on the job's claim);
- ``floor``: K processes, each looping on one asyncpg connection over the very claim
  statement the PostgreSQL board issues (``UPDATE ... FOR UPDATE SKIP LOCKED``) and its
  completion ``UPDATE``: no flow, no journal, no decoding.

Samples of the subjects are interleaved; the table shows medians. ``--profile`` runs one
conductor in this process under pyinstrument instead (``pip install pyinstrument``).
``--taskset CPUS`` runs the K processes under ``taskset -c CPUS`` (e.g. ``1``: the server,
which this benchmark does not pin, then has core 0 to itself unless the OS moves it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, cast

import anyio
import asyncpg

import aioflow
from aioflow import Conductor, Engine, JobBoard, JobState

# The board's own statements, so the floor cannot drift from what a conductor issues.
from aioflow.jobs.postgres import _CLAIM, _HELD
from aioflow.journal.postgres import dsn_from_url

from ._harness import ROOT, machine

FLOW = "benchmarks.jobboard:noop_flow"
"""The flow reference every benchmark job carries."""

DEFAULT_URL = os.environ.get("AIOFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

FINISH = "UPDATE aioflow_jobs SET state = $3, status = $4, failures = $5, updated = $6" + _HELD
"""The completion statement of ``PostgresJobBoard.finish``."""

LEASE = 30.0
"""The lease of every claim: far longer than a sample, so no lease runs out."""

SUBJECTS = ("floor", "conductors")

Durability = Literal["strict", "batched"]


@aioflow.task
async def noop() -> None:
    """Does nothing: the job's cost is the board's and the journal's."""


def noop_flow() -> aioflow.Linear:
    """The flow of every benchmark job: one no-op task."""
    return aioflow.Linear("noop-job", noop)


def url_in(url: str, schema: str) -> str:
    """``url`` with ``schema`` as its search path, and as the connections'
    ``application_name`` (so the server processes serving a sample can be found)."""
    return url + ("&" if "?" in url else "?") + f"search_path={schema}&application_name={schema}"


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` from ``/proc`` (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


async def server_cpu(conn: Any, schema: str) -> dict[int, float]:
    """The CPU seconds of each server process of the sample's connections, by pid."""
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
        schema,
    )
    return {row["pid"]: cpu_seconds(row["pid"]) for row in rows}


# ------------------------------------------------------------------ the child processes


async def _ready_then_go() -> None:
    """Say ready on stdout, then wait for the parent's go (a line on stdin)."""
    print("ready", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)


def quiet_logs(level: str) -> None:
    """Below ``level``, aioflow's log lines cost a call that does nothing (structlog's
    filtering logger); ``info`` leaves structlog as it comes (a console line a job)."""
    if level != "info":
        import logging

        import structlog

        numeric = logging.getLevelNamesMapping()[level.upper()]
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(numeric))


async def _conduct(url: str, capacity: int, durability: str, log_level: str) -> None:
    quiet_logs(log_level)
    board = JobBoard.open(url)
    engine = Engine(url, durability=cast(Durability, durability))
    async with Conductor(board, engine, capacity=capacity, lease=LEASE) as conductor:
        await board.jobs(state=JobState.WAITING)  # connect before the clock starts
        await _ready_then_go()
        await conductor.run()


async def _floor(url: str) -> None:
    conn = await asyncpg.connect(dsn_from_url(url))
    owner = f"floor:{os.getpid()}"
    try:
        await _ready_then_go()
        done = 0
        while True:
            row = await conn.fetchrow(_CLAIM, owner, time.time(), LEASE)
            if row is None:
                break
            await conn.execute(
                FINISH, row["id"], row["generation"], "COMPLETE", "SUCCESS", None, time.time()
            )
            done += 1
        print(f"done {done}", flush=True)
        await anyio.sleep_forever()  # the parent reads this process's CPU time, then kills it
    finally:
        await conn.close()


def child(argv: Sequence[str] | None = None) -> None:
    """A benchmark process: ``conductors URL CAPACITY DURABILITY LOG_LEVEL`` or
    ``floor URL``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[0] == "conductors":
        anyio.run(_conduct, args[1], int(args[2]), args[3], args[4])
    else:
        anyio.run(_floor, args[1])


# ----------------------------------------------------------------------- the parent


class Children:
    """K benchmark processes with their output in log files; all killed on exit."""

    def __init__(self, argv: list[str], k: int, logs: Path, cpus: str | None = None) -> None:
        self.logs = [logs / f"child-{i}.log" for i in range(k)]
        self.procs: list[subprocess.Popen[bytes]] = []
        pin = ["taskset", "-c", cpus] if cpus else []
        for path in self.logs:
            with path.open("wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        [
                            *pin,
                            sys.executable,
                            "-c",
                            "from benchmarks.jobboard import child; child()",
                            *argv,
                        ],
                        cwd=ROOT,
                        stdin=subprocess.PIPE,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    )
                )

    def output(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def check(self, *, may_exit: bool) -> None:
        """Raise, with its output, if a child died (or, unless ``may_exit``, ended)."""
        for i, proc in enumerate(self.procs):
            code = proc.poll()
            if code is not None and (code != 0 or not may_exit):
                tail = self.output(i)[-3000:]
                raise RuntimeError(f"benchmark process {i} exited with {code}:\n{tail}")

    async def ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.output(i).startswith("ready") for i in range(len(self.procs))):
            self.check(may_exit=False)
            if time.monotonic() > deadline:
                raise RuntimeError("benchmark processes did not get ready within 60 s")
            await asyncio.sleep(0.02)

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.close()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()


async def post_jobs(url: str, n: int) -> None:
    """Post ``n`` no-op jobs through the board (four at a time)."""
    board = JobBoard.open(url)
    try:

        async def poster(count: int) -> None:
            for _ in range(count):
                await board.post(FLOW)

        await asyncio.gather(*(poster(n // 4 + (i < n % 4)) for i in range(4)))
    finally:
        await board.close()


@asynccontextmanager
async def posted_jobs(url: str, n: int) -> AsyncIterator[tuple[str, str]]:
    """A fresh schema on ``url`` holding ``n`` posted jobs: (its name, its URL), dropped
    afterwards."""
    schema = "aioflow_bench_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(dsn_from_url(url))
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        here = url_in(url, schema)
        await post_jobs(here, n)
        yield schema, here
    finally:
        try:
            await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await admin.close()


async def sample(
    subject: str,
    k: int,
    n: int,
    url: str,
    capacity: int,
    durability: str,
    logs: Path,
    cpus: str | None = None,
    log_level: str = "info",
) -> dict[str, Any]:
    """One timed sample of ``subject`` with ``k`` processes on a fresh schema (pinned to
    ``cpus`` with ``taskset -c`` when given)."""
    async with posted_jobs(url, n) as (schema, here):
        argv = (
            ["floor", here]
            if subject == "floor"
            else [subject, here, str(capacity), durability, log_level]
        )
        children = Children(argv, k, logs, cpus)
        conn = await asyncpg.connect(dsn_from_url(here))
        try:
            await children.ready()
            load = os.getloadavg()[0]
            server_before = await server_cpu(conn, schema)
            client_before = sum(cpu_seconds(p.pid) for p in children.procs)
            start = time.time()
            children.go()
            deadline = time.monotonic() + 600
            while True:
                states = dict(
                    await conn.fetch("SELECT state, count(*) FROM aioflow_jobs GROUP BY state")
                )
                if states.get("COMPLETE", 0) == n:
                    break
                if states.get("FAILED"):
                    raise RuntimeError(f"{states['FAILED']} benchmark jobs FAILED: {states}")
                children.check(may_exit=False)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the jobs were not all complete after 600 s: {states}")
                await asyncio.sleep(0.05)
            client = sum(cpu_seconds(p.pid) for p in children.procs) - client_before
            server_after = await server_cpu(conn, schema)
            server = sum(v - server_before.get(pid, 0.0) for pid, v in server_after.items())
            end = await conn.fetchval("SELECT max(updated) FROM aioflow_jobs")
            owners = [
                count
                for _, count in await conn.fetch(
                    "SELECT owner, count(*) FROM aioflow_jobs GROUP BY owner ORDER BY 2 DESC"
                )
            ]
        finally:
            children.stop()
            await conn.close()
    seconds = float(end) - start
    return {
        "subject": subject,
        "processes": k,
        "jobs": n,
        "seconds": seconds,
        "jobs_per_s": n / seconds,
        "jobs_per_process": owners,
        "client_cpu_us_per_job": client / n * 1e6,
        "server_cpu_us_per_job": server / n * 1e6,
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def table(results: list[dict[str, Any]], ks: list[int]) -> str:
    """The medians as a Markdown table, conductors against the floor, with CPU per job
    (client: the K processes; server: the PostgreSQL processes serving them)."""

    def med(subject: str, k: int, key: str) -> float | None:
        values = [r[key] for r in results if (r["subject"], r["processes"]) == (subject, k)]
        return statistics.median(values) if values else None

    def cell(x: float | None) -> str:
        return "-" if x is None else _fmt(x)

    lines = [
        "| processes | floor jobs/s | conductors jobs/s | conductors ÷ floor | scaling vs 1"
        " | CPU µs/job floor (client + server) | CPU µs/job conductors (client + server) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = med("conductors", ks[0], "jobs_per_s")
    for k in ks:
        floor, cond = med("floor", k, "jobs_per_s"), med("conductors", k, "jobs_per_s")
        ratio = f"{cond / floor:.2f}" if floor and cond else "-"
        scale = f"{cond / base:.2f}x" if cond and base else "-"
        cpu = [
            f"{cell(med(s, k, 'client_cpu_us_per_job'))}"
            f" + {cell(med(s, k, 'server_cpu_us_per_job'))}"
            for s in SUBJECTS
        ]
        lines.append(
            f"| {k} | {cell(floor)} | {cell(cond)} | {ratio} | {scale} | {cpu[0]} | {cpu[1]} |"
        )
    return "\n".join(lines)


async def profile(
    n: int, url: str, capacity: int, durability: str, interval: float, log_level: str
) -> None:
    """One conductor in this process under pyinstrument, over ``n`` posted jobs."""
    quiet_logs(log_level)
    try:
        from pyinstrument import Profiler
    except ImportError:
        raise SystemExit("pyinstrument is not installed: pip install pyinstrument") from None
    async with posted_jobs(url, n) as (_, here):
        board = JobBoard.open(here)
        engine = Engine(here, durability=cast(Durability, durability))
        async with Conductor(board, engine, capacity=capacity, lease=LEASE) as conductor:
            await board.jobs(state=JobState.WAITING)
            profiler = Profiler(interval=interval, async_mode="disabled")
            profiler.start()
            start = time.perf_counter()
            await conductor.run(max_jobs=n)
            seconds = time.perf_counter() - start
            profiler.stop()
        await board.close()
    print(
        f"one conductor, capacity {capacity}, {n} jobs: {n / seconds:,.0f} jobs/s under the"
        " profiler"
    )
    print(profiler.output_text(unicode=True, color=False, show_all=False))


_PROTOCOL_OPS = frozenset(
    {"query", "prepare", "bind_execute", "bind_execute_many", "close_statement", "copy_in"}
)
"""The asyncpg protocol operations that each wait for the server once (a round trip)."""

_KINDS = (
    ("claim", "SKIP LOCKED"),
    ("journal commit", "INSERT INTO aioflow_events"),
    ("job completion", "SET state = $3"),
    ("claim renewal", "SET available_at = $3"),
    ("heartbeat", "aioflow_owners"),
    ("journal read", "FROM aioflow_"),
)


def _kind(op: str, sql: str) -> str:
    if op == "prepare":
        return "prepare"
    other = "other: " + " ".join(sql.split())[:60]
    return next((kind for kind, text in _KINDS if text in sql), other)


class _CountingProtocol:
    """Stands in for an asyncpg connection's protocol object: counts the operations
    that wait for the server, by the kind of statement, then passes them on."""

    def __init__(self, protocol: Any, counts: Counter[str]) -> None:
        self._protocol = protocol
        self._counts = counts

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._protocol, name)
        if name in _PROTOCOL_OPS:
            counts = self._counts

            def counted(*args: Any, **kwargs: Any) -> Any:
                # query(sql, ...), prepare(name, sql, ...), bind_execute(state=...)...
                state = kwargs.get("state", args[0] if args else None)
                sql = args[1] if name == "prepare" else getattr(state, "query", state)
                counts[_kind(name, str(sql))] += 1
                return value(*args, **kwargs)

            return counted
        return value


async def round_trips(n: int, url: str, capacity: int, durability: str) -> None:
    """Round trips a job: one conductor in this process over ``n`` posted jobs, each
    asyncpg connection's protocol wrapped to count what waits for the server."""
    import asyncpg.connection

    counts: Counter[str] = Counter()
    counting = False
    init = asyncpg.connection.Connection.__init__

    def wrapped_init(self: Any, protocol: Any, *args: Any, **kwargs: Any) -> None:
        init(self, _CountingProtocol(protocol, counts), *args, **kwargs)

    async with posted_jobs(url, n) as (_, here):
        asyncpg.connection.Connection.__init__ = wrapped_init  # type: ignore[method-assign]
        try:
            board = JobBoard.open(here)
            engine = Engine(here, durability=cast(Durability, durability))
            async with Conductor(board, engine, capacity=capacity, lease=LEASE) as conductor:
                await board.jobs(state=JobState.WAITING)
                counts.clear()
                counting = True
                await conductor.run(max_jobs=n)
            await board.close()
        finally:
            asyncpg.connection.Connection.__init__ = init  # type: ignore[method-assign]
    assert counting
    print(f"round trips a job: one conductor, capacity {capacity}, {durability}, {n} jobs")
    print("| per one-task job | round trips |\n| --- | ---: |")
    rare = 0
    for kind, count in counts.most_common():
        if count / n < 0.005:
            rare += count  # connecting: type introspection, session settings
        else:
            print(f"| {kind} | {count / n:.2f} |")
    print(f"| other (once a run or a connection) | {rare / n:.2f} |")
    print(f"| **total** | **{sum(counts.values()) / n:.2f}** |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.jobboard",
        description="Job claims+completions per second on PostgreSQL: conductor processes"
        " against the raw SQL floor.",
    )
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per sample (3000)")
    parser.add_argument("--processes", default="1,2,4", help="process counts (1,2,4)")
    parser.add_argument("--url", default=DEFAULT_URL, help="the PostgreSQL server")
    parser.add_argument("--capacity", type=int, default=8, help="jobs at once per conductor (8)")
    parser.add_argument("--durability", choices=["strict", "batched"], default="strict")
    parser.add_argument("--repeat", type=int, default=3, help="samples per figure (3)")
    parser.add_argument("--only", choices=SUBJECTS, help="measure one subject only")
    parser.add_argument("--json", type=Path, help="write every sample here as JSON")
    parser.add_argument(
        "--profile", action="store_true", help="profile one in-process conductor instead"
    )
    parser.add_argument(
        "--taskset",
        metavar="CPUS",
        help="run the K processes under `taskset -c CPUS` (e.g. 1); the server is not pinned",
    )
    parser.add_argument(
        "--log-level",
        choices=["info", "warning"],
        default="info",
        help="the conductors' log level: info (structlog as it comes, a line a job) or"
        " warning (its filtering logger: the per-job lines are calls that do nothing)",
    )
    parser.add_argument(
        "--round-trips",
        action="store_true",
        help="count the round trips a job of one in-process conductor instead",
    )
    args = parser.parse_args(argv)
    if args.round_trips:
        asyncio.run(round_trips(args.jobs, args.url, args.capacity, args.durability))
        return
    ks = [int(k) for k in args.processes.split(",") if k.strip()]
    if args.profile:
        asyncio.run(
            profile(args.jobs, args.url, args.capacity, args.durability, 0.0005, args.log_level)
        )
        return
    subjects = [args.only] if args.only else list(SUBJECTS)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aioflow-jobboard-") as tmp:
        for rep in range(args.repeat):
            for k in ks:
                for subject in subjects:
                    r = asyncio.run(
                        sample(
                            subject,
                            k,
                            args.jobs,
                            args.url,
                            args.capacity,
                            args.durability,
                            Path(tmp),
                            args.taskset,
                            args.log_level,
                        )
                    )
                    results.append(r)
                    print(
                        f"[{rep + 1}/{args.repeat}] {subject:10} x{k}: {r['jobs_per_s']:8,.0f}"
                        f" jobs/s ({r['seconds']:.2f} s; per process {r['jobs_per_process']};"
                        f" CPU µs/job {r['client_cpu_us_per_job']:,.0f} client +"
                        f" {r['server_cpu_us_per_job']:,.0f} server; load {r['load_before']:.1f})",
                        flush=True,
                    )
    print()
    print(
        f"{args.jobs} one-task jobs, conductor capacity {args.capacity}, journal"
        f" {args.durability}; log level {args.log_level}; medians of {args.repeat}"
        + (f"; processes pinned with taskset -c {args.taskset}" if args.taskset else "")
    )
    print(table(results, ks))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "args": {**vars(args), "json": str(args.json)},
                    "samples": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
