"""The instrument hooks and ``aioflow.otel.OpenTelemetry``, checked with the SDK's
in-memory span exporter and metric reader (no network)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from structlog.testing import capture_logs

import aioflow
import aioflow.testing
from aioflow import FlowStatus, Retry
from aioflow.otel import OpenTelemetry

pytestmark = pytest.mark.anyio

SECRET_INPUT = "input-4c1d-secret"
SECRET_RESULT = "result-9e2a-secret"


class Telemetry:
    """A tracer provider and a meter provider that keep everything in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.instrument = OpenTelemetry(self.tracer_provider, self.meter_provider)

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]

    def metrics(self) -> dict[str, list[Any]]:
        data = self.reader.get_metrics_data()
        out: dict[str, list[Any]] = {}
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    out[metric.name] = list(metric.data.data_points)
        return out


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry()
    yield t
    t.tracer_provider.shutdown()


def child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    return span.parent is not None and span.parent.span_id == parent.context.span_id


async def test_the_span_tree_of_a_flow_with_a_retried_failure_and_a_wait(
    telemetry: Telemetry,
) -> None:
    calls = {"n": 0}

    @aioflow.task(provides="fetched", retry=Retry.times(2))
    async def fetch(url: str) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("the first try fails")
        return SECRET_RESULT

    @aioflow.task
    async def approve(fetched: str, external: aioflow.External) -> Any:
        return external.wait(timeout=60)

    flow = aioflow.Linear("pipeline", fetch, approve)
    async with aioflow.Engine(instruments=[telemetry.instrument]) as engine:
        outcome = await engine.run(flow, {"url": SECRET_INPUT})
        assert outcome.status is FlowStatus.WAITING
        (flow_span,) = telemetry.named("flow pipeline")
        attempts = telemetry.named("atom fetch")
        assert [s.attributes["aioflow.attempt"] for s in attempts] == [1, 2]
        assert all(child_of(s, flow_span) for s in attempts)
        first, second = attempts
        assert first.status.status_code is StatusCode.ERROR
        assert first.attributes["error.type"] == "ConnectionError"
        assert [e.name for e in first.events] == ["exception"]
        assert second.status.status_code is StatusCode.UNSET
        assert second.attributes["aioflow.state"] == "SUCCESS"
        (waiting,) = telemetry.named("atom approve")
        assert waiting.attributes["aioflow.state"] == "WAITING"
        assert [(e.name, dict(e.attributes or {})) for e in waiting.events] == [
            ("aioflow.wait", {"aioflow.wait.kind": "external"})
        ]
        assert flow_span.attributes["aioflow.status"] == "WAITING"
        assert flow_span.attributes["aioflow.resumed"] is False

        # The completion wakes the flow: a new run, a new span linked to the first.
        await engine.complete(outcome.waiting[0].token, "ok")
        done = await engine.wait(outcome.flow_id)
        assert done.status is FlowStatus.SUCCESS
    runs = telemetry.named("flow pipeline")
    assert len(runs) == 2
    assert runs[1].attributes["aioflow.resumed"] is True
    assert [link.context.span_id for link in runs[1].links] == [flow_span.context.span_id]
    assert runs[1].context.trace_id == flow_span.context.trace_id or not runs[1].parent

    # No input, result or token in any attribute of any span or span event.
    token = outcome.waiting[0].token
    for span in telemetry.spans:
        texts = [str(v) for v in (span.attributes or {}).values()]
        texts += [str(v) for e in span.events for v in (e.attributes or {}).values()]
        for text in texts:
            assert SECRET_INPUT not in text and SECRET_RESULT not in text and token not in text


