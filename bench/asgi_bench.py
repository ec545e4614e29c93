"""ASGI load-shedding benchmark: ``python -m bench.asgi_bench [--quick] [--backend trio]
[--timeout none] [--concurrency 8]``.

A trivial ASGI application (``200 ok``, 2 bytes) served by hypercorn on loopback, bare and
wrapped in ``resilience.asgi.LoadShedding`` (a 30 s timeout by default and a limit the load never
reaches, so every request runs through the command under a deadline and none is refused).
Each server runs in its own child process, so its CPU time (``getrusage``) is its own;
``httpx.AsyncClient`` (one per server) with N concurrent requests drives them from this
process. Rounds alternate between the two servers, rotating the order each round; figures
are the median over the rounds:

* requests/s: completed requests per second of wall time;
* server CPU per request: the server process's CPU time over the requests it served. On a
  small machine the client (httpx) may be the bottleneck, which hides the server's own cost
  from requests/s: ``1 / CPU per request`` is the server's capacity when it is the bottleneck.

The middleware alone is timed too, called directly in a loop (no server, no sockets), with
the bench harness: what it adds to each request in nanoseconds.

Goal: at most 5% throughput loss with ``LoadShedding`` (ratio >= 0.95), judged on requests/s
and on server capacity.
"""

from __future__ import annotations

import argparse
import functools
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import anyio.to_thread
import httpx

from bench._harness import AsyncCase, Result, Settings, measure_async

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent  # where ``-m bench.asgi_bench`` is found
BARE = "bare app"
SHED = "LoadShedding(app)"
VARIANTS = (BARE, SHED)
GOAL = 0.95  # "<= 5% throughput loss"
BODY = b"ok"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"2")]


class Figures(NamedTuple):
    rps: float  # requests per second (wall)
    cpu_us: float  # server CPU per request, microseconds


# -- the server child ---------------------------------------------------------------------------


async def trivial(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_child(variant: str, backend: str, timeout: str = "30") -> None:
    """Serve the variant on a free loopback port; answer ``cpu`` on stdin until EOF."""
    from hypercorn.config import Config
    from prometheus_client import CollectorRegistry

    import resilience
    from resilience.asgi import LoadShedding

    app: Any = trivial
    if variant == SHED:
        registry = resilience.Registry(metrics_registry=CollectorRegistry())
        app = LoadShedding(trivial, name="bench", max_concurrent_requests=10_000,
                           timeout=None if timeout == "none" else float(timeout),
                           registry=registry)
    sock = socket.socket()
    # hypercorn sets TCP_NODELAY only on sockets it creates itself; accepted sockets inherit
    # it from the listener (without it, Nagle + delayed ACKs stall each response ~40 ms)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.loglevel = "WARNING"  # errors still show; not the "Running on" banner
    config.backlog = 1024
    if backend == "trio":
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve  # type: ignore[assignment]

    async def control() -> None:
        print(port, flush=True)
        while True:
            line = (await anyio.to_thread.run_sync(sys.stdin.readline)).strip()
            if line != "cpu":
                return
            print(_cpu(), flush=True)

    async def run() -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(serve, app, config, shutdown_trigger=stop.wait))
            await control()
            stop.set()

    anyio.run(run, backend=backend)


class Server:
    """A server child process and its control channel."""

    def __init__(self, variant: str, backend: str, timeout: str = "30") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.asgi_bench", "--server-child", variant, backend,
             timeout],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        self.url = f"http://127.0.0.1:{int(self._line())}/"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server child exited with {self.proc.wait()}")
        return line

    def cpu(self) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write("cpu\n")
        self.proc.stdin.flush()
        return float(self._line())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(15)


# -- the middleware alone (direct calls) -------------------------------------------------------


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    pass


def direct_cases() -> list[AsyncCase]:
    """Bare app vs LoadShedding without and with a timeout, each called ``n`` times."""
    from prometheus_client import CollectorRegistry

    import resilience
    from resilience.asgi import LoadShedding

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}

    def case(name: str, timeout: float | None, wrapped: bool) -> AsyncCase:
        async def setup() -> Callable[[int], Awaitable[None]]:
            app: Any = trivial
            if wrapped:
                registry = resilience.Registry(metrics_registry=CollectorRegistry())
                app = LoadShedding(trivial, name="bench", timeout=timeout, registry=registry)

            async def loop(n: int) -> None:
                for _ in range(n):
                    await app(scope, _receive, _send)

            return loop

        return AsyncCase(name, setup)

    return [case(BARE, None, False), case(SHED + ", timeout=None", None, True),
            case(SHED + ", timeout=30", 30.0, True)]


