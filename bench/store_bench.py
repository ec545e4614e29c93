"""Shared-state benchmark: ``python -m bench.store_bench [--quick]`` (not part of ``make bench``).

``resilience.redis.RedisStore`` against a real ``redis-server`` started on a free loopback
port (no persistence; skipped cleanly when ``redis-server`` or redis-py is missing):

1. the closed-circuit call path of a ``Registry(store=...)`` next to a plain ``Registry()``,
   in the same run (``await run(...)`` on asyncio and trio, ``run_sync`` from sync code): a
   closed call must not touch the store, so the goal is at most 1.1x;
2. trip propagation: one process trips a circuit, three others (4 processes, spawned) record
   when they first refuse calls; the goal is a p99 of at most ``poll_interval`` + 50 ms;
3. one shared ``try_acquire()`` (one EVALSHA of the GCRA script) next to a bare redis-py
   ``evalsha`` of the same script with the same client settings: the goal is at most 1.3x.

Figures 1 and 3 are medians of interleaved repeats (``bench._harness``). Numbers from a
shared or busy machine are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import multiprocessing
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from bench._harness import AsyncCase, AsyncLoop, Result, Settings, SyncCase, measure_async
from bench._harness import measure_sync as measure_sync_cases

__all__ = ["main"]

POLL = 0.1  # the stores' poll interval in sections 1 and 2
OBSERVERS = 3  # section 2: processes that watch the one that trips
HOW = "apt-get install redis-server (Debian/Ubuntu), brew install redis (macOS)"


# -- a redis-server of our own ------------------------------------------------------------------


class Server:
    def __init__(self, binary: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self._ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)


def _store(url: str, poll: float = POLL) -> Any:
    from resilience.redis import RedisStore

    return RedisStore(url, poll_interval=poll, metrics_registry=CollectorRegistry())


# -- 1: the closed path ----------------------------------------------------------------------------


def _closed_cases(url: str, stores: list[Any]) -> list[AsyncCase]:
    import resilience

    def case(shared: bool) -> AsyncCase:
        async def setup() -> AsyncLoop:
            store = _store(url) if shared else None
            if store is not None:
                stores.append(store)
            registry = resilience.Registry(metrics_registry=CollectorRegistry(), store=store)

            async def ok() -> int:
                return 1

            run = registry.run
            assert await run("closed", ok) == 1

            async def loop(n: int) -> None:
                for _ in range(n):
                    await run("closed", ok)

            return loop

        return AsyncCase(f"await run() {'with' if shared else 'without'} a store", setup)

    return [case(False), case(True)]


def _closed_sync_cases(url: str, stores: list[Any]) -> list[SyncCase]:
    import resilience

    def case(shared: bool) -> SyncCase:
        def setup() -> Any:
            store = _store(url) if shared else None
            if store is not None:
                stores.append(store)
            registry = resilience.Registry(metrics_registry=CollectorRegistry(), store=store)
            registry.configure_command("closed", timeout=None)  # in the caller's thread
            run_sync = registry.run_sync

            def ok() -> int:
                return 1

            assert run_sync("closed", ok) == 1

            def loop(n: int) -> None:
                for _ in range(n):
                    run_sync("closed", ok)

            return loop

        return SyncCase(f"run_sync() {'with' if shared else 'without'} a store", setup)

    return [case(False), case(True)]


# -- 2: trip propagation across processes ----------------------------------------------------------


def _process(url: str, index: int, rounds: int, ready: Any, out: Any) -> None:
    """Process 0 trips circuit ``i`` of each round at a random phase of the poll interval;
    the others report when they first see it open (wall clock: one host)."""
    import logging

    import resilience

    logging.getLogger("resilience.circuit").setLevel(logging.ERROR)  # 4 x rounds transitions
    store = _store(url)
    try:
        registry = resilience.Registry(metrics_registry=CollectorRegistry(), store=store)
        names = [f"trip-{i}" for i in range(rounds)]
        for name in names:
            registry.configure_command(name, request_volume_threshold=1, sleep_window=600,
                                       timeout=None)
            registry.run_sync(name, int)  # attached: in the shared view
        time.sleep(3 * POLL)
        ready.wait(timeout=60)
        if index == 0:
            for name in names:
                time.sleep(random.uniform(0.15, 0.15 + POLL))

                def fail() -> None:
                    raise ConnectionError

                t0 = time.time()
                try:
                    registry.run_sync(name, fail)
                except ConnectionError:
                    pass
                assert registry.get_circuit(name).state == "open"
                out.put(("trip", name, t0))
            time.sleep(4 * POLL)  # the last publication goes out before the store closes
        else:
            for name in names:
                circuit = registry.get_circuit(name)
                deadline = time.monotonic() + 30
                while circuit.state != "open" and time.monotonic() < deadline:
                    time.sleep(0.0005)
                out.put(("seen", name, time.time()))
    finally:
        store.close()


def measure_propagation(url: str, rounds: int) -> list[float]:
    """Seconds from each trip to each observer's first refusal (rounds x observers)."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(1 + OBSERVERS)
    out = ctx.Queue()
    procs = [ctx.Process(target=_process, args=(url, i, rounds, ready, out))
             for i in range(1 + OBSERVERS)]
    for p in procs:
        p.start()
    trips: dict[str, float] = {}
    seen: list[tuple[str, float]] = []
    try:
        for _ in range(rounds * (1 + OBSERVERS)):
            kind, name, t = out.get(timeout=120)
            if kind == "trip":
                trips[name] = t
            else:
                seen.append((name, t))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return [t - trips[name] for name, t in seen]


# -- 3: one shared decision against a bare EVALSHA -------------------------------------------------


