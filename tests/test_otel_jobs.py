"""Trace context carried by jobs: ``board.post`` inside a span, and the run of that job by
a conductor in another process (its spans written to a file) is that span's child.
Also the job metrics of a conductor in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

import aioflow
from aioflow import JobState
from aioflow.otel import OpenTelemetry

from .pg import pg_schema, pg_url
from .test_conductor import until

__all__ = ["pg_schema", "pg_url"]

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
FLOW = "tests.otel_child:make_flow"


@pytest.fixture(params=["sqlite", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/journal.db"
    return str(request.getfixturevalue("pg_url"))


def spans_in(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_a_job_posted_in_a_span_runs_as_its_child_in_another_process(
    shared_url: str, tmp_path: Path
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    out = tmp_path / "child.out"
    with open(out, "wb") as sink:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.otel_child", shared_url, str(spans_file)],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        await until(lambda: "ready" in out.read_text() or child.poll() is not None, "ready")
        assert child.poll() is None, out.read_text()
        provider = TracerProvider()
        tracer = provider.get_tracer("test")
        board = aioflow.JobBoard.open(shared_url)
        try:
            with tracer.start_as_current_span("POST /backups") as request:
                job = await board.post(FLOW, inputs={"number": 987654321})
            done = await board.wait(job.id, timeout=60)
        finally:
            await board.close()
        assert done.state is JobState.COMPLETE
        await until(
            lambda: any(s["name"] == "flow traced-job" for s in spans_in(spans_file)), "spans"
        )
    finally:
        child.kill()
        child.wait(timeout=30)
    spans = spans_in(spans_file)
    ids = request.get_span_context()
    (flow_span,) = [s for s in spans if s["name"] == "flow traced-job"]
    assert flow_span["trace_id"] == format(ids.trace_id, "032x")
    assert flow_span["parent_id"] == format(ids.span_id, "016x")
    assert flow_span["attributes"]["aioflow.flow_id"] == job.id
    (atom_span,) = [s for s in spans if s["name"] == "atom double"]
    assert atom_span["parent_id"] == flow_span["span_id"]
    # The job's inputs never reach a span.
    assert all("987654321" not in json.dumps(s["attributes"]) for s in spans)


async def test_conductor_job_metrics() -> None:
    reader = InMemoryMetricReader()
    instrument = OpenTelemetry(TracerProvider(), MeterProvider(metric_readers=[reader]))
    board = aioflow.JobBoard.open("memory://", poll=0.01)
    engine = aioflow.Engine(instruments=[instrument])
    async with (
        aioflow.Conductor(board, engine, capacity=2) as conductor,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(conductor.run)
        jobs = [await board.post(FLOW, inputs={"number": n}) for n in range(3)]
        for job in jobs:
            assert (await board.wait(job.id, timeout=30)).state is JobState.COMPLETE
        tg.cancel_scope.cancel()
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        p.attributes["aioflow.job.event"]: p.value
        for r in data.resource_metrics
        for s in r.scope_metrics
        for m in s.metrics
        if m.name == "aioflow.jobs"
        for p in m.data.data_points
    }
    assert points == {"claimed": 3, "completed": 3}


async def test_a_dead_lettered_job_is_counted() -> None:
    reader = InMemoryMetricReader()
    instrument = OpenTelemetry(TracerProvider(), MeterProvider(metric_readers=[reader]))
    board = aioflow.JobBoard.open("memory://", poll=0.01)
    job = await board.post(FLOW, inputs={"number": 1})
    assert await board.claim("a-conductor-that-died", 0.01) is not None  # attempt 1, lapses
    await anyio.sleep(0.05)
    engine = aioflow.Engine(instruments=[instrument])
    async with (
        aioflow.Conductor(board, engine, capacity=1, max_attempts=1) as conductor,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(conductor.run)
        done = await board.wait(job.id, timeout=30)
        tg.cancel_scope.cancel()
    assert done.state is JobState.FAILED
    data = reader.get_metrics_data()
    assert data is not None
    events = {
        p.attributes["aioflow.job.event"]: p.value
        for r in data.resource_metrics
        for s in r.scope_metrics
        for m in s.metrics
        if m.name == "aioflow.jobs"
        for p in m.data.data_points
    }
    assert events == {"dead_lettered": 1}
