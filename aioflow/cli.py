"""The ``aioflow`` command: the demo, and listing, showing, following (events, watch),
resuming, cancelling, drawing, compacting and purging the flows of a journal. Needs the
``cli`` extra (rich).

Conventions, for this module and for modules that add subcommands:

* Subcommands are argparse subparsers. Each sets ``func`` (``parser.set_defaults(func=...)``)
  to its handler: a callable that takes the parsed :class:`argparse.Namespace` and returns
  an ``int`` exit status. A handler may be a plain function or a coroutine function (it is
  then run with :func:`anyio.run`).
* ``--journal URL`` is accepted by every subcommand (and before it); handlers read the
  journal to use from :func:`journal_url` (``--journal``, else ``AIOFLOW_JOURNAL``, else
  ``sqlite:///aioflow.db`` in the current directory).
* Other modules plug in with a ``register(subparsers)`` function; ``aioflow.jobs._commands``
  is registered this way when it exists.
* A user's mistake (an unknown flow id, a journal that does not exist, a reference that
  cannot be imported, a bad option value) is reported by raising :class:`UsageError`,
  :class:`~aioflow.NotFoundError` or :class:`ValueError`: the command prints one line
  and exits with status 2. Other aioflow errors print one line and exit with status 1.
  No traceback is shown for either.

Exit statuses: 0 done (the flow succeeded, or is resting without failure; ``cancel``: it
was reverted or its owner was asked to), 1 a flow that was reverted or failed, an action
refused for the state of its flow or job (``cancel`` of a flow that ended), or an error of
the journal, 2 a user's mistake (or a ``resume`` of a flow a live engine runs elsewhere,
or of one it cannot rebuild), 3 a watched or followed flow is orphaned (no live engine
runs it), 130 interrupted.

``--json`` outputs are one JSON document (JSON lines for ``events``) with stable keys and
ISO 8601 UTC times; no output ever holds a wait's nonce or a token.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import enum
import importlib
import inspect
import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio

from ._compile import BARRIER, CHECKPOINT, RETRY, ExecGraph, Node, compile_flow
from ._engine import Engine, load_reference
from ._errors import (
    AioflowError,
    FlowBusyError,
    FlowFailedError,
    InvalidFlowError,
    MissingInputsError,
    NotFoundError,
)
from ._events import Event, EventKind
from ._failure import CANCEL, Failure
from ._outcome import Outcome
from ._progress import AtomProgress, FlowProgress
from ._replay import FlowState, atom_names, published, replay
from ._states import AtomState, FlowStatus
from .journal import FlowSummary, open_journal
from .journal._base import ACTIVE

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

DEFAULT_JOURNAL = "sqlite:///aioflow.db"
JOURNAL_ENV = "AIOFLOW_JOURNAL"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_ORPHANED = 3
_REFRESH = 0.1
_WATCH_REFRESH = 0.2

Handler = Callable[[argparse.Namespace], "int | Awaitable[int]"]


class UsageError(Exception):
    """Raised by a handler for a user's mistake; the command prints it and exits 2."""


# ------------------------------------------------------------------------ formatting


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _number(x: float) -> str:
    """A number for people: whole numbers as they are, others to two decimals, very
    large or small ones to three significant digits (``1.39e9``)."""
    if isinstance(x, int) or (x.is_integer() and abs(x) < 1e15):
        return str(int(x))
    if 1e-3 <= abs(x) < 1e6:
        return f"{x:.2f}".rstrip("0").rstrip(".")
    mantissa, _, exponent = f"{x:.3g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


_TIME_KEYS = ("deadline", "until")
_DURATION_KEYS = ("seconds", "elapsed", "duration", "eta")


