"""The ``aioflow conductor`` and ``aioflow jobs
post|list|show|retry|cancel|purge|schedule|schedules|unschedule`` subcommands.

``aioflow.cli`` calls :func:`register` with its argparse subparsers object; each command
sets ``func`` to a coroutine function that takes the parsed namespace and returns an exit
status (``aioflow.cli`` runs it with :func:`anyio.run`). The board is ``--board URL``,
else ``AIOFLOW_BOARD``, else the journal's URL (the board and the journal share one
database so that the journal can fence the writes of a conductor that lost its lease).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from datetime import datetime
from typing import Any

import anyio

from .._engine import Engine
from ._board import Job, JobBoard, JobState
from ._conductor import Conductor

__all__ = ["BOARD_ENV", "register"]

BOARD_ENV = "AIOFLOW_BOARD"


def register(subparsers: Any) -> None:
    """Add ``conductor`` and ``jobs`` (``post``, ``list``, ``show``, ``retry``, ``cancel``,
    ``purge`` and the schedules) to the ``aioflow`` command."""

    def add_urls(p: argparse.ArgumentParser) -> None:
        # SUPPRESS keeps a --journal given before the subcommand.
        p.add_argument(
            "--journal", metavar="URL", default=argparse.SUPPRESS, help="the journal URL"
        )
        p.add_argument(
            "--board",
            metavar="URL",
            help=f"the jobboard URL (default: ${BOARD_ENV}, else the journal's URL)",
        )

    p = subparsers.add_parser(
        "conductor",
        help="claim jobs from a jobboard and run them until interrupted",
        description="Claim jobs from a jobboard and run their flows until SIGINT/SIGTERM, "
        "which gives the held jobs back at once.",
    )
    add_urls(p)
    p.add_argument("--name", help="this conductor's name on the board (default: host:pid)")
    p.add_argument("--lease", type=float, default=30.0, help="lease in seconds (default 30)")
    p.add_argument("--capacity", type=int, default=4, help="jobs run at once (default 4)")
    p.add_argument(
        "--max-attempts", type=int, default=5, help="claims before a job is dead-lettered"
    )
    p.set_defaults(func=cmd_conductor)

    p = subparsers.add_parser("jobs", help="post and list jobs", description="Post and list jobs.")
    jobs = p.add_subparsers(dest="jobs_command", metavar="ACTION")
    jobs.required = True

    q = jobs.add_parser("post", help="post a job", description="Post a job; print its id.")
    add_urls(q)
    q.add_argument("ref", metavar="REF", help="the flow: package.module:factory or a name")
    q.add_argument("--inputs", default="{}", metavar="JSON", help="the inputs, a JSON object")
    q.add_argument("--name", help="a name for people")
    q.add_argument("--priority", type=int, default=0, help="higher is claimed first")
    q.add_argument("--key", help="an idempotency key: a second post returns the first job")
    q.add_argument(
        "--no-check",
        action="store_true",
        help="post a package.module:factory reference without importing it here",
    )
    when = q.add_mutually_exclusive_group()
    when.add_argument("--delay", type=float, metavar="SECONDS", help="not claimed before then")
    when.add_argument(
        "--run-at",
        metavar="ISO8601",
        help="not claimed before then: a time with its offset, like 2026-12-05T03:00:00+00:00",
    )
    q.set_defaults(func=cmd_post)

    def add_json(q: argparse.ArgumentParser) -> None:
        q.add_argument("--json", action="store_true", help="one JSON document (UTC times)")

    q = jobs.add_parser("list", help="list jobs", description="List the board's jobs.")
    add_urls(q)
    q.add_argument(
        "--state", choices=[s.value for s in JobState], type=str.upper, help="only this state"
    )
    add_json(q)
    q.set_defaults(func=cmd_list)

    q = jobs.add_parser(
        "show",
        help="show a job",
        description="Show a job: its flow, inputs, state, owner, attempts and failures.",
    )
    add_urls(q)
    q.add_argument("job_id", metavar="JOB_ID")
    q.add_argument("--traceback", action="store_true", help="full tracebacks of failures")
    add_json(q)
    q.set_defaults(func=cmd_show)

    q = jobs.add_parser(
        "retry",
        help="run a FAILED job again",
        description="Run a FAILED job again: a dead letter (its flow never ended) goes back"
        " to UNCLAIMED and its flow resumes; a job whose flow ended (REVERTED, FAILED) is"
        " posted again as a new job.",
    )
    add_urls(q)
    q.add_argument("job_id", metavar="JOB_ID")
    add_json(q)
    q.set_defaults(func=cmd_retry)

    q = jobs.add_parser(
        "cancel",
        help="cancel a job",
        description="Cancel a job: one whose flow has not started ends FAILED at once; a"
        " running, given back or waiting one has its flow reverted, and its conductor then"
        " ends it FAILED.",
    )
    add_urls(q)
    q.add_argument("job_id", metavar="JOB_ID")
    add_json(q)
    q.set_defaults(func=cmd_cancel)

    q = jobs.add_parser(
        "purge",
        help="remove finished jobs",
        description="Remove the jobs that finished (COMPLETE, FAILED) long enough ago, with"
        " their trace context. Their flows stay in the journal: aioflow purge removes them.",
    )
    add_urls(q)
    q.add_argument(
        "--older-than",
        required=True,
        metavar="AGE",
        help="how long ago they finished, at least: 30d, 12h, 90m or 3600s",
    )
    q.add_argument(
        "--state",
        action="append",
        metavar="STATE",
        help="only jobs in this state (COMPLETE or FAILED; repeat for both)",
    )
    q.add_argument("--dry-run", action="store_true", help="count them, remove nothing")
    add_json(q)
    q.set_defaults(func=cmd_purge)

    q = jobs.add_parser(
        "schedule",
        help="post a job at every tick of a schedule",
        description="Add (or update) a schedule: a job of REF at every tick, once per tick"
        " however many conductors run.",
    )
    add_urls(q)
    q.add_argument("schedule", metavar="NAME", help="the schedule's name")
    q.add_argument("ref", metavar="REF", help="the flow: package.module:factory or a name")
    rule = q.add_mutually_exclusive_group(required=True)
    rule.add_argument("--cron", metavar="EXPR", help='a cron expression, like "0 3 * * *"')
    rule.add_argument("--every", type=float, metavar="SECONDS", help="a fixed interval")
    q.add_argument("--inputs", default="{}", metavar="JSON", help="the inputs, a JSON object")
    q.add_argument("--timezone", default="UTC", help="the cron's timezone (default UTC)")
    q.add_argument(
        "--catchup", choices=("latest", "none"), default="latest", help="missed ticks"
    )
    q.set_defaults(func=cmd_schedule)

    q = jobs.add_parser("schedules", help="list schedules", description="List the schedules.")
    add_urls(q)
    q.set_defaults(func=cmd_schedules)

    q = jobs.add_parser("unschedule", help="remove a schedule", description="Remove a schedule.")
    add_urls(q)
    q.add_argument("schedule", metavar="NAME", help="the schedule's name")
    q.set_defaults(func=cmd_unschedule)


def _urls(args: argparse.Namespace) -> tuple[str, str]:
    from ..cli import journal_url  # the cli module imports this one

    journal = journal_url(args)
    return args.board or os.environ.get(BOARD_ENV) or journal, journal


async def cmd_conductor(args: argparse.Namespace) -> int:
    """Run a conductor until SIGINT or SIGTERM; held jobs are given back on the way out."""
    board_url, journal = _urls(args)
    board = JobBoard.open(board_url)
    conductor = Conductor(
        board,
        Engine(journal),
        name=args.name,
        lease=args.lease,
        capacity=args.capacity,
        max_attempts=args.max_attempts,
    )
    print(
        f"conductor {conductor.name}: board {board_url}, journal {journal}, lease "
        f"{conductor.lease:g}s, capacity {conductor.capacity}",
        flush=True,
    )
    async with board, conductor, anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        await conductor.run()
    print(f"conductor {conductor.name}: stopped", flush=True)
    return 0


async def cmd_post(args: argparse.Namespace) -> int:
    """Post one job and print its id."""
    try:
        inputs = json.loads(args.inputs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--inputs is not JSON: {exc}") from exc
    if not isinstance(inputs, dict):
        raise ValueError(f"--inputs must be a JSON object, not {args.inputs}")
    run_at = None
    if args.run_at is not None:
        try:
            run_at = datetime.fromisoformat(args.run_at)
        except ValueError as exc:
            raise ValueError(f"--run-at is not an ISO 8601 time: {args.run_at}") from exc
        if run_at.tzinfo is None:
            raise ValueError(f"--run-at needs an offset (like +00:00 or Z): {args.run_at}")
    if ":" in args.ref and not args.no_check:
        # A reference that cannot be imported, or inputs that do not fit, would fail only
        # on a conductor: say so now (registry names need the conductor's registry).
        from .._compile import compile_flow
        from .._engine import load_reference

        compile_flow(load_reference(args.ref), inputs)
    async with JobBoard.open(_urls(args)[0]) as board:
        job = await board.post(
            args.ref,
            inputs,
            name=args.name,
            priority=args.priority,
            idempotency_key=args.key,
            delay=args.delay,
            run_at=run_at,
        )
    print(job.id)
    return 0


def _inputs(text: str) -> dict[str, Any]:
    try:
        inputs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--inputs is not JSON: {exc}") from exc
    if not isinstance(inputs, dict):
        raise ValueError(f"--inputs must be a JSON object, not {text}")
    return inputs


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


async def cmd_schedule(args: argparse.Namespace) -> int:
    """Add or update a schedule and say when it next fires."""
    inputs = _inputs(args.inputs)
    async with JobBoard.open(_urls(args)[0]) as board:
        schedule = await board.schedule(
            args.schedule,
            args.ref,
            cron=args.cron,
            every=args.every,
            inputs=inputs,
            timezone=args.timezone,
            catchup=args.catchup,
        )
    print(f"{schedule.name}: next run {_when(schedule.next_run)}")
    return 0


async def cmd_schedules(args: argparse.Namespace) -> int:
    """Print the board's schedules, one per line."""
    async with JobBoard.open(_urls(args)[0]) as board:
        schedules = await board.schedules()
    print(f"{'NAME':20}  {'RULE':20}  {'TZ':16}  {'NEXT RUN':25}  {'LAST TICK':25}  FLOW")
    for s in schedules:
        rule = f"cron {s.cron}" if s.cron is not None else f"every {s.every:g} s"
        print(
            f"{s.name:20}  {rule:20}  {s.timezone:16}  {_when(s.next_run):25}  "
            f"{_when(s.last_tick):25}  {s.flow}"
        )
    return 0