async def test_a_failed_flow_is_an_error_and_reverts_have_spans(telemetry: Telemetry) -> None:
    @aioflow.task(provides="a")
    async def first() -> int:
        return 1

    @first.revert
    async def undo(result: int) -> None:
        pass

    @aioflow.task
    async def boom(a: int) -> None:
        raise ValueError("no")

    async with aioflow.Engine(instruments=[telemetry.instrument]) as engine:
        with pytest.raises(aioflow.FlowFailedError):
            await engine.run(aioflow.Linear("failing", first, boom))
    (flow_span,) = telemetry.named("flow failing")
    assert flow_span.status.status_code is StatusCode.ERROR
    assert flow_span.attributes["aioflow.status"] == "REVERTED"
    (revert,) = telemetry.named("revert first")
    assert child_of(revert, flow_span)
    assert revert.attributes["aioflow.state"] == "REVERTED"


async def test_the_current_span_in_a_task_is_its_attempt_span(telemetry: Telemetry) -> None:
    seen: dict[str, Any] = {}

    @aioflow.task
    async def in_loop(context: aioflow.TaskContext) -> None:
        seen["loop"] = trace.get_current_span().get_span_context().span_id
        context.log.info("hello from the loop")

    @aioflow.task
    def in_thread() -> None:
        seen["thread"] = trace.get_current_span().get_span_context().span_id
        seen["thread_name"] = threading.current_thread().name

    flow = aioflow.Linear("where", in_loop, in_thread)
    with capture_logs() as logs:
        async with aioflow.Engine(instruments=[telemetry.instrument]) as engine:
            await engine.run(flow)
    (loop_span,) = telemetry.named("atom in_loop")
    (thread_span,) = telemetry.named("atom in_thread")
    assert seen["loop"] == loop_span.context.span_id
    assert seen["thread"] == thread_span.context.span_id
    assert seen["thread_name"] != threading.current_thread().name
    (hello,) = [e for e in logs if e["event"] == "hello from the loop"]
    assert hello["span_id"] == format(loop_span.context.span_id, "016x")
    assert hello["trace_id"] == format(loop_span.context.trace_id, "032x")


async def test_a_flow_started_inside_a_span_is_its_child(telemetry: Telemetry) -> None:
    @aioflow.task
    async def step() -> None:
        pass

    tracer = telemetry.tracer_provider.get_tracer("test")
    async with aioflow.Engine(instruments=[telemetry.instrument]) as engine:
        with tracer.start_as_current_span("request") as request:
            handle = await engine.start(aioflow.Linear("child", step))
        await handle.wait()
    (flow_span,) = telemetry.named("flow child")
    assert flow_span.parent is not None
    assert flow_span.parent.span_id == request.get_span_context().span_id


async def test_a_resume_in_another_engine_keeps_the_trace(
    telemetry: Telemetry, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'j.db'}"
    tracer = telemetry.tracer_provider.get_tracer("test")
    ref = "tests.flows_for_tests:make_flow"
    async with aioflow.Engine(url, instruments=[telemetry.instrument]) as engine:
        with tracer.start_as_current_span("request") as request:
            outcome = await engine.run(ref, {"number": 1}, stop_at="halfway")
    async with aioflow.Engine(url, instruments=[telemetry.instrument]) as engine:
        await engine.resume(outcome.flow_id)
    first, second = telemetry.named("flow referenced")
    trace_id = request.get_span_context().trace_id
    assert first.context.trace_id == trace_id == second.context.trace_id
    assert [link.context.span_id for link in second.links] == [first.context.span_id]


async def test_metrics_count_flows_atoms_and_durations(telemetry: Telemetry) -> None:
    @aioflow.task
    async def a() -> None:
        pass

    @aioflow.task
    async def b() -> None:
        pass

    async with aioflow.Engine(instruments=[telemetry.instrument]) as engine:
        for _ in range(3):
            await engine.run(aioflow.Linear("counted", a, b))
    metrics = telemetry.metrics()
    (flows,) = metrics["aioflow.flows"]
    assert flows.value == 3 and flows.attributes["aioflow.status"] == "SUCCESS"
    (atoms,) = metrics["aioflow.atoms"]
    assert atoms.value == 6 and atoms.attributes["aioflow.state"] == "SUCCESS"
    (durations,) = metrics["aioflow.atom.duration"]
    assert durations.count == 6


