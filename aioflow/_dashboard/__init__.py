"""The dashboard served at ``/`` by :func:`aioflow.web.create_app` (HTML, no CDN)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

__all__ = ["routes"]


async def _index(request: Request) -> Response:
    return HTMLResponse("<!doctype html><title>aioflow</title><p>aioflow dashboard</p>")


def routes() -> list[BaseRoute]:
    """The dashboard's routes, mounted by ``create_app`` beside the JSON API."""
    return [Route("/", _index, methods=["GET"])]