async def cmd_unschedule(args: argparse.Namespace) -> int:
    """Remove a schedule; exit 1 when there was none."""
    async with JobBoard.open(_urls(args)[0]) as board:
        removed = await board.unschedule(args.schedule)
    if not removed:
        print(f"no schedule named {args.schedule!r}", file=sys.stderr)
        return 1
    print(f"{args.schedule}: removed")
    return 0


async def cmd_list(args: argparse.Namespace) -> int:
    """Print the board's jobs, oldest first, one per line (``--json``: one document)."""
    from ..cli import _print_json, _quiet_logs, _when

    state = None if args.state is None else JobState(args.state)
    if args.json:
        _quiet_logs()
    async with JobBoard.open(_urls(args)[0]) as board:
        jobs = await board.jobs(state)
    if args.json:
        _print_json({"jobs": [job_document(job) for job in jobs]})
        return 0
    out = sys.stdout
    print(f"{'JOB':32}  {'STATE':9}  {'ATT':>3}  {'OWNER':20}  {'POSTED (UTC)':25}  FLOW", file=out)
    for job in jobs:
        status = f" ({job.status.value})" if job.status is not None else ""
        print(
            f"{job.id:32}  {job.state.value:9}  {job.attempts:>3}  {(job.owner or '-'):20}  "
            f"{_when(job.created):25}  {job.flow}{status}",
            file=out,
        )
    return 0


