"""JSON-RPC 2.0 over HTTP/1.1 over mutual TLS: the layer the node examples share.

Used by ``examples/rpc`` (``MathService.Add`` between three nodes) and ``examples/cluster``
(``task.run`` from the leader to the workers).

Server side: :func:`serve` runs :func:`resilience.tls.serve_tls` (handshake timeout,
connection limit, certificate reload) and speaks HTTP/1.1 on each connection with
:func:`serve_http` (h11, keep-alive), handing every request to an ASGI application, so a node
can protect itself with :class:`resilience.asgi.LoadShedding`. :class:`JsonRpc` is that
application: methods by path, each allowed to some peers only (by the common name of their
client certificate, which mutual TLS has already verified).

Client side: :func:`call` posts one request with an ``httpx.AsyncClient`` (whose ``verify``
is a :func:`resilience.tls.client_context` with the caller's own certificate, and whose
transport may be a :class:`resilience.httpx.AsyncCommandTransport`); it returns the result,
or raises :class:`RpcError` (the peer answered with a JSON-RPC error) or
:class:`RpcUnavailable` (an HTTP error status instead of an answer: 503 shed, 504 cut off).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import h11
import httpx
from anyio.abc import ByteStream, TaskStatus
from anyio.streams.tls import TLSAttribute

from resilience import tls

from .pki import serial_of

__all__ = [
    "ASGIApp",
    "JsonRpc",
    "Method",
    "Methods",
    "Peer",
    "RpcError",
    "RpcUnavailable",
    "call",
    "peer_of",
    "serve",
    "serve_http",
]

Json = dict[str, Any]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: How long a kept-alive connection may sit idle between requests.
IDLE_TIMEOUT = 15.0
MAX_BODY = 1 << 20


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end: the verified client certificate's common name and serial."""

    name: str
    serial: int


def peer_of(stream: ByteStream) -> Peer:
    """The client certificate of a mutual-TLS connection (``serve_tls`` verified it)."""
    der = stream.extra(TLSAttribute.peer_certificate_binary, None)
    info: Any = stream.extra(TLSAttribute.peer_certificate, None) or {}
    name = ""
    for rdn in info.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                name = str(value)
    return Peer(name=name, serial=serial_of(der) if der else 0)


# -- server: TLS connections -> HTTP/1.1 -> ASGI --------------------------------------------------


async def serve(
    app: ASGIApp,
    *,
    ssl_context: ssl.SSLContext,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve ``app`` over HTTP/1.1 on every TLS connection of ``serve_tls`` until cancelled.

    Start it with ``port = await task_group.start(partial(serve, app, ...))``; ``options`` go
    to :func:`resilience.tls.serve_tls` (``handshake_timeout``, ``max_connections``,
    ``reload_interval``, ``name``)."""
    bound = port

    async def handler(stream: ByteStream) -> None:
        await serve_http(stream, app, peer_of(stream), bound)

    async with anyio.create_task_group() as tg:
        bound = await tg.start(partial(
            tls.serve_tls, handler, host=host, port=port, ssl_context=ssl_context, **options
        ))
        task_status.started(bound)


class _Closed(Exception):
    pass


async def _next_event(conn: h11.Connection, stream: ByteStream, timeout: float) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = b""
        with anyio.move_on_after(timeout) as scope:
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                data = b""
        if scope.cancelled_caught:
            raise _Closed
        conn.receive_data(data)


async def serve_http(stream: ByteStream, app: ASGIApp, peer: Peer, port: int) -> None:
    """Serve HTTP/1.1 requests on ``stream`` until the client closes it (or idles)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
    try:
        while True:
            event = await _next_event(conn, stream, IDLE_TIMEOUT)
            if not isinstance(event, h11.Request):
                return  # closed, or a protocol state we do not serve
            body = bytearray()
            while True:
                part = await _next_event(conn, stream, IDLE_TIMEOUT)
                if isinstance(part, h11.Data):
                    body += part.data
                    if len(body) > MAX_BODY:
                        return
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return
            status, headers, payload = await _run_app(app, event, bytes(body), peer, port)
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(payload)).encode()))
            for item in (h11.Response(status_code=status, headers=headers),
                         h11.Data(data=payload), h11.EndOfMessage()):
                out = conn.send(item)
                if out:
                    await stream.send(out)
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (_Closed, h11.ProtocolError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return


async def _run_app(
    app: ASGIApp, request: h11.Request, body: bytes, peer: Peer, port: int
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    target = request.target.decode("latin-1")
    path, _, query = target.partition("?")
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version.decode(),
        "method": request.method.decode(),
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower(), v) for k, v in request.headers],
        "server": ("127.0.0.1", port),
        "client": None,
        "extensions": {"tls": {"client_cert_name": peer.name, "client_cert_serial": peer.serial}},
    }
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    status = 500
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []
    started = False

    async def send(message: Message) -> None:
        nonlocal status, headers, started
        if message["type"] == "http.response.start":
            started = True
            status = int(message["status"])
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    try:
        await app(scope, receive, send)
    except Exception:
        if started:  # too late for an error response: drop the connection
            raise _Closed from None
        return 500, [(b"content-type", b"text/plain")], b"500 internal error\n"
    return status, headers, b"".join(chunks)


