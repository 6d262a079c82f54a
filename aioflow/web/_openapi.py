"""The OpenAPI 3.1 description of the app, as ``GET /openapi.json`` serves it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._guard import MAX_PAGE, PAGE


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