def job_document(job: Job) -> dict[str, Any]:
    """A job as ``jobs list --json`` and ``jobs show --json`` write it."""
    from ..cli import _iso

    return {
        "id": job.id,
        "name": job.name,
        "flow": job.flow,
        "inputs": job.inputs,
        "state": job.state.value,
        "status": None if job.status is None else job.status.value,
        "priority": job.priority,
        "idempotency_key": job.idempotency_key,
        "owner": job.owner,
        "generation": job.generation,
        "attempts": job.attempts,
        "available_at": _iso(job.available_at),
        "created": _iso(job.created),
        "updated": _iso(job.updated),
        "failures": {
            key: {"type": f.exc_type, "message": f.message, "traceback": f.traceback}
            for key, f in job.failures.items()
        },
    }


def _print_job(job: Job, *, traceback: bool = False) -> None:
    from ..cli import _when, innermost_frame

    status = f" (its flow {job.status.value})" if job.status is not None else ""
    print(f"job {job.id}" + (f"  {job.name}" if job.name else "") + f"  {job.state.value}{status}")
    print(f"  flow {job.flow}  priority {job.priority}  attempts {job.attempts}")
    owner = job.owner or "none"
    lease = ""
    if job.state is JobState.CLAIMED:
        lease = f"  lease until {_when(job.available_at)} unless renewed"
    elif job.state is JobState.UNCLAIMED:
        lease = f"  claimable from {_when(job.available_at)}"
    print(f"  owner {owner}  generation {job.generation}{lease}")
    print(f"  posted {_when(job.created)}  updated {_when(job.updated)}")
    if job.idempotency_key is not None:
        print(f"  idempotency key {job.idempotency_key}")
    print(f"  inputs {json.dumps(job.inputs, default=str, ensure_ascii=False)}")
    if job.failures:
        print("failures:")
    for key, failure in job.failures.items():
        print(f"  {key}: {failure}")
        if traceback and failure.traceback:
            for line in failure.traceback.rstrip().splitlines():
                print(f"      {line}")
        elif innermost_frame(failure):
            print(f"    {innermost_frame(failure)}")