# -- the load (in this process) -----------------------------------------------------------------


async def load(client: httpx.AsyncClient, url: str, concurrency: int, seconds: float) -> int:
    """Requests completed by ``concurrency`` loops within ``seconds``; all must be 200."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            resp = await client.get(url)
            if resp.status_code != 200:
                raise RuntimeError(f"{url}: status {resp.status_code}: {resp.text!r}")
            done += 1

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(loop)
    return done


async def measure(servers: dict[str, Server], rounds: int, seconds: float,
                  concurrency: int) -> dict[str, Figures]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    samples: dict[str, list[Figures]] = {name: [] for name in servers}
    names = list(servers)
    async with AsyncExitStack() as stack:
        clients = {  # one client (one connection pool) per server, kept warm between rounds
            name: await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=30.0))
            for name in names
        }
        for name, server in servers.items():  # warm up: connections, imports, caches
            await load(clients[name], server.url, concurrency, min(seconds, 0.3))
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                server = servers[name]
                cpu0, t0 = server.cpu(), time.perf_counter()
                n = await load(clients[name], server.url, concurrency, seconds)
                wall, cpu = time.perf_counter() - t0, server.cpu() - cpu0
                samples[name].append(Figures(n / wall, cpu / n * 1e6))
    return {
        name: Figures(statistics.median(f.rps for f in rows),
                      statistics.median(f.cpu_us for f in rows))
        for name, rows in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.asgi_bench")
    parser.add_argument("--quick", action="store_true", help="short run (fewer rounds)")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio",
                        help="the servers' event loop (the client runs on asyncio)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="concurrent requests (httpx slows down past a few dozen)")
    parser.add_argument("--timeout", default="30",
                        help="LoadShedding's timeout in seconds, or 'none' (default 30)")
    parser.add_argument("--server-child", nargs=3, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.server_child:
        server_child(*args.server_child)
        return
    rounds, seconds = (3, 0.5) if args.quick else (9, 1.5)
    print(f"ASGI load shedding (timeout={args.timeout}): a trivial app under hypercorn "
          f"({args.backend}) on loopback, "
          f"httpx with {args.concurrency} concurrent requests, median of {rounds} interleaved "
          f"rounds of {seconds} s")
    servers = {name: Server(name, args.backend, args.timeout) for name in VARIANTS}
    try:
        results = anyio.run(measure, servers, rounds, seconds, args.concurrency)
    finally:
        for server in servers.values():
            server.close()
    width = max(map(len, results)) + 2
    print(f"{'server':<{width}}{'requests/s':>14}{'server CPU/request':>22}{'capacity/s':>14}")
    for name, f in results.items():
        print(f"{name:<{width}}{f.rps:>14,.0f}{f.cpu_us:>19.1f} µs{1e6 / f.cpu_us:>14,.0f}")
    bare, shed = results[BARE], results[SHED]
    print()
    print(f"goal: LoadShedding loses <= 5% throughput (ratio >= {GOAL}):")
    checks = [
        ("requests/s (as measured)", shed.rps / bare.rps),
        ("server capacity (1 / CPU per request)", bare.cpu_us / shed.cpu_us),
    ]
    for text, ratio in checks:
        print(f"  {'PASS' if ratio >= GOAL else 'MISS'}  {text:<40}{ratio:>8.3f}x")
    print(f"  (LoadShedding adds {shed.cpu_us - bare.cpu_us:+.1f} µs of server CPU per request)")
    print()
    print("the middleware alone, called directly (no server): ns per request, median")
    settings = Settings(repeats=5 if args.quick else 11)
    for backend in ("asyncio", "trio"):
        direct = anyio.run(measure_async, backend, direct_cases(), settings, backend=backend)
        base = direct[BARE]
        for name, r in direct.items():
            if not isinstance(r, Result) or not isinstance(base, Result):
                print(f"  {backend:<8}{name:<36}{r}")
                continue
            extra = "" if name == BARE else f"  (+{r.median_ns - base.median_ns:,.0f} ns)"
            print(f"  {backend:<8}{name:<36}{r.median_ns:>9,.0f} ns{extra}")


if __name__ == "__main__":
    main()