def _detail(key: str, value: object) -> str:
    """One progress or event detail for people: bytes and rates of bytes in binary
    units, durations as such, times in UTC, other numbers rounded (see :func:`_number`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _short(str(value))
    if "bytes" in key and key.endswith(("per_second", "_rate")):
        return f"{_size(value)}/s"
    if "bytes" in key:
        return _size(value)
    if key in _TIME_KEYS or key.endswith("_at"):
        return _when(value)
    if key in _DURATION_KEYS or key.endswith(("_seconds", "_duration")):
        return _duration(value)
    return _number(value)


def _details_text(details: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_detail(k, v)}" for k, v in _scrub(details).items())


def _when(timestamp: float | None) -> str:
    """``timestamp`` in UTC, ISO 8601 to the second, with its zone; "" for None."""
    return "" if timestamp is None else _utc(timestamp)


def _utc(timestamp: float) -> str:
    """``timestamp`` in UTC, ISO 8601 to the second (as FlowBusyError says it)."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _iso(timestamp: float | None) -> str | None:
    """``timestamp`` for JSON output and event lines: UTC, ISO 8601, to the millisecond."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


_HIDDEN = frozenset({"nonce", "token"})
"""Detail keys never shown: what a completion token is bound to, or a token itself."""


def _scrub(value: Any) -> Any:
    """``value`` with every ``nonce`` and ``token`` key removed, at any depth."""
    if isinstance(value, Mapping):
        return {str(k): _scrub(v) for k, v in value.items() if k not in _HIDDEN}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _jsonable(value: object) -> Any:
    """What ``json.dumps`` cannot write by itself, as JSON (the codec's richer types)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def _print_json(document: object, *, lines: bool = False) -> None:
    """Write one JSON document (indented), or one compact line (JSON lines)."""
    if lines:
        text = json.dumps(document, default=_jsonable, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(document, default=_jsonable, ensure_ascii=False, indent=2)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _quiet_logs() -> None:
    """Send aioflow's log lines to stderr, warnings and worse only, so that what a
    command prints (JSON above all) is all there is on stdout."""
    import logging

    import structlog

    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )


def _status_mark(summary: FlowSummary) -> str:
    """What to say next to a flow's status: ORPHANED when no live engine runs it."""
    return "ORPHANED" if summary.orphaned else ""


def _owner_line(summary: FlowSummary, now: float) -> str:
    """Who runs the flow, its generation and the owner's lease, for ``show``."""
    generation = f"  generation {summary.generation}"
    if summary.owner is None:
        return f"owner none{generation}" + (" (no engine runs it)" if summary.orphaned else "")
    if summary.lease_expires is None:
        lease = "no heartbeat on record"
    elif summary.lease_expires <= now:
        lease = (
            f"lease expired at {_utc(summary.lease_expires)}"
            f" ({_duration(now - summary.lease_expires)} ago)"
        )
    else:
        lease = f"lease until {_utc(summary.lease_expires)} unless renewed"
    return f"owner {summary.owner}{generation}  {lease}"


def _orphan_report(args: argparse.Namespace, summary: FlowSummary, now: float) -> list[str]:
    """What to tell an operator about an orphaned flow: who left it, since when, and how
    it goes on."""
    flow_id, status = summary.flow_id, summary.status.value
    if summary.owner is None:
        whose = "it has no owner"
    elif summary.lease_expires is None:
        whose = f"its owner, engine {summary.owner}, has no heartbeat on record"
    else:
        whose = (
            f"its owner, engine {summary.owner}, stopped renewing its lease, which expired"
            f" at {_utc(summary.lease_expires)} ({_duration(now - summary.lease_expires)} ago)"
        )
    return [
        f"flow {flow_id} is ORPHANED: it is {status} but no live engine runs it; {whose}.",
        f"Nothing moves it on until it is taken over: run  {_resume_hint(args, flow_id)}"
        "  or start an engine with recover=True on this journal.",
    ]


def _busy_message(args: argparse.Namespace, exc: FlowBusyError) -> str:
    """``resume``'s refusal of a flow a live engine runs elsewhere."""
    until = f"; its lease ends at {_utc(exc.expires)} unless renewed" if exc.expires else ""
    return (
        f"flow {exc.flow_id} is being run by engine {exc.owner}{until}. It cannot be resumed"
        f" while that engine lives: follow it with  aioflow watch {exc.flow_id}"
        + ("" if journal_url(args) == DEFAULT_JOURNAL else f" --journal {journal_url(args)}")
    )


def _atom_info(atom: AtomProgress) -> str:
    """What to say next to an atom's bar: bytes, throughput or rate, and its ETA."""
    d = atom.details
    parts: list[str] = []
    done, total = d.get("bytes_done"), d.get("bytes_total")
    if isinstance(done, int | float) and isinstance(total, int | float):
        parts.append(f"{_size(done)} / {_size(total)}")
    elif isinstance(done, int | float):
        parts.append(_size(done))
    speed = d.get("bytes_per_second")
    if isinstance(speed, int | float) and atom.state == "RUNNING":
        parts.append(f"{_size(speed)}/s")
    elif atom.rate is not None and atom.state == "RUNNING":
        parts.append(f"{atom.rate * 100:.1f}%/s")
    if atom.eta is not None and atom.state == "RUNNING":
        parts.append(f"ETA {_duration(atom.eta)}")
    return "  ".join(parts)


def _console() -> Console:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))
    return console


class Bars:
    """Rich progress bars: one for the whole flow (with its ETA), one per atom."""

    def __init__(self, console: Console, title: str) -> None:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self.title = title
        self.progress: RichProgress = Progress(
            TextColumn("{task.description}", table_column=None),
            BarColumn(bar_width=30),
            TaskProgressColumn(),
            TextColumn("{task.fields[state]:<10}"),
            TextColumn("{task.fields[info]}"),
            console=console,
            refresh_per_second=10,
        )
        self.rows: dict[str, TaskID] = {}

    def __enter__(self) -> Bars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def show(self, flow: FlowProgress) -> None:
        """Bring the bars up to ``flow``'s progress."""
        eta = f"ETA {_duration(flow.eta)}" if flow.eta is not None and flow.eta > 0 else ""
        self._row("", f"[bold]{self.title}[/]", flow.fraction, flow.status, eta)
        for name, atom in flow.atoms.items():
            self._row(name, f"  {name}", atom.fraction, atom.state, _atom_info(atom))

    def _row(self, key: str, label: str, fraction: float, state: str, info: str) -> None:
        task = self.rows.get(key)
        if task is None:
            task = self.rows[key] = self.progress.add_task(label, total=100, state="", info="")
        self.progress.update(task, completed=fraction * 100, state=state, info=info)


# ----------------------------------------------------------------------- the journal


def journal_url(args: argparse.Namespace) -> str:
    """The journal the command uses: ``--journal``, ``AIOFLOW_JOURNAL``, or the default."""
    url = getattr(args, "journal", None) or os.environ.get(JOURNAL_ENV) or DEFAULT_JOURNAL
    return str(url)


