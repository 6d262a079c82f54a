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
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import structlog

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import BaseRoute, Match, Route
    from starlette.types import ASGIApp, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("aioflow.web needs Starlette: pip install 'aioflow[web]'") from exc

from ._compile import ExecGraph, compile_flow, describe_differences
from ._dashboard import routes as dashboard_routes
from ._engine import load_reference
from ._errors import (
    AioflowError,
    AmbiguousError,
    FlowFailedError,
    FlowMismatchError,
    InvalidFlowError,
    InvalidTokenError,
    MissingInputsError,
    NotFoundError,
    SerializationError,
)
from ._events import Event, EventKind
from ._external import wait_fields
from ._failure import CANCEL, Failure
from ._flow import Flow
from ._outcome import Outcome
from ._progress import FlowProgress
from ._replay import FlowState, atom_names, published, replay
from ._states import AtomState, FlowStatus
from .journal import FlowSummary
from .journal._base import ACTIVE

if TYPE_CHECKING:
    from ._engine import Engine
    from .jobs import Job, JobBoard

__all__ = ["MAX_BODY", "MAX_DEPTH", "MAX_STREAMS", "Auth", "create_app", "event_json"]

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


def _json_value(value: Any) -> Any:
    """``value`` made JSON-able for a response: what JSON cannot hold becomes text, and
    a NaN or infinity (which no browser parses) becomes null."""
    return json.loads(json.dumps(value, default=str), parse_constant=lambda _: None)


def iso(seconds: float | None) -> str | None:
    """A time in seconds since the epoch as ISO 8601 text in UTC (None stays None)."""
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")


# What the app shows ---------------------------------------------------------------------


def _public_details(event: Event) -> dict[str, Any]:
    """An event's details without what only the engine may see: a wait's token nonce, a
    flow's inputs (in its first event, and in a snapshot)."""
    details = {k: v for k, v in event.details.items() if k not in ("nonce", "token")}
    if event.kind is EventKind.FLOW:
        details.pop("inputs", None)
    elif event.kind is EventKind.SNAPSHOT and isinstance(details.get("state"), Mapping):
        body = {k: v for k, v in details["state"].items() if k != "inputs"}
        atoms = body.get("atoms")
        if isinstance(atoms, Mapping):
            body["atoms"] = {name: _without_nonce(saved) for name, saved in atoms.items()}
        details["state"] = body
    return details


def _without_nonce(saved: Any) -> Any:
    if not isinstance(saved, Mapping) or not isinstance(saved.get("details"), Mapping):
        return saved
    inner = {k: v for k, v in saved["details"].items() if k not in ("nonce", "token")}
    return {**saved, "details": inner}


def event_json(event: Event) -> dict[str, Any]:
    """The JSON form of an event, as ``/flows/{id}/events`` sends it (no inputs, no
    nonce)."""
    return {
        "flow_id": event.flow_id,
        "seq": event.seq,
        "time": event.time,
        "kind": event.kind.value,
        "atom": event.atom,
        "state": None if event.state is None else event.state.value,
        "attempt": event.attempt,
        "progress": event.progress,
        "details": _json_value(_public_details(event)),
    }


def summary_json(summary: FlowSummary) -> dict[str, Any]:
    """One flow of ``GET /flows``."""
    return {
        "flow_id": summary.flow_id,
        "name": summary.name,
        "status": summary.status.value,
        "created": iso(summary.created),
        "updated": iso(summary.updated),
        "owner": summary.owner,
        "orphaned": summary.orphaned,
    }


def failure_json(failure: Failure) -> dict[str, Any]:
    return {"type": failure.exc_type, "message": failure.message, "traceback": failure.traceback}