async def cmd_show(args: argparse.Namespace) -> int:
    """Print one job (``--json``: one document); status 2 for an unknown job."""
    from ..cli import _print_json, _quiet_logs

    if args.json:
        _quiet_logs()
    async with JobBoard.open(_urls(args)[0]) as board:
        job = await board.get(args.job_id)
    if args.json:
        _print_json(job_document(job))
    else:
        _print_job(job, traceback=args.traceback)
    return 0


async def cmd_retry(args: argparse.Namespace) -> int:
    """Run a FAILED job again (see ``JobBoard.retry``); status 1 when the job is not
    FAILED, 2 when it is unknown."""
    from ..cli import _print_json, _quiet_logs

    _quiet_logs()
    async with JobBoard.open(_urls(args)[0]) as board:
        old = await board.get(args.job_id)
        job = await board.retry(args.job_id)
    if args.json:
        _print_json(job_document(job))
    elif job.id == old.id:
        print(f"job {job.id}: UNCLAIMED again; a conductor claims it and resumes its flow")
    else:
        status = "" if old.status is None else f" {old.status.value}"
        print(f"job {old.id}: its flow ended{status}; posted again as job {job.id}")
    return 0


async def cmd_purge(args: argparse.Namespace) -> int:
    """Remove the jobs that finished more than ``--older-than`` ago (``--dry-run``: count
    them only)."""
    from ..cli import UsageError, _iso, _print_json, _quiet_logs, _utc, parse_age

    seconds = parse_age(args.older_than)
    states: list[JobState] | None = None
    if args.state:
        states = []
        for name in args.state:
            try:
                states.append(JobState(name.upper()))
            except ValueError:
                raise UsageError(
                    f"unknown job state {name!r}; purge takes COMPLETE or FAILED"
                ) from None
    _quiet_logs()
    async with JobBoard.open(_urls(args)[0]) as board:
        before = board.clock() - seconds
        count = await board.purge(seconds, states, dry_run=args.dry_run)
    names = [s.value for s in states] if states else ["COMPLETE", "FAILED"]
    if args.json:
        _print_json(
            {"jobs": count, "dry_run": args.dry_run, "before": _iso(before), "states": names}
        )
        return 0
    what = f"{count} {'job' if count == 1 else 'jobs'} ({', '.join(names)}) that finished"
    what += f" before {_utc(before)}"
    if args.dry_run:
        print(f"would remove {what}; nothing removed (--dry-run)")
    else:
        print(f"removed {what}")
    return 0


async def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a job (see ``JobBoard.cancel``); status 1 when it has ended, 2 when it is
    unknown."""
    from ..cli import _print_json, _quiet_logs

    _quiet_logs()
    board_url, journal = _urls(args)
    async with JobBoard.open(board_url) as board:
        # Not entered: a resting flow it can build is reverted before cancel returns.
        job = await board.cancel(args.job_id, engine=Engine(journal))
    if args.json:
        _print_json(job_document(job))
    elif job.state is JobState.FAILED:
        print(f"job {job.id} cancelled: FAILED")
    else:
        print(
            f"job {job.id}: cancel requested; its flow is being reverted, and then its"
            f" conductor ends the job FAILED (it is {job.state.value} now; see  aioflow jobs"
            f" show {job.id})"
        )
    return 0