def _existing_journal(args: argparse.Namespace) -> str:
    """The journal URL, checked: known scheme, and for SQLite a file that exists."""
    url = journal_url(args)
    try:
        open_journal(url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if url.lower().startswith("sqlite:"):
        from .journal.sqlite import path_from_url

        try:
            path = path_from_url(url)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not Path(path).is_file():
            raise UsageError(
                f"no journal at {path} ({url}); give one with --journal or {JOURNAL_ENV},"
                " or create one by running a flow (aioflow demo)"
            )
    return url


def _resume_hint(args: argparse.Namespace, flow_id: str) -> str:
    url = journal_url(args)
    journal = "" if url == DEFAULT_JOURNAL else f" --journal {url}"
    return f"aioflow resume {flow_id}{journal}"


# -------------------------------------------------------------- running with bars


async def _run_with_bars(
    engine: Engine,
    flow_id: str,
    title: str,
    work: Callable[[], Awaitable[Outcome]],
    console: Console,
    ready: Callable[[], Awaitable[bool]] | None = None,
) -> tuple[Outcome | None, FlowFailedError | None, bool]:
    """Run ``work`` (a run or resume of ``flow_id``) under live bars.

    With ``ready``, the bars are drawn only once it answers True (or ``work`` has ended
    without an error), so that a resume refused at once draws nothing before its error.
    SIGINT or SIGTERM cancels the run, which leaves the flow SUSPENDED in the journal.
    Returns (outcome, failure, interrupted).
    """
    outcome: Outcome | None = None
    failure: FlowFailedError | None = None
    error: BaseException | None = None
    interrupted = False
    run_scope = anyio.CancelScope()

    async def run(tg_scope: anyio.CancelScope) -> None:
        nonlocal outcome, failure, error
        try:
            with run_scope:
                outcome = await work()
        except FlowFailedError as exc:
            failure = exc
        except Exception as exc:
            error = exc
        finally:
            tg_scope.cancel()

    async def on_signals() -> None:
        nonlocal interrupted
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                interrupted = True
                run_scope.cancel()
                return

    bars = Bars(console, title)
    drawing = False
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, tg.cancel_scope)
            with contextlib.suppress(NotImplementedError):  # no signals on this platform
                if _in_main_thread():
                    tg.start_soon(on_signals)
            while True:
                with contextlib.suppress(NotFoundError):
                    if not drawing and (ready is None or await ready()):
                        bars.__enter__()
                        drawing = True
                    if drawing:
                        bars.show(await engine.progress(flow_id))
                await anyio.sleep(_REFRESH)
        if drawing or error is None:
            with contextlib.suppress(NotFoundError):
                progress = await engine.progress(flow_id)
                if not drawing:
                    bars.__enter__()
                    drawing = True
                bars.show(progress)
    finally:
        if drawing:
            bars.__exit__()
    if error is not None:
        raise error
    return outcome, failure, interrupted


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _report_end(
    console: Console,
    args: argparse.Namespace,
    flow_id: str,
    outcome: Outcome | None,
    failure: FlowFailedError | None,
    interrupted: bool,
    started: float,
) -> int:
    took = _duration(time.monotonic() - started)
    if interrupted:
        console.print(
            f"Interrupted: flow {flow_id} is SUSPENDED in the journal; what finished is kept."
        )
        console.print(f"Resume it with:  {_resume_hint(args, flow_id)}")
        return EXIT_INTERRUPTED
    if failure is not None:
        status = failure.outcome.status.value
        console.print(f"flow {flow_id} {status} after {took}: {failure}", markup=False)
        return EXIT_FAILED
    assert outcome is not None
    console.print(f"flow {flow_id} {outcome.status.value} in {took}", markup=False)
    shown = {k: v for k, v in outcome.results.items() if k not in getattr(args, "_inputs", {})}
    for symbol, value in shown.items():
        console.print(f"  {symbol} = {value!r}", markup=False)
    return EXIT_OK


def _set_speed(args: argparse.Namespace) -> None:
    from . import _demo

    speed = 20.0 if args.fast else args.speed
    if speed is not None:
        if not speed > 0:
            raise UsageError(f"--speed must be positive, not {speed}")
        os.environ[_demo.SPEED_ENV] = repr(speed)


# ------------------------------------------------------------------------ commands


async def cmd_demo(args: argparse.Namespace) -> int:
    """Run the bundled backup demonstration with live bars."""
    from . import _demo

    _set_speed(args)
    _demo.speed()  # a bad AIOFLOW_DEMO_SPEED is a ValueError now, not in a task
    url = journal_url(args)
    console = _console()
    inputs = {"volume": args.volume, "size": _demo.VOLUME_BYTES}
    args._inputs = inputs
    flow_id = uuid.uuid4().hex
    console.print(
        f"Backing up volume {args.volume} ({_size(_demo.VOLUME_BYTES)}): create a snapshot,"
        " copy it, upload it, record it.",
        markup=False,
    )
    console.print(f"Journal {url}, flow {flow_id}. Ctrl-C suspends it; it can be resumed.")
    started = time.monotonic()
    async with Engine(url) as engine:
        outcome, failure, interrupted = await _run_with_bars(
            engine,
            flow_id,
            "backup-demo",
            lambda: engine.run(_demo.REFERENCE, inputs, flow_id=flow_id),
            console,
        )
    return _report_end(console, args, flow_id, outcome, failure, interrupted, started)


