"""resilience.asgi under a real ASGI server (hypercorn on asyncio and trio, on loopback, driven
by httpx): load shedding (503 + Retry-After, max_wait, timeouts -> 504 or a dropped
connection), exempt paths and scopes, the mapping of resilience errors from a bare application
and through Starlette's own exception-handler code path, and the slot coming back every time.

Requests are held on ``anyio.Event``s inside the application, never on sleeps: a full limit is
full because the test holds it.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from _hypercorn import ERROR_LOG, hypercorn_serving
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import resilience
from resilience import (
    CircuitOpenError,
    CommandTimeoutError,
    MaxConcurrencyError,
    RateLimitedError,
)
from resilience._asgi import Message, Receive, Scope, Send, retry_after_seconds
from resilience.asgi import LoadShedding, exception_handlers

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
NAME = "api"


# -- fixtures and helpers -----------------------------------------------------------------------


#: Each test registry's private CollectorRegistry.
METRICS: weakref.WeakKeyDictionary[resilience.Registry, CollectorRegistry] = (
    weakref.WeakKeyDictionary()
)


@pytest.fixture
def registry(metrics_registry: CollectorRegistry) -> Iterator[resilience.Registry]:
    """A registry of its own, exporting to a private CollectorRegistry; every test ends with
    the middleware's slots all given back."""
    reg = resilience.Registry(metrics_registry=metrics_registry)
    METRICS[reg] = metrics_registry
    yield reg
    assert reg.get_circuit(NAME).in_flight == 0
    assert not reg._core(NAME).waiters


def calls(reg: resilience.Registry, outcome: str, command: str = NAME) -> float:
    """``resilience_command_calls_total{command=..., outcome=...}`` as exported."""
    value = METRICS[reg].get_sample_value(
        "resilience_command_calls_total", {"command": command, "outcome": outcome}
    )
    return value or 0.0


@asynccontextmanager
async def serving(app: Any, backend: str) -> AsyncIterator[str]:
    """Serve ``app`` with hypercorn on this backend; yield its URL. (No probe request goes
    through the middleware: the socket listens before hypercorn starts.)"""
    async with hypercorn_serving(app, backend) as port:
        yield f"http://127.0.0.1:{port}"


@asynccontextmanager
async def client_of(app: ASGIApp, backend: str) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on ``app`` served by hypercorn (closed before the server stops)."""
    async with serving(app, backend) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
            yield client


async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer the lifespan protocol (hypercorn on trio fails to start if an application
    returns at once from its lifespan scope)."""
    assert scope["type"] == "lifespan"
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


async def text_response(send: Send, status: int = 200, body: bytes = b"ok") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Held:
    """A bare ASGI app whose requests wait for ``release`` before they answer 200."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.entered = 0
        self.cancelled = 0
        self._entered_events: list[anyio.Event] = []

    async def wait_entered(self, n: int) -> None:
        """Until ``n`` requests are inside the app."""
        while self.entered < n:
            event = anyio.Event()
            self._entered_events.append(event)
            await event.wait()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await lifespan(scope, receive, send)
        self.entered += 1
        for event in self._entered_events:
            event.set()
        self._entered_events.clear()
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        await text_response(send, body=scope["path"].encode())


async def wait_for_waiter(reg: resilience.Registry, n: int = 1) -> None:
    """Until ``n`` calls wait for a slot of the middleware's command."""
    with anyio.fail_after(10):
        while len(reg._core(NAME).waiters) < n:
            await anyio.sleep(0.001)


async def settled(reg: resilience.Registry) -> None:
    """Until every request has left the command (a client may read its response before the
    application returns and the outcome is counted)."""
    with anyio.fail_after(10):
        while reg.get_circuit(NAME).in_flight:
            await anyio.sleep(0.001)


def circuit_open(reg: resilience.Registry, retry_after: float | None) -> CircuitOpenError:
    return CircuitOpenError("db", retry_after=retry_after,
                            statistics=reg.get_circuit("db").statistics())


# -- load shedding ------------------------------------------------------------------------------


