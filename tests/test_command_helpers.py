"""Shared helpers of the command/circuit contract tests (this module holds no tests).

The contract under test is docs/commands.md (and the command metrics of docs/metrics.md).
Everything here is deliberately independent of the implementation: a fake clock, calls that
block until released, background calls that record how they ended, and metric readers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from prometheus_client import CollectorRegistry

import resilience


class FakeClock:
    """A zero-argument monotonic clock that only moves when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_registry(
    clock: FakeClock, metrics: CollectorRegistry | None = None
) -> resilience.Registry:
    return resilience.Registry(
        metrics_registry=CollectorRegistry() if metrics is None else metrics, clock=clock
    )


class Boom(Exception):
    """The failure our fake dependencies raise."""


class Caller(Exception):
    """An exception that is 'the caller's fault' (listed in ignore_exceptions)."""


class Hold:
    """An async dependency that blocks until released, then returns or raises.

    Counts how many executions entered, finished and were cancelled, so tests can prove
    whether (and how often) the function was really called.
    """

    def __init__(self, value: object = "held", error: BaseException | None = None) -> None:
        self.value = value
        self.error = error
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.calls = 0
        self.cancelled = 0
        self.finished = 0

    async def fn(self) -> object:
        self.calls += 1
        self.entered.set()
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        self.finished += 1
        if self.error is not None:
            raise self.error
        return self.value


class SyncHold:
    """A plain ``def`` dependency that blocks its worker thread until released."""

    def __init__(self, value: object = "sync-held") -> None:
        self.value = value
        self.entered = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()
        self.calls = 0
        self.thread_ids: list[int] = []

    def fn(self) -> object:
        self.calls += 1
        self.thread_ids.append(threading.get_ident())
        self.entered.set()
        try:
            # Bounded, so that a broken implementation can never hang the test run.
            self.release.wait(10)
        finally:
            self.returned.set()
        return self.value


class Pending:
    """A call running in the background: how it ended, and a scope to cancel it."""

    def __init__(self) -> None:
        self.value: object = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()

    @property
    def ok(self) -> bool:
        return self.done.is_set() and self.error is None and not self.cancelled


def spawn(tg: TaskGroup, call: Callable[[], Awaitable[Any]]) -> Pending:
    """Start ``call()`` in ``tg``; the returned Pending records its outcome."""
    pending = Pending()

    async def runner() -> None:
        try:
            with pending.scope:
                pending.value = await call()
        except Exception as exc:
            pending.error = exc
        finally:
            pending.cancelled = pending.scope.cancelled_caught
            pending.done.set()

    tg.start_soon(runner)
    return pending


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds (for things with no event to wait on)."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.002)


def eventually_sync(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


async def thread_wait(event: threading.Event, timeout: float = 5.0) -> None:
    """Wait for a ``threading.Event`` from async code without blocking the loop."""
    assert await anyio.to_thread.run_sync(event.wait, timeout), "thread event not set"


async def ok() -> str:
    return "ok"


def ok_sync() -> str:
    return "ok"


def failing(error: BaseException) -> Callable[[], Awaitable[object]]:
    async def fail() -> object:
        raise error

    return fail


async def run_outcome(reg: resilience.Registry, name: str, kind: str) -> object:
    """One sequential call with a known outcome kind: success, failure or ignored."""
    if kind == "success":
        return await reg.run(name, ok)
    if kind == "failure":
        return await reg.run(name, failing(Boom("down")))
    if kind == "ignored":
        return await reg.run(name, failing(Caller("bad request")))
    raise AssertionError(kind)


# -- metrics -------------------------------------------------------------------------------


def sample(metrics: CollectorRegistry, name: str, **labels: str) -> float:
    value = metrics.get_sample_value(name, labels)
    return 0.0 if value is None else value


def calls_total(metrics: CollectorRegistry, command: str, outcome: str) -> float:
    return sample(metrics, "resilience_command_calls_total", command=command, outcome=outcome)


def fallbacks_total(metrics: CollectorRegistry, command: str, outcome: str) -> float:
    return sample(
        metrics, "resilience_command_fallbacks_total", command=command, outcome=outcome
    )


def all_calls(metrics: CollectorRegistry, command: str) -> dict[str, float]:
    outcomes = (
        "success", "failure", "timeout", "rejected", "short_circuited", "ignored", "cancelled",
    )
    return {o: calls_total(metrics, command, o) for o in outcomes}


def state_gauge(metrics: CollectorRegistry, command: str) -> dict[str, float]:
    return {
        s: sample(metrics, "resilience_circuit_state", command=command, state=s)
        for s in ("closed", "open", "half_open")
    }


def stats_tuple(reg: resilience.Registry, name: str) -> tuple[int, ...]:
    s = reg.get_circuit(name).statistics()
    return (
        s.requests, s.successes, s.failures, s.timeouts, s.rejections, s.short_circuits,
        s.fallback_successes, s.fallback_failures,
    )


# -- a breaker under test (shared by the circuit test files) -------------------------------

BREAKER = "dep"
SLEEP = 5.0


def setup_breaker(reg: resilience.Registry, **overrides: Any) -> None:
    """Configure BREAKER: no timeout, trips at >= 50% errors over >= 4 calls, 5 s sleep."""
    config: dict[str, Any] = dict(
        timeout=None,
        request_volume_threshold=4,
        error_percent_threshold=50,
        sleep_window=SLEEP,
        rolling_window=10.0,
        buckets=10,
        max_concurrent_requests=10,
        ignore_exceptions=(Caller,),
    )
    config.update(overrides)
    reg.configure_command(BREAKER, **config)


def breaker_state(reg: resilience.Registry) -> resilience.CircuitState:
    return reg.get_circuit(BREAKER).state


async def trip(reg: resilience.Registry) -> None:
    """Open BREAKER with failures (``request_volume_threshold`` of them)."""
    for _ in range(reg.get_circuit(BREAKER).config.request_volume_threshold or 1):
        with pytest.raises(Boom):
            await run_outcome(reg, BREAKER, "failure")
    assert breaker_state(reg) is resilience.CircuitState.OPEN


async def assert_short_circuited(reg: resilience.Registry) -> resilience.CircuitOpenError:
    """One call to BREAKER must fail fast with CircuitOpenError without calling the function."""
    called = False

    async def fn() -> str:
        nonlocal called
        called = True
        return "called"

    with pytest.raises(resilience.CircuitOpenError) as info:
        await reg.run(BREAKER, fn)
    assert not called, "an open circuit must not call the function"
    assert info.value.command == BREAKER
    return info.value


def recording(seen: list[BaseException], value: object) -> Callable[[Exception], object]:
    """A fallback that records the error it gets and returns ``value``."""

    def fallback(exc: Exception) -> object:
        seen.append(exc)
        return value

    return fallback