async def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a flow from the journal, with live bars; take it over when it is orphaned.

    A flow a live engine runs elsewhere is refused (status 2, naming that engine) before
    anything is drawn."""
    _set_speed(args)
    url = _existing_journal(args)
    registry = _registry(args)
    if args.flow is not None and ":" not in args.flow and registry is None:
        raise UsageError(
            f"--flow {args.flow!r} is not a reference like package.module:factory; a registry"
            " name needs --registry MODULE:ATTR too"
        )
    renames = _renames(args)
    if (args.migrate or renames) and args.flow is None:
        raise UsageError("--migrate and --rename need the new definition: --flow REF")
    if renames and not args.migrate:
        raise UsageError("--rename applies to a migration: add --migrate")
    console = _console()
    started = time.monotonic()
    flow_id = args.flow_id
    try:
        async with Engine(url, registry=registry) as engine:
            state = replay(flow_id, await engine.journal.load(flow_id))
            args._inputs = state.inputs
            if state.status.is_final:
                console.print(f"flow {flow_id} has already ended: {state.status.value}")
                return EXIT_OK if state.status is FlowStatus.SUCCESS else EXIT_FAILED
            summary = await engine.journal.summary(flow_id)
            if summary.status in ACTIVE and summary.owner is not None and not summary.orphaned:
                raise FlowBusyError(flow_id, summary.owner, summary.lease_expires)
            unbuildable = state.ref is None or (":" not in state.ref and registry is None)
            if args.flow is None and unbuildable:
                # Said before anything is drawn or taken: a shell cannot pass an object.
                why, how = _rebuild_advice(args, flow_id, state.ref)
                raise UsageError(
                    f"flow {flow_id} ({state.name}) {why}, so this command cannot rebuild it;"
                    f" resume it with  {how}"
                )
            if summary.orphaned:
                left = f" from engine {summary.owner}" if summary.owner else ""
                console.print(f"flow {flow_id} is orphaned: taking it over{left}", markup=False)

            async def owned() -> bool:
                return (await engine.journal.summary(flow_id)).owner == engine.id

            outcome, failure, interrupted = await _run_with_bars(
                engine,
                flow_id,
                state.name,
                lambda: engine.resume(
                    flow_id, args.flow, migrate=args.migrate, renames=renames or None
                ),
                console,
                ready=owned,
            )
    except FlowBusyError as exc:  # it was taken between our look and our taking, too
        raise UsageError(_busy_message(args, exc)) from None
    return _report_end(console, args, flow_id, outcome, failure, interrupted, started)


def _renames(args: argparse.Namespace) -> dict[str, str]:
    """``--rename OLD=NEW`` options as a mapping (a bad one is a usage error)."""
    renames: dict[str, str] = {}
    for text in getattr(args, "rename", None) or ():
        old, sep, new = text.partition("=")
        if not sep or not old or not new:
            raise UsageError(f"--rename takes OLD=NEW (two atom names), not {text!r}")
        renames[old] = new
    return renames


async def cmd_check(args: argparse.Namespace) -> int:
    """Whether a flow can be migrated to the definition REF (``resume --migrate``): status
    0 when it can, 1 (listing every conflict) when it cannot."""
    url = _existing_journal(args)
    _quiet_logs()
    renames = _renames(args)
    engine = Engine(url, registry=_registry(args))
    conflicts = await engine.check_migration(args.flow_id, args.ref, renames=renames or None)
    if not conflicts:
        print(f"flow {args.flow_id} can be migrated to {args.ref}")
        return EXIT_OK
    print(f"flow {args.flow_id} cannot be migrated to {args.ref}:")
    for line in conflicts:
        print(f"  - {line}")
    return EXIT_FAILED


async def cmd_flows(args: argparse.Namespace) -> int:
    """List the journal's flows, newest last, with who runs each (ORPHANED when no live
    engine runs a RUNNING or REVERTING flow); ``--json``: one JSON document."""
    from rich.table import Table

    url = _existing_journal(args)
    status = None
    if args.status is not None:
        try:
            status = FlowStatus(args.status.upper())
        except ValueError:
            names = ", ".join(s.value for s in FlowStatus)
            raise UsageError(f"unknown status {args.status!r}; one of {names}") from None
    if args.json:
        _quiet_logs()
    rows: list[tuple[FlowSummary, FlowProgress]] = []
    async with Engine(url) as engine:
        summaries = await engine.journal.flows(status)
        for summary in summaries[-args.limit :] if args.limit else summaries:
            rows.append((summary, await engine.progress(summary.flow_id)))
    if args.json:
        _print_json({"flows": [_summary_document(s, p) for s, p in rows]})
        return EXIT_OK
    table = Table("id", "name", "status", "progress", "started (UTC)", "owner")
    table.columns[0].no_wrap = True
    table.columns[2].no_wrap = True
    for summary, progress in rows:
        mark = _status_mark(summary)
        table.add_row(
            summary.flow_id,
            summary.name,
            summary.status.value + (f" [bold red]{mark}[/]" if mark else ""),
            f"{progress.fraction * 100:.0f}%",
            _when(summary.created),
            summary.owner or "",
        )
    console = _console()
    if not table.rows:
        console.print(f"no flows in {url}")
    else:
        console.print(table)
    return EXIT_OK


def _summary_document(summary: FlowSummary, progress: FlowProgress) -> dict[str, Any]:
    """A flow of ``flows --json``."""
    return {
        "flow_id": summary.flow_id,
        "name": summary.name,
        "status": summary.status.value,
        "reference": summary.ref,
        "progress": progress.fraction,
        "eta": progress.eta,
        "created": _iso(summary.created),
        "updated": _iso(summary.updated),
        "owner": summary.owner,
        "orphaned": summary.orphaned,
    }


def innermost_frame(failure: Failure) -> str:
    """Where ``failure`` was raised: its traceback's last frame (``File "...", line N, in
    f``), or "" without a traceback."""
    frames = [
        line.strip() for line in failure.traceback.splitlines() if line.strip().startswith('File "')
    ]
    return frames[-1] if frames else ""


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptFailure:
    """One failed attempt of an atom, a revert that failed, or the flow's cancellation
    (atom ``"<cancel>"``), as ``show`` reports it."""

    atom: str
    attempt: int
    time: float | None
    what: str
    """``failed``, ``revert failed`` or ``cancelled``."""
    failure: Failure

    @property
    def where(self) -> str:
        return innermost_frame(self.failure)

    def document(self) -> dict[str, Any]:
        return {
            "atom": self.atom,
            "attempt": self.attempt,
            "time": _iso(self.time),
            "what": self.what,
            "type": self.failure.exc_type,
            "message": self.failure.message,
            "traceback": self.failure.traceback,
        }


def attempt_failures(state: FlowState, events: Iterable[Event]) -> list[AttemptFailure]:
    """Every failure the journal holds, in the order they happened: each failed attempt
    of each atom, each failed revert, and a cancellation. History that a compaction
    folded keeps only each atom's last failure, which is reported with its end time."""
    found: list[AttemptFailure] = []
    seen: set[tuple[str, int, str]] = set()

    def add(atom: str, attempt: int, time: float | None, what: str, data: object) -> None:
        key = (atom, attempt, what)
        if key not in seen:
            seen.add(key)
            failure = data if isinstance(data, Failure) else Failure.from_dict(cast(Any, data))
            found.append(AttemptFailure(atom, attempt, time, what, failure))

    folded: list[AttemptFailure] = []
    for event in events:
        if event.kind is EventKind.ATOM and event.atom is not None:
            data = event.details.get("failure")
            if isinstance(data, Mapping):
                what = "revert failed" if event.state is AtomState.REVERT_FAILURE else "failed"
                add(event.atom, event.attempt, event.time, what, data)
        elif event.kind is EventKind.FLOW and isinstance(event.details.get("cancel"), Mapping):
            add(CANCEL, 0, event.time, "cancelled", event.details["cancel"])
        elif event.kind is EventKind.SNAPSHOT:
            before = len(found)
            for name, record in state.atoms.items():
                if record.failure is not None:
                    what = "revert failed" if record.state is AtomState.REVERT_FAILURE else "failed"
                    add(name, record.attempt, record.finished, what, record.failure)
            if state.cancel is not None:
                add(CANCEL, 0, None, "cancelled", state.cancel)
            folded, found[before:] = found[before:], []
    # What a snapshot folded is older than any event after it; it is put first.
    return folded + found


