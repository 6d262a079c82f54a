"""The peers: TaskFlow and DBOS, each in its own virtual environment under ``.peers/``.

The harness creates each venv on first use (``python -m venv``, then ``pip install``),
reuses it afterwards, and runs a small standalone script inside it (``_peer_taskflow.py``,
``_peer_dbos.py``) that prints its samples as JSON. A peer that cannot be installed or
that fails a scenario becomes a note in the table, never a crash of the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ._harness import Result

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / ".peers"

BUDGET = 30.0
"""Seconds of samples a peer may spend on one scenario and size (at least one sample)."""

TIMEOUT = 300.0
"""Seconds after which a peer's run of one scenario is abandoned."""


@dataclass(frozen=True, slots=True)
class Run:
    """One peer measurement: a scenario on one journal kind at one size."""

    scenario: str
    journal: str
    n: int


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer library: what to install, which script drives it, and what it can finish."""

    name: str
    packages: tuple[str, ...]
    script: str
    runs: tuple[Run, ...]
    quick_runs: tuple[Run, ...]
    engine: str
    """How the peer is driven, for the table (its engine, executor, storage)."""

    @property
    def venv(self) -> Path:
        return PEERS_DIR / self.name

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


PEERS = (
    Peer(
        "taskflow",
        ("taskflow", "SQLAlchemy", "alembic"),
        "_peer_taskflow.py",
        # Linear flows are quadratic in TaskFlow (1k is ~20 s a run) and its SQLite
        # backend costs tens of ms a task: 100 tasks there.
        runs=(
            Run("wide", "memory", 1000),
            Run("chain", "memory", 1000),
            Run("diamond", "memory", 1000),
            Run("sleeps", "memory", 1000),
            Run("wide", "sqlite", 100),
            Run("chain", "sqlite", 100),
        ),
        quick_runs=(Run("wide", "memory", 100), Run("chain", "memory", 100)),
        engine="serial engine (sleeps: parallel, 1 thread per task); sqlite = SQLAlchemy backend",
    ),
    Peer(
        "dbos",
        ("dbos",),
        "_peer_dbos.py",
        # About 2-4 ms a step on SQLite: 1k steps keep each scenario well under 30 s.
        runs=(
            Run("wide", "sqlite", 1000),
            Run("chain", "sqlite", 1000),
            Run("diamond", "sqlite", 1000),
            Run("sleeps", "sqlite", 1000),
        ),
        quick_runs=(Run("wide", "sqlite", 100), Run("chain", "sqlite", 100)),
        engine="async workflow, one step per task, SQLite system database",
    ),
)
"""Every peer, with the runs it is measured on (``quick_runs`` under ``--quick``)."""


def _tail(text: str, lines: int = 3) -> str:
    kept = [ln for ln in text.strip().splitlines() if not ln.startswith("WARNING: Location")]
    return " | ".join(kept[-lines:])


def install(peer: Peer) -> str | None:
    """Make sure ``peer``'s venv exists with its packages; None, or why it could not."""
    marker = peer.venv / ".installed"
    wanted = " ".join(peer.packages)
    if marker.exists() and marker.read_text() == wanted and peer.python.exists():
        return None
    try:
        PEERS_DIR.mkdir(exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(peer.venv)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
        subprocess.run(
            [str(peer.python), "-m", "pip", "install", "-q", *peer.packages],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        return f"install failed: {_tail(exc.stderr or exc.stdout or str(exc))}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"install failed: {exc}"
    marker.write_text(wanted)
    return None


def version(peer: Peer) -> str | None:
    """The installed version of the peer's package, or None."""
    try:
        out = subprocess.run(
            [
                str(peer.python),
                "-c",
                f"from importlib.metadata import version; print(version({peer.packages[0]!r}))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def measure(peer: Peer, run: Run, repeat: int) -> Result:
    """The peer's samples of one run as a :class:`Result` (per-task µs, or µs over the
    ideal for ``sleeps``); a failure becomes a result with no samples and a note."""
    unit = "us/task over ideal" if run.scenario == "sleeps" else "us/task"
    result = Result(run.scenario, peer.name, run.journal, run.n, unit, [])
    cmd = [str(peer.python), str(HERE / peer.script), run.scenario, run.journal]
    cmd += [str(run.n), str(repeat), str(BUDGET)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=True)
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        result.note = f"did not finish within {TIMEOUT:.0f} s"
        return result
    except subprocess.CalledProcessError as exc:
        result.note = f"failed: {_tail(exc.stderr or exc.stdout or '', 1)}"
        return result
    except (OSError, ValueError, IndexError) as exc:
        result.note = f"failed: {exc}"
        return result
    seconds = [float(s) for s in data["samples"]]
    if run.scenario == "sleeps":
        result.samples = [(s - 0.01) / run.n * 1e6 for s in seconds]
    else:
        result.samples = [s / run.n * 1e6 for s in seconds]
    result.extra = {"version": data.get("version"), "seconds": seconds}
    if len(seconds) < repeat:
        result.note = f"{len(seconds)} of {repeat} samples (time budget {BUDGET:.0f} s)"
    return result
