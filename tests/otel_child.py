"""A conductor in its own process, traced with OpenTelemetry, for ``tests/test_otel_jobs.py``.

``python -m tests.otel_child URL SPANS`` runs a conductor on the job board at ``URL``,
with an engine instrumented by ``aioflow.otel.OpenTelemetry`` whose spans are written,
one JSON document per line, to the file ``SPANS`` as they end. It prints ``ready`` once
it takes jobs, and runs until killed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import IO

import anyio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import aioflow
from aioflow.otel import OpenTelemetry


@aioflow.task(provides="doubled")
async def double(number: int) -> int:
    return number * 2


def make_flow() -> aioflow.Linear:
    return aioflow.Linear("traced-job", double)


class FileExporter(SpanExporter):
    """Each span as one line of JSON: its name, ids, parent and attributes."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            parent = span.parent
            line = {
                "name": span.name,
                "trace_id": format(span.context.trace_id, "032x"),
                "span_id": format(span.context.span_id, "016x"),
                "parent_id": None if parent is None else format(parent.span_id, "016x"),
                "attributes": dict(span.attributes or {}),
            }
            self.out.write(json.dumps(line) + "\n")
            self.out.flush()
        return SpanExportResult.SUCCESS


async def main(url: str, spans: str) -> None:
    with open(spans, "a") as out:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(FileExporter(out)))
        board = aioflow.JobBoard.open(url, poll=0.05)
        engine = aioflow.Engine(url, instruments=[OpenTelemetry(tracer_provider=provider)])
        async with aioflow.Conductor(board, engine, capacity=2) as conductor:
            print("ready", flush=True)
            await conductor.run()


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:])