async def cmd_show(args: argparse.Namespace) -> int:
    """Show one flow: who runs it (its owner, generation and lease; ORPHANED when no live
    engine does), its atoms, their states, attempts, progress and durations, the
    checkpoints it reached, and each failed attempt's error; ``--json``: one document."""
    from rich.table import Table

    url = _existing_journal(args)
    if args.json:
        _quiet_logs()
    async with Engine(url) as engine:
        events = await engine.journal.load(args.flow_id)
        progress = await engine.progress(args.flow_id)
        summary = await engine.journal.summary(args.flow_id)
    state = replay(args.flow_id, events)
    now = time.time()
    atoms: list[dict[str, Any]] = []
    for name, kind in atom_names(state.structure):
        record = state.atoms.get(name)
        atom = progress.atoms.get(name)
        if record is None or atom is None:
            atoms.append(
                {
                    "name": name,
                    "kind": kind,
                    "state": "PENDING",
                    "attempts": 0,
                    "progress": 0.0,
                    "started": None,
                    "finished": None,
                    "duration": None,
                    "details": {},
                }
            )
            continue
        took = None
        if record.started is not None and atom.state not in ("PENDING", "IGNORED"):
            running = atom.state in ("RUNNING", "WAITING")
            end = now if running or record.finished is None else record.finished
            took = end - record.started
        atoms.append(
            {
                "name": name,
                "kind": kind,
                "state": atom.state,
                "attempts": record.attempt,
                "progress": atom.fraction,
                "started": _iso(record.started),
                "finished": _iso(record.finished),
                "duration": took,
                "details": _scrub(atom.details),
            }
        )
    reached = [
        (str(e.details["reached"]), e.time)
        for e in events
        if e.kind is EventKind.CHECKPOINT and e.details.get("reached")
    ]
    failures = attempt_failures(state, events)
    if args.json:
        _print_json(
            {
                "flow_id": state.flow_id,
                "name": state.name,
                "status": state.status.value,
                "reference": state.ref,
                "created": _iso(state.created),
                "updated": _iso(state.updated),
                "owner": summary.owner,
                "generation": summary.generation,
                "lease_expires": _iso(summary.lease_expires),
                "orphaned": summary.orphaned,
                "progress": {"fraction": progress.fraction, "eta": progress.eta},
                "atoms": atoms,
                "checkpoints": [{"name": n, "time": _iso(t)} for n, t in reached],
                "failures": [f.document() for f in failures],
                "results": published(state) if state.status is FlowStatus.SUCCESS else None,
            }
        )
        return EXIT_OK
    console = _console()
    mark = _status_mark(summary)
    console.print(
        f"flow {state.flow_id}  {state.name}  {state.status.value}" + (f"  {mark}" if mark else ""),
        markup=False,
    )
    console.print(
        f"  started {_when(state.created)}  updated {_when(state.updated)}"
        f"  progress {progress.fraction * 100:.0f}%"
        + (f"  ETA {_duration(progress.eta)}" if progress.eta and not summary.orphaned else ""),
        markup=False,
    )
    console.print(f"  {_owner_line(summary, now)}", markup=False, soft_wrap=True)
    if summary.orphaned:
        for line in _orphan_report(args, summary, now)[1:]:
            console.print(f"  {line}", markup=False, soft_wrap=True)
    if state.ref:
        console.print(f"  reference {state.ref}", markup=False)
    table = Table("atom", "kind", "state", "attempts", "progress", "duration", "details")
    for row in atoms:
        table.add_row(
            row["name"],
            row["kind"],
            row["state"],
            str(row["attempts"]),
            f"{row['progress'] * 100:.0f}%",
            _duration(row["duration"]),
            _details_text(row["details"]),
        )
    console.print(table)
    if reached:
        console.print("checkpoints reached:")
        for name, at in reached:
            console.print(f"  {name}  at {_when(at)}", markup=False)
    if failures:
        console.print("failures:")
    for f in failures:
        attempt = f"  attempt {f.attempt}" if f.atom != CANCEL else ""
        when = f" at {_when(f.time)}" if f.time is not None else ""
        console.print(f"  {f.atom}{attempt}  {f.what}{when}", markup=False, soft_wrap=True)
        console.print(f"    {f.failure}", markup=False, soft_wrap=True)
        if args.traceback and f.failure.traceback:
            for line in f.failure.traceback.rstrip().splitlines():
                console.print(f"      {line}", markup=False, soft_wrap=True, highlight=False)
        elif f.where:
            console.print(f"    {f.where}", markup=False, soft_wrap=True, highlight=False)
    if failures and not args.traceback and any(f.failure.traceback for f in failures):
        console.print("  (--traceback shows the full tracebacks)")
    return EXIT_OK


def _event_document(event: Event) -> dict[str, Any]:
    """An event of ``events --json``: every field, the time in UTC, no token nonces."""
    state = event.state
    return {
        "flow_id": event.flow_id,
        "seq": event.seq,
        "time": _iso(event.time),
        "kind": event.kind.value,
        "atom": event.atom,
        "state": None if state is None else state.value,
        "attempt": event.attempt,
        "progress": event.progress,
        "details": _scrub(event.details),
    }


_NOT_SHOWN = ("structure", "fingerprint", "weights", "exc_types")


def _event_details(event: Event) -> str:
    """The gist of an event's details on one line: a failure's type and message, a
    result, input names (not values), progress; never a nonce or token."""
    details = dict(_scrub(event.details))
    parts: list[str] = []
    if event.kind is EventKind.PROGRESS and event.progress is not None:
        parts.append(f"{event.progress * 100:.0f}%")
    if event.kind is EventKind.SNAPSHOT:
        body = details.get("state")
        status = body.get("status") if isinstance(body, Mapping) else None
        return f"history folded (status then {status})"
    for key in ("failure", "cancel"):
        data = details.pop(key, None)
        if isinstance(data, Mapping):
            parts.append(f"{data.get('exc_type')}: {data.get('message')}")
    for key in _NOT_SHOWN:
        details.pop(key, None)
    inputs = details.pop("inputs", None)
    if isinstance(inputs, Mapping) and inputs:
        parts.append("inputs=" + ",".join(str(k) for k in inputs))
    if "result" in details:
        parts.append(f"result={_short(repr(details.pop('result')), 40)}")
    parts.extend(f"{k}={_detail(k, v)}" for k, v in details.items() if v is not None)
    return _short("  ".join(parts), 160)


