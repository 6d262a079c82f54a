"""The live progress bars, and the commands that draw them: ``demo`` and ``resume`` run
a flow under them, ``watch`` follows one that another process runs."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from .._engine import Engine
from .._errors import FlowBusyError, FlowFailedError, NotFoundError
from .._outcome import Outcome
from .._progress import AtomProgress, FlowProgress
from .._replay import replay
from .._states import FlowStatus
from ..journal import FlowSummary
from ..journal._base import ACTIVE
from ._common import (
    DEFAULT_JOURNAL,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_ORPHANED,
    UsageError,
    _existing_journal,
    _orphan_report,
    _rebuild_advice,
    _registry,
    _renames,
    _resume_hint,
    journal_url,
)
from ._format import _console, _duration, _size, _utc

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID


_REFRESH = 0.1
_WATCH_REFRESH = 0.2


# ------------------------------------------------------------------------ the bars


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


# ------------------------------------------------------------------------ commands


def _set_speed(args: argparse.Namespace) -> None:
    from .. import _demo

    speed = 20.0 if args.fast else args.speed
    if speed is not None:
        if not speed > 0:
            raise UsageError(f"--speed must be positive, not {speed}")
        os.environ[_demo.SPEED_ENV] = repr(speed)


async def cmd_demo(args: argparse.Namespace) -> int:
    """Run the bundled backup demonstration with live bars."""
    from .. import _demo

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


def _busy_message(args: argparse.Namespace, exc: FlowBusyError) -> str:
    """``resume``'s refusal of a flow a live engine runs elsewhere."""
    until = f"; its lease ends at {_utc(exc.expires)} unless renewed" if exc.expires else ""
    return (
        f"flow {exc.flow_id} is being run by engine {exc.owner}{until}. It cannot be resumed"
        f" while that engine lives: follow it with  aioflow watch {exc.flow_id}"
        + ("" if journal_url(args) == DEFAULT_JOURNAL else f" --journal {journal_url(args)}")
    )


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
