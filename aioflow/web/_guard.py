"""What the app lets in: the auth middleware, the reading of request bodies and query
parameters within their limits, and the event stream that frees its place when it ends.

Everything here refuses by raising :class:`_HTTPError`, which the app answers as JSON
``{"error": message}`` with its status.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

_LOG = structlog.get_logger("aioflow.web")

MAX_BODY = 1024 * 1024
"""The default limit on request bodies, in bytes (413 above it)."""
MAX_DEPTH = 64
"""How deep a request body's JSON may nest (422 deeper)."""
MAX_STREAMS = 100
"""The default limit on event streams open at once (503 beyond it)."""
PAGE = 50
"""Flows or jobs in a page when ``limit`` is not given."""
MAX_PAGE = 500
"""The largest ``limit`` a list takes."""

Auth = Callable[[Request], Awaitable[bool]]
"""The auth hook: True lets the request in; False answers 401; raising answers 500."""

_OPEN_METHODS = frozenset({"GET", "HEAD"})
_NO_AUTH = (
    "this route changes things and the app has no auth hook: pass auth= or public=True to"
    " create_app (public=True lets anyone who can reach the app use it)"
)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# Reading requests -----------------------------------------------------------------------


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _nests_within(value: Any, depth: int) -> bool:
    """True when ``value`` (decoded JSON) nests no deeper than ``depth`` (no recursion:
    the check itself must not overflow)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if children and level >= depth:
            return False
        stack.extend((child, level + 1) for child in children)
    return True


def parse_body(body: bytes) -> Any:
    """A request body's JSON value (``{}`` when empty); _HTTPError 422 for anything but
    strict JSON (no NaN) nesting at most :data:`MAX_DEPTH` deep."""
    if not body:
        return {}
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        value = None
    except ValueError:  # UnicodeDecodeError too
        raise _HTTPError(422, "the request body is not JSON") from None
    else:
        if _nests_within(value, MAX_DEPTH):
            return value
    raise _HTTPError(422, f"the request body nests deeper than {MAX_DEPTH} levels")


def _require_json(request: Request) -> None:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise _HTTPError(
            415,
            "send Content-Type: application/json (with a JSON body, or none); a POST "
            "of any other type is refused so that other web pages cannot post here",
        )


def _query_limit(request: Request) -> int:
    text = request.query_params.get("limit")
    if text is None:
        return PAGE
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise _HTTPError(422, f"limit must be a whole number from 1 to {MAX_PAGE}, not {text!r}")
    return limit


def _query_enum(request: Request, name: str, kind: Any) -> Any:
    text = request.query_params.get(name)
    if text is None or text == "":
        return None
    try:
        return kind(text.upper())
    except ValueError:
        known = ", ".join(member.value for member in kind)
        raise _HTTPError(422, f"{name} must be one of {known}, not {text!r}") from None


def _last_event_id(request: Request) -> int:
    """Where an event stream starts: after ``Last-Event-ID`` (sent by a reconnecting
    EventSource), else after ``?after=``, else at the first event."""
    for name, text in (
        ("the Last-Event-ID header", request.headers.get("last-event-id")),
        ("after", request.query_params.get("after")),
    ):
        if text is None or text == "":
            continue
        if not text.isdigit():
            raise _HTTPError(
                422, f"{name} must be an event seq (a whole number >= 0), not {text!r}"
            )
        return int(text)
    return 0


# Authentication -----------------------------------------------------------------------


class _Guard:
    """The one door of the app: finds the route a request is for and asks ``auth``
    (or, without it, lets only GETs in unless ``public``). The exempt route (completing
    a wait, whose token is the credential) and requests no route takes (404, 405) pass
    as they are."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[BaseRoute],
        exempt: BaseRoute,
        auth: Auth | None,
        public: bool,
    ) -> None:
        self.app = app
        self.routes = routes
        self.exempt = exempt
        self.auth = auth
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = await self._refusal(scope, receive)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _refusal(self, scope: Scope, receive: Receive) -> Response | None:
        route = next((r for r in self.routes if r.matches(scope)[0] is Match.FULL), None)
        if route is None or route is self.exempt:
            return None
        if self.auth is None:
            if self.public or scope["method"] in _OPEN_METHODS:
                return None
            return _error(401, _NO_AUTH)
        try:
            allowed = await self.auth(Request(scope, receive))
        except Exception as exc:
            _LOG.error(
                "aioflow.web.auth_failed",
                path=_safe_path(scope.get("path", "")),
                error_type=type(exc).__name__,
                error=str(exc),
            )
            return _error(500, "the auth hook failed (see the server's log)")
        return None if allowed is True else _error(401, "not authorized")


class _Stream(StreamingResponse):
    """An event stream that gives its place back when it ends, however it ends."""

    def __init__(self, body: AsyncIterator[str], release: Callable[[], None]) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _safe_path(path: str) -> str:
    """A request path with a completion token masked (tokens never reach the logs)."""
    head, sep, _ = path.rpartition("/external/")
    return f"{head}{sep}<token>" if sep else path
