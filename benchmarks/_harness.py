"""What every scenario shares: the result record, sampling, and the machine's description."""

from __future__ import annotations

import asyncio
import datetime
import gc
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
"""The repository root (the folder holding ``aioflow/`` and ``benchmarks/``)."""


@dataclass(slots=True)
class Result:
    """One measured figure: the samples of one scenario, subject and variant at one size.

    ``subject`` is what was measured (``aioflow``, ``asyncio``, ``anyio``, ``taskflow``,
    ``dbos``); ``variant`` says how (a journal kind, an engine, ...). Lower is better
    for every unit except those ending in ``/s``.
    """

    scenario: str
    subject: str
    variant: str
    n: int | None
    unit: str
    samples: list[float]
    extra: dict[str, Any] = field(default_factory=dict)
    ratio_asyncio: float | None = None
    """This figure divided by the plain-asyncio floor of the same scenario and size."""
    ratio_peer: float | None = None
    """For a peer: its figure divided by aioflow's on the same scenario, journal kind, size."""
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["median"] = self.median
        return data


@dataclass(slots=True)
class Failed:
    """A scenario (or part of one) that raised instead of giving a figure."""

    scenario: str
    subject: str
    variant: str
    error: str


AsyncSample = Callable[[], Coroutine[Any, Any, float]]


def sample_async(repeat: int, one: AsyncSample) -> list[float]:
    """Run ``one`` ``repeat`` times, each in a fresh event loop after a full collection.

    A fresh loop per sample keeps leftovers of one sample (tasks, callbacks, garbage)
    out of the next one's timing.
    """
    out = []
    for _ in range(repeat):
        gc.collect()
        out.append(asyncio.run(one()))
    return out


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or what the platform module says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """Where and on what the suite ran: date, commit, Python, cores, CPU."""
    import aioflow

    dirty = _run(["git", "status", "--porcelain", "--", "aioflow"])
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _run(["git", "rev-parse", "--short", "HEAD"]) or "unknown",
        "aioflow_dirty": bool(dirty),
        "aioflow_version": aioflow.__version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
    }