def job_json(job: Job, *, inputs: bool = False) -> dict[str, Any]:
    """A job as ``GET /jobs`` lists it; with ``inputs``, as ``GET /jobs/{id}`` shows it."""
    shown: dict[str, Any] = {
        "id": job.id,
        "name": job.name,
        "flow": job.flow,
        "state": job.state.value,
        "priority": job.priority,
        "owner": job.owner,
        "attempts": job.attempts,
        "created": iso(job.created),
        "updated": iso(job.updated),
        "available_at": iso(job.available_at),
        "status": None if job.status is None else job.status.value,
        "failures": {key: failure_json(f) for key, f in job.failures.items()},
    }
    if inputs:
        shown["inputs"] = job.inputs
    return _json_value(shown)  # type: ignore[no-any-return]


def _failure_history(
    state: FlowState, events: Sequence[Event]
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """(failures, attempts): the failure each atom holds now with its attempt (and a
    cancelled flow's under ``"<cancel>"``), and every failed attempt the journal still
    has (a compaction folds older ones away), oldest first."""
    attempts: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        found = _failure_in(event)
        if found is not None:
            key, failure = found
            attempts.setdefault(key, []).append(
                {
                    "attempt": event.attempt if event.atom is not None else None,
                    "state": None if event.state is None else event.state.value,
                    "time": iso(event.time),
                    **failure_json(failure),
                }
            )
    failures: dict[str, Any] = {}
    held: list[tuple[str, Failure, int | None, str]] = [
        (name, r.failure, r.attempt, r.state.value)
        for name, r in state.atoms.items()
        if r.failure is not None
    ]
    if state.cancel is not None:
        held.append((CANCEL, state.cancel, None, FlowStatus.REVERTING.value))
    for key, failure, attempt, where in held:
        failures[key] = {**failure_json(failure), "attempt": attempt}
        seen = attempts.setdefault(key, [])
        if not any(a["attempt"] == attempt for a in seen):  # its event was compacted
            seen.append({"attempt": attempt, "state": where, "time": None, **failure_json(failure)})
    return failures, attempts


def _failure_in(event: Event) -> tuple[str, Failure] | None:
    """The failure an event records, with its key: an atom's failed attempt (or
    revert), or the cancel of the whole flow."""
    if event.kind is EventKind.ATOM and event.atom is not None:
        data, key = event.details.get("failure"), event.atom
    elif event.kind is EventKind.FLOW:
        data, key = event.details.get("cancel"), CANCEL
    else:
        return None
    if not isinstance(data, Mapping):
        return None
    return key, Failure.from_dict(data)


def flow_json(
    state: FlowState,
    events: Sequence[Event],
    summary: FlowSummary,
    progress: FlowProgress,
) -> dict[str, Any]:
    """What ``GET /flows/{id}`` shows of a flow (never its inputs, a token or a nonce)."""
    atoms = {}
    for name, atom in progress.atoms.items():
        record = state.atoms.get(name)
        started = None if record is None else record.started
        ended = None if record is None else record.finished
        if started is not None and ended is not None and ended < started:
            ended = None  # the end of an earlier attempt: this one runs
        atoms[name] = {
            "state": atom.state,
            "fraction": atom.fraction,
            "eta": atom.eta,
            "details": {k: v for k, v in atom.details.items() if k not in ("nonce", "token")},
            "attempt": 0 if record is None else record.attempt,
            "started": iso(started),
            "ended": iso(ended),
            "duration": None if started is None or ended is None else ended - started,
        }
    waiting = []
    for name, record in state.atoms.items():
        if record.state is AtomState.WAITING:
            _, deadline, info = wait_fields(record.details)
            waiting.append({"atom": name, "deadline": deadline, "info": info})
    failures, attempts = _failure_history(state, events)
    checkpoints = [name for name, kind in atom_names(state.structure) if kind == "checkpoint"]
    shown = {
        "flow_id": state.flow_id,
        "name": summary.name or state.name,
        "status": state.status.value,
        "created": iso(summary.created),
        "updated": iso(summary.updated),
        "owner": summary.owner,
        "orphaned": summary.orphaned,
        "progress": {"fraction": progress.fraction, "eta": progress.eta, "atoms": atoms},
        "waiting": waiting,
        "results": published(state) if state.status.is_final else None,
        "failures": failures,
        "attempts": attempts,
        "checkpoints": checkpoints,
        "checkpoint": state.checkpoint,
        "structure": state.structure,
    }
    return _json_value(shown)  # type: ignore[no-any-return]


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


# What the app asks of the engine that Engine does not offer publicly yet: whether it is
# entered, whether it runs (or is taking) a flow, and its task group for the runs an
# action starts. Kept here, in one place, until Engine has public API for them.


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


# The routes ------------------------------------------------------------------------------


class _Api:
    """The JSON routes of one app: each handler answers, or raises _HTTPError."""

    def __init__(
        self,
        engine: Engine,
        registry: Any,
        board: JobBoard | None,
        *,
        allow_references: bool,
        max_body: int,
        poll_interval: float,
        max_streams: int,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.board = board
        self.allow_references = allow_references
        self.max_body = max_body
        self.poll_interval = poll_interval
        self.max_streams = max_streams
        self.streams = 0

    # Requests ----------------------------------------------------------------------

    async def read_json(self, request: Request) -> Any:
        """The body of a JSON POST: 415 unless it says so, 413 above ``max_body``, 422
        unless strict JSON of bounded depth; ``{}`` when empty."""
        _require_json(request)
        too_large = f"the request body is larger than {self.max_body} bytes"
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise _HTTPError(413, too_large)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body:
                raise _HTTPError(413, too_large)
        return parse_body(bytes(body))

    def require_engine(self) -> None:
        if not _entered(self.engine):
            raise _HTTPError(503, "the engine is not running (the app's lifespan enters it)")

    def require_board(self) -> JobBoard:
        if self.board is None:
            raise _HTTPError(404, "this app has no job board (create_app(..., board=...))")
        return self.board

    async def summary(self, flow_id: str) -> FlowSummary:
        try:
            return await self.engine.journal.summary(flow_id)
        except NotFoundError:
            raise _HTTPError(404, f"no flow {flow_id}") from None

    # Flows ----------------------------------------------------------------------------

    async def list_flows(self, request: Request) -> Response:
        self.require_engine()
        status = _query_enum(request, "status", FlowStatus)
        name = request.query_params.get("name") or None
        limit = _query_limit(request)
        try:
            found, cursor = await self.engine.journal.list_flows(
                status=status, name=name, limit=limit, before=request.query_params.get("before")
            )
        except ValueError as exc:
            raise _HTTPError(422, f"before: {exc}") from None
        return JSONResponse({"flows": [summary_json(s) for s in found], "next": cursor})

    async def start_flow(self, request: Request) -> Response:
        self.require_engine()
        body = await self.read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("flow"), str):
            raise _HTTPError(422, 'the body must be {"flow": name, "inputs": {...}}')
        name: str = body["flow"]
        inputs = body.get("inputs", {})
        if not isinstance(inputs, dict):
            raise _HTTPError(422, '"inputs" must be an object of symbol -> value')
        engine, registry = self.engine, self.registry
        if ":" in name:
            if not self.allow_references:
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
            if engine.registry is registry:
                flow = name  # so the journal records the name, and others can resume it
            else:
                try:
                    flow = entry.build()
                except InvalidFlowError as exc:
                    raise _cannot_compile(name, exc) from None
        try:
            handle = await engine.start(flow, inputs)
        except NotFoundError as exc:
            raise _HTTPError(404, str(exc)) from None
        except MissingInputsError as exc:
            raise _HTTPError(422, str(exc)) from None
        except InvalidFlowError as exc:
            raise _cannot_compile(name, exc) from None
        except SerializationError as exc:
            raise _HTTPError(422, str(exc)) from None
        return JSONResponse({"flow_id": handle.flow_id}, status_code=202)

    async def show_flow(self, request: Request) -> Response:
        self.require_engine()
        flow_id = request.path_params["flow_id"]
        journal = self.engine.journal
        try:
            progress = await self.engine.progress(flow_id)
            events = await journal.load(flow_id)
            summary = await journal.summary(flow_id)
        except NotFoundError:
            raise _HTTPError(404, f"no flow {flow_id}") from None
        state = replay(flow_id, events)
        return JSONResponse(flow_json(state, events, summary, progress))

    async def flow_events(self, request: Request) -> Response:
        self.require_engine()
        flow_id = request.path_params["flow_id"]
        after = _last_event_id(request)
        if not _runs_here(self.engine, flow_id):
            await self.summary(flow_id)  # 404 for an unknown flow
        if self.streams >= self.max_streams:
            raise _HTTPError(
                503, f"too many event streams are open (max_streams={self.max_streams})"
            )
        self.streams += 1

        def release() -> None:
            self.streams -= 1

        return _Stream(self.stream(flow_id, after), release)

    async def stream(self, flow_id: str, after: int) -> AsyncIterator[str]:
        try:
            async for event in self.follow(flow_id, after):
                data = json.dumps(event_json(event))
                yield f"id: {event.seq}\nevent: {event.kind.value}\ndata: {data}\n\n"
            if (await self.engine.journal.summary(flow_id)).status.is_final:
                # Said only of a final flow: an orphan's client reconnects, and sees it
                # move on once it is taken over.
                yield "event: end\ndata: {}\n\n"
        except Exception as exc:  # the stream is open: say so in it, not in a trace
            _LOG.warning("aioflow.web.events_failed", flow_id=flow_id, error=str(exc))
            yield f"event: error\ndata: {json.dumps({'error': 'the event stream failed'})}\n\n"

    async def follow(self, flow_id: str, after: int) -> AsyncIterator[Event]:
        """The flow's events after seq ``after`` until it is final: live (with every
        progress report) while this engine runs it, else read from the journal every
        ``poll_interval`` seconds, so that a wait completed later is followed through."""
        engine, last = self.engine, after
        while True:
            if _live_here(engine, flow_id):
                async for event in engine.watch(flow_id):
                    # A progress report not yet journaled carries the last seq.
                    if event.seq > last or (event.kind is EventKind.PROGRESS and event.seq >= last):
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
            if summary.status.is_final and summary.last_seq <= last:
                return  # it ended before the seq the client resumes after
            if summary.orphaned:
                return  # its owner died; GET /flows/{id} says so ("orphaned": true)
            await anyio.sleep(self.poll_interval)

    # Actions --------------------------------------------------------------------------

    async def cancel_flow(self, request: Request) -> Response:
        self.require_engine()
        await self.read_json(request)
        flow_id = request.path_params["flow_id"]
        try:
            await self.engine.cancel(flow_id)
        except NotFoundError:
            raise _HTTPError(404, f"no flow {flow_id}") from None
        except AioflowError as exc:
            raise _HTTPError(409, str(exc)) from None
        return JSONResponse({"ok": True}, status_code=202)

    async def resume_flow(self, request: Request) -> Response:
        self.require_engine()
        await self.read_json(request)
        flow_id = request.path_params["flow_id"]
        await self.movable(flow_id, "resume")
        engine = self.engine
        self.in_background("resume", flow_id, lambda: engine.resume(flow_id))
        return JSONResponse({"ok": True}, status_code=202)

    async def revert_to(self, request: Request) -> Response:
        return await self.move(request, "revert_to")

    async def goto(self, request: Request) -> Response:
        return await self.move(request, "goto")

    async def move(self, request: Request, what: str) -> Response:
        self.require_engine()
        await self.read_json(request)
        flow_id, checkpoint = request.path_params["flow_id"], request.path_params["checkpoint"]
        state, graph = await self.movable(flow_id, what)
        if state.status is not FlowStatus.SUSPENDED:
            raise _HTTPError(
                409,
                f"flow {flow_id} is {state.status.value}; {what} moves only a SUSPENDED flow"
                " (stop it at a checkpoint, or let it suspend, first)",
            )
        if checkpoint not in graph.checkpoints:
            known = ", ".join(map(repr, graph.checkpoints)) or "none"
            raise _HTTPError(
                404, f"flow {flow_id} has no checkpoint {checkpoint!r} (it has: {known})"
            )
        if state.revert_to is not None:
            raise _HTTPError(
                409, f"flow {flow_id} was interrupted while reverting; resume it to finish that"
            )
        record = state.atoms.get(checkpoint)
        reached = record is not None and record.state is AtomState.SUCCESS
        if what == "revert_to" and not reached:
            raise _HTTPError(
                409,
                f"flow {flow_id} has not reached checkpoint {checkpoint!r}, so it cannot be"
                " reverted to it (goto moves a flow forward to a checkpoint)",
            )
        engine = self.engine
        call = engine.revert_to if what == "revert_to" else engine.goto
        self.in_background(what, flow_id, lambda: call(flow_id, checkpoint))
        return JSONResponse({"ok": True}, status_code=202)

    async def movable(self, flow_id: str, what: str) -> tuple[FlowState, ExecGraph]:
        """The state and compiled definition of a flow this app may resume or move now;
        _HTTPError saying why not (404 unknown, 409 busy, ended or not buildable here,
        500 a definition that does not compile)."""
        try:
            state = replay(flow_id, await self.engine.journal.load(flow_id))
        except NotFoundError:
            raise _HTTPError(404, f"no flow {flow_id}") from None
        if state.status.is_final:
            raise _HTTPError(
                409, f"flow {flow_id} has ended ({state.status.value}): there is nothing to {what}"
            )
        if _runs_here(self.engine, flow_id):
            raise _HTTPError(409, f"flow {flow_id} is running in this engine already")
        summary = await self.summary(flow_id)
        if summary.status in ACTIVE and not summary.orphaned:
            raise _HTTPError(
                409,
                f"flow {flow_id} is being run by engine {summary.owner}; {what} it once it"
                " rests, or cancel it",
            )
        graph = self.build(state)
        if graph.fingerprint != state.fingerprint:
            mismatch = FlowMismatchError(
                flow_id, describe_differences(state.structure, graph.structure)
            )
            raise _HTTPError(409, str(mismatch))
        return state, graph

    def build(self, state: FlowState) -> ExecGraph:
        """Compile the definition the journal names for ``state``'s flow, as a resume
        would (by reference, or by name in the engine's registry)."""
        flow_id, ref = state.flow_id, state.ref
        if ref is None:
            raise _HTTPError(
                409,
                f"flow {flow_id} was started from a flow object, not a registry name or a"
                " reference, so this app cannot build it: resume or move it from the program"
                " that has the object (engine.resume(flow_id, flow)), or start flows by name",
            )
        registry = self.engine.registry
        try:
            if ":" in ref:
                flow: Any = load_reference(ref)
            elif registry is None or ref not in registry:
                raise _HTTPError(
                    409,
                    f"flow {flow_id} was started from registry name {ref!r}, which this app's"
                    " engine does not know (give the engine that registry)",
                )
            else:
                flow = registry.get(ref).build()
                if not isinstance(flow, Flow):
                    raise _HTTPError(409, f"registry entry {ref!r} is not a flow")
            return compile_flow(flow, state.inputs.keys())
        except NotFoundError as exc:
            raise _HTTPError(409, f"cannot build flow {flow_id}: {exc}") from None
        except InvalidFlowError as exc:
            raise _cannot_compile(ref, exc) from None

    def in_background(
        self, what: str, flow_id: str, call: Callable[[], Awaitable[Outcome]]
    ) -> None:
        """Run an engine call in the engine's background; its end is logged (what the
        flow came to is its status: ``GET /flows/{id}``)."""

        async def run() -> None:
            try:
                outcome = await call()
            except FlowFailedError as exc:
                outcome = exc.outcome
            except Exception as exc:
                _LOG.warning(
                    "aioflow.web.action_failed",
                    action=what,
                    flow_id=flow_id,
                    error_type=type(exc).__name__,
                    error=str(exc),
                )
                return
            _LOG.info(
                "aioflow.web.action_done",
                action=what,
                flow_id=flow_id,
                status=outcome.status.value,
            )

        _start_soon(self.engine, run, name=f"{what} flow {flow_id}")

    async def send_message(self, request: Request) -> Response:
        self.require_engine()
        flow_id, topic = request.path_params["flow_id"], request.path_params["topic"]
        body = await self.read_json(request)
        if not isinstance(body, dict) or "message" not in body:
            raise _HTTPError(
                422, 'the body must be {"message": ..., "idempotency_key": "..." (optional)}'
            )
        key = body.get("idempotency_key", request.headers.get("idempotency-key"))
        if key is not None and (not isinstance(key, str) or not key):
            raise _HTTPError(422, "idempotency_key must be a non-empty string")
        try:
            await self.engine.send(flow_id, topic, body["message"], idempotency_key=key)
        except NotFoundError:
            raise _HTTPError(404, f"no flow {flow_id}") from None
        except SerializationError as exc:
            raise _HTTPError(422, str(exc)) from None
        except AioflowError as exc:
            raise _HTTPError(409, str(exc)) from None
        return JSONResponse({"ok": True}, status_code=202)

    async def complete(self, request: Request) -> Response:
        self.require_engine()
        token = request.path_params["token"]
        body = await self.read_json(request)
        if not isinstance(body, dict) or len(set(body) & {"result", "error"}) != 1:
            raise _HTTPError(422, 'the body must be {"result": ...} or {"error": "..."}')
        try:
            if "error" in body:
                await self.engine.fail(token, str(body["error"]))
            else:
                await self.engine.complete(token, body["result"])
        except InvalidTokenError:
            # Say no more: the caller holds (or guesses) a credential.
            raise _HTTPError(403, "invalid, stale or used token") from None
        except SerializationError as exc:
            raise _HTTPError(422, str(exc)) from None
        except AioflowError as exc:
            raise _HTTPError(409, str(exc)) from None
        return JSONResponse({"ok": True})

    # Jobs -----------------------------------------------------------------------------

    async def list_jobs(self, request: Request) -> Response:
        from .jobs import JobState

        board = self.require_board()
        state = _query_enum(request, "state", JobState)
        limit = _query_limit(request)
        jobs = sorted(await board.jobs(state), key=lambda j: (j.created, j.id), reverse=True)
        return JSONResponse({"jobs": [job_json(job) for job in jobs[:limit]]})

    async def show_job(self, request: Request) -> Response:
        board = self.require_board()
        job_id = request.path_params["job_id"]
        try:
            job = await board.get(job_id)
        except NotFoundError:
            raise _HTTPError(404, f"no job {job_id}") from None
        return JSONResponse(job_json(job, inputs=True))

    async def retry_job(self, request: Request) -> Response:
        board = self.require_board()
        await self.read_json(request)
        job_id = request.path_params["job_id"]
        try:
            job = await board.retry(job_id)
        except NotFoundError:
            raise _HTTPError(404, f"no job {job_id}") from None
        except AioflowError as exc:
            raise _HTTPError(409, str(exc)) from None
        return JSONResponse({"ok": True, "job": job_json(job)}, status_code=202)

    async def cancel_job(self, request: Request) -> Response:
        board = self.require_board()
        await self.read_json(request)
        job_id = request.path_params["job_id"]
        try:
            job = await board.cancel(job_id, engine=self.engine)
        except NotFoundError:
            raise _HTTPError(404, f"no job {job_id}") from None
        except AioflowError as exc:
            raise _HTTPError(409, str(exc)) from None
        return JSONResponse({"ok": True, "job": job_json(job)}, status_code=202)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(jobs=self.board is not None))


