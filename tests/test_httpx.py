"""resilience.httpx under a real server: hypercorn on loopback serving a scripted ASGI app,
driven by real httpx clients through AsyncCommandTransport (asyncio and trio) and
CommandTransport (sync, the server in a thread of its own).

Each test scripts the server's answers (status, headers, body, chunks) and holds requests on
:class:`Gate`\\ s, never on sleeps: a slot is busy because the test holds the response, a
timeout fires because the test holds the headers.
"""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import httpx
import pytest
from _hypercorn import hypercorn_serving
from prometheus_client import CollectorRegistry

import resilience
from resilience import (
    CircuitOpenError,
    CommandTimeoutError,
    FailedResultError,
    MaxConcurrencyError,
    Retry,
    RetryScheduled,
)
from resilience.httpx import (
    AsyncCommandTransport,
    CommandTransport,
    HTTPCircuitOpenError,
    HTTPCommandTimeoutError,
    HTTPMaxConcurrencyError,
)
from resilience.httpx._policy import FailedStatuses, parse_retry_after
from resilience.metrics import set_max_names

NO_BACKOFF = Retry(attempts=3, backoff=0.0, budget=None)

Scope = dict[str, Any]


# -- the scripted server ------------------------------------------------------------------------


class Gate:
    """Opened from any thread (the test's), awaited in the server's event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = False
        self._waiters: list[tuple[anyio.Event, Any, int]] = []

    def set(self) -> None:
        with self._lock:
            self._open = True
            waiters, self._waiters = self._waiters, []
        for event, token, thread in waiters:
            if thread == threading.get_ident():
                event.set()
            else:
                anyio.from_thread.run_sync(event.set, token=token)

    async def wait(self) -> None:
        with self._lock:
            if self._open:
                return
            event = anyio.Event()
            self._waiters.append((event, anyio.lowlevel.current_token(), threading.get_ident()))
        await event.wait()


@dataclass
class Step:
    """One scripted answer: ``before`` holds the headers, ``between`` holds the body (the
    headers are sent first); ``fail_body`` breaks the connection after the headers."""

    status: int = 200
    body: bytes = b"ok"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    before: Gate | None = None
    between: Gate | None = None
    fail_body: bool = False


class Script:
    """An ASGI app answering the n-th request with ``steps[n]`` (the last one repeats), and
    recording each request (method, path, body)."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps) or [Step()]
        self.requests: list[tuple[str, str, bytes]] = []
        self._arrived = threading.Condition()
        self._events: list[anyio.Event] = []

    def gates(self) -> list[Gate]:
        return [g for s in self.steps for g in (s.before, s.between) if g is not None]

    async def wait_requests(self, n: int) -> None:
        """Until ``n`` requests reached the app (from the server's event loop)."""
        while len(self.requests) < n:
            event = anyio.Event()
            self._events.append(event)
            await event.wait()

    def wait_requests_sync(self, n: int) -> None:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.requests) >= n, timeout=10)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        step = self.steps[min(len(self.requests), len(self.steps) - 1)]
        with self._arrived:
            self.requests.append((scope["method"], scope["path"], body))
            self._arrived.notify_all()
        events, self._events = self._events, []
        for event in events:
            event.set()
        if step.before is not None:
            await step.before.wait()
        headers = [(b"content-type", b"text/plain"), *step.headers]
        if not step.fail_body:
            headers.append((b"content-length", str(len(step.body)).encode()))
        await send({"type": "http.response.start", "status": step.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": True})  # flush
        if step.fail_body:
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            raise RuntimeError("the scripted app breaks the response")
        if step.between is not None:
            await step.between.wait()
        await send({"type": "http.response.body", "body": step.body})


def free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@asynccontextmanager
async def serving(app: Script, backend: str) -> AsyncIterator[int]:
    """Serve ``app`` with hypercorn on this backend on a free loopback port; yield the port.
    On the way out every gate of the script opens, so no request hangs the shutdown."""
    async with hypercorn_serving(app, backend) as port:
        try:
            yield port
        finally:
            for gate in app.gates():
                gate.set()


@contextmanager
def serving_in_thread(app: Script) -> Iterator[int]:
    """The same, in an event loop of its own in another thread (for the sync client)."""
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        with portal.wrap_async_context_manager(serving(app, "asyncio")) as port:
            yield port


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def registry(metrics_registry: CollectorRegistry) -> resilience.Registry:
    reg = resilience.Registry(metrics_registry=metrics_registry)
    METRICS[id(reg)] = metrics_registry
    return reg


METRICS: dict[int, CollectorRegistry] = {}


def calls(reg: resilience.Registry, command: str, outcome: str) -> float:
    value = METRICS[id(reg)].get_sample_value(
        "resilience_command_calls_total", {"command": command, "outcome": outcome})
    return value or 0.0


def retries(reg: resilience.Registry, command: str, outcome: str) -> float:
    value = METRICS[id(reg)].get_sample_value(
        "resilience_command_retries_total", {"command": command, "outcome": outcome})
    return value or 0.0


def url(port: int, path: str = "/", host: str = "127.0.0.1") -> str:
    return f"http://{host}:{port}{path}"


def cmd(port: int, host: str = "127.0.0.1") -> str:
    return f"http:{host}:{port}"


@asynccontextmanager
async def client_for(
    script: Script, backend: str, registry: resilience.Registry, **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, int]]:
    async with serving(script, backend) as port:
        transport = AsyncCommandTransport(registry=registry, **options)
        async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:
            yield client, port


def mock_client(registry: resilience.Registry, **options: Any) -> httpx.AsyncClient:
    def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="ok")

    transport = AsyncCommandTransport(httpx.MockTransport(ok), registry=registry, **options)
    return httpx.AsyncClient(transport=transport)


