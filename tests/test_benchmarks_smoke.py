"""The benchmark suite still runs: one tiny scenario end to end, no timing asserted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _scenarios, instructions
from benchmarks.__main__ import main

from .pg import pg_schema, pg_url

__all__ = ["pg_schema", "pg_url"]


def run_tiny(scenario: str, tmp_path: Path) -> Any:
    """Run ``scenario`` at size 10, once, without peers or PostgreSQL; its JSON report."""
    out = tmp_path / "bench.json"
    argv = ["--quick", "--only", scenario, "--sizes", "10", "--repeat", "1", "--no-peers"]
    argv += ["--no-postgres", "--json", str(out), "--tmp", str(tmp_path)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["failures"] == []
    return data


def test_a_tiny_wide_scenario_runs_and_writes_its_json(tmp_path: Path) -> None:
    data = run_tiny("wide", tmp_path)
    measured = {(r["subject"], r["variant"], r["n"]) for r in data["results"]}
    for variant in ("memory", "sqlite strict", "sqlite batched"):
        assert ("aioflow", variant, 10) in measured
    assert ("asyncio", "gather", 10) in measured
    assert {t["target"] for t in data["targets"]} >= {"wide 10k, SQLite strict"}


def test_the_instruction_counts_child_runs_every_subject(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What callgrind runs (valgrind itself is left out: no count is asserted)."""
    monkeypatch.setattr(instructions, "SLEEP", 0.001)
    monkeypatch.setattr(_scenarios, "SLEEP", _scenarios.SLEEP)  # restored afterwards
    for subject in ("asyncio", "memory", "strict"):
        for scenario in ("sleeps", "wide", "chain"):
            instructions._child(subject, scenario, 20, 2, 3)


def test_the_waits_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    from benchmarks import waits

    asyncio.run(waits.main(20, 3))
    out = capsys.readouterr().out
    assert "| aioflow, sqlite |" in out and "asyncio.Queue" in out


def test_a_tiny_map_scenario_runs(tmp_path: Path) -> None:
    data = run_tiny("map", tmp_path)
    variants = {r["variant"] for r in data["results"] if r["scenario"] == "map"}
    assert {"unordered, memory", "map, memory", "map, sqlite strict"} <= variants


def test_a_tiny_chain_measures_a_strict_postgres_step_against_a_bare_insert(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_scenarios, "POSTGRES_URL", pg_url)  # a schema of the test's own
    out = tmp_path / "bench.json"
    argv = ["--quick", "--only", "chain", "--sizes", "10", "--repeat", "1", "--no-peers"]
    assert main([*argv, "--json", str(out), "--tmp", str(tmp_path)]) == 0
    data = json.loads(out.read_text())
    assert data["failures"] == []
    measured = {(r["variant"], r["n"]) for r in data["results"]}
    floors = {("pg insert", 10), ("pg insert txn", 10), ("sqlite commit", 10)}
    assert floors | {("postgres strict", 10)} <= measured
    targets = {t["target"] for t in data["targets"]}
    assert "chain 1k, PostgreSQL strict step ÷ bare INSERT transaction" in targets


def test_the_jobboard_benchmark_runs_and_counts_round_trips(
    pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its conductor and floor processes, and the round-trip count (each on schemas of
    its own, dropped afterwards)."""
    import asyncio

    from benchmarks import jobboard

    from .pg import DSN

    jobboard.main(["--jobs", "20", "--processes", "1", "--repeat", "1", "--url", DSN])
    out = capsys.readouterr().out
    assert "| 1 |" in out and "conductors ÷ floor" in out
    asyncio.run(jobboard.round_trips(20, DSN, 4, "strict"))
    out = capsys.readouterr().out
    assert "| claim |" in out and "| journal commit |" in out and "| **total** |" in out
