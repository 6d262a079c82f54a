"""The ASGI app (extra ``web``): start, look at and steer flows and jobs over HTTP.

``create_app(engine, registry, *, board=None, auth=None, public=False)`` gives a Starlette
app that runs flows in the engine's background and speaks JSON (``GET /openapi.json``
describes every route; ``docs/web.md`` is the guide):

- flows: ``GET /flows`` (a page, newest first, with a ``next`` cursor), ``POST /flows``,
  ``GET /flows/{id}`` (status, times, owner, progress with each atom's attempts and
  durations, failures with tracebacks, results once finished, checkpoints, structure),
  ``GET /flows/{id}/events`` (server-sent events that resume after ``Last-Event-ID``);
- actions: ``POST /flows/{id}/cancel``, ``/resume``, ``/revert-to/{checkpoint}``,
  ``/goto/{checkpoint}`` and ``/messages/{topic}``;
- jobs (with ``board=``): ``GET /jobs``, ``GET /jobs/{id}``, ``POST /jobs/{id}/retry``
  and ``/cancel``;
- ``POST /external/{token}``: complete or fail an external wait (the token is the
  credential).

Safe by default: ``auth`` (``async (request) -> bool``) is asked for every route but
``POST /external/{token}``; without it only GET routes answer, unless ``public=True``.
A POST must say ``Content-Type: application/json`` (415 otherwise), so that another web
page cannot post here from a user's browser. Errors are JSON ``{"error": message}``
with a status that says whose fault it is (4xx: the request; 500: the server, logged;
503: the engine is not running or too many event streams are open); never a stack
trace, a completion token, a token's nonce or a flow's inputs.

Inside: ``_api`` holds the route handlers, ``_guard`` what a request must pass (auth,
body and query limits), ``_json`` what a response shows, ``_openapi`` the description,
and ``_engine_internals`` the few private parts of Engine the app still reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import structlog

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute, Route
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("aioflow.web needs Starlette: pip install 'aioflow[web]'") from exc

from .._dashboard import routes as dashboard_routes
from ._api import _Api
from ._engine_internals import _entered
from ._guard import MAX_BODY as MAX_BODY
from ._guard import MAX_DEPTH as MAX_DEPTH
from ._guard import MAX_STREAMS as MAX_STREAMS
from ._guard import Auth as Auth
from ._guard import _error, _Guard, _HTTPError, _safe_path
from ._json import event_json as event_json

if TYPE_CHECKING:
    from .._engine import Engine
    from ..jobs import JobBoard

__all__ = ["MAX_BODY", "MAX_DEPTH", "MAX_STREAMS", "Auth", "create_app", "event_json"]

_LOG = structlog.get_logger("aioflow.web")


def create_app(
    engine: Engine,
    registry: Any = None,
    *,
    board: JobBoard | None = None,
    auth: Auth | None = None,
    public: bool = False,
    allow_references: bool = False,
    max_body: int = MAX_BODY,
    max_streams: int = MAX_STREAMS,
    poll_interval: float = 0.25,
) -> Starlette:
    """An ASGI app serving ``engine``: see the module docstring for the routes.

    ``registry`` names the flows ``POST /flows`` may start (default: the engine's own);
    a flow reference ``"package.module:factory"`` is accepted only with
    ``allow_references=True``, since importing a module named by a client runs its code.
    ``board`` serves the ``/jobs`` routes. ``auth(request)`` is awaited before every
    route but ``POST /external/{token}`` and lets the request in when it returns True;
    without it only GET routes answer, unless ``public=True`` (an app anyone who reaches
    it may steer). The app's lifespan enters the engine (unless it is entered already);
    mounted inside another app, that app's lifespan must enter it (see ``docs/web.md``).
    ``max_body`` limits request bodies (413 above it); ``max_streams`` the event streams
    open at once (503 beyond it); ``poll_interval`` is how often an event stream reads
    the journal while no engine here runs the flow.
    """
    registry = registry if registry is not None else engine.registry
    if registry is not None and engine.registry is None:
        engine.registry = registry  # so the journal records the name and others can wake it
    api = _Api(
        engine,
        registry,
        board,
        allow_references=allow_references,
        max_body=max_body,
        poll_interval=poll_interval,
        max_streams=max_streams,
    )
    external = Route("/external/{token}", api.complete, methods=["POST"])
    routes: list[BaseRoute] = [
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/flows", api.list_flows, methods=["GET"]),
        Route("/flows", api.start_flow, methods=["POST"]),
        Route("/flows/{flow_id}", api.show_flow, methods=["GET"]),
        Route("/flows/{flow_id}/events", api.flow_events, methods=["GET"]),
        Route("/flows/{flow_id}/cancel", api.cancel_flow, methods=["POST"]),
        Route("/flows/{flow_id}/resume", api.resume_flow, methods=["POST"]),
        Route("/flows/{flow_id}/revert-to/{checkpoint}", api.revert_to, methods=["POST"]),
        Route("/flows/{flow_id}/goto/{checkpoint}", api.goto, methods=["POST"]),
        Route("/flows/{flow_id}/messages/{topic}", api.send_message, methods=["POST"]),
        Route("/jobs", api.list_jobs, methods=["GET"]),
        Route("/jobs/{job_id}", api.show_job, methods=["GET"]),
        Route("/jobs/{job_id}/retry", api.retry_job, methods=["POST"]),
        Route("/jobs/{job_id}/cancel", api.cancel_job, methods=["POST"]),
        external,
        *dashboard_routes(),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _HTTPError)
        return _error(exc.status, exc.message)

    async def internal_error(request: Request, exc: Exception) -> Response:
        _LOG.error("aioflow.web.internal_error", path=_safe_path(request.url.path), error=repr(exc))
        return _error(500, "internal error")

    async def routing_error(request: Request, exc: Exception) -> Response:
        # An unknown route (404) or method (405): JSON too, as every other error.
        assert isinstance(exc, HTTPException)
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return _error(exc.status_code, message)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if _entered(engine):
            yield
            return
        async with engine:
            yield

    handlers: Mapping[Any, Any] = {
        _HTTPError: http_error,
        HTTPException: routing_error,
        Exception: internal_error,
    }
    guard = Middleware(_Guard, routes=routes, exempt=external, auth=auth, public=public)
    return Starlette(
        routes=routes,
        middleware=[guard],
        exception_handlers=dict(handlers),
        lifespan=lifespan,
    )