# -- naming --------------------------------------------------------------------------------------


async def test_one_command_per_host_and_explicit_port(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    async with client_for(Script(), anyio_backend, registry) as (client, port):
        for host in ("127.0.0.1", "localhost", "127.0.0.1"):
            response = await client.get(url(port, "/x", host))
            assert response.status_code == 200 and response.text == "ok"
    assert calls(registry, cmd(port), "success") == 2
    assert calls(registry, cmd(port, "localhost"), "success") == 1
    assert registry.get_circuit(cmd(port)).in_flight == 0


@pytest.mark.parametrize(("address", "name"), [
    ("http://api.test/x", "http:api.test"),
    ("http://api.test:80/x", "http:api.test"),        # default ports are dropped
    ("https://api.test:443/x", "http:api.test"),
    ("https://api.test:8443/x", "http:api.test:8443"),
    ("http://API.Test:81", "http:api.test:81"),
    ("http://[::1]:8080/", "http:[::1]:8080"),
])
async def test_default_names(registry: resilience.Registry, address: str, name: str) -> None:
    async with mock_client(registry) as client:
        assert (await client.get(address)).status_code == 200
    assert calls(registry, name, "success") == 1


async def test_name_str_and_callable(registry: resilience.Registry) -> None:
    async with mock_client(registry, name="upstream") as client:
        await client.get("http://a.test/")
        await client.get("http://b.test:8080/")
    assert calls(registry, "upstream", "success") == 2

    def by_domain(request: httpx.Request) -> str:
        return "http:" + request.url.host.split(".", 1)[1]

    async with mock_client(registry, name=by_domain) as client:
        await client.get("http://a.example.org/")
        await client.get("http://b.example.org/")
    assert calls(registry, "http:example.org", "success") == 2


async def test_name_callable_must_return_a_name(registry: resilience.Registry) -> None:
    async with mock_client(registry, name=lambda request: 42) as client:
        with pytest.raises(TypeError, match="returned 42"):
            await client.get("http://a.test/")
    async with mock_client(registry, name=lambda request: "") as client:
        with pytest.raises(ValueError, match="returned ''"):
            await client.get("http://a.test/")


async def test_the_names_cap_says_to_pass_name(
    registry: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    set_max_names(2, metrics_registry)
    async with mock_client(registry) as client:
        await client.get("http://a.test/")
        await client.get("http://b.test/")
        with pytest.raises(ValueError, match=r"pass name=.*callable") as info:
            await client.get("http://c.test/")
        assert "set_max_names" in str(info.value.__cause__)
        await client.get("http://a.test/")  # known hosts go on
    async with mock_client(registry, name="all") as client:  # the way out...
        with pytest.raises(ValueError):  # (...once the cap has room for one more name)
            await client.get("http://c.test/")
    set_max_names(3, metrics_registry)
    async with mock_client(registry, name="all") as client:
        assert (await client.get("http://c.test/")).status_code == 200


# -- failed statuses and retries -------------------------------------------------------------


async def test_failed_statuses_are_counted_and_returned(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    script = Script(Step(503, b"down"), Step(429, b"slow down"), Step(500, b"oops"),
                    Step(404, b"nope"))
    async with client_for(script, anyio_backend, registry) as (client, port):
        got = [await client.get(url(port)) for _ in range(4)]
    assert [(r.status_code, r.text) for r in got] == [
        (503, "down"), (429, "slow down"), (500, "oops"), (404, "nope")]
    assert calls(registry, cmd(port), "failure") == 3
    assert calls(registry, cmd(port), "success") == 1  # a 404 is the caller's answer
    assert registry.get_circuit(cmd(port)).in_flight == 0


async def test_get_is_retried_until_it_succeeds(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    script = Script(Step(503, b"down"), Step(502, b"bad"), Step(200, b"finally"))
    async with client_for(script, anyio_backend, registry, retry=NO_BACKOFF,
                          max_concurrent_requests=1) as (client, port):
        response = await client.get(url(port, "/r"))
    assert (response.status_code, response.text) == (200, "finally")
    assert [r[:2] for r in script.requests] == [("GET", "/r")] * 3
    assert calls(registry, cmd(port), "failure") == 2
    assert calls(registry, cmd(port), "success") == 1
    assert retries(registry, cmd(port), "retried") == 2
    assert registry.get_circuit(cmd(port)).in_flight == 0  # every retried response was closed


async def test_no_retry_left_returns_the_last_failed_response(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    script = Script(Step(503, b"one"), Step(503, b"two"), Step(503, b"three"))
    async with client_for(script, anyio_backend, registry, retry=NO_BACKOFF) as (client, port):
        response = await client.get(url(port))
        assert (response.status_code, response.text) == (503, "three")
        async with client.stream("GET", url(port)) as streamed:  # unread: holds its slot
            assert streamed.status_code == 503
            assert registry.get_circuit(cmd(port)).in_flight == 1
            assert await streamed.aread() == b"three"
    assert len(script.requests) == 6
    assert retries(registry, cmd(port), "exhausted") == 2
    assert registry.get_circuit(cmd(port)).in_flight == 0


async def test_post_is_not_retried_unless_retry_methods_says_so(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    script = Script(Step(503, b"down"), Step(200, b"created"))
    async with client_for(script, anyio_backend, registry, retry=NO_BACKOFF) as (client, port):
        response = await client.post(url(port), content=b"payload")
    assert response.status_code == 503 and len(script.requests) == 1

    script = Script(Step(503, b"down"), Step(200, b"created"))
    async with client_for(script, anyio_backend, registry, retry=NO_BACKOFF,
                          retry_methods=("post",)) as (client, port):
        response = await client.post(url(port), content=b"payload")
        assert response.status_code == 200
        response = await client.get(url(port))  # GET is not in retry_methods any more
    assert script.requests[:2] == [("POST", "/", b"payload")] * 2  # the body was replayed


async def test_a_streamed_request_body_is_never_retried(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"chunk one, "
        yield b"chunk two"

    script = Script(Step(503, b"down"), Step(200))
    async with client_for(script, anyio_backend, registry, retry=NO_BACKOFF) as (client, port):
        response = await client.put(url(port), content=body())
        assert response.status_code == 503
        response = await client.put(url(port), content=b"bytes are replayable")
        assert response.status_code == 200
    assert [r[2] for r in script.requests] == [b"chunk one, chunk two", b"bytes are replayable"]


async def test_the_policy_on_still_decides(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    script = Script(Step(503, b"down"), Step(200))
    async with client_for(script, anyio_backend, registry,
                          retry=Retry(attempts=3, backoff=0.0, budget=None,
                                      on=(httpx.ConnectError,))) as (client, port):
        assert (await client.get(url(port))).status_code == 503  # failed results: not in `on`
    assert len(script.requests) == 1


async def test_a_policy_set_later_is_gated_too(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    script = Script(Step(503), Step(503), Step(503), Step(200))
    async with client_for(script, anyio_backend, registry) as (client, port):
        await client.get(url(port))  # no policy: one attempt
        registry.configure_command(cmd(port), retry=NO_BACKOFF)  # set behind our back
        assert (await client.post(url(port))).status_code == 503  # still never retried
        assert (await client.get(url(port))).status_code == 200
    assert [r[0] for r in script.requests] == ["GET", "POST", "GET", "GET"]


# -- Retry-After ---------------------------------------------------------------------------------


def mock_clock_backends() -> list[Any]:
    import trio.testing

    return [
        pytest.param(("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}),
                     id="trio+MockClock"),
        pytest.param("asyncio", id="asyncio"),
    ]


@pytest.mark.parametrize("anyio_backend", mock_clock_backends())
async def test_retry_after_is_honoured(anyio_backend: Any, registry: resilience.Registry) -> None:
    mocked = anyio_backend != "asyncio"
    hint = "2" if mocked else "0.02"  # under trio's MockClock a sleep takes no real time
    delays: list[float] = []
    registry.subscribe(
        lambda e: delays.append(e.delay) if isinstance(e, RetryScheduled) else None)
    script = Script(Step(503, b"busy", headers=[(b"retry-after", hint.encode())]), Step(200))
    policy = Retry(attempts=2, backoff=0.0, max_backoff=3.0, budget=None)
    backend = "trio" if mocked else "asyncio"
    async with client_for(script, backend, registry, retry=policy) as (client, port):
        started = anyio.current_time()
        response = await client.get(url(port))
        waited = anyio.current_time() - started
    assert response.status_code == 200 and len(script.requests) == 2
    assert delays == [float(hint)]
    assert waited >= float(hint)


async def test_retry_after_beyond_max_backoff_stops(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    script = Script(Step(429, b"later", headers=[(b"retry-after", b"120")]), Step(200))
    policy = Retry(attempts=3, backoff=0.0, max_backoff=1.0, budget=None)
    async with client_for(script, anyio_backend, registry, retry=policy) as (client, port):
        response = await client.get(url(port))
    assert (response.status_code, response.text) == (429, "later")
    assert len(script.requests) == 1
    assert retries(registry, cmd(port), "exhausted") == 1


def test_retry_after_parsing() -> None:
    now = 1_700_000_000.0  # 2023-11-14 22:13:20 GMT
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", lambda: now) == 30.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", lambda: now) == 0.0  # past
    for garbage in ("", "soon", "-1", "1e3", "inf", "nan", "3 s", "Tue, 99 Nov 2023"):
        assert parse_retry_after(garbage, lambda: now) is None, garbage
    policy = FailedStatuses(frozenset({503}))
    assert policy(httpx.Response(503)) and not policy(httpx.Response(200))
    assert policy.retry_after_of(httpx.Response(503, headers={"Retry-After": "7"})) == 7.0
    assert policy.retry_after_of(httpx.Response(503)) is None
    assert policy.retry_after_of(httpx.Response(503, headers={"Retry-After": "x"})) is None


# -- refusals and timeouts ----------------------------------------------------------------------


async def test_an_open_circuit_fails_fast_without_a_request(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    script = Script(Step(500, b"broken"))
    async with client_for(script, anyio_backend, registry, request_volume_threshold=2,
                          sleep_window=30.0) as (client, port):
        assert (await client.get(url(port))).status_code == 500
        assert (await client.get(url(port))).status_code == 500
        assert registry.get_circuit(cmd(port)).state == "open"
        with pytest.raises(HTTPCircuitOpenError) as info:
            await client.get(url(port, "/refused"))
    assert len(script.requests) == 2  # the third never reached the server
    exc = info.value
    assert isinstance(exc, CircuitOpenError) and isinstance(exc, httpx.TransportError)
    assert isinstance(exc, httpx.HTTPError) and not isinstance(exc, httpx.TimeoutException)
    assert exc.request.url == url(port, "/refused")
    assert exc.command == cmd(port)
    assert exc.retry_after is not None and 29 < exc.retry_after <= 30
    assert exc.statistics.failures == 2
    assert type(exc.__cause__) is CircuitOpenError
    assert calls(registry, cmd(port), "short_circuited") == 1


async def test_the_errors_are_caught_by_either_family(registry: resilience.Registry) -> None:
    registry.configure_command("http:a.test", force_open=True)
    async with mock_client(registry) as client:
        for family in (httpx.HTTPError, httpx.RequestError, httpx.TransportError,
                       CircuitOpenError, resilience.ResilienceError):
            try:
                await client.get("http://a.test/")
            except family as exc:
                assert isinstance(exc, HTTPCircuitOpenError)
                assert exc.retry_after is None  # forced open
            else:
                raise AssertionError(family)


async def test_max_concurrency_counts_unread_responses(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    body = Gate()
    script = Script(Step(200, b"slow body", between=body), Step(200, b"next"))
    async with client_for(script, anyio_backend, registry,
                          max_concurrent_requests=1) as (client, port):
        circuit = registry.get_circuit(cmd(port))
        async with client.stream("GET", url(port)) as first:
            assert first.status_code == 200 and circuit.in_flight == 1
            with pytest.raises(HTTPMaxConcurrencyError) as info:
                await client.get(url(port))
            body.set()
            assert await first.aread() == b"slow body"
        assert circuit.in_flight == 0
        assert (await client.get(url(port))).text == "next"
    exc = info.value
    assert isinstance(exc, MaxConcurrencyError) and isinstance(exc, httpx.TransportError)
    assert exc.limit == 1 and exc.command == cmd(port) and exc.request.method == "GET"
    assert type(exc.__cause__) is MaxConcurrencyError
    assert len(script.requests) == 2


async def test_a_retried_response_gives_its_slot_back_first(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    """With one slot, the retry is admitted: the failed response (unread: the server holds
    its body) was closed before the next attempt."""
    held = Gate()
    script = Script(Step(503, b"down", between=held), Step(200, b"ok"))
    async with client_for(script, anyio_backend, registry, retry=NO_BACKOFF,
                          max_concurrent_requests=1) as (client, port):
        response = await client.get(url(port))
    assert response.text == "ok" and len(script.requests) == 2
    assert calls(registry, cmd(port), "rejected") == 0
    assert registry.get_circuit(cmd(port)).in_flight == 0


async def test_slot_is_held_until_a_streamed_response_is_closed(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    body = Gate()
    script = Script(Step(200, b"streamed", between=body))
    async with client_for(script, anyio_backend, registry) as (client, port):
        circuit = registry.get_circuit(cmd(port))
        request = client.build_request("GET", url(port))
        response = await client.send(request, stream=True)
        assert circuit.in_flight == 1
        body.set()
        assert [c async for c in response.aiter_bytes()] == [b"streamed"]
        assert circuit.in_flight == 0  # read to the end: closed
        await response.aclose()  # idempotent
        assert circuit.in_flight == 0

        response = await client.send(client.build_request("GET", url(port)), stream=True)
        assert circuit.in_flight == 1
        await response.aclose()  # closed unread
        await response.aclose()
        assert circuit.in_flight == 0


async def test_a_queued_waiter_waits_for_the_unread_response(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    headers, body = Gate(), Gate()
    script = Script(Step(200, b"first", before=headers, between=body), Step(200, b"second"))
    async with client_for(script, anyio_backend, registry, max_concurrent_requests=1,
                          max_wait=10.0) as (client, port):
        core = resilience._registry.core_of(registry, cmd(port))
        first_open, done = anyio.Event(), anyio.Event()
        in_flight: list[int] = []

        async def first() -> None:
            async with client.stream("GET", url(port, "/first")) as response:
                in_flight.append(core.in_flight)
                first_open.set()
                await done.wait()
                body.set()
                await response.aread()

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await script.wait_requests(1)
            tg.start_soon(client.get, url(port, "/second"))
            with anyio.fail_after(10):
                while not core.waiters:
                    await anyio.sleep(0.001)
            headers.set()
            await first_open.wait()
            done.set()
        assert in_flight == [1]  # the waiter was not let in beside the open response


async def test_a_failing_body_gives_the_slot_back(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    script = Script(Step(200, fail_body=True))
    async with client_for(script, anyio_backend, registry) as (client, port):
        response = await client.send(client.build_request("GET", url(port)), stream=True)
        assert registry.get_circuit(cmd(port)).in_flight == 1
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()
        assert registry.get_circuit(cmd(port)).in_flight == 0  # without aclose()


async def test_the_timeout_covers_the_headers_only(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    headers, body = Gate(), Gate()
    script = Script(Step(200, b"late", before=headers), Step(200, b"slow body", between=body))
    async with client_for(script, anyio_backend, registry, timeout=0.05) as (client, port):
        with pytest.raises(HTTPCommandTimeoutError) as info:
            await client.get(url(port, "/held"))
        headers.set()
        async with client.stream("GET", url(port)) as response:
            await anyio.sleep(0.2)  # four timeouts long: the body is not the command's
            body.set()
            assert await response.aread() == b"slow body"
    exc = info.value
    assert isinstance(exc, CommandTimeoutError) and isinstance(exc, TimeoutError)
    assert isinstance(exc, httpx.TimeoutException) and isinstance(exc, httpx.TransportError)
    assert exc.timeout == 0.05 and exc.request.url.path == "/held"
    assert type(exc.__cause__) is CommandTimeoutError
    assert calls(registry, cmd(port), "timeout") == 1
    assert calls(registry, cmd(port), "success") == 1
    assert registry.get_circuit(cmd(port)).in_flight == 0


# -- fallbacks and the wrapped transport's own errors ------------------------------------------


async def test_fallback_returns_a_response(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    given: list[Exception] = []

    async def cached(exc: Exception) -> httpx.Response:
        given.append(exc)
        return httpx.Response(200, text="cached")

    held = Gate()
    script = Script(Step(503, b"down", between=held))
    async with client_for(script, anyio_backend, registry, fallback=cached,
                          max_concurrent_requests=1) as (client, port):
        response = await client.get(url(port))  # a failed result: the fallback's answer
        assert (response.status_code, response.text) == (200, "cached")
        assert registry.get_circuit(cmd(port)).in_flight == 0  # the 503 was closed
        registry.configure_command(cmd(port), force_open=True)
        response = await client.get(url(port))
        assert response.text == "cached"
    failed, refused = given
    assert isinstance(failed, FailedResultError) and failed.result.status_code == 503
    assert isinstance(refused, HTTPCircuitOpenError) and refused.request.url == url(port)
    assert len(script.requests) == 1


def test_a_fallback_must_return_a_response(registry: resilience.Registry) -> None:
    def not_a_response(exc: Exception) -> Any:
        return "cached"

    registry.configure_command("http:a.test", force_open=True)
    transport = CommandTransport(httpx.MockTransport(lambda r: httpx.Response(200)),
                                 registry=registry, fallback=not_a_response)
    with httpx.Client(transport=transport) as client:
        with pytest.raises(TypeError, match="must return an httpx.Response") as info:
            client.get("http://a.test/")
    assert isinstance(info.value.__context__, CircuitOpenError)


async def test_the_wrapped_transports_errors_are_unchanged(
    anyio_backend: str, registry: resilience.Registry
) -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()  # nobody listens there any more: connection refused
    transport = AsyncCommandTransport(registry=registry, retry=NO_BACKOFF)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(url(port))
    assert type(info.value) is httpx.ConnectError
    assert calls(registry, cmd(port), "failure") == 3  # retried: a GET that never got sent

    own = CircuitOpenError("inner", retry_after=1.0, statistics=resilience.CircuitStatistics())

    def inner(request: httpx.Request) -> httpx.Response:
        raise own

    async with httpx.AsyncClient(transport=AsyncCommandTransport(
            httpx.MockTransport(inner), registry=registry, name="inner")) as client:
        with pytest.raises(CircuitOpenError) as raised:
            await client.get("http://a.test/")
    assert raised.value is own  # the same object, not converted


# -- the sync transport ---------------------------------------------------------------------------


def test_sync_transport_counts_retries_and_streams(registry: resilience.Registry) -> None:
    body = Gate()
    script = Script(Step(503, b"down"), Step(200, b"ok"), Step(200, b"stream", between=body))
    with serving_in_thread(script) as port, httpx.Client(
        transport=CommandTransport(registry=registry, retry=NO_BACKOFF, timeout=5.0,
                                   max_concurrent_requests=1)
    ) as client:
        assert client.get(url(port)).text == "ok"
        circuit = registry.get_circuit(cmd(port))
        with client.stream("GET", url(port)) as response:
            assert circuit.in_flight == 1
            with pytest.raises(HTTPMaxConcurrencyError):
                client.get(url(port))
            body.set()
            assert response.read() == b"stream"
        assert circuit.in_flight == 0
    assert calls(registry, cmd(port), "failure") == 1
    assert calls(registry, cmd(port), "success") == 2


def test_sync_abandoned_request_is_closed_when_its_thread_returns(
    registry: resilience.Registry,
) -> None:
    headers = Gate()
    script = Script(Step(200, b"too late", before=headers), Step(200, b"next"))
    with serving_in_thread(script) as port, httpx.Client(
        transport=CommandTransport(registry=registry, timeout=0.05)
    ) as client:
        circuit = registry.get_circuit(cmd(port))
        with pytest.raises(HTTPCommandTimeoutError) as info:
            client.get(url(port))
        assert isinstance(info.value, httpx.TimeoutException)
        assert circuit.in_flight == 1  # the thread still waits for the headers: its slot
        headers.set()
        deadline = time.monotonic() + 10
        while circuit.in_flight and time.monotonic() < deadline:
            time.sleep(0.001)  # the thread gets the response, closes it and returns
        assert circuit.in_flight == 0
        assert client.get(url(port)).text == "next"
    assert calls(registry, cmd(port), "timeout") == 1


def test_sync_retry_after_a_timeout_closes_the_late_first_response(
    registry: resilience.Registry,
) -> None:
    """The first attempt times out and is retried; its response, arriving after the second
    attempt's, is closed by its own thread (the retry gave each attempt its own state)."""
    late = Gate()
    script = Script(Step(200, b"first, too late", before=late), Step(200, b"second"))
    with serving_in_thread(script) as port, httpx.Client(
        transport=CommandTransport(registry=registry, timeout=0.05, retry=NO_BACKOFF)
    ) as client:
        circuit = registry.get_circuit(cmd(port))
        assert client.get(url(port)).text == "second"
        assert circuit.in_flight == 1  # the first attempt's thread, still waiting
        late.set()
        deadline = time.monotonic() + 10
        while circuit.in_flight and time.monotonic() < deadline:
            time.sleep(0.001)
        assert circuit.in_flight == 0
    assert calls(registry, cmd(port), "timeout") == 1
    assert calls(registry, cmd(port), "success") == 1


def test_sync_fallback_and_refusals(registry: resilience.Registry) -> None:
    def fallback(exc: Exception) -> httpx.Response:
        assert isinstance(exc, HTTPCircuitOpenError)
        return httpx.Response(200, text="cached")

    transport = CommandTransport(httpx.MockTransport(lambda r: httpx.Response(200)),
                                 registry=registry)
    registry.configure_command("http:a.test", force_open=True)
    with httpx.Client(transport=transport) as client:
        with pytest.raises(httpx.TransportError) as info:
            client.get("http://a.test/")
    assert isinstance(info.value, HTTPCircuitOpenError) and info.value.request.method == "GET"
    with httpx.Client(transport=CommandTransport(
            httpx.MockTransport(lambda r: httpx.Response(200)), registry=registry,
            fallback=fallback)) as client:
        assert client.get("http://a.test/").text == "cached"


# -- construction, surface ------------------------------------------------------------------------


def no_argument() -> httpx.Response:
    return httpx.Response(200)


def test_construction_is_validated(registry: resilience.Registry) -> None:
    with pytest.raises(TypeError, match="timout"):
        AsyncCommandTransport(registry=registry, timout=1.0)
    with pytest.raises(ValueError, match="max_concurrent_requests"):
        CommandTransport(registry=registry, max_concurrent_requests=0)
    with pytest.raises(TypeError, match="retry"):
        AsyncCommandTransport(registry=registry, retry=3)
    with pytest.raises(TypeError, match="failed_statuses"):
        AsyncCommandTransport(registry=registry, failed_statuses=503)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1000"):
        AsyncCommandTransport(registry=registry, failed_statuses=(1000,))
    with pytest.raises(TypeError, match="retry_methods"):
        AsyncCommandTransport(registry=registry, retry_methods="GET")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="registry"):
        AsyncCommandTransport(registry=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AsyncBaseTransport"):
        AsyncCommandTransport(httpx.HTTPTransport())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="one positional argument"):
        CommandTransport(registry=registry, fallback=no_argument)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name"):
        CommandTransport(registry=registry, name=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CommandTransport(registry=registry, name="")


def test_public_surface_and_pickling() -> None:
    import resilience.httpx as public

    for cls_name in public.__all__:
        assert getattr(public, cls_name).__module__ == "resilience.httpx"
    request = httpx.Request("GET", "http://a.test/")
    errors: list[HTTPCircuitOpenError | HTTPMaxConcurrencyError | HTTPCommandTimeoutError] = [
        HTTPCircuitOpenError("c", retry_after=1.5, statistics=resilience.CircuitStatistics(),
                             request=request),
        HTTPMaxConcurrencyError("c", limit=3, request=request),
        HTTPCommandTimeoutError("c", timeout=0.5, request=request),
    ]
    for exc in errors:
        copy = pickle.loads(pickle.dumps(exc))
        assert type(copy) is type(exc) and str(copy) == str(exc)
        assert copy.request.url == request.url


def test_import_resilience_does_not_import_httpx() -> None:
    code = "import sys, resilience; assert 'httpx' not in sys.modules, 'httpx imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
