"""The JSON routes of the app: flows, the actions on them, external waits and jobs.

Each handler answers, or raises :class:`._guard._HTTPError`, which the app turns into
JSON ``{"error": message}``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .._compile import ExecGraph, compile_flow, describe_differences
from .._engine import load_reference
from .._errors import (
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
from .._events import Event, EventKind
from .._flow import Flow
from .._outcome import Outcome
from .._replay import FlowState, replay
from .._states import AtomState, FlowStatus
from ..journal import FlowSummary
from ..journal._base import ACTIVE
from ._engine_internals import _entered, _live_here, _runs_here, _start_soon
from ._guard import (
    _HTTPError,
    _last_event_id,
    _query_enum,
    _query_limit,
    _require_json,
    _Stream,
    parse_body,
)
from ._json import event_json, flow_json, job_json, summary_json
from ._openapi import openapi_document

if TYPE_CHECKING:
    from .._engine import Engine
    from ..jobs import JobBoard

_LOG = structlog.get_logger("aioflow.web")


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
        from ..jobs import JobState

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
