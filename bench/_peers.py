"""Reference cases: bare awaits, raw timeout/limit primitives and peer breaker libraries.

Each peer is configured as close to a resilience command as it allows: a breaker around a
trivial coroutine (trip threshold 20, 5 s recovery), plus a concurrency limit of 10 and a 1 s
timeout where the peer offers them. Where a peer has a rolling window (interlock-cb) it is the
command's: 10 s, time-based, 50 % error rate over at least the threshold's volume. Peers are
imported lazily so that a missing or broken one only loses its own rows; the harness prints
the reason.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio
import anyio.lowlevel

from bench._harness import AsyncCase, AsyncLoop, SyncCase, SyncLoop

__all__ = [
    "CHECKPOINT",
    "PEERS",
    "Boom",
    "asyncio_primitives",
    "bare_async",
    "bare_checkpoint",
    "flaky",
    "open_circuit_loop",
    "peer_cases",
    "peer_versions",
    "sync_references",
    "trio_primitives",
    "work",
    "work_sync",
]

AsyncFn = Callable[[], Coroutine[Any, Any, Any]]
THRESHOLD = 20  # Hystrix's request_volume_threshold; the peers count consecutive failures
RECOVERY_S = 5.0  # Hystrix's sleep_window
TRIPPED_RECOVERY_S = 3600.0  # keeps a tripped peer open for the whole run
CHECKPOINT = "bare anyio.lowlevel.checkpoint()"


class Boom(Exception):
    """The failure a flaky function raises to trip a breaker."""


async def work() -> int:
    """The trivial dependency every case calls."""
    return 1


def work_sync() -> int:
    return 1


async def flaky() -> int:
    """A dependency that always fails (the failure-path cases)."""
    raise Boom


def call_loop(call: AsyncFn) -> AsyncLoop:
    """``n`` times ``await call()``: the shape of every success-path case."""

    async def loop(n: int) -> None:
        for _ in range(n):
            await call()

    return loop


def open_circuit_loop(call: AsyncFn, error: type[BaseException]) -> AsyncLoop:
    """``n`` calls each rejected with ``error`` (caught), the open-circuit fast path."""

    async def loop(n: int) -> None:
        for _ in range(n):
            try:
                await call()
            except error:
                pass

    return loop


async def bare_async() -> AsyncLoop:
    return call_loop(work)


async def bare_checkpoint() -> AsyncLoop:
    """``n`` times ``await anyio.lowlevel.checkpoint()``: what a refused call must yield."""
    return call_loop(anyio.lowlevel.checkpoint)


# --- raw primitives ---------------------------------------------------------------------------


async def _asyncio_timeout() -> AsyncLoop:
    async def loop(n: int) -> None:
        for _ in range(n):
            async with asyncio.timeout(1.0):
                await work()

    return loop


async def _anyio_fail_after() -> AsyncLoop:
    async def loop(n: int) -> None:
        for _ in range(n):
            with anyio.fail_after(1.0):
                await work()

    return loop


async def _asyncio_semaphore() -> AsyncLoop:
    sem = asyncio.Semaphore(10)

    async def loop(n: int) -> None:
        for _ in range(n):
            async with sem:
                await work()

    return loop


async def _asyncio_timeout_semaphore() -> AsyncLoop:
    sem = asyncio.Semaphore(10)

    async def loop(n: int) -> None:
        for _ in range(n):
            async with sem, asyncio.timeout(1.0):
                await work()

    return loop


async def _trio_fail_after() -> AsyncLoop:
    import trio

    async def loop(n: int) -> None:
        for _ in range(n):
            with trio.fail_after(1.0):
                await work()

    return loop


def asyncio_primitives() -> list[AsyncCase]:
    return [
        AsyncCase("bare await f()", bare_async),
        AsyncCase(CHECKPOINT, bare_checkpoint),
        AsyncCase("asyncio.timeout(1.0) block", _asyncio_timeout),
        AsyncCase("anyio.fail_after(1.0) block", _anyio_fail_after),
        AsyncCase("asyncio.Semaphore(10) block", _asyncio_semaphore),
        AsyncCase("asyncio Semaphore + timeout (hand-rolled)", _asyncio_timeout_semaphore),
    ]


def trio_primitives() -> list[AsyncCase]:
    return [
        AsyncCase("bare await f()", bare_async),
        AsyncCase(CHECKPOINT, bare_checkpoint),
        AsyncCase("trio.fail_after(1.0) block", _trio_fail_after),
        AsyncCase("anyio.fail_after(1.0) block", _anyio_fail_after),
    ]


# --- peer libraries (asyncio) -----------------------------------------------------------------

Wrap = Callable[[AsyncFn, int, float], Awaitable[AsyncFn]]


async def _circuitbreaker(fn: AsyncFn, threshold: int, recovery: float) -> AsyncFn:
    from circuitbreaker import CircuitBreaker  # type: ignore[import-untyped]

    wrapped: AsyncFn = CircuitBreaker(failure_threshold=threshold, recovery_timeout=recovery)(fn)
    return wrapped


async def _purgatory(fn: AsyncFn, threshold: int, recovery: float) -> AsyncFn:
    from purgatory import AsyncCircuitBreakerFactory

    factory = AsyncCircuitBreakerFactory(default_threshold=threshold, default_ttl=recovery)
    await factory.initialize()
    wrapped: AsyncFn = factory("bench")(fn)
    return wrapped


async def _aiobreaker(fn: AsyncFn, threshold: int, recovery: float) -> AsyncFn:
    from aiobreaker import CircuitBreaker  # type: ignore[import-untyped]

    breaker = CircuitBreaker(fail_max=threshold, timeout_duration=timedelta(seconds=recovery))
    wrapped: AsyncFn = breaker(fn)
    return wrapped


async def _hyx(fn: AsyncFn, threshold: int, recovery: float) -> AsyncFn:
    from hyx.circuitbreaker import consecutive_breaker

    breaker = consecutive_breaker(failure_threshold=threshold, recovery_time_secs=recovery)
    return breaker(fn)


async def _hyx_full(fn: AsyncFn, threshold: int, recovery: float) -> AsyncFn:
    from hyx.bulkhead import bulkhead
    from hyx.timeout import timeout

    return timeout(1.0)(bulkhead(max_concurrency=10, max_capacity=10)(
        await _hyx(fn, threshold, recovery)))


def _pyresilience_config(threshold: int, recovery: float, with_timeout: bool) -> dict[str, Any]:
    from pyresilience import BulkheadConfig, CircuitBreakerConfig, TimeoutConfig

    cfg: dict[str, Any] = {
        "circuit_breaker": CircuitBreakerConfig(
            failure_threshold=threshold, recovery_timeout=recovery),
        "bulkhead": BulkheadConfig(max_concurrent=10),
    }
    if with_timeout:
        cfg["timeout"] = TimeoutConfig(seconds=1.0)
    return cfg


async def _pyresilience(fn: AsyncFn, threshold: int, recovery: float) -> AsyncFn:
    from pyresilience import resilient

    wrapped: AsyncFn = resilient(**_pyresilience_config(threshold, recovery, False))(fn)
    return wrapped


async def _pyresilience_full(fn: AsyncFn, threshold: int, recovery: float) -> AsyncFn:
    from pyresilience import resilient

    wrapped: AsyncFn = resilient(**_pyresilience_config(threshold, recovery, True))(fn)
    return wrapped


async def _pyresilience_breaker(fn: AsyncFn, threshold: int, recovery: float) -> AsyncFn:
    from pyresilience import CircuitBreakerConfig, resilient

    wrapped: AsyncFn = resilient(circuit_breaker=CircuitBreakerConfig(
        failure_threshold=threshold, recovery_timeout=recovery))(fn)
    return wrapped


def _interlock_breaker(threshold: int, recovery: float) -> Any:
    """interlock-cb's breaker with a command's window: 10 s time-based, 50 %, min volume."""
    from interlock import CircuitBreaker, Config, WindowType

    config = Config(failure_rate_threshold=0.5, minimum_number_of_calls=threshold,
                    wait_duration_in_open=recovery, window_type=WindowType.TIME_BASED,
                    window_size=10)
    return CircuitBreaker(name="bench", config=config)


async def _interlock(fn: AsyncFn, threshold: int, recovery: float) -> AsyncFn:
    wrapped: AsyncFn = _interlock_breaker(threshold, recovery)(fn)
    return wrapped


async def _interlock_full(fn: AsyncFn, threshold: int, recovery: float) -> AsyncFn:
    """Its Polly-style pipeline, outermost first: breaker, bulkhead(10), timeout(1.0)."""
    from interlock import Pipeline

    pipeline = (Pipeline.builder().circuit_breaker(_interlock_breaker(threshold, recovery))
                .bulkhead(10).timeout(1.0).build())
    wrapped: AsyncFn = pipeline(fn)
    return wrapped


@dataclass(frozen=True)
class Peer:
    """A peer configuration: ``wrap(fn, threshold, recovery)`` returns the guarded call."""

    label: str
    dist: str
    wrap: Wrap
    has_timeout: bool

    @property
    def breaker_only(self) -> bool:
        """A breaker and nothing else (the success-path target compares against these)."""
        return self.label.endswith("(breaker)")

    @property
    def open_label(self) -> str:
        """Row name of the open-circuit case (measured for breaker-only configurations)."""
        return f"{self.dist} rejected (open)"


PEERS = (
    Peer("circuitbreaker (breaker)", "circuitbreaker", _circuitbreaker, False),
    Peer("purgatory (breaker)", "purgatory", _purgatory, False),
    Peer("aiobreaker (breaker)", "aiobreaker", _aiobreaker, False),
    Peer("hyx (breaker)", "hyx", _hyx, False),
    Peer("hyx (breaker+bulkhead+timeout)", "hyx", _hyx_full, True),
    Peer("pyresilience (breaker)", "pyresilience", _pyresilience_breaker, False),
    Peer("pyresilience (breaker+bulkhead)", "pyresilience", _pyresilience, False),
    Peer("pyresilience (breaker+bulkhead+timeout)", "pyresilience", _pyresilience_full, True),
    Peer("interlock-cb (breaker)", "interlock-cb", _interlock, False),
    Peer("interlock-cb (breaker+bulkhead+timeout)", "interlock-cb", _interlock_full, True),
)


def _success_setup(peer: Peer) -> Callable[[], Awaitable[AsyncLoop]]:
    async def setup() -> AsyncLoop:
        call = await peer.wrap(work, THRESHOLD, RECOVERY_S)
        if await call() != 1:
            raise RuntimeError(f"{peer.label}: guarded call did not return the result")
        return call_loop(call)

    return setup


def _open_setup(peer: Peer) -> Callable[[], Awaitable[AsyncLoop]]:
    """Trip the peer with one failure (threshold 1), then check it rejects without calling."""

    async def setup() -> AsyncLoop:
        calls = 0

        async def flaky() -> int:
            nonlocal calls
            calls += 1
            raise Boom

        call = await peer.wrap(flaky, 1, TRIPPED_RECOVERY_S)
        try:
            await call()
        except Exception:  # Boom, or the peer's own error on the tripping call
            pass
        try:
            await call()
        except Boom:
            raise RuntimeError(f"{peer.label}: one failure did not open the circuit") from None
        except Exception as exc:
            if calls != 1:
                raise RuntimeError(
                    f"{peer.label}: open circuit still called the function") from None
            return open_circuit_loop(call, type(exc))
        raise RuntimeError(f"{peer.label}: open circuit let the call succeed")

    return setup


def peer_cases() -> tuple[list[AsyncCase], list[AsyncCase]]:
    """(success-path cases, open-circuit cases) for every peer."""
    ok = [AsyncCase(p.label, _success_setup(p)) for p in PEERS]
    opened = [AsyncCase(p.open_label, _open_setup(p)) for p in PEERS if p.breaker_only]
    return ok, opened


def peer_versions() -> dict[str, str]:
    """Installed version per peer distribution ("missing" when not installed)."""
    out: dict[str, str] = {}
    for dist in [*dict.fromkeys(p.dist for p in PEERS), "pybreaker", "anyio", "trio",
                 "prometheus-client"]:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


# --- sync references --------------------------------------------------------------------------


def _bare_sync() -> SyncLoop:
    def loop(n: int) -> None:
        for _ in range(n):
            work_sync()

    return loop


def _executor() -> SyncLoop:
    pool = ThreadPoolExecutor(max_workers=10)  # lives for the run, like a command's pool

    def loop(n: int) -> None:
        for _ in range(n):
            pool.submit(work_sync).result()

    return loop


def _pybreaker() -> SyncLoop:
    import pybreaker

    guarded = pybreaker.CircuitBreaker(fail_max=THRESHOLD, reset_timeout=RECOVERY_S)(work_sync)
    if guarded() != 1:
        raise RuntimeError("pybreaker: guarded call did not return the result")

    def loop(n: int) -> None:
        for _ in range(n):
            guarded()

    return loop


def sync_references() -> list[SyncCase]:
    return [
        SyncCase("bare f()", _bare_sync),
        SyncCase("ThreadPoolExecutor.submit(f).result()", _executor),
        SyncCase("pybreaker (breaker, no thread)", _pybreaker),
    ]
