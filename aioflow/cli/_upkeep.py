"""The journal's upkeep: ``compact`` folds a flow's older history into a snapshot,
``purge`` removes the flows that ended long enough ago."""

from __future__ import annotations

import argparse
import re

from .._errors import AioflowError
from .._states import FlowStatus
from ..journal import open_journal
from ._common import EXIT_OK, UsageError, _existing_journal
from ._format import _iso, _print_json, _quiet_logs, _utc


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
