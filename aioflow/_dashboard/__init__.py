"""The dashboard served at ``/`` by :func:`aioflow.web.create_app` (HTML, no CDN).

A single page (``static/index.html``) with plain JavaScript modules and CSS beside it,
all shipped in the package: nothing is fetched from the network. The page reads the JSON
API of the same app through relative URLs, so it works mounted under a prefix too, and
escapes everything it shows (text nodes only, never ``innerHTML`` with data). See
``docs/dashboard.md``.

The files are read once, on first use, through anyio: no blocking file I/O on the event
loop, and none per request.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

__all__ = ["routes"]

_STATIC = Path(__file__).parent / "static"

_SCRIPT = "text/javascript; charset=utf-8"
_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": _SCRIPT,
    "common.js": _SCRIPT,
    "flows.js": _SCRIPT,
    "flow.js": _SCRIPT,
    "graph.js": _SCRIPT,
    "jobs.js": _SCRIPT,
    "style.css": "text/css; charset=utf-8",
}
"""The files the dashboard serves: nothing else under ``static/`` is reachable."""

_HEADERS = {
    # Scripts and styles from this app only (no inline code), and no framing: the page
    # carries action buttons, which must not be clickjacked.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Revalidate every time (cheap, by ETag): an upgraded package serves its new page.
    "Cache-Control": "no-cache",
}

_cache: dict[str, tuple[bytes, str]] = {}


async def _load(name: str) -> tuple[bytes, str]:
    """The file's bytes and ETag, read once (a race reads it twice, harmlessly)."""
    cached = _cache.get(name)
    if cached is None:
        body = await anyio.Path(_STATIC / name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        cached = _cache[name] = (body, etag)
    return cached


async def _serve(request: Request, name: str) -> Response:
    body, etag = await _load(name)
    headers = {**_HEADERS, "ETag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=_TYPES[name], headers=headers)


async def _index(request: Request) -> Response:
    return await _serve(request, "index.html")


async def _asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _TYPES or name == "index.html":
        raise HTTPException(404)
    return await _serve(request, name)


def routes() -> list[BaseRoute]:
    """The dashboard's routes, mounted by ``create_app`` beside the JSON API."""
    return [
        Route("/", _index, methods=["GET"]),
        Route("/dashboard/{name}", _asset, methods=["GET"]),
    ]