async def test_requests_run_through_the_command(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await lifespan(scope, receive, send)
        assert registry.get_circuit(NAME).in_flight == 1  # inside the command
        await text_response(send, body=b"hello")

    shed = LoadShedding(app, name=NAME, max_concurrent_requests=5, registry=registry)
    async with client_of(shed, anyio_backend) as client:
        for _ in range(3):
            resp = await client.get("/")
            assert (resp.status_code, resp.text) == (200, "hello")
    assert calls(registry, "success") == 3
    config = registry.get_circuit(NAME).config
    assert (config.max_concurrent_requests, config.max_wait, config.timeout) == (5, 0.0, None)
    assert config.force_closed


async def test_a_full_limit_rejects_with_503_and_retry_after(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    app = Held()
    shed = LoadShedding(app, name=NAME, max_concurrent_requests=2, registry=registry)
    async with client_of(shed, anyio_backend) as client, anyio.create_task_group() as tg:
        held: list[httpx.Response] = []

        async def hold(path: str) -> None:
            held.append(await client.get(path))

        tg.start_soon(hold, "/a")
        tg.start_soon(hold, "/b")
        await app.wait_entered(2)
        assert registry.get_circuit(NAME).in_flight == 2
        resp = await client.get("/c")
        assert resp.status_code == 503
        assert resp.headers["retry-after"] == "1"
        assert resp.headers["content-type"] == "text/plain; charset=utf-8"
        assert "overloaded" in resp.text
        head = await client.head("/c")
        assert head.status_code == 503 and head.content == b""
        assert int(head.headers["content-length"]) == len(resp.content)
        assert calls(registry, "rejected") == 2
        app.release.set()
    assert sorted((r.status_code, r.text) for r in held) == [(200, "/a"), (200, "/b")]
    assert app.entered == 2  # the rejected requests never reached the application
    assert calls(registry, "success") == 2


async def test_retry_after_of_rejections_is_configurable(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    app = Held()
    shed = LoadShedding(app, name=NAME, max_concurrent_requests=1, retry_after=7,
                        registry=registry)
    async with client_of(shed, anyio_backend) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.get, "/")
        await app.wait_entered(1)
        resp = await client.get("/")
        assert (resp.status_code, resp.headers["retry-after"]) == (503, "7")
        app.release.set()


async def test_max_wait_lets_a_waiter_through(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    app = Held()
    shed = LoadShedding(app, name=NAME, max_concurrent_requests=1, max_wait=30.0,
                        registry=registry)
    async with client_of(shed, anyio_backend) as client, anyio.create_task_group() as tg:
        got: list[httpx.Response] = []

        async def get(path: str) -> None:
            got.append(await client.get(path))

        tg.start_soon(get, "/first")
        await app.wait_entered(1)
        tg.start_soon(get, "/second")
        await wait_for_waiter(registry)  # the limit is full: the second request waits
        assert app.entered == 1
        app.release.set()
    assert [(r.status_code, r.text) for r in got] == [(200, "/first"), (200, "/second")]
    assert calls(registry, "rejected") == 0 and calls(registry, "success") == 2


async def test_a_waiter_past_max_wait_gets_503(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    app = Held()
    shed = LoadShedding(app, name=NAME, max_concurrent_requests=1, max_wait=0.05,
                        registry=registry)
    async with client_of(shed, anyio_backend) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.get, "/")
        await app.wait_entered(1)
        resp = await client.get("/")  # the slot stays held: past max_wait it is rejected
        assert (resp.status_code, resp.headers["retry-after"]) == (503, "1")
        app.release.set()
    assert calls(registry, "rejected") == 1


async def test_a_timeout_before_the_response_gives_504(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    app = Held()  # never released: only the timeout ends the request
    shed = LoadShedding(app, name=NAME, timeout=0.05, registry=registry)
    async with client_of(shed, anyio_backend) as client:
        resp = await client.get("/slow")
        assert resp.status_code == 504
        assert "retry-after" not in resp.headers
        assert "took too long" in resp.text
        again = await client.get("/slow")  # the connection is kept alive and usable
        assert again.status_code == 504
    assert app.cancelled == 2  # the application was really cancelled
    assert calls(registry, "timeout") == 2


async def test_a_timeout_after_the_response_started_drops_the_connection(
    anyio_backend: str, registry: resilience.Registry, caplog: pytest.LogCaptureFixture
) -> None:
    cancelled = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await lifespan(scope, receive, send)
        if scope["path"] == "/fast":
            await text_response(send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first chunk", "more_body": True})
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    shed = LoadShedding(app, name=NAME, timeout=0.1, registry=registry)
    caplog.set_level(logging.ERROR, ERROR_LOG)
    async with client_of(shed, anyio_backend) as client:
        async with client.stream("GET", "/stream") as resp:
            assert resp.status_code == 200  # the response had started: no 504 possible
            chunks: list[bytes] = []
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
                async for chunk in resp.aiter_raw():
                    chunks.append(chunk)
            assert b"".join(chunks) == b"first chunk"  # truncated, never passed off as whole
        assert cancelled.is_set()
        assert (await client.get("/fast")).status_code == 200  # a new connection works
    # the CommandTimeoutError reached the server, which logged it and closed the connection
    errors = [r.exc_info[1] for r in caplog.records if r.name == ERROR_LOG and r.exc_info]
    assert len(errors) == 1 and isinstance(errors[0], CommandTimeoutError)
    assert calls(registry, "timeout") == 1


async def test_the_circuit_never_trips(anyio_backend: str, registry: resilience.Registry) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await lifespan(scope, receive, send)
        raise RuntimeError("application bug")

    shed = LoadShedding(app, name=NAME, registry=registry)
    async with client_of(shed, anyio_backend) as client:
        for _ in range(25):  # past request_volume_threshold, 100% errors
            assert (await client.get("/")).status_code == 500
    assert registry.get_circuit(NAME).state == "closed"
    assert calls(registry, "failure") == 25


async def test_forced_open_by_the_operator_gives_503_without_retry_after(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    shed = LoadShedding(Held(), name=NAME, registry=registry)
    registry.configure_command(NAME, force_open=True)  # maintenance switch
    async with client_of(shed, anyio_backend) as client:
        resp = await client.get("/")
        assert resp.status_code == 503 and "retry-after" not in resp.headers
    assert calls(registry, "short_circuited") == 1


# -- what passes straight through ---------------------------------------------------------------


async def test_exempt_paths_pass_while_the_limit_is_full(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    app = Held()

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/hold":
            await text_response(send, body=scope["path"].encode())
        else:
            await app(scope, receive, send)

    shed = LoadShedding(router, name=NAME, max_concurrent_requests=1, registry=registry,
                        exempt=("/healthz", "/static/"))
    async with client_of(shed, anyio_backend) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.get, "/hold")
        await app.wait_entered(1)
        for path in ("/healthz", "/static/app.css", "/static/img/a.png", "/static/"):
            resp = await client.get(path)
            assert (resp.status_code, resp.text) == (200, path)
        for path in ("/healthz/", "/healthz/x", "/healthzz", "/static", "/api"):
            assert (await client.get(path)).status_code == 503, path
        app.release.set()
    assert calls(registry, "rejected") == 5 and calls(registry, "success") == 1


async def test_lifespan_passes_through(anyio_backend: str, registry: resilience.Registry) -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                seen.append(message["type"])
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await text_response(send)

    shed = LoadShedding(app, name=NAME, max_concurrent_requests=1, registry=registry)
    async with client_of(shed, anyio_backend) as client:
        assert (await client.get("/")).status_code == 200
        assert seen == ["lifespan.startup"]
    assert seen == ["lifespan.startup", "lifespan.shutdown"]
    assert calls(registry, "success") == 1  # lifespan never went through the command


@pytest.mark.parametrize("kind", ["lifespan", "websocket", "something.else"])
async def test_other_scopes_reach_the_app_unchanged(
    kind: str, registry: resilience.Registry
) -> None:
    got: list[tuple[Scope, Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        got.append((scope, receive, send))

    async def receive() -> Message:
        raise AssertionError("not called")

    async def send(message: Message) -> None:
        raise AssertionError("not called")

    shed = LoadShedding(app, name=NAME, max_concurrent_requests=1, registry=registry)
    registry.configure_command(NAME, force_open=True)  # would refuse any http request
    scope: Scope = {"type": kind, "path": "/"}
    await shed(scope, receive, send)
    assert got == [(scope, receive, send)]
    assert got[0][0] is scope and got[0][1] is receive and got[0][2] is send
    assert calls(registry, "short_circuited") == 0


# -- errors escaping the application ------------------------------------------------------------

# (error factory, status, Retry-After)
ERRORS: dict[str, tuple[Callable[[resilience.Registry], Exception], int, str | None]] = {
    "circuit-open": (lambda reg: circuit_open(reg, 2.2), 503, "3"),
    "circuit-open-zero": (lambda reg: circuit_open(reg, 0.0), 503, "1"),
    "circuit-forced-open": (lambda reg: circuit_open(reg, None), 503, None),
    "max-concurrency": (lambda reg: MaxConcurrencyError("db", limit=3), 503, "1"),
    "rate-limited": (lambda reg: RateLimitedError("github", retry_after=0.25), 429, "1"),
    "rate-limited-long": (lambda reg: RateLimitedError("github", retry_after=4.5), 429, "5"),
    "command-timeout": (lambda reg: CommandTimeoutError("db", timeout=0.5), 504, None),
}


@pytest.mark.parametrize("case", list(ERRORS))
async def test_errors_from_a_bare_app_are_mapped(
    case: str, anyio_backend: str, registry: resilience.Registry
) -> None:
    make, status, retry_after = ERRORS[case]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await lifespan(scope, receive, send)
        raise make(registry)

    # retry_after=9 is for the middleware's own rejections only, not for the app's
    shed = LoadShedding(app, name=NAME, retry_after=9, registry=registry)
    async with client_of(shed, anyio_backend) as client:
        resp = await client.get("/")
    assert resp.status_code == status
    assert resp.headers.get("retry-after") == retry_after
    # the middleware's command counts what the application raised as a failure of its call
    assert calls(registry, "failure") == 1
    assert calls(registry, "rejected") == calls(registry, "timeout") == 0


async def test_errors_of_real_nested_commands_are_not_the_middlewares_own(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    """A nested command's rejection and timeout map like the middleware's own, but count on
    the nested command; the middleware's command sees a failed call, not a rejection."""
    registry.configure_command("db", max_concurrent_requests=1, timeout=0.05)
    db_busy, db_release = anyio.Event(), anyio.Event()

    async def hold_db() -> None:
        db_busy.set()
        await db_release.wait()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await lifespan(scope, receive, send)
        if scope["path"] == "/hold":
            registry.configure_command("db", timeout=None)
            await registry.run("db", hold_db)
        elif scope["path"] == "/busy":
            await registry.run("db", anyio.sleep, 0)
        else:
            registry.configure_command("db", timeout=0.05)
            await registry.run("db", anyio.sleep, 10)
        await text_response(send)

    shed = LoadShedding(app, name=NAME, retry_after=9, registry=registry)
    async with client_of(shed, anyio_backend) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.get, "/hold")
        await db_busy.wait()
        busy = await client.get("/busy")
        assert (busy.status_code, busy.headers["retry-after"]) == (503, "1")  # not 9: not ours
        db_release.set()
    async with client_of(shed, anyio_backend) as client:
        assert (await client.get("/slow")).status_code == 504
    assert calls(registry, "rejected", "db") == 1 and calls(registry, "timeout", "db") == 1
    assert calls(registry, "rejected") == calls(registry, "timeout") == 0
    assert calls(registry, "failure") == 2 and calls(registry, "success") == 1
    assert registry.get_circuit("db").in_flight == 0


async def test_other_exceptions_propagate_unchanged(
    anyio_backend: str, registry: resilience.Registry, caplog: pytest.LogCaptureFixture
) -> None:
    boom = LookupError("application bug")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await lifespan(scope, receive, send)
        raise boom

    shed = LoadShedding(app, name=NAME, registry=registry)
    caplog.set_level(logging.ERROR, ERROR_LOG)
    async with client_of(shed, anyio_backend) as client:
        assert (await client.get("/")).status_code == 500  # hypercorn's own 500
    errors = [r.exc_info[1] for r in caplog.records if r.name == ERROR_LOG and r.exc_info]
    assert errors == [boom]  # the same object reached the server


async def test_a_mapped_error_after_the_response_started_propagates(
    registry: resilience.Registry,
) -> None:
    error = RateLimitedError("github", retry_after=1.0)
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise error

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    shed = LoadShedding(app, name=NAME, registry=registry)
    with pytest.raises(RateLimitedError) as info:
        await shed({"type": "http", "path": "/", "method": "GET"}, receive, send)
    assert info.value is error
    assert [m["type"] for m in sent] == ["http.response.start"]  # no second response


# -- the slot comes back ------------------------------------------------------------------------


async def test_a_client_disconnect_gives_the_slot_back(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    entered, disconnected = anyio.Event(), anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await lifespan(scope, receive, send)
        entered.set()
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected.set()

    shed = LoadShedding(app, name=NAME, max_concurrent_requests=1, registry=registry)
    async with serving(shed, anyio_backend) as url:
        port = int(url.rsplit(":", 1)[1])
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await entered.wait()
            assert registry.get_circuit(NAME).in_flight == 1
        with anyio.fail_after(10):
            await disconnected.wait()
            while registry.get_circuit(NAME).in_flight:
                await anyio.sleep(0.001)


async def test_a_response_after_the_client_left_gives_the_slot_back(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    app = Held()
    shed = LoadShedding(app, name=NAME, max_concurrent_requests=1, registry=registry)
    async with serving(shed, anyio_backend) as url:
        port = int(url.rsplit(":", 1)[1])
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await app.wait_entered(1)
        app.release.set()  # the app answers a client that is gone
        with anyio.fail_after(10):
            while registry.get_circuit(NAME).in_flight:
                await anyio.sleep(0.001)
        async with httpx.AsyncClient() as client:
            assert (await client.get(url)).status_code == 200
    assert calls(registry, "success") == 2


async def test_a_waiter_whose_client_left_is_refused_quietly(
    anyio_backend: str, registry: resilience.Registry, caplog: pytest.LogCaptureFixture
) -> None:
    app = Held()
    shed = LoadShedding(app, name=NAME, max_concurrent_requests=1, max_wait=0.05,
                        registry=registry)
    caplog.set_level(logging.WARNING, ERROR_LOG)
    async with serving(shed, anyio_backend) as url, httpx.AsyncClient() as client:
        port = int(url.rsplit(":", 1)[1])
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, url)
            await app.wait_entered(1)
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await wait_for_waiter(registry)
            with anyio.fail_after(10):  # its 503 goes to a closed connection
                while calls(registry, "rejected") < 1:
                    await anyio.sleep(0.001)
            app.release.set()
        assert (await client.get(url)).status_code == 200
    assert [r.getMessage() for r in caplog.records if r.name == ERROR_LOG] == []  # no error


@pytest.mark.parametrize("where", ["running", "waiting"])
async def test_cancellation_gives_the_slot_back(where: str, registry: resilience.Registry) -> None:
    app = Held()
    shed = LoadShedding(app, name=NAME, max_concurrent_requests=1, max_wait=30.0,
                        registry=registry)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    async def request() -> None:
        await shed({"type": "http", "path": "/", "method": "GET"}, receive, send)

    async with anyio.create_task_group() as tg:
        tg.start_soon(request)
        await app.wait_entered(1)
        if where == "waiting":
            async with anyio.create_task_group() as inner:
                inner.start_soon(request)
                await wait_for_waiter(registry)
                inner.cancel_scope.cancel()
            assert not registry._core(NAME).waiters
            assert registry.get_circuit(NAME).in_flight == 1
        tg.cancel_scope.cancel()
    assert app.cancelled == 1
    assert calls(registry, "cancelled") == 1


# -- Starlette ----------------------------------------------------------------------------------


def starlette_app(
    registry: resilience.Registry, held: Held, *, handlers: bool,
    middleware: list[Middleware] | None = None,
) -> Starlette:
    async def raising(request: Request) -> Response:
        raise ERRORS[request.path_params["case"]][0](registry)

    async def hold(request: Request) -> Response:
        await held.release.wait()
        return PlainTextResponse("held")

    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    routes = [Route("/raise/{case}", raising), Route("/hold", hold), Route("/", hello)]
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers=exception_handlers if handlers else None)


async def test_starlette_app_with_exception_handlers(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    held = Held()
    app = LoadShedding(starlette_app(registry, held, handlers=True), name=NAME,
                       max_concurrent_requests=1, registry=registry)
    async with client_of(app, anyio_backend) as client:
        assert (await client.get("/")).text == "hello"
        for case, (_, status, retry_after) in ERRORS.items():
            resp = await client.get(f"/raise/{case}")
            assert resp.status_code == status, case
            assert resp.headers.get("retry-after") == retry_after, case
            assert resp.headers["content-type"] == "text/plain; charset=utf-8"
        # handled inside the app: the middleware's command saw successful calls
        await settled(registry)
        assert calls(registry, "success") == 1 + len(ERRORS)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, "/hold")
            while registry.get_circuit(NAME).in_flight < 1:
                await anyio.sleep(0.001)
            resp = await client.get("/")
            assert (resp.status_code, resp.headers["retry-after"]) == (503, "1")
            held.release.set()
    assert calls(registry, "rejected") == 1


async def test_starlette_handlers_match_the_middlewares_responses(
    registry: resilience.Registry,
) -> None:
    """Byte for byte, what Starlette's handlers send equals what LoadShedding sends."""

    async def capture(app: ASGIApp, method: str = "GET") -> list[Message]:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        scope: Scope = {"type": "http", "method": method, "path": "/", "headers": [],
                        "query_string": b"", "http_version": "1.1", "scheme": "http",
                        "server": ("test", 80), "root_path": ""}
        await app(scope, receive, send)
        return sent

    def raising(error: Exception) -> tuple[ASGIApp, Starlette]:
        async def bare(scope: Scope, receive: Receive, send: Send) -> None:
            raise error

        async def route(request: Request) -> Response:
            raise error

        return bare, Starlette(routes=[Route("/", route, methods=["GET", "HEAD"])],
                               exception_handlers=exception_handlers)

    for case, (make, _, _) in ERRORS.items():
        bare, inside = raising(make(registry))
        for method in ("GET", "HEAD"):
            via_handler = await capture(inside, method)
            via_middleware = await capture(LoadShedding(bare, name=NAME, registry=registry),
                                           method)
            assert via_handler == via_middleware, (case, method)
            assert via_handler[0]["status"] in (503, 429, 504)


async def test_starlette_without_handlers_answers_500(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    """Starlette sends its 500 before re-raising: too late to map, the error propagates."""
    app = LoadShedding(starlette_app(registry, Held(), handlers=False), name=NAME,
                       registry=registry)
    async with client_of(app, anyio_backend) as client:
        assert (await client.get("/raise/rate-limited")).status_code == 500


async def test_starlette_middleware_stack(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    """``Middleware(LoadShedding, ...)`` in Starlette's own stack works the same."""
    held = Held()
    app = starlette_app(registry, held, handlers=True, middleware=[
        Middleware(LoadShedding, name=NAME, max_concurrent_requests=1, registry=registry)
    ])
    async with client_of(app, anyio_backend) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.get, "/hold")
        while registry.get_circuit(NAME).in_flight < 1:
            await anyio.sleep(0.001)
        resp = await client.get("/")
        assert (resp.status_code, resp.headers["retry-after"]) == (503, "1")
        held.release.set()
    assert calls(registry, "rejected") == 1 and calls(registry, "success") == 1


async def test_the_handler_response_closes_a_websocket() -> None:
    handler = exception_handlers[MaxConcurrencyError]
    response = await handler(object(), MaxConcurrencyError("db", limit=1))
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await response({"type": "websocket", "path": "/ws"}, receive, send)
    assert [(m["type"], m["code"]) for m in sent] == [("websocket.close", 1013)]


# -- arguments, surface -------------------------------------------------------------------------


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    await text_response(send)


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"app": None}, TypeError, "app"),
        ({"app": "app"}, TypeError, "app"),
        ({"name": ""}, ValueError, "name"),
        ({"name": 3}, TypeError, "name"),
        ({"exempt": "/metrics"}, TypeError, "exempt"),
        ({"exempt": None}, TypeError, "exempt"),
        ({"exempt": (b"/metrics",)}, TypeError, "exempt"),
        ({"exempt": ("metrics",)}, ValueError, "exempt"),
        ({"exempt": ("/",)}, ValueError, "exempt"),
        ({"max_concurrent_requests": 0}, ValueError, "max_concurrent_requests"),
        ({"max_concurrent_requests": True}, TypeError, "max_concurrent_requests"),
        ({"max_concurrent_requests": "10"}, TypeError, "max_concurrent_requests"),
        ({"max_wait": -1.0}, ValueError, "max_wait"),
        ({"max_wait": math.nan}, ValueError, "max_wait"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": math.inf}, ValueError, "timeout"),
        ({"timeout": "1"}, TypeError, "timeout"),
        ({"retry_after": 0}, ValueError, "retry_after"),
        ({"retry_after": 1.5}, TypeError, "retry_after"),
        ({"retry_after": True}, TypeError, "retry_after"),
        ({"registry": object()}, TypeError, "registry"),
        ({"registry": CollectorRegistry()}, TypeError, "registry"),
    ],
)
def test_arguments_are_validated(
    kwargs: dict[str, Any], error: type[Exception], field: str, registry: resilience.Registry
) -> None:
    args: dict[str, Any] = {"app": ok_app, "name": NAME, "registry": registry, **kwargs}
    app = args.pop("app")
    with pytest.raises(error, match=field):
        LoadShedding(app, **args)
    assert registry.get_circuit(NAME).config == resilience.CommandConfig()  # untouched


def test_defaults_and_the_default_registry() -> None:
    name = "asgi-defaults-test"
    shed = LoadShedding(ok_app, name=name, exempt=["/metrics", "/static/"])
    assert shed.registry is resilience._registry.default_registry
    assert shed.exempt == ("/metrics", "/static/") and shed.retry_after == 1
    assert shed.is_exempt("/metrics") and shed.is_exempt("/static/x")
    assert not shed.is_exempt("/metrics/") and not shed.is_exempt("/")
    config = resilience.get_circuit(name).config
    assert (config.max_concurrent_requests, config.max_wait, config.timeout) == (100, 0.0, None)
    assert config.force_closed and not config.force_open
    assert repr(shed) == f"LoadShedding({ok_app!r}, name={name!r})"
    assert LoadShedding(ok_app).name == "asgi"


def test_public_surface() -> None:
    import resilience.asgi as asgi

    assert asgi.__all__ == ["LoadShedding", "exception_handlers"]
    assert LoadShedding.__module__ == "resilience.asgi"
    assert asgi.ErrorResponse.__module__ == "resilience.asgi"
    assert set(exception_handlers) == {
        CircuitOpenError, MaxConcurrencyError, RateLimitedError, CommandTimeoutError
    }


def test_importing_resilience_imports_no_framework() -> None:
    code = (
        "import sys, resilience, resilience.asgi\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('starlette', 'fastapi', 'httpx', 'hypercorn', 'trio', 'sniffio')]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [sys.executable, "-c",
         "import sys, resilience; assert 'resilience._asgi' not in sys.modules"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (0.0, 1), (0.001, 1), (1.0, 1), (1.01, 2), (59.5, 60), (math.inf, 86_400),
     (math.nan, 1), (-3.0, 1)],
)
def test_retry_after_rounds_up(value: float | None, expected: int | None) -> None:
    assert retry_after_seconds(value) == expected