# -- the JSON-RPC application ---------------------------------------------------------------------

#: A JSON-RPC method: ``await method(params, peer)`` -> the result (JSON-able).
Method = Callable[[Json, Peer], Awaitable[Any]]
#: ``{path: {method name: (function, allowed peer-name prefixes)}}``; ``("",)`` allows every
#: peer that mutual TLS let in.
Methods = Mapping[str, Mapping[str, tuple[Method, tuple[str, ...]]]]


class RpcError(Exception):
    """A JSON-RPC error answer (the peer is up; it said no)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class RpcUnavailable(Exception):
    """An HTTP error instead of a JSON-RPC answer: 503 (shed), 504 (cut off), ..."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


class JsonRpc:
    """An ASGI app: ``POST <path>`` with a JSON-RPC request, dispatched by ``methods``."""

    def __init__(self, methods: Methods) -> None:
        self.methods = methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        table = self.methods.get(scope["path"])
        if table is None or scope["method"] != "POST":
            await _respond(send, 404, b"not found\n", b"text/plain")
            return
        message = await receive()
        tls_info = scope.get("extensions", {}).get("tls", {})
        peer = Peer(str(tls_info.get("client_cert_name", "")),
                    int(tls_info.get("client_cert_serial", 0)))
        rid: Any = None
        try:
            request = json.loads(message.get("body", b""))
            rid = request.get("id")
            name = request["method"]
            params = request.get("params") or {}
        except (ValueError, KeyError, AttributeError):
            await _answer(send, rid, error=(-32700, "parse error"))
            return
        entry = table.get(name)
        if entry is None:
            await _answer(send, rid, error=(-32601, f"no method {name!r}"))
            return
        fn, allowed = entry
        if not peer.name.startswith(allowed):
            await _answer(send, rid, error=(-32001, f"{peer.name!r} may not call {name}"))
            return
        try:
            result = await fn(params, peer)
        except RpcError as exc:
            await _answer(send, rid, error=(exc.code, str(exc)))
            return
        await _answer(send, rid, result=result)


async def _respond(send: Send, status: int, body: bytes, kind: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind)]})
    await send({"type": "http.response.body", "body": body})


async def _answer(
    send: Send, rid: Any, *, result: Any = None, error: tuple[int, str] | None = None
) -> None:
    reply: Json = {"jsonrpc": "2.0", "id": rid}
    if error is None:
        reply["result"] = result
    else:
        reply["error"] = {"code": error[0], "message": error[1]}
    await _respond(send, 200, json.dumps(reply).encode(), b"application/json")


# -- client ---------------------------------------------------------------------------------------

_ids = iter(range(1, 1 << 62))


async def call(http: httpx.AsyncClient, url: str, method: str, params: Json) -> Any:
    """One JSON-RPC call; the result, or :class:`RpcError` / :class:`RpcUnavailable` (and
    whatever the client raises: ``httpx`` errors, the transport's refusals)."""
    response = await http.post(
        url, json={"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": params}
    )
    if response.status_code != 200:
        after = response.headers.get("retry-after")
        raise RpcUnavailable(response.status_code, float(after) if after else None)
    data = response.json()
    if "error" in data:
        raise RpcError(int(data["error"].get("code", 0)), str(data["error"].get("message")))
    return data.get("result")
