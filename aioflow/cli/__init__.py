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

The package, one module per idea:

* ``__init__`` (here): :func:`main`, the parser (:func:`build_parser`) and the mapping of
  errors to exit statuses. Every name other modules use is importable from here
  (``aioflow.jobs._commands`` imports its helpers this way).
* ``__main__``: ``python -m aioflow.cli``.
* ``_common``: the journal's URL, :class:`UsageError` and the exit statuses, loading a
  registry or any ``module:attr`` reference, and the advice given about orphaned flows
  and flows the command cannot rebuild.
* ``_format``: times, durations, numbers and sizes for people; JSON output; the console.
* ``_live``: the live progress bars and the commands that draw them: ``demo``,
  ``resume`` and ``watch``.
* ``_flows``: the commands that read or act on a journal's flows: ``flows``, ``show``,
  ``events``, ``cancel`` and ``check``.
* ``_upkeep``: the journal's upkeep: ``compact`` and ``purge``.
* ``_definitions``: the commands about flow definitions rather than a journal: ``graph``
  and ``providers``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import os
import sys

import anyio

from .._errors import AioflowError, NotFoundError
from ._common import DEFAULT_JOURNAL as DEFAULT_JOURNAL
from ._common import EXIT_FAILED as EXIT_FAILED
from ._common import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from ._common import EXIT_OK as EXIT_OK
from ._common import EXIT_ORPHANED as EXIT_ORPHANED
from ._common import EXIT_USAGE as EXIT_USAGE
from ._common import JOURNAL_ENV as JOURNAL_ENV
from ._common import Handler as Handler
from ._common import UsageError as UsageError
from ._common import journal_url as journal_url
from ._definitions import cmd_graph as cmd_graph
from ._definitions import cmd_providers as cmd_providers
from ._definitions import render_graph as render_graph
from ._flows import AttemptFailure as AttemptFailure
from ._flows import attempt_failures as attempt_failures
from ._flows import cmd_cancel as cmd_cancel
from ._flows import cmd_check as cmd_check
from ._flows import cmd_events as cmd_events
from ._flows import cmd_flows as cmd_flows
from ._flows import cmd_show as cmd_show
from ._flows import innermost_frame as innermost_frame
from ._format import _iso as _iso
from ._format import _print_json as _print_json
from ._format import _quiet_logs as _quiet_logs
from ._format import _utc as _utc
from ._format import _when as _when
from ._live import _WATCH_REFRESH
from ._live import Bars as Bars
from ._live import cmd_demo as cmd_demo
from ._live import cmd_resume as cmd_resume
from ._live import cmd_watch as cmd_watch
from ._upkeep import cmd_compact as cmd_compact
from ._upkeep import cmd_purge as cmd_purge
from ._upkeep import parse_age as parse_age

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
    from .. import __version__

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


# --------------------------------------------------------------- running a command


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
