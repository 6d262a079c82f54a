"""Schedules: a job posted per tick of a cron expression or a fixed interval.

A schedule is a row of the board (``aioflow_job_schedules``): its flow, inputs, rule and
``next_run``, the next tick due. Conductors fire due schedules (:meth:`JobBoard.fire_due`):
the tick's job is posted with the idempotency key ``schedule:<name>:<tick>``, then
``next_run`` is moved on only if no one moved it meanwhile. However many conductors fire
at once, and whenever one dies between the two steps, each tick posts one job.

Cron expressions are parsed by ``cronsim`` (the ``cron`` extra), never here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime, tzinfo

__all__ = ["CATCHUP", "LATE", "Schedule", "check_schedule", "due", "first_run", "next_tick"]

CATCHUP = ("latest", "none")
"""What a schedule does with ticks missed while no conductor ran: post one job for the
latest of them, or none."""

LATE = 60.0
"""Seconds after which a tick not yet posted counts as missed (see ``catchup``)."""

_MAX_STEPS = 1_000_000
"""The most ticks walked to find the latest due one, when going back (cronsim's
``reverse``) found none that going forwards agrees with."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """One schedule as its board last recorded it."""

    name: str
    flow: str
    cron: str | None = None
    every: float | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    timezone: str = "UTC"
    catchup: str = "latest"
    next_run: float = 0.0
    """When the next tick is due (seconds since the epoch, the board's clock)."""
    last_tick: float | None = None
    """The tick whose job was last posted."""


def _zone(name: object) -> tzinfo:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a schedule's timezone is a name like 'Europe/Berlin', not {name!r}")
    if name == "UTC":  # the default needs no timezone database (Windows has none)
        from datetime import UTC

        return UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r} (an IANA name like 'Europe/Berlin')") from exc


def _cronsim() -> Any:
    try:
        import cronsim
    except ImportError:  # pragma: no cover - the dev extra has it
        raise ImportError(
            "cron schedules need the 'cron' extra: pip install 'aioflow[cron]'"
        ) from None
    return cronsim


def _from(when: float, zone: tzinfo) -> datetime:
    from datetime import datetime

    return datetime.fromtimestamp(when, zone)


def check_schedule(
    name: object,
    flow: object,
    cron: object,
    every: object,
    timezone: object,
    catchup: object,
    now: float,
) -> tuple[str | None, float | None]:
    """Refuse a malformed schedule with a ValueError (TypeError for a wrong type) naming
    what is wrong; return (cron, every in seconds)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a schedule's name is a non-empty string, not {name!r}")
    if not isinstance(flow, str) or not flow:
        raise TypeError(f"a schedule's flow is a reference or registry name, not {flow!r}")
    if (cron is None) == (every is None):
        raise ValueError(f"schedule {name!r}: give cron or every (one of them)")
    zone = _zone(timezone)
    if catchup not in CATCHUP:
        raise ValueError(f"schedule {name!r}: catchup is one of {CATCHUP}, not {catchup!r}")
    if every is not None:
        if hasattr(every, "total_seconds") and not isinstance(every, int | float):
            every = every.total_seconds()
        if isinstance(every, bool) or not isinstance(every, int | float):
            raise TypeError(f"schedule {name!r}: every is seconds or a timedelta, not {every!r}")
        if not (0 < every < math.inf):
            raise ValueError(f"schedule {name!r}: every must be > 0 seconds, not {every!r}")
        return None, float(every)
    if not isinstance(cron, str):
        raise TypeError(f"schedule {name!r}: cron is an expression string, not {cron!r}")
    cronsim = _cronsim()
    try:
        ticks = cronsim.CronSim(cron, _from(now, zone))
        next(ticks)
    except cronsim.CronSimError as exc:
        raise ValueError(f"schedule {name!r}: invalid cron expression {cron!r}: {exc}") from exc
    except StopIteration:
        raise ValueError(f"schedule {name!r}: cron expression {cron!r} never fires") from None
    return cron, None


def next_tick(schedule: Schedule, after: float) -> float:
    """The first tick of ``schedule`` strictly after ``after``."""
    if schedule.every is not None:
        anchor = schedule.next_run
        steps = math.floor((after - anchor) / schedule.every) + 1
        return anchor + steps * schedule.every
    assert schedule.cron is not None
    ticks = _cronsim().CronSim(schedule.cron, _from(after, _zone(schedule.timezone)))
    for tick in ticks:
        when = float(tick.timestamp())
        if when > after:
            return when
    raise ValueError(f"schedule {schedule.name!r}: cron {schedule.cron!r} never fires")


def first_run(cron: str | None, every: float | None, timezone: str, now: float) -> float:
    """When a schedule made at ``now`` first fires: its first cron tick after now, or now
    plus ``every``."""
    if every is not None:
        return now + every
    return next_tick(Schedule("", "", cron=cron, timezone=timezone), now)


def due(schedule: Schedule, now: float) -> tuple[float | None, float]:
    """What a due ``schedule`` does at ``now``: the tick to post a job for (None: none,
    as ``catchup="none"`` says of missed ticks) and the ``next_run`` after it."""
    tick, following = schedule.next_run, next_tick(schedule, schedule.next_run)
    missed = 0
    if schedule.every is not None and following <= now:
        missed = math.floor((now - tick) / schedule.every)
        tick += missed * schedule.every
        following = tick + schedule.every
    elif following <= now:
        latest = _latest_cron_tick(schedule, now)
        if latest is not None and latest > tick:
            tick, following, missed = latest, next_tick(schedule, latest), 1
        while following <= now and missed < _MAX_STEPS:  # cronsim backwards disagreed
            tick, following = following, next_tick(schedule, following)
            missed += 1
    if schedule.catchup == "none" and (missed or now - tick > LATE):
        return None, following
    return tick, following


def _latest_cron_tick(schedule: Schedule, now: float) -> float | None:
    """The last tick of a cron schedule at or before ``now``, found by cronsim going
    backwards (a downtime of months is not walked tick by tick); None unless it is a
    tick going forwards gives too, as it is bar a daylight-saving oddity."""
    assert schedule.cron is not None
    cronsim = _cronsim()
    start = _from(math.floor(now) + 1, _zone(schedule.timezone))
    try:
        when = float(next(cronsim.CronSim(schedule.cron, start, reverse=True)).timestamp())
    except StopIteration:
        return None
    return when if when <= now and next_tick(schedule, when - 1) == when else None


# The column order every SQL backend selects, and :func:`schedule_from_row` reads.
SCHEDULE_COLUMNS = "name, flow, cron, every, inputs, timezone, catchup, next_run, last_tick"


def schedule_from_row(row: Any, decode: Any) -> Schedule:
    name, flow, cron, every, inputs, timezone, catchup, next_run, last_tick = row
    return Schedule(
        name=name,
        flow=flow,
        cron=cron,
        every=None if every is None else float(every),
        inputs=dict(decode(inputs)),
        timezone=timezone,
        catchup=catchup,
        next_run=float(next_run),
        last_tick=None if last_tick is None else float(last_tick),
    )


def tick_name(schedule: str, tick: float) -> str:
    """The name of the job of ``schedule``'s tick: ``nightly@2026-12-05T03:00:00Z``."""
    from datetime import UTC, datetime

    stamp = datetime.fromtimestamp(tick, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{schedule}@{stamp}"