class Raising:
    """An instrument whose every hook raises."""

    def flow_started(self, run: Any) -> None:
        raise RuntimeError("flow_started broke")

    def flow_ended(self, run: Any) -> None:
        raise RuntimeError("flow_ended broke")

    def attempt(self, attempt: Any) -> Any:
        raise RuntimeError("attempt broke")


class RaisingOnExit:
    def attempt(self, attempt: Any) -> Any:
        return self

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> bool:
        raise RuntimeError("exit broke")


async def test_an_instrument_that_raises_is_logged_and_never_breaks_a_flow(
    telemetry: Telemetry,
) -> None:
    @aioflow.task(provides="x")
    async def step() -> int:
        return 7

    @aioflow.task
    async def fails(x: int) -> None:
        raise KeyError("real")

    with capture_logs() as logs:
        async with aioflow.Engine(
            instruments=[Raising(), RaisingOnExit(), telemetry.instrument]
        ) as engine:
            outcome = await engine.run(aioflow.Linear("sturdy", step))
            assert outcome["x"] == 7
            with pytest.raises(aioflow.FlowFailedError) as caught:
                await engine.run(aioflow.Linear("failing", step, fails))
    assert isinstance(caught.value.__cause__, KeyError)  # not swallowed, not replaced
    broken = [e for e in logs if e["event"] == "aioflow.instrument_failed"]
    assert {e["error"] for e in broken} == {
        "flow_started broke",
        "flow_ended broke",
        "attempt broke",
        "exit broke",
    }
    assert telemetry.named("atom step")  # the sturdy instrument saw everything


def test_an_instrument_hook_that_is_not_callable_is_refused() -> None:
    class Bad:
        attempt = 3

    with pytest.raises(TypeError, match="attempt must be callable"):
        aioflow.Engine(instruments=[Bad()])


async def test_waits_of_time_are_span_events(telemetry: Telemetry) -> None:
    clock = aioflow.testing.FakeClock()

    async with aioflow.Engine(
        clock=clock.now, sleep=clock.sleep, instruments=[telemetry.instrument]
    ) as engine:
        handle = await engine.start(aioflow.Linear("napping", aioflow.Sleep("nap", 60)))
        with anyio.fail_after(10):
            while not telemetry.named("atom nap"):
                await anyio.sleep(0.01)
            await clock.elapse(61)
            outcome = await handle.wait()
    assert outcome.status is FlowStatus.SUCCESS
    nap = telemetry.named("atom nap")[0]
    assert [e.attributes for e in nap.events] == [{"aioflow.wait.kind": "sleep"}]


async def test_each_copy_of_a_map_has_its_attempt_spans_under_the_flow(
    telemetry: Telemetry,
) -> None:
    tries: dict[str, int] = {}

    @aioflow.task(provides="y")
    async def square(x: int, context: aioflow.TaskContext) -> int:
        tries[context.atom] = tries.get(context.atom, 0) + 1
        if x == 2 and tries[context.atom] == 1:
            raise ConnectionError("once")
        return x * x

    flow = aioflow.Linear(
        "fan", aioflow.Map("m", square, over="xs", item="x", provides="ys", retry=Retry.times(2))
    )
    async with aioflow.Engine(instruments=[telemetry.instrument]) as engine:
        outcome = await engine.run(flow, {"xs": [1, 2, 3]})
    assert outcome.results["ys"] == [1, 4, 9]
    (flow_span,) = telemetry.named("flow fan")
    for i, attempts in enumerate([1, 2, 1]):
        spans = telemetry.named(f"atom m[{i}]")
        assert [s.attributes["aioflow.attempt"] for s in spans] == list(range(1, attempts + 1))
        assert all(child_of(s, flow_span) for s in spans)
    assert telemetry.named("atom m[1]")[0].status.status_code is StatusCode.ERROR