_EVENT_HEADER = (
    f"{'SEQ':>5}  {'TIME (UTC)':29}  {'KIND':10}  {'ATOM':20}  {'STATE':14}  ATT  DETAILS"
)


def _event_line(event: Event) -> str:
    state = "-" if event.state is None else event.state.value
    return (
        f"{event.seq:>5}  {_iso(event.time):29}  {event.kind.value:10}  {event.atom or '-':20}"
        f"  {state:14}  {event.attempt:>3}  {_event_details(event)}"
    ).rstrip()


async def cmd_events(args: argparse.Namespace) -> int:
    """Print a flow's events from its journal, one a line (``--json``: JSON lines);
    with ``--follow``, then the new ones as they come, until the flow rests (status 3
    when it is orphaned: nothing will move it on)."""
    url = _existing_journal(args)
    _quiet_logs()
    engine = Engine(url)

    async def committed() -> AsyncIterator[Event]:
        for event in await engine.journal.load(args.flow_id):
            yield event

    header = not args.json
    async with engine.journal:
        source = engine.watch(args.flow_id) if args.follow else committed()
        async for event in source:
            if header:
                print(_EVENT_HEADER)
                header = False
            if args.json:
                _print_json(_event_document(event), lines=True)
            else:
                print(_event_line(event), flush=True)
        summary = await engine.journal.summary(args.flow_id)
    if args.follow and summary.orphaned:
        for line in _orphan_report(args, summary, time.time()):
            print(line, file=sys.stderr)
        return EXIT_ORPHANED
    return EXIT_OK


async def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a flow for good: it is stopped wherever it runs and reverted. Status 0 once
    it is reverted or its owner was asked to; 1 when a revert failed or the flow had
    already ended; 2 for an unknown flow."""
    url = _existing_journal(args)
    _quiet_logs()
    engine = Engine(url, registry=_registry(args))
    # Not entered: a resting flow this engine can build is reverted before cancel returns.
    await engine.cancel(args.flow_id)
    async with open_journal(url) as journal:
        summary = await journal.summary(args.flow_id)
    flow_id, status = args.flow_id, summary.status
    if status is FlowStatus.REVERTED:
        print(f"flow {flow_id} cancelled: REVERTED (what it had done was undone)")
        return EXIT_OK
    if status is FlowStatus.FAILED:
        print(
            f"flow {flow_id} cancelled, but a revert failed: FAILED; see  aioflow show"
            f" {flow_id}{_journal_option(args)}"
        )
        return EXIT_FAILED
    if summary.owner is not None and not summary.orphaned:
        print(
            f"flow {flow_id}: cancel requested; engine {summary.owner}, which runs it, reverts"
            f" it within seconds. Follow it with  aioflow watch {flow_id}{_journal_option(args)}"
        )
    else:
        why, how = _rebuild_advice(args, flow_id, summary.ref)
        print(
            f"flow {flow_id}: cancel requested. It is {status.value} and {why}, so this"
            f" command cannot rebuild it to revert it; its next resume does:  {how}"
        )
    return EXIT_OK


def _rebuild_advice(args: argparse.Namespace, flow_id: str, ref: str | None) -> tuple[str, str]:
    """Why the command cannot rebuild a flow started from ``ref``, and the resume that
    gives it what it needs."""
    hint = _resume_hint(args, flow_id)
    if ref is None:
        return (
            "was started from a flow object, which the journal cannot record",
            f"{hint} --flow package.module:factory  (a factory that builds the same flow;"
            " or --flow NAME --registry MODULE:ATTR for a registry entry)",
        )
    return (
        f"was started from registry name {ref!r}",
        f"{hint} --registry MODULE:ATTR  (the registry that provides it)",
    )


def _journal_option(args: argparse.Namespace) -> str:
    url = journal_url(args)
    return "" if url == DEFAULT_JOURNAL else f" --journal {url}"


def _registry(args: argparse.Namespace) -> Any:
    """The ``--registry MODULE:ATTR`` given (a Registry, or a factory of one), or None."""
    from ._registry import Registry

    ref = getattr(args, "registry", None)
    if ref is None:
        return None
    registry = _load_attr(ref)
    if not isinstance(registry, Registry) and callable(registry):
        registry = registry()
    if not isinstance(registry, Registry):
        raise UsageError(f"{ref!r} is a {type(registry).__name__}, not a Registry")
    return registry


async def cmd_watch(args: argparse.Namespace) -> int:
    """Follow a flow (run by any process on this journal) with live bars until it rests,
    or until it is orphaned: no live engine runs it, so it would never rest (status 3)."""
    url = _existing_journal(args)
    engine = Engine(url)
    console = _console()
    orphan: FlowSummary | None = None
    async with engine.journal:
        state = replay(args.flow_id, await engine.journal.load(args.flow_id))
        with Bars(console, state.name) as bars:
            while True:
                progress = await engine.progress(args.flow_id)
                bars.show(progress)
                status = FlowStatus(progress.status)
                if status.is_resting:
                    break
                # Read after the progress: a flow that rested in between is not orphaned.
                summary = await engine.journal.summary(args.flow_id)
                if summary.orphaned:
                    orphan = summary
                    break
                await anyio.sleep(args.interval)
    if orphan is not None:
        for line in _orphan_report(args, orphan, time.time()):
            console.print(line, markup=False, soft_wrap=True)  # a command to copy whole
        return EXIT_ORPHANED
    console.print(f"flow {args.flow_id} {status.value}", markup=False)
    return EXIT_FAILED if status in (FlowStatus.REVERTED, FlowStatus.FAILED) else EXIT_OK


def _visible_preds(graph: ExecGraph, node: Node) -> list[int]:
    """The atoms before ``node``, looking through the internal barrier nodes."""
    out: set[int] = set()
    seen: set[int] = set()
    stack = list(node.preds)
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        if graph.nodes[p].kind == BARRIER:
            stack.extend(graph.nodes[p].preds)
        else:
            out.add(p)
    return sorted(out)


def render_graph(graph: ExecGraph, fmt: str) -> str:
    """The flow's atoms and their order as Mermaid (``flowchart``) or Graphviz ``dot``.

    Checkpoints are hexagons, flow retries stadiums, tasks boxes; an edge into an atom
    guarded by a decider is dashed.
    """
    atoms = list(graph.atoms)
    edges = [(p, n) for n in atoms for p in _visible_preds(graph, n)]

    def quote(text: str) -> str:
        return text.replace("\\", "\\\\").replace('"', '\\"')

    if fmt == "mermaid":
        shapes = {CHECKPOINT: ('{{"', '"}}'), RETRY: ('(["', '"])')}
        lines = ["flowchart TD"]
        for n in atoms:
            left, right = shapes.get(n.kind, ('["', '"]'))
            label = n.name.replace('"', "#quot;")
            lines.append(f"    n{n.index}{left}{label}{right}")
        for p, n in edges:
            arrow = "-.->" if n.deciders else "-->"
            lines.append(f"    n{p} {arrow} n{n.index}")
        return "\n".join(lines) + "\n"
    shape = {CHECKPOINT: "hexagon", RETRY: "oval"}
    lines = [f'digraph "{quote(graph.name)}" {{', "    rankdir=TB;"]
    for n in atoms:
        lines.append(f'    n{n.index} [label="{quote(n.name)}", shape={shape.get(n.kind, "box")}];')
    for p, n in edges:
        style = " [style=dashed]" if n.deciders else ""
        lines.append(f"    n{p} -> n{n.index}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def cmd_graph(args: argparse.Namespace) -> int:
    """Print a flow's graph (from a ``package.module:factory`` reference)."""
    flow = load_reference(args.ref)
    try:
        graph = compile_flow(flow)
    except MissingInputsError as exc:
        graph = compile_flow(flow, exc.symbols)  # what nothing provides comes as inputs
    except InvalidFlowError as exc:
        raise UsageError(f"flow {args.ref!r} is not valid: {exc}") from None
    sys.stdout.write(render_graph(graph, args.format))
    return EXIT_OK


