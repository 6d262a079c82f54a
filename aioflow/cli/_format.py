"""Output for people and for programs: times, durations, numbers and sizes; details with
nonces and tokens removed; JSON documents; the rich console."""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import sys
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


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


def _console() -> Console:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))
    return console
