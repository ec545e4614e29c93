"""httpx transport benchmark: ``python -m bench.httpx_bench [--quick] [--backend trio]``.

Sequential loopback GETs from one ``httpx.AsyncClient`` (one kept-alive connection) to a
minimal server: a raw anyio TCP server in a child process that answers every request with the
same fixed HTTP/1.1 response (``200 ok``, 2 bytes), so that the server costs as little as
possible and the same for every case. Cases, interleaved by the bench harness (median of the
repeats, µs per request):

* bare ``httpx.AsyncHTTPTransport``;
* ``AsyncCommandTransport`` wrapping it, ``timeout=None`` (breaker, bulkhead held until the
  response is closed, failed statuses, metrics);
* ``AsyncCommandTransport`` wrapping it, ``timeout=5.0`` (the same under a deadline).

The transports alone are timed too, in this process over a stub transport that answers at once
(no sockets; the loop yields once per request, as a real one does): what the command adds to
each request in µs, on asyncio and trio, a figure that the noise of a loopback round trip
hides.

Goal: the command transport with a timeout adds at most 5% per request (ratio <= 1.05), judged
on the loopback round trip as measured, and on the stub's added µs over the loopback bare
request (the same goal, without the round trip's noise).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import NamedTuple

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import httpx

from bench._harness import AsyncCase, Result, Settings, measure_async

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent  # where ``-m bench.httpx_bench`` is found
BARE = "bare AsyncHTTPTransport"
COMMAND = "AsyncCommandTransport, timeout=5"
NO_TIMEOUT = "AsyncCommandTransport, timeout=None"
STUB = "bare stub transport"
GOAL = 1.05  # "<= 5% overhead"
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


# -- the server child ---------------------------------------------------------------------------


async def _answer(stream: anyio.abc.SocketStream) -> None:
    """Answer every request head on this connection with :data:`RESPONSE` (GETs: no body)."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = b""
    async with stream:
        while True:
            try:
                buffer += await stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            while b"\r\n\r\n" in buffer:
                _, buffer = buffer.split(b"\r\n\r\n", 1)
                await stream.send(RESPONSE)


def server_child(backend: str) -> None:
    """Serve on a free loopback port, print it, stop at EOF on stdin."""

    async def run() -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, _answer)
            print(port, flush=True)
            await anyio.to_thread.run_sync(sys.stdin.read)
            tg.cancel_scope.cancel()

    anyio.run(run, backend=backend)


class Server:
    """The server child process; ``url`` is where it listens."""

    def __init__(self, backend: str = "asyncio") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.httpx_bench", "--server-child", backend],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server child exited with {self.proc.wait()}")
        self.url = f"http://127.0.0.1:{int(line)}/"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(15)


# -- the cases ----------------------------------------------------------------------------------


def cases(url: str, stack: AsyncExitStack) -> list[AsyncCase]:
    """The three clients (closed by ``stack``), each doing ``n`` sequential GETs."""
    from prometheus_client import CollectorRegistry

    import resilience
    from resilience.httpx import AsyncCommandTransport

    def case(name: str, wrapped: bool, timeout: float | None) -> AsyncCase:
        async def setup() -> Callable[[int], Awaitable[None]]:
            transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport()
            registry = resilience.Registry(metrics_registry=CollectorRegistry())
            if wrapped:
                transport = AsyncCommandTransport(
                    transport, registry=registry, timeout=timeout, max_concurrent_requests=100)
            client = await stack.enter_async_context(httpx.AsyncClient(transport=transport))
            response = await client.get(url)
            if response.status_code != 200 or response.content != b"ok":
                raise RuntimeError(f"{name}: unexpected {response!r} {response.content!r}")
            if wrapped:
                circuit = registry.get_circuit(_name(url))
                assert circuit.in_flight == 0 and circuit.statistics().successes == 1

            async def loop(n: int) -> None:
                get = client.get
                for _ in range(n):
                    await get(url)

            return loop

        return AsyncCase(name, setup)

    return [case(BARE, False, None), case(NO_TIMEOUT, True, None), case(COMMAND, True, 5.0)]