async def cmd_compact(args: argparse.Namespace) -> int:
    """Fold a flow's older journal history into a snapshot."""
    url = _existing_journal(args)
    if args.keep < 1:
        raise UsageError(f"--keep must be at least 1, not {args.keep}")
    async with open_journal(url) as journal:
        await journal.load(args.flow_id)  # NotFoundError for an unknown flow
        compact = getattr(journal, "compact", None)
        if compact is None:
            raise AioflowError(f"journal {url} cannot compact flows in this version of aioflow")
        removed = await compact(args.flow_id, keep=args.keep)
    print(f"flow {args.flow_id}: {removed} events folded away (kept the last {args.keep})")
    return EXIT_OK


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str, option: str = "--older-than") -> float:
    """Seconds in a duration such as ``30d``, ``12h``, ``90m`` or ``3600s``; a
    :class:`UsageError` naming ``option`` for anything else."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if found is None:
        raise UsageError(
            f"{option} {text!r} is not a duration: give a number and a unit, s, m, h or d"
            " (30d, 12h, 90m, 3600s)"
        )
    return float(found[1]) * _UNITS[found[2]]


def _final_statuses(names: list[str] | None) -> list[FlowStatus] | None:
    """The ``--status`` values of ``purge`` as statuses (None: every final one)."""
    if not names:
        return None
    statuses = []
    for name in names:
        try:
            statuses.append(FlowStatus(name.upper()))
        except ValueError:
            raise UsageError(
                f"unknown status {name!r}; purge takes SUCCESS, REVERTED or FAILED"
            ) from None
    return statuses


async def cmd_purge(args: argparse.Namespace) -> int:
    """Remove the flows that ended more than ``--older-than`` ago, with all their rows
    (``--dry-run``: count them only)."""
    url = _existing_journal(args)
    seconds = parse_age(args.older_than)
    statuses = _final_statuses(args.status)
    _quiet_logs()
    async with open_journal(url) as journal:
        before = journal.clock() - seconds
        count = await journal.purge(seconds, statuses, dry_run=args.dry_run)
    names = [s.value for s in statuses] if statuses else ["SUCCESS", "REVERTED", "FAILED"]
    if args.json:
        _print_json(
            {"flows": count, "dry_run": args.dry_run, "before": _iso(before), "statuses": names}
        )
        return EXIT_OK
    plural = "flow" if count == 1 else "flows"
    what = f"{count} {plural} ({', '.join(names)}) that ended before {_utc(before)}"
    if args.dry_run:
        print(f"would remove {what}; nothing removed (--dry-run)")
    else:
        print(f"removed {what}")
    return EXIT_OK


def _load_attr(ref: str) -> Any:
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{ref!r} is not a reference; one looks like 'package.module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r} (from {ref!r}): {exc}") from None
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise UsageError(f"module {module_name!r} has no {attr!r}") from None
    return obj


def cmd_providers(args: argparse.Namespace) -> int:
    """List the entries of a registry, optionally those with given capabilities."""
    from rich.table import Table

    from ._registry import Registry

    registry = _load_attr(args.registry)
    if not isinstance(registry, Registry) and callable(registry):
        registry = registry()
    if not isinstance(registry, Registry):
        raise UsageError(f"{args.registry!r} is a {type(registry).__name__}, not a Registry")
    table = Table("name", "capabilities", "attributes")
    for entry in registry.find(*args.capabilities):
        attributes = ", ".join(f"{k}={v!r}" for k, v in sorted(entry.attributes.items()))
        table.add_row(entry.name, ", ".join(sorted(entry.capabilities)), attributes)
    console = _console()
    if not table.rows:
        console.print("no matching entries")
    else:
        console.print(table)
    return EXIT_OK


# ---------------------------------------------------------------------- the parser


def _count(text: str) -> int:
    """A number >= 0 for argparse (``--limit -1`` is refused, not read as 'all but one')."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (all) or more, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``aioflow`` argument parser, with every subcommand (plugged-in ones too)."""
    parser = argparse.ArgumentParser(
        prog="aioflow", description="Run, watch and inspect aioflow flows."
    )
    journal_help = (
        f"the journal URL (default: ${JOURNAL_ENV}, else {DEFAULT_JOURNAL} in the current"
        " directory)"
    )
    parser.add_argument("--journal", metavar="URL", help=journal_help)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"aioflow {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a --journal given before the subcommand is not reset by the subparser.
    common.add_argument("--journal", metavar="URL", default=argparse.SUPPRESS, help=journal_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, func: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    def json_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="one JSON document (UTC times)")

    def registry_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--registry",
            metavar="MODULE:ATTR",
            help="the Registry (or a factory of one) that builds flows started by name",
        )

    def speed_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--speed", type=float, metavar="FACTOR", help="pace factor of the bundled demo"
        )
        p.add_argument("--fast", action="store_true", help="the demo in about a second")

    p = add("demo", cmd_demo, "run the bundled backup demonstration with live progress")
    p.add_argument("--volume", default="vol-1", help="the volume to pretend to back up")
    speed_options(p)

    p = add(
        "resume",
        cmd_resume,
        "resume a suspended, interrupted or orphaned flow, with live progress",
    )
    p.add_argument("flow_id", metavar="FLOW_ID")
    p.add_argument(
        "--flow",
        metavar="REF",
        help="a package.module:factory that builds the flow (or a name in --registry), when"
        " it was not started from a reference",
    )
    registry_option(p)
    p.add_argument(
        "--migrate",
        action="store_true",
        help="go on under the changed definition --flow (see docs/versioning.md)",
    )
    p.add_argument(
        "--rename", action="append", metavar="OLD=NEW", help="with --migrate: an atom renamed"
    )
    speed_options(p)

    p = add(
        "check",
        cmd_check,
        "say whether a flow can be migrated to a changed definition, and why not",
    )
    p.add_argument("flow_id", metavar="FLOW_ID")
    p.add_argument("ref", metavar="REF", help="the new definition, package.module:factory")
    p.add_argument("--rename", action="append", metavar="OLD=NEW", help="an atom renamed")
    registry_option(p)

    p = add("flows", cmd_flows, "list the journal's flows, their owners and orphans")
    p.add_argument("--status", help="only flows with this status")
    p.add_argument(
        "--limit", type=_count, default=50, help="the latest N flows (0: all; not negative)"
    )
    json_option(p)

    p = add(
        "show",
        cmd_show,
        "show a flow's atoms, states, attempts, progress, durations and failed attempts",
    )
    p.add_argument("flow_id", metavar="FLOW_ID")
    p.add_argument("--traceback", action="store_true", help="full tracebacks of failures")
    json_option(p)

    p = add("events", cmd_events, "print a flow's events, one a line")
    p.add_argument("flow_id", metavar="FLOW_ID")
    p.add_argument(
        "--follow", action="store_true", help="then print new events until the flow rests"
    )
    p.add_argument("--json", action="store_true", help="JSON lines, one event each")

    p = add("cancel", cmd_cancel, "cancel a flow: stop it wherever it runs and revert it")
    p.add_argument("flow_id", metavar="FLOW_ID")
    registry_option(p)

    p = add(
        "watch",
        cmd_watch,
        "live progress of a flow another process runs (exits 3 if it is orphaned)",
    )
    p.add_argument("flow_id", metavar="FLOW_ID")
    p.add_argument("--interval", type=float, default=_WATCH_REFRESH, help=argparse.SUPPRESS)

    p = add("graph", cmd_graph, "print a flow's graph")
    p.add_argument("ref", metavar="REF", help="a flow reference, package.module:factory")
    p.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")

    p = add("compact", cmd_compact, "fold a flow's older journal history into a snapshot")
    p.add_argument("flow_id", metavar="FLOW_ID")
    p.add_argument("--keep", type=int, default=1, help="checkpoints of history to keep")

    p = add(
        "purge",
        cmd_purge,
        "remove the flows that ended (SUCCESS, REVERTED, FAILED) long enough ago, with all"
        " their events",
    )
    p.add_argument(
        "--older-than",
        required=True,
        metavar="AGE",
        help="how long ago they ended, at least: 30d, 12h, 90m or 3600s",
    )
    p.add_argument(
        "--status",
        action="append",
        metavar="STATUS",
        help="only flows that ended in this status (SUCCESS, REVERTED or FAILED; repeat for"
        " several)",
    )
    p.add_argument("--dry-run", action="store_true", help="count them, remove nothing")
    json_option(p)

    p = add("providers", cmd_providers, "list the entries of a registry")
    p.add_argument("--registry", required=True, metavar="MODULE:ATTR")
    p.add_argument("capabilities", nargs="*", help="only entries with these capabilities")

    try:  # another module's subcommands (conductor, jobs), when installed
        commands = importlib.import_module("aioflow.jobs._commands")
    except ImportError:
        pass
    else:
        commands.register(sub)
    return parser


