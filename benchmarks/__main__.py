"""``python -m benchmarks``: run the suite, print the tables, write the JSON.

``--quick`` is a smoke run (small sizes, fewer samples, peers on tiny sizes); the full
run takes several minutes. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from . import _peers, _report, _scenarios
from ._harness import ROOT, Failed, Result, machine

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "latest.json"


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes takes integers like 1000,10000, not {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--sizes takes positive integers, not {text!r}")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="aioflow's benchmarks, next to plain asyncio, TaskFlow and DBOS.",
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (small sizes)")
    parser.add_argument(
        "--sizes",
        type=_sizes,
        help="sizes for wide, chain and diamond, comma-separated (e.g. 1000,10000)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(_scenarios.SCENARIOS),
        metavar="SCENARIO",
        help=f"run only this scenario (repeatable): {', '.join(_scenarios.SCENARIOS)}",
    )
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure TaskFlow and DBOS too, each in a venv under benchmarks/.peers/",
    )
    parser.add_argument(
        "--postgres",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the PostgreSQL journal too when it can be opened"
        " (AIOFLOW_BENCH_POSTGRES, else AIOFLOW_TEST_POSTGRES, else the local test database)",
    )
    parser.add_argument("--repeat", type=int, help="samples per figure (default 5, quick 3)")
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help=f"where to write the results ({DEFAULT_JSON.relative_to(ROOT)})",
    )
    parser.add_argument("--tmp", help="folder for the SQLite journals (default: the system's)")
    return parser.parse_args(argv)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 5)
    if repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    only = args.only or list(_scenarios.SCENARIOS)
    notes: list[str] = []

    journals = _scenarios.JOURNALS
    problem = _scenarios.postgres_problem() if args.postgres else "--no-postgres"
    if problem is None:
        journals += _scenarios.POSTGRES_JOURNALS
    else:
        notes.append(f"PostgreSQL journal not measured ({_scenarios.POSTGRES_URL}): {problem}")

    peer_runs: dict[str, list[_peers.Run]] = {}
    if args.peers:
        for peer in _peers.PEERS:
            runs = peer.quick_runs if args.quick else peer.runs
            peer_runs[peer.name] = [r for r in runs if r.scenario in only]
    extra = sorted(
        {r.n for runs in peer_runs.values() for r in runs if r.scenario in ("wide", "chain")}
    )
    cfg = _scenarios.Config(
        repeat=repeat,
        quick=args.quick,
        sizes=args.sizes,
        extra_sizes=tuple(extra),
        tmp=args.tmp,
        journals=journals,
    )

    info = machine()
    say(f"aioflow {info['aioflow_version']} on Python {info['python']}, {info['nproc']} cores")
    for note in notes:
        say(note)
    results: list[Result] = []
    failures: list[Failed] = []
    started = time.perf_counter()
    for name in only:
        t0 = time.perf_counter()
        say(f"{name} ...")
        try:
            results.extend(_scenarios.SCENARIOS[name](cfg))
        except Exception as exc:
            traceback.print_exc()
            failures.append(Failed(name, "aioflow", "-", f"{type(exc).__name__}: {exc}"))
        say(f"{name}: {time.perf_counter() - t0:.1f} s")

    peers: dict[str, dict[str, Any]] = {}
    for peer in _peers.PEERS:
        runs = peer_runs.get(peer.name)
        if not runs:
            continue
        say(f"{peer.name}: installing into {peer.venv.relative_to(ROOT)} (once) ...")
        problem = _peers.install(peer)
        peers[peer.name] = {"engine": peer.engine, "version": None, "problem": problem}
        if problem is not None:
            say(f"{peer.name}: {problem}")
            for run in runs:
                failures.append(Failed(run.scenario, peer.name, run.journal, problem))
            continue
        peers[peer.name]["version"] = _peers.version(peer)
        for run in runs:
            t0 = time.perf_counter()
            result = _peers.measure(peer, run, min(repeat, 3))
            results.append(result)
            took = time.perf_counter() - t0
            say(f"{peer.name} {run.scenario} {run.journal} {run.n}: {took:.1f} s")
    _report.peer_ratios(results, peers)

    checks = [t.check(results) for t in _report.TARGETS]
    elapsed = time.perf_counter() - started
    print()
    print(_report.results_table(results, failures))
    print()
    print(_report.targets_table(checks))
    for note in notes:
        print(f"\nNote: {note}")
    for name, peer_info in peers.items():
        shown = peer_info["problem"] or f"version {peer_info['version']}, {peer_info['engine']}"
        print(f"{name}: {shown}")

    data = {
        "machine": info,
        "config": {
            "repeat": repeat,
            "quick": args.quick,
            "sizes": args.sizes,
            "only": only,
            "peers": args.peers,
            "journals": list(journals),
        },
        "elapsed_s": elapsed,
        "notes": notes,
        "peers": peers,
        "results": [r.to_json() for r in results],
        "failures": [_failed(f) for f in failures],
        "targets": checks,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    say(f"\nwrote {args.json} ({elapsed:.0f} s in all)")
    return 1 if failures and not results else 0


def _failed(f: Failed) -> dict[str, str]:
    return {"scenario": f.scenario, "subject": f.subject, "variant": f.variant, "error": f.error}


if __name__ == "__main__":
    sys.exit(main())