def _cannot_compile(name: str, exc: InvalidFlowError) -> _HTTPError:
    """A flow definition of the server's that does not compile: the server's bug (500,
    logged), not the client's."""
    _LOG.error("aioflow.web.flow_does_not_compile", flow=name, error=str(exc))
    return _HTTPError(500, f"the flow {name!r} cannot be compiled: {exc}")


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


def _safe_path(path: str) -> str:
    """A request path with a completion token masked (tokens never reach the logs)."""
    head, sep, _ = path.rpartition("/external/")
    return f"{head}{sep}<token>" if sep else path


# OpenAPI --------------------------------------------------------------------------------


def _op(
    summary: str,
    answers: Mapping[int, str],
    *,
    params: Sequence[tuple[str, str, str]] = (),
    body: str | None = None,
    stream: bool = False,
) -> dict[str, Any]:
    """One operation: ``params`` are (name, where, description); ``answers`` status ->
    what it means (2xx JSON unless ``stream``; the others ``{"error": ...}``)."""
    responses: dict[str, Any] = {}
    for status, text in answers.items():
        if status < 300:
            kind = "text/event-stream" if stream else "application/json"
            responses[str(status)] = {"description": text, "content": {kind: {}}}
        else:
            error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            responses[str(status)] = {"description": text, "content": error}
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [
            {
                "name": name,
                "in": where,
                "required": where == "path",
                "description": text,
                "schema": {"type": "string"},
            }
            for name, where, text in params
        ],
        "responses": responses,
    }
    if body is not None:
        op["requestBody"] = {
            "required": False,
            "description": body,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    return op


_FLOW_ID = ("flow_id", "path", "the flow's id")
_JOB_ID = ("job_id", "path", "the job's id (also its flow's id)")
_CHECKPOINT = ("checkpoint", "path", "a checkpoint's name")
_MOVE = {
    202: "started in the engine's background",
    404: "no such flow or checkpoint",
    409: "the flow is not SUSPENDED, runs elsewhere, or cannot be built here",
    500: "the flow's definition does not compile",
}
_ACTION = {401: "not authorized (or no auth hook)", 415: "not Content-Type: application/json"}


def openapi_document(*, jobs: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 description ``GET /openapi.json`` serves (the ``/jobs`` routes
    only with a board)."""
    paths: dict[str, Any] = {
        "/flows": {
            "get": _op(
                "A page of flows, newest first: {flows: [...], next: cursor or null}",
                {200: "the page", 422: "a bad status, limit or before"},
                params=[
                    ("status", "query", "only flows in this status (RUNNING, SUCCESS, ...)"),
                    ("name", "query", "only flows of this name"),
                    ("limit", "query", f"flows in the page, 1 to {MAX_PAGE} (default {PAGE})"),
                    ("before", "query", "the next cursor of the previous page"),
                ],
            ),
            "post": _op(
                "Start a flow by registry name: {flow_id}",
                {
                    202: "started",
                    404: "unknown flow",
                    422: "a bad body or inputs",
                    500: "the flow's definition does not compile",
                    **_ACTION,
                },
                body='{"flow": name, "inputs": {...}}',
            ),
        },
        "/flows/{flow_id}": {
            "get": _op(
                "A flow: status, times, owner, progress, failures, attempts, results,"
                " checkpoints, structure, open waits",
                {200: "the flow", 404: "no such flow"},
                params=[_FLOW_ID],
            )
        },
        "/flows/{flow_id}/events": {
            "get": _op(
                "The flow's events as server-sent events until it is final",
                {
                    200: "the stream",
                    404: "no such flow",
                    422: "a bad Last-Event-ID or after",
                    503: "too many streams are open",
                },
                params=[
                    _FLOW_ID,
                    ("after", "query", "start after this event seq"),
                    ("Last-Event-ID", "header", "start after this event seq (EventSource)"),
                ],
                stream=True,
            )
        },
        "/flows/{flow_id}/cancel": {
            "post": _op(
                "Cancel the flow wherever it runs: it reverts and ends REVERTED",
                {
                    202: "the cancellation is recorded",
                    404: "no such flow",
                    409: "the flow has ended",
                    **_ACTION,
                },
                params=[_FLOW_ID],
            )
        },
        "/flows/{flow_id}/resume": {
            "post": _op(
                "Resume the flow in the engine's background",
                {**_MOVE, **_ACTION},
                params=[_FLOW_ID],
            )
        },
        "/flows/{flow_id}/revert-to/{checkpoint}": {
            "post": _op(
                "Revert a SUSPENDED flow to a checkpoint it reached",
                {**_MOVE, **_ACTION},
                params=[_FLOW_ID, _CHECKPOINT],
            )
        },
        "/flows/{flow_id}/goto/{checkpoint}": {
            "post": _op(
                "Move a SUSPENDED flow to a checkpoint, back or forward",
                {**_MOVE, **_ACTION},
                params=[_FLOW_ID, _CHECKPOINT],
            )
        },
        "/flows/{flow_id}/messages/{topic}": {
            "post": _op(
                "Send a message to the flow's mailbox on a topic",
                {
                    202: "sent",
                    404: "no such flow",
                    409: "the flow has ended",
                    422: "a bad body",
                    **_ACTION,
                },
                params=[
                    _FLOW_ID,
                    ("topic", "path", "the topic"),
                    ("Idempotency-Key", "header", "a second send with it is ignored"),
                ],
                body='{"message": ..., "idempotency_key": "..." (optional)}',
            )
        },
        "/external/{token}": {
            "post": _op(
                "Complete or fail an external wait (the token is the credential; no auth)",
                {
                    200: "done",
                    403: "a bad, stale or used token",
                    409: "the flow runs elsewhere",
                    415: "not Content-Type: application/json",
                    422: "a bad body",
                },
                params=[("token", "path", "the completion token")],
                body='{"result": ...} or {"error": "..."}',
            )
        },
    }
    if jobs:
        job_errors = {404: "no such job", 409: "the job cannot be changed so", **_ACTION}
        paths["/jobs"] = {
            "get": _op(
                "The board's jobs, newest first: {jobs: [...]} (without their inputs)",
                {200: "the jobs", 422: "a bad state or limit"},
                params=[
                    ("state", "query", "only jobs in this state (UNCLAIMED, FAILED, ...)"),
                    ("limit", "query", f"at most this many, 1 to {MAX_PAGE} (default {PAGE})"),
                ],
            )
        }
        paths["/jobs/{job_id}"] = {
            "get": _op(
                "A job, with its inputs", {200: "the job", 404: "no such job"}, params=[_JOB_ID]
            )
        }
        paths["/jobs/{job_id}/retry"] = {
            "post": _op(
                "Run a failed job again: {ok, job}",
                {202: "posted again", **job_errors},
                params=[_JOB_ID],
            )
        }
        paths["/jobs/{job_id}/cancel"] = {
            "post": _op(
                "Cancel a job and its flow: {ok, job}",
                {202: "cancelled", **job_errors},
                params=[_JOB_ID],
            )
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aioflow",
            "version": "1",
            "description": "Flows and jobs of an aioflow engine (see docs/web.md). Every route"
            " but POST /external/{token} asks the app's auth hook; without one, only GETs"
            ' answer unless the app is public. Errors are JSON {"error": message}.',
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                }
            }
        },
    }