def _call(func: Handler, args: argparse.Namespace) -> int:
    if inspect.iscoroutinefunction(func):
        return int(anyio.run(func, args))
    result = func(args)
    if inspect.isawaitable(result):
        awaitable = result

        async def wait() -> int:
            return int(await awaitable)

        return int(anyio.run(wait))
    return int(result)


def main(argv: list[str] | None = None) -> int:
    """Run the ``aioflow`` command with ``argv`` (default: the process's arguments) and
    return its exit status."""
    try:
        import rich  # noqa: F401
    except ImportError:
        print(
            "aioflow: the aioflow command needs rich; install the 'cli' extra:"
            " pip install 'aioflow[cli]'",
            file=sys.stderr,
        )
        return EXIT_FAILED
    parser = build_parser()
    args = parser.parse_args(argv)
    # References ("mymod:flow") are looked up from the current folder, as with
    # ``python -m``: the installed command's own folder is what Python puts first.
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.insert(0, here)
    try:
        return _call(args.func, args)
    except BaseException as caught:
        exc = _unwrap(caught)
        if isinstance(exc, BrokenPipeError):
            # The reader went away (``aioflow events ... | head``): nothing more to say.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return EXIT_FAILED
        if isinstance(exc, KeyboardInterrupt):
            print("aioflow: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(exc, UsageError | NotFoundError | ValueError):
            print(f"aioflow: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(exc, AioflowError | OSError):
            print(f"aioflow: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_FAILED
        raise


def _unwrap(exc: BaseException) -> BaseException:
    """The one error inside task-group wrappers (an error raised in the body of
    ``async with Engine(...)`` reaches here inside an exception group)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