def _limiter_cases(url: str, stores: list[Any]) -> list[SyncCase]:
    def shared() -> Any:
        from resilience import RateLimiter

        store = _store(url, poll=10.0)
        stores.append(store)
        take = RateLimiter("bench", 1e9, store=store,
                           metrics_registry=CollectorRegistry()).try_acquire
        assert take()

        def loop(n: int) -> None:
            for _ in range(n):
                take()

        return loop

    def bare() -> Any:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        from resilience._store_scripts import GCRA

        client = redis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25,
                                      retry=Retry(NoBackoff(), 1), decode_responses=True)
        sha = client.script_load(GCRA)
        evalsha = client.evalsha
        interval = 1e6 / 1e9
        assert evalsha(sha, 1, "bare:limiter", interval, interval * 1e9, -1)[0] == 0

        def loop(n: int) -> None:
            for _ in range(n):
                evalsha(sha, 1, "bare:limiter", interval, interval * 1e9, -1)

        return loop

    return [SyncCase("shared try_acquire()", shared), SyncCase("redis-py evalsha (bare)", bare)]


# -- report ----------------------------------------------------------------------------------------


def _row(res: Result | str, ref: Result | str | None = None) -> None:
    if isinstance(res, str):
        print(f"   skipped: {res[:80]}")
        return
    ratio = f"{res.median_ns / ref.median_ns:.2f}" if isinstance(ref, Result) else "-"
    print(f"   {res.name:<34}{res.backend:<9}{res.median_ns / 1000:>9.2f}"
          f"{res.min_ns / 1000:>9.2f}..{res.max_ns / 1000:<9.2f}{ratio:>7}")


def _ratio(a: Result | str, b: Result | str) -> float | None:
    if isinstance(a, Result) and isinstance(b, Result):
        return a.median_ns / b.median_ns
    return None


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else "PASS" if ok else "MISS"


def main(argv: Sequence[str] | None = None) -> None:
    """Start a redis-server, measure, print the three sections and the goals."""
    parser = argparse.ArgumentParser(prog="python -m bench.store_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="3 short repeats and 5 trips instead of 11 and 30 (noisier)")
    args, _ = parser.parse_known_args(argv)
    print("== resilience shared-state (Redis) benchmark ==")
    binary = shutil.which("redis-server")
    try:
        import redis  # noqa: F401
    except ImportError:
        print("skipped: redis-py is not installed (pip install 'anyio-resilience[redis]')")
        return
    if binary is None:
        print(f"skipped: redis-server not found ({HOW})")
        return
    settings = Settings(repeats=3, target_s=0.02) if args.quick else Settings()
    rounds = 5 if args.quick else 30
    versions = []
    for dist in ("anyio-resilience", "redis", "anyio", "trio"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist} missing")
    server_version = subprocess.run([binary, "--version"], capture_output=True, text=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{platform.python_implementation()} {platform.python_version()}; "
          f"{', '.join(versions)}; {server_version.stdout.split(' sha')[0].strip()}")
    server = Server(binary)
    stores: list[Any] = []
    try:
        closed = dict(asyncio.run(measure_async("asyncio", _closed_cases(server.url, stores),
                                                settings)))
        try:
            import trio

            closed_trio = trio.run(measure_async, "trio", _closed_cases(server.url, stores),
                                   settings)
        except ImportError:
            closed_trio = {}
        closed_sync = measure_sync_cases(_closed_sync_cases(server.url, stores), settings)
        shared = measure_sync_cases(_limiter_cases(server.url, stores), settings)
        latencies = measure_propagation(server.url, rounds)
    finally:
        for s in stores:
            s.close()
        server.stop()

    print(f"\n1. closed-circuit calls, with and without a store (poll_interval {POLL:g} s)")
    print(f"   {'case':<34}{'backend':<9}{'µs/call':>9}{'min..max':>20}{'x ref':>7}")
    ratios: list[float | None] = []
    for results in (closed, closed_trio, closed_sync):
        if not results:
            continue
        without, with_ = list(results.values())
        _row(without)
        _row(with_, without)
        ratios.append(_ratio(with_, without))
    print(f"\n2. trip propagation: 1 process trips, {OBSERVERS} watch ({rounds} trips, "
          f"poll_interval {POLL:g} s)")
    lat = sorted(latencies)
    p50 = statistics.median(lat)
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
    print(f"   {len(lat)} observations: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"max {lat[-1] * 1000:.1f} ms")
    print("\n3. one shared decision: try_acquire() against a bare redis-py evalsha")
    print(f"   {'case':<34}{'backend':<9}{'µs/call':>9}{'min..max':>20}{'x ref':>7}")
    ours, bare = shared["shared try_acquire()"], shared["redis-py evalsha (bare)"]
    _row(bare)
    _row(ours, bare)
    limiter_ratio = _ratio(ours, bare)

    print("\ngoals (judged on medians, same run):")
    goals: list[tuple[bool | None, str, str]] = []
    for backend, r in zip(["asyncio", "trio", "sync"][: len(ratios)], ratios, strict=False):
        goals.append((None if r is None else r <= 1.1,
                      f"closed call with a store <= 1.1x without ({backend})",
                      "-" if r is None else f"{r:.2f}x"))
    goal = POLL + 0.05
    what = f"trip propagation p99 <= poll_interval + 50 ms ({goal * 1000:.0f} ms)"
    goals.append((p99 <= goal, what, f"{p99 * 1000:.1f} ms"))
    goals.append((None if limiter_ratio is None else limiter_ratio <= 1.3,
                  "shared try_acquire() <= 1.3x a bare evalsha",
                  "-" if limiter_ratio is None else f"{limiter_ratio:.2f}x"))
    for ok, what, measured in goals:
        print(f"   {_verdict(ok):<5} {what:<66} {measured}")


if __name__ == "__main__":
    main()
