"""ASGI middleware: server-side load shedding and the mapping of resilience errors to HTTP.

:class:`LoadShedding` runs every HTTP request of the wrapped application through one command
(its concurrency limit, ``max_wait`` and timeout; the circuit is forced closed, a server does
not trip on its own load) and turns refusals into ``503``/``504`` responses. Errors that escape
the application are mapped the same way while no response has started.
:data:`exception_handlers` gives the same responses from inside frameworks that turn
exceptions into a 500 before they leave the application (Starlette, FastAPI).

Only the ASGI spec is needed: no framework is imported.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from ._errors import CircuitOpenError, CommandTimeoutError, MaxConcurrencyError, RateLimitedError
from ._names import check_name
from ._registry import Registry, default_registry

__all__ = [
    "ASGIApp",
    "ErrorResponse",
    "LoadShedding",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "error_response",
    "exception_handlers",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The errors mapped to responses (while no response has started).
MAPPED = (CircuitOpenError, MaxConcurrencyError, RateLimitedError, CommandTimeoutError)

#: Retry-After (seconds) for a rejection that carries no estimate of its own.
DEFAULT_RETRY_AFTER = 1
#: An upper bound for Retry-After, so a huge or infinite hint still makes a valid header.
MAX_RETRY_AFTER = 86_400

_BODIES = {
    503: b"503 Service Unavailable: the server is overloaded, retry later\n",
    429: b"429 Too Many Requests: retry later\n",
    504: b"504 Gateway Timeout: the request took too long\n",
}
#: WebSocket close codes (RFC 6455 registry): 1013 Try Again Later, 1011 Internal Error.
_WS_CODES = {503: 1013, 429: 1013, 504: 1011}


def retry_after_seconds(value: float | None) -> int | None:
    """A ``Retry-After`` value: seconds rounded up, at least 1; ``None`` stays ``None``."""
    if value is None:
        return None
    if value != value:  # NaN: no estimate, use the default
        return DEFAULT_RETRY_AFTER
    return max(1, min(MAX_RETRY_AFTER, math.ceil(min(value, MAX_RETRY_AFTER))))


class ErrorResponse:
    """An ASGI application that sends one short plain-text error response.

    ``status`` is 503, 429 or 504; ``retry_after`` (whole seconds) becomes a ``Retry-After``
    header when given. HEAD requests get the headers only. Called with a WebSocket scope (a
    framework's exception handler on a WebSocket route) it closes the socket instead, with
    code 1013 (try again later) for 503/429 and 1011 for 504.
    """

    __slots__ = ("body", "headers", "retry_after", "status")

    def __init__(self, status: int, retry_after: int | None = None) -> None:
        if status not in _BODIES:
            raise ValueError(f"status must be one of {sorted(_BODIES)}, got {status!r}")
        self.status = status
        self.retry_after = retry_after
        self.body = _BODIES[status]
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(self.body)).encode("ascii")),
        ]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode("ascii")))
        self.headers = headers

    def __repr__(self) -> str:
        return f"ErrorResponse(status={self.status}, retry_after={self.retry_after})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            reason = self.body.decode("ascii").strip()
            await send({"type": "websocket.close", "code": _WS_CODES[self.status],
                        "reason": reason})
            return
        await send({"type": "http.response.start", "status": self.status,
                    "headers": list(self.headers)})
        body = b"" if scope.get("method") == "HEAD" else self.body
        await send({"type": "http.response.body", "body": body, "more_body": False})


def error_response(
    exc: BaseException, *, rejected_retry_after: int = DEFAULT_RETRY_AFTER
) -> ErrorResponse | None:
    """The response for ``exc``, or ``None`` when it is not one of the mapped errors.

    ``CircuitOpenError`` -> 503 (``Retry-After`` from its ``retry_after``, absent when the
    circuit is forced open), ``MaxConcurrencyError`` -> 503 (``Retry-After:
    rejected_retry_after``), ``RateLimitedError`` -> 429 (its ``retry_after``),
    ``CommandTimeoutError`` -> 504.
    """
    if isinstance(exc, CircuitOpenError):
        return ErrorResponse(503, retry_after_seconds(exc.retry_after))
    if isinstance(exc, MaxConcurrencyError):
        return ErrorResponse(503, rejected_retry_after)
    if isinstance(exc, RateLimitedError):
        return ErrorResponse(429, retry_after_seconds(exc.retry_after) or DEFAULT_RETRY_AFTER)
    if isinstance(exc, CommandTimeoutError):
        return ErrorResponse(504)
    return None


async def resilience_error_handler(request: Any, exc: Exception) -> ErrorResponse:
    """A Starlette/FastAPI exception handler: ``await handler(request, exc)`` -> an ASGI app."""
    response = error_response(exc)
    if response is None:  # registered for another class by hand: not ours to answer
        raise exc
    return response


#: ``{CircuitOpenError: handler, MaxConcurrencyError: ..., RateLimitedError: ...,
#: CommandTimeoutError: ...}`` for Starlette's or FastAPI's ``exception_handlers=``; each
#: handler returns an ASGI application sending the same response as :class:`LoadShedding`.
#: Typed loosely on purpose: frameworks declare their own handler and response types.
exception_handlers: dict[Any, Any] = {cls: resilience_error_handler for cls in MAPPED}


class _Exchange:
    """One request's view of the response: has it started, and what the application raised."""

    __slots__ = ("_send", "error", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.error: Exception | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True  # before the await: a start that may have left counts
        await self._send(message)


def _check_exempt(exempt: object) -> tuple[tuple[str, ...], frozenset[str], tuple[str, ...]]:
    """(all entries, exact paths, prefixes): an entry ending in ``/`` is a prefix."""
    if isinstance(exempt, str | bytes) or not isinstance(exempt, tuple | list | set | frozenset):
        raise TypeError(
            f"exempt must be a tuple (or list, set, frozenset) of path strings, got {exempt!r}"
        )
    entries: list[str] = []
    for path in exempt:
        if not isinstance(path, str):
            raise TypeError(f"exempt must hold path strings, got {path!r} in {exempt!r}")
        if not path.startswith("/"):
            raise ValueError(f"exempt paths start with '/', got {path!r}")
        if path == "/":
            raise ValueError(
                "exempt path '/' would exempt every path (an entry ending in '/' is a "
                "prefix); to exempt everything, do not wrap the application"
            )
        entries.append(path)
    prefixes = tuple(p for p in entries if p.endswith("/"))
    exact = frozenset(p for p in entries if not p.endswith("/"))
    return tuple(entries), exact, prefixes


def _check_retry_after(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"retry_after must be an int (seconds), got {value!r}")
    if not 1 <= value <= MAX_RETRY_AFTER:
        raise ValueError(f"retry_after must be within 1..{MAX_RETRY_AFTER} seconds, got {value!r}")
    return value


class LoadShedding:
    """ASGI middleware: run each HTTP request through the command ``name``.

    ``max_concurrent_requests`` requests run at once (default 100); a request that finds no
    free slot within ``max_wait`` seconds (default 0: refuse at once) gets ``503`` with
    ``Retry-After: retry_after`` (default 1). A request still running after ``timeout``
    seconds (default ``None``: no limit) is cancelled: it gets ``504`` if no response has
    started; otherwise the ``CommandTimeoutError`` propagates, so the server drops the
    connection. The circuit of the command is forced closed (a server does not trip on its own
    load); ``configure_command(name, ...)`` on ``registry`` changes the limits while serving.

    Errors that escape the application before its response starts are mapped:
    ``CircuitOpenError`` and ``MaxConcurrencyError`` -> 503, ``RateLimitedError`` -> 429,
    ``CommandTimeoutError`` -> 504 (with ``Retry-After`` where they carry one); everything
    else propagates unchanged.

    Requests whose path is in ``exempt`` (an exact path, or a prefix when the entry ends in
    ``/``), and ``lifespan`` and ``websocket`` scopes, go straight to the application.
    ``registry`` (a :class:`resilience.Registry`) defaults to the default registry.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        name: str = "asgi",
        max_concurrent_requests: int = 100,
        max_wait: float = 0.0,
        timeout: float | None = None,
        exempt: tuple[str, ...] | list[str] | frozenset[str] | set[str] = (),
        retry_after: int = DEFAULT_RETRY_AFTER,
        registry: Registry | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(
                f"app must be an ASGI application (an async callable taking scope, receive, "
                f"send), got {app!r}"
            )
        name = check_name(name, "command")
        self.exempt, self._exact, self._prefixes = _check_exempt(exempt)
        self.retry_after = _check_retry_after(retry_after)
        if registry is None:
            registry = default_registry
        elif not isinstance(registry, Registry):
            raise TypeError(f"registry must be a resilience.Registry or None, got {registry!r}")
        registry.configure_command(  # validates the three values (ValueError naming the field)
            name, max_concurrent_requests=max_concurrent_requests, max_wait=max_wait,
            timeout=timeout, force_closed=True,
        )
        self.app = app
        self.name = name
        self.registry = registry
        self._run = registry.run
        self._exempting = bool(self.exempt)

        async def downstream(scope: Scope, receive: Receive, exchange: _Exchange) -> None:
            try:
                await app(scope, receive, exchange.send)
            except Exception as exc:
                exchange.error = exc  # raised by the application, not by our command
                raise

        # One function for every request: run() finds its caller in its cache at once.
        self._downstream: Callable[[Scope, Receive, _Exchange], Coroutine[Any, Any, None]] = (
            downstream
        )

    def __repr__(self) -> str:
        return f"LoadShedding({self.app!r}, name={self.name!r})"

    def is_exempt(self, path: str) -> bool:
        """Whether requests to ``path`` bypass the command."""
        return path in self._exact or path.startswith(self._prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self._exempting and self.is_exempt(scope["path"])):
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(send)
        try:
            await self._run(self.name, self._downstream, scope, receive, exchange)
        except MAPPED as exc:
            if exchange.started:  # too late for a response: the server drops the connection
                raise
            own = exc is not exchange.error  # refused or timed out by our command itself
            response = error_response(
                exc, rejected_retry_after=self.retry_after if own else DEFAULT_RETRY_AFTER
            )
            assert response is not None
            exchange.error = None
            await response(scope, receive, send)
