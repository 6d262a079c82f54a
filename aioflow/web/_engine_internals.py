"""What the app asks of the engine that :class:`~aioflow.Engine` does not offer publicly
yet: whether it is entered, whether it runs (or is taking) a flow, and its task group for
the runs an action starts. Kept here, in one place, until Engine has public API for them
(``tests/test_web.py`` pins the 503 of an engine not entered, ``tests/test_web_api.py`` the
409 for a flow running here, live event streams and actions run in the background).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ._guard import _HTTPError

if TYPE_CHECKING:
    from .._engine import Engine


def _entered(engine: Engine) -> bool:
    return engine._tg is not None


def _live_here(engine: Engine, flow_id: str) -> bool:
    """True while this engine runs the flow (``engine.watch`` then follows it live)."""
    return flow_id in engine._live


def _runs_here(engine: Engine, flow_id: str) -> bool:
    """True while this engine runs the flow or is taking it."""
    return flow_id in engine._live or flow_id in engine._slots


def _start_soon(engine: Engine, fn: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
    tg = engine._tg
    if tg is None:
        raise _HTTPError(503, "the engine is not running (the app's lifespan enters it)")
    tg.start_soon(fn, name=name)
