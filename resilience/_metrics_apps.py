"""``make_asgi_app`` and ``make_wsgi_app``: the fast ``/metrics`` exposition on an application's
own route.

Both answer ``GET`` and ``HEAD`` on whatever path they are mounted at, with the same response as
``start_metrics_server``'s ``/metrics`` (same renderer, content negotiation, gzip, ``name[]``
filters and multi-process handling: :class:`~resilience._metrics_text.Scraper`). The ASGI app
needs nothing beyond the ASGI spec; it renders in a worker thread (anyio, so any asyncio or
trio server), so a large scrape does not stall the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

import anyio.to_thread
from prometheus_client import CollectorRegistry

from ._metrics_text import Scraper

__all__ = ["make_asgi_app", "make_wsgi_app"]

_log = logging.getLogger("resilience.metrics")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
WSGIApp = Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]

_TEXT = "text/plain; charset=utf-8"
_NOT_ALLOWED = b"method not allowed: GET or HEAD\n"
_FAILED = b"scrape failed; see the server log\n"


def _respond(
    scrape: Scraper, method: str, accept: str, accept_encoding: str, query: str
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers (Content-Length included) and body (empty for HEAD)."""
    if method not in ("GET", "HEAD"):
        status, headers, body = 405, [("Content-Type", _TEXT), ("Allow", "GET, HEAD")], _NOT_ALLOWED
    else:
        try:
            body, headers = scrape(accept, accept_encoding, query)
            status = 200
        except Exception:
            _log.exception("resilience metrics: scrape failed")
            status, headers, body = 500, [("Content-Type", _TEXT)], _FAILED
    headers.append(("Content-Length", str(len(body))))
    return status, headers, b"" if method == "HEAD" else body


def make_asgi_app(registry: CollectorRegistry | None = None) -> ASGIApp:
    """An ASGI application serving ``registry``'s metrics (prometheus-client's default
    registry when ``None``; in multi-process mode, every process's values)."""
    scrape = Scraper(registry)

    async def metrics_app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":  # mounted as the whole application: nothing to set up
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            if kind == "websocket":
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008})
            return
        accept: list[str] = []
        encoding: list[str] = []
        for key, value in scope.get("headers", ()):
            if key == b"accept":
                accept.append(value.decode("latin-1"))
            elif key == b"accept-encoding":
                encoding.append(value.decode("latin-1"))
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        status, headers, body = await anyio.to_thread.run_sync(
            _respond, scrape, scope["method"], ", ".join(accept), ", ".join(encoding), query
        )
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        })
        await send({"type": "http.response.body", "body": body})

    return metrics_app


def make_wsgi_app(registry: CollectorRegistry | None = None) -> WSGIApp:
    """A WSGI application serving ``registry``'s metrics (prometheus-client's default
    registry when ``None``; in multi-process mode, every process's values)."""
    scrape = Scraper(registry)
    reasons = {200: "OK", 405: "Method Not Allowed", 500: "Internal Server Error"}

    def metrics_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        status, headers, body = _respond(
            scrape,
            str(environ.get("REQUEST_METHOD", "GET")),
            str(environ.get("HTTP_ACCEPT", "")),
            str(environ.get("HTTP_ACCEPT_ENCODING", "")),
            str(environ.get("QUERY_STRING", "")),
        )
        start_response(f"{status} {reasons[status]}", headers)
        return [body]

    return metrics_app
