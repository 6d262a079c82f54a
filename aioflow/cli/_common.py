"""What every command shares: the journal's URL, :class:`UsageError` and the exit
statuses, loading a registry or any ``module:attr`` reference, and what to tell an
operator about a flow that is orphaned or that the command cannot rebuild."""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..journal import FlowSummary, open_journal
from ._format import _duration, _utc

DEFAULT_JOURNAL = "sqlite:///aioflow.db"
JOURNAL_ENV = "AIOFLOW_JOURNAL"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_ORPHANED = 3

Handler = Callable[[argparse.Namespace], "int | Awaitable[int]"]


class UsageError(Exception):
    """Raised by a handler for a user's mistake; the command prints it and exits 2."""


# --------------------------------------------------------------------- the journal


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
        from ..journal.sqlite import path_from_url

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


def _journal_option(args: argparse.Namespace) -> str:
    url = journal_url(args)
    return "" if url == DEFAULT_JOURNAL else f" --journal {url}"


def _resume_hint(args: argparse.Namespace, flow_id: str) -> str:
    url = journal_url(args)
    journal = "" if url == DEFAULT_JOURNAL else f" --journal {url}"
    return f"aioflow resume {flow_id}{journal}"


# ---------------------------------------------------------- references and options


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


def _registry(args: argparse.Namespace) -> Any:
    """The ``--registry MODULE:ATTR`` given (a Registry, or a factory of one), or None."""
    from .._registry import Registry

    ref = getattr(args, "registry", None)
    if ref is None:
        return None
    registry = _load_attr(ref)
    if not isinstance(registry, Registry) and callable(registry):
        registry = registry()
    if not isinstance(registry, Registry):
        raise UsageError(f"{ref!r} is a {type(registry).__name__}, not a Registry")
    return registry


def _renames(args: argparse.Namespace) -> dict[str, str]:
    """``--rename OLD=NEW`` options as a mapping (a bad one is a usage error)."""
    renames: dict[str, str] = {}
    for text in getattr(args, "rename", None) or ():
        old, sep, new = text.partition("=")
        if not sep or not old or not new:
            raise UsageError(f"--rename takes OLD=NEW (two atom names), not {text!r}")
        renames[old] = new
    return renames


# ----------------------------------------------------------- advice to an operator


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
