"""The ASGI app (extra ``web``): start flows, look at them, and complete external waits.

``create_app(engine, registry=...)`` gives a Starlette app that runs flows in the engine's
background and speaks JSON:

- ``POST /flows`` ``{"flow": name, "inputs": {...}}`` -> 202 ``{"flow_id": ...}``;
- ``GET /flows/{flow_id}`` -> status, who runs it (``owner``, ``orphaned``), progress and
  the open waits (never their tokens);
- ``GET /flows/{flow_id}/events`` -> the flow's events as server-sent events, live;
- ``POST /flows/{flow_id}/messages/{topic}`` ``{"message": ..., "idempotency_key": ...}``
  (the key optional, also as an ``Idempotency-Key`` header) -> 202: ``engine.send``;
- ``POST /external/{token}`` ``{"result": ...}`` or ``{"error": "..."}`` -> 200.

Errors are JSON ``{"error": message}`` with 403 (a bad token), 404 (no such flow), 409
(the flow runs in another engine, or has ended), 413 (body too large), 422 (a body or
inputs that do not fit) and 503 (the engine is not running); never a stack trace. See
``docs/web.md``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import structlog

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("aioflow.web needs Starlette: pip install 'aioflow[web]'") from exc

from ._dashboard import routes as dashboard_routes
from ._errors import (
    AioflowError,
    AmbiguousError,
    InvalidFlowError,
    InvalidTokenError,
    NotFoundError,
    SerializationError,
)
from ._events import Event, EventKind
from ._external import wait_fields
from ._replay import replay
from ._states import AtomState, FlowStatus

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["create_app"]

_LOG = structlog.get_logger("aioflow.web")
MAX_BODY = 1024 * 1024
"""The default limit on request bodies, in bytes."""


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _json_value(value: Any) -> Any:
    """``value`` made JSON-able for a response (what JSON cannot hold becomes text)."""
    return json.loads(json.dumps(value, default=str))


def event_json(event: Event) -> dict[str, Any]:
    """The JSON form of an event (as served by ``/flows/{id}/events``)."""
    details = dict(event.details)
    details.pop("nonce", None)
    return {
        "flow_id": event.flow_id,
        "seq": event.seq,
        "time": event.time,
        "kind": event.kind.value,
        "atom": event.atom,
        "state": None if event.state is None else event.state.value,
        "attempt": event.attempt,
        "progress": event.progress,
        "details": _json_value(details),
    }


def create_app(
    engine: Engine,
    registry: Any = None,
    *,
    allow_references: bool = False,
    max_body: int = MAX_BODY,
    poll_interval: float = 0.25,
) -> Starlette:
    """An ASGI app serving ``engine``: see the module docstring for the routes.

    ``registry`` names the flows ``POST /flows`` may start (default: the engine's own);
    a flow reference ``"package.module:factory"`` is accepted only with
    ``allow_references=True``, since importing a module named by a client runs its code.
    The app's lifespan enters the engine (unless it is entered already); mounted inside
    another app, that app's lifespan must enter it (see ``docs/web.md``). ``max_body``
    limits request bodies (413 above it); ``poll_interval`` is how often an event stream
    reads the journal while no engine here runs the flow.
    """
    registry = registry if registry is not None else engine.registry
    if registry is not None and engine.registry is None:
        engine.registry = registry  # so the journal records the name and others can wake it

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            raise _HTTPError(413, f"the request body is larger than {max_body} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                raise _HTTPError(413, f"the request body is larger than {max_body} bytes")
        try:
            return json.loads(body) if body else {}
        except ValueError:
            raise _HTTPError(422, "the request body is not JSON") from None

    def require_engine() -> None:
        if engine._tg is None:
            raise _HTTPError(503, "the engine is not running (the app's lifespan enters it)")

    async def start_flow(request: Request) -> Response:
        require_engine()
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("flow"), str):
            raise _HTTPError(422, 'the body must be {"flow": name, "inputs": {...}}')
        name: str = body["flow"]
        inputs = body.get("inputs", {})
        if not isinstance(inputs, dict):
            raise _HTTPError(422, '"inputs" must be an object of symbol -> value')
        if ":" in name:
            if not allow_references:
                raise _HTTPError(404, f"unknown flow {name!r} (references are not accepted)")
            flow: Any = name
        else:
            if registry is None:
                raise _HTTPError(404, f"unknown flow {name!r}: this app has no registry")
            try:
                entry = registry.get(name)
            except AmbiguousError as exc:
                raise _HTTPError(422, str(exc)) from None
            except LookupError:
                raise _HTTPError(404, f"unknown flow {name!r}") from None
            flow = name if engine.registry is registry else entry.build()
        try:
            handle = await engine.start(flow, inputs)
        except NotFoundError as exc:
            raise _HTTPError(404, str(exc)) from None
        except (InvalidFlowError, SerializationError, TypeError, ValueError) as exc:
            raise _HTTPError(422, str(exc)) from None
        return JSONResponse({"flow_id": handle.flow_id}, status_code=202)

    async def show_flow(request: Request) -> Response:
        require_engine()
        flow_id = request.path_params["flow_id"]
        try:
            progress = await engine.progress(flow_id)
            state = replay(flow_id, await engine.journal.load(flow_id))
            summary = await engine.journal.summary(flow_id)
        except NotFoundError:
            raise _HTTPError(404, f"no flow {flow_id}") from None
        atoms = {}
        for name, atom in progress.atoms.items():
            details = {k: v for k, v in atom.details.items() if k != "nonce"}
            atoms[name] = {"state": atom.state, "fraction": atom.fraction, "details": details}
        waiting = []
        for name, record in state.atoms.items():
            if record.state is AtomState.WAITING:
                _, deadline, info = wait_fields(record.details)
                waiting.append({"atom": name, "deadline": deadline, "info": info})
        return JSONResponse(
            _json_value(
                {
                    "flow_id": flow_id,
                    "status": state.status.value,
                    "owner": summary.owner,
                    "orphaned": summary.orphaned,
                    "progress": {
                        "fraction": progress.fraction,
                        "eta": progress.eta,
                        "atoms": atoms,
                    },
                    "waiting": waiting,
                }
            )
        )

    async def flow_events(request: Request) -> Response:
        require_engine()
        flow_id = request.path_params["flow_id"]
        if flow_id not in engine._live:
            try:
                await engine.journal.load(flow_id)
            except NotFoundError:
                raise _HTTPError(404, f"no flow {flow_id}") from None

        async def stream() -> AsyncIterator[str]:
            try:
                async for event in follow(flow_id):
                    data = json.dumps(event_json(event))
                    yield f"id: {event.seq}\nevent: {event.kind.value}\ndata: {data}\n\n"
            except Exception as exc:  # the stream is open: say so in it, not in a trace
                _LOG.warning("aioflow.web.events_failed", flow_id=flow_id, error=str(exc))
                yield f"event: error\ndata: {json.dumps({'error': 'the event stream failed'})}\n\n"

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def follow(flow_id: str) -> AsyncIterator[Event]:
        """The flow's events from the first until it is final: live (with every progress
        report) while this engine runs it, else read from the journal every
        ``poll_interval`` seconds, so that a wait completed later is followed through."""
        last = 0
        while True:
            if flow_id in engine._live:
                async for event in engine.watch(flow_id):
                    if event.seq > last or event.kind is EventKind.PROGRESS:
                        last = max(last, event.seq)
                        yield event
            final = False
            async for event in engine.journal.events(flow_id, after=last):
                last = event.seq
                final = isinstance(event.state, FlowStatus) and event.state.is_final
                yield event
            if final:
                return
            summary = await engine.journal.summary(flow_id)
            if summary.orphaned:
                return  # its owner died; GET /flows/{id} says so ("orphaned": true)
            await anyio.sleep(poll_interval)

    async def complete(request: Request) -> Response:
        require_engine()
        token = request.path_params["token"]
        body = await read_json(request)
        if not isinstance(body, dict) or len(set(body) & {"result", "error"}) != 1:
            raise _HTTPError(422, 'the body must be {"result": ...} or {"error": "..."}')
        try:
            if "error" in body:
                await engine.fail(token, str(body["error"]))
            else:
                await engine.complete(token, body["result"])
        except InvalidTokenError:
            # Say no more: the caller holds (or guesses) a credential.
            raise _HTTPError(403, "invalid, stale or used token") from None
        except SerializationError as exc:
            raise _HTTPError(422, str(exc)) from None
        except AioflowError as exc:
            raise _HTTPError(409, str(exc)) from None
        return JSONResponse({"ok": True})

    async def send_message(request: Request) -> Response:
        require_engine()
        flow_id, topic = request.path_params["flow_id"], request.path_params["topic"]
        body = await read_json(request)
        if not isinstance(body, dict) or "message" not in body:
            raise _HTTPError(
                422, 'the body must be {"message": ..., "idempotency_key": "..." (optional)}'
            )
        key = body.get("idempotency_key", request.headers.get("idempotency-key"))
        if key is not None and (not isinstance(key, str) or not key):
            raise _HTTPError(422, "idempotency_key must be a non-empty string")
        try:
            await engine.send(flow_id, topic, body["message"], idempotency_key=key)
        except NotFoundError:
            raise _HTTPError(404, f"no flow {flow_id}") from None
        except SerializationError as exc:
            raise _HTTPError(422, str(exc)) from None
        except AioflowError as exc:
            raise _HTTPError(409, str(exc)) from None
        return JSONResponse({"ok": True}, status_code=202)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _HTTPError)
        return _error(exc.status, exc.message)

    async def internal_error(request: Request, exc: Exception) -> Response:
        _LOG.error("aioflow.web.internal_error", path=_safe_path(request), error=repr(exc))
        return _error(500, "internal error")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if engine._tg is not None:
            yield
            return
        async with engine:
            yield

    async def routing_error(request: Request, exc: Exception) -> Response:
        # An unknown route (404) or method (405): JSON too, as every other error.
        assert isinstance(exc, HTTPException)
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return _error(exc.status_code, message)

    handlers: Mapping[Any, Any] = {
        _HTTPError: http_error,
        HTTPException: routing_error,
        Exception: internal_error,
    }
    return Starlette(
        routes=[
            Route("/flows", start_flow, methods=["POST"]),
            Route("/flows/{flow_id}", show_flow, methods=["GET"]),
            Route("/flows/{flow_id}/events", flow_events, methods=["GET"]),
            Route("/flows/{flow_id}/messages/{topic}", send_message, methods=["POST"]),
            Route("/external/{token}", complete, methods=["POST"]),
            *dashboard_routes(),
        ],
        exception_handlers=dict(handlers),
        lifespan=lifespan,
    )


def _safe_path(request: Request) -> str:
    """The request path with a completion token masked (tokens never reach the logs)."""
    path = request.url.path
    head, sep, _ = path.rpartition("/external/")
    return f"{head}{sep}<token>" if sep else path