class _Body(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"ok"

    async def aclose(self) -> None:
        pass


class _Stub(httpx.AsyncBaseTransport):
    """Answers at once with a streamed ``200 ok`` (unread, like a real transport's)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_Body())


def direct_cases() -> list[AsyncCase]:
    """The stub, bare and wrapped: ``handle_async_request`` then ``aread`` per request."""
    from prometheus_client import CollectorRegistry

    import resilience
    from resilience.httpx import AsyncCommandTransport

    request = httpx.Request("GET", "http://127.0.0.1:8000/")

    def case(name: str, wrapped: bool, timeout: float | None) -> AsyncCase:
        async def setup() -> Callable[[int], Awaitable[None]]:
            transport: httpx.AsyncBaseTransport = _Stub()
            if wrapped:
                registry = resilience.Registry(metrics_registry=CollectorRegistry())
                transport = AsyncCommandTransport(
                    transport, registry=registry, timeout=timeout, max_concurrent_requests=100)
            send = transport.handle_async_request
            checkpoint = anyio.lowlevel.checkpoint

            async def loop(n: int) -> None:
                for _ in range(n):
                    response = await send(request)
                    await response.aread()  # reads the body, then closes
                    await checkpoint()

            return loop

        return AsyncCase(name, setup)

    return [case(STUB, False, None), case(NO_TIMEOUT, True, None), case(COMMAND, True, 5.0)]


def _name(url: str) -> str:
    return "http:" + httpx.URL(url).netloc.decode()


class Loopback(NamedTuple):
    us: float  # median µs per request over the rounds
    ratio: float  # median over the rounds of (this case / the bare one, in the same round)


async def measure(url: str, rounds: int, per_round: int) -> dict[str, Loopback]:
    """``rounds`` rounds of ``per_round`` GETs per case, the cases rotating within each round:
    a shared machine's noise lands on all of them, and each round compares them side by side."""
    async with AsyncExitStack() as stack:
        loops = {case.name: await case.setup() for case in cases(url, stack)}
        for loop in loops.values():
            await loop(per_round)  # warm-up
        names = list(loops)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                t0 = time.perf_counter_ns()
                await loops[name](per_round)
                samples[name].append((time.perf_counter_ns() - t0) / per_round / 1e3)
    bare = samples[BARE]
    return {
        name: Loopback(statistics.median(s),
                       statistics.median(x / b for x, b in zip(s, bare, strict=True)))
        for name, s in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.httpx_bench")
    parser.add_argument("--quick", action="store_true", help="short run (fewer repeats)")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio",
                        help="the client's event loop (the server runs on asyncio)")
    parser.add_argument("--server-child", nargs=1, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.server_child:
        server_child(*args.server_child)
        return
    rounds, per_round = (40, 16) if args.quick else (300, 16)
    print(f"httpx over loopback: sequential GETs from one AsyncClient ({args.backend}) to a "
          f"raw TCP server answering a fixed 200 (child process); {rounds} rounds of "
          f"{per_round} requests per case, rotating; medians over the rounds")
    server = Server()
    try:
        results = anyio.run(measure, server.url, rounds, per_round, backend=args.backend)
    finally:
        server.close()
    for name, r in results.items():
        extra = "" if name == BARE else f"  {r.ratio:.3f}x the bare one, round by round"
        print(f"  {name:<40}{r.us:>9.1f} µs{extra}")
    print()
    print("the transports alone, over a stub transport (no sockets): µs per request, median")
    direct_settings = Settings(repeats=5) if args.quick else Settings()
    added: dict[str, float] = {}
    for loop_backend in ("asyncio", "trio"):
        direct = anyio.run(measure_async, loop_backend, direct_cases(), direct_settings,
                           backend=loop_backend)
        stub = direct[STUB]
        for name, d in direct.items():
            if not isinstance(d, Result) or not isinstance(stub, Result):
                print(f"  {loop_backend:<8}{name:<40}{d}")
                continue
            more = d.median_ns - stub.median_ns
            if name == COMMAND:
                added[loop_backend] = more
            extra = "" if name == STUB else f"  (+{more / 1e3:.1f} µs)"
            print(f"  {loop_backend:<8}{name:<40}{d.median_ns / 1e3:>7.1f} µs{extra}")
    base_ns = results[BARE].us * 1e3
    print()
    print(f"goal: AsyncCommandTransport (timeout=5) adds <= 5% per request (ratio <= {GOAL}):")
    checks = [("loopback round trip (as measured)", results[COMMAND].ratio)]
    checks += [(f"stub's added µs over the loopback bare ({b})", 1 + ns / base_ns)
               for b, ns in added.items()]
    for text, ratio in checks:
        print(f"  {'PASS' if ratio <= GOAL else 'MISS'}  {text:<50}{ratio:>7.3f}x")


if __name__ == "__main__":
    main()
