"""A KeyboardInterrupt landing on any line of the library during a call loses nothing.

A trace function raises ``KeyboardInterrupt`` at the n-th line the library executes during
one call, for n = 1, 2, ... until the call runs through without reaching line n. After each
interrupted call the command's lock must be free, no slot may be lost, and the next call must
work. This is what a signal handler raising at an unlucky moment does to a real service.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import pytest
from test_command_helpers import FakeClock

import resilience
from resilience._circuit import CircuitCore

PACKAGE = str(Path(resilience.__file__).parent)
MAX_LINES = 2000


class Injector:
    """``sys.settrace`` hook raising KeyboardInterrupt at the n-th library line."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self.fired = False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if not frame.f_code.co_filename.startswith(PACKAGE):
            return None
        if event == "line" and _in_the_call(frame):
            self.seen += 1
            if self.seen == self.n:
                self.fired = True
                raise KeyboardInterrupt(f"injected at line {self.n}")
        return self


def _in_the_call(frame: FrameType | None) -> bool:
    """Only lines run on behalf of the call (not event-loop callbacks, which would take the
    interrupt into the loop itself, as a signal never does to a call)."""
    while frame is not None:
        if frame.f_code in _DRIVERS:
            return True
        frame = frame.f_back
    return False


def core_of(reg: resilience.Registry, name: str) -> CircuitCore:
    core: CircuitCore = reg._core(name)
    return core


def assert_intact(reg: resilience.Registry, name: str, where: str) -> None:
    core = core_of(reg, name)
    assert not core.lock.locked(), f"lock left held after an interrupt {where}"
    assert core.in_flight == 0, f"slot lost after an interrupt {where}"


def judge(reg: resilience.Registry, name: str, n: int, problems: list[str]) -> None:
    """Record what an interrupt at library line ``n`` left behind, then repair it so the
    next position is judged on its own."""
    try:
        assert_intact(reg, name, f"at library line {n}")
    except AssertionError as exc:
        problems.append(str(exc))
        core = core_of(reg, name)
        if core.lock.locked():
            core.lock.give(True)
        core.in_flight = 0


async def settled(reg: resilience.Registry, name: str) -> None:
    """Wait (bounded) for a worker thread that outlived its interrupted caller."""
    core = core_of(reg, name)
    for _ in range(500):
        if not core.in_flight:
            return
        await anyio.sleep(0.002)


def settled_sync(reg: resilience.Registry, name: str) -> None:
    core = core_of(reg, name)
    for _ in range(500):
        if not core.in_flight:
            return
        time.sleep(0.002)


def sync_positions(
    reg: resilience.Registry, name: str, call: Callable[[], object]
) -> tuple[int, list[str]]:
    problems: list[str] = []
    for n in range(1, MAX_LINES):
        inject = Injector(n)
        sys.settrace(inject)
        try:
            call()
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        settled_sync(reg, name)
        judge(reg, name, n, problems)
        if not inject.fired:
            return n, problems
        call()  # the next call works
    raise AssertionError("the call never ended")


async def async_positions(
    reg: resilience.Registry, name: str, call: Callable[[], Awaitable[object]]
) -> tuple[int, list[str]]:
    problems: list[str] = []
    for n in range(1, MAX_LINES):
        inject = Injector(n)
        sys.settrace(inject)
        try:
            await call()
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        await settled(reg, name)
        judge(reg, name, n, problems)
        if not inject.fired:
            return n, problems
        await call()
    raise AssertionError("the call never ended")


async def plain_async() -> str:
    return "ok"


def plain_sync() -> str:
    return "ok"


@pytest.mark.parametrize("timeout", [None, 30.0])
async def test_coroutine_success_path(reg: resilience.Registry, timeout: float | None) -> None:
    reg.configure_command("ki", timeout=timeout)
    lines, problems = await async_positions(reg, "ki", lambda: reg.run("ki", plain_async))
    assert lines > 5
    assert problems == []


async def test_coroutine_refused_path_with_fallback(reg: resilience.Registry) -> None:
    reg.configure_command("ki", force_open=True)
    lines, problems = await async_positions(
        reg, "ki", lambda: reg.run("ki", plain_async, fallback=lambda exc: "fb")
    )
    assert problems == []


@pytest.mark.parametrize("volume", [0, 10**6])
async def test_coroutine_sparse_success_path(
    reg: resilience.Registry, clock: FakeClock, volume: int
) -> None:
    """Every call rolls the window (the clock moves 1.5 buckets a call), so every success
    takes the inline count-and-health path: with the volume reached (health judged inline)
    and never reached."""
    reg.configure_command(
        "ki", timeout=None, request_volume_threshold=volume, buckets=10, rolling_window=10.0
    )

    async def sparse() -> str:
        clock.advance(1.5)
        return await reg.run("ki", plain_async)

    lines, problems = await async_positions(reg, "ki", sparse)
    assert lines > 5
    assert problems == []
    assert reg.get_circuit("ki").state == "closed"


async def test_coroutine_refused_path_without_fallback(reg: resilience.Registry) -> None:
    """A refusal leaves both handlers (``break``) and is raised once, outside them."""
    reg.configure_command("ki", force_open=True)

    async def refused() -> None:
        with pytest.raises(resilience.CircuitOpenError):
            await reg.run("ki", plain_async)

    lines, problems = await async_positions(reg, "ki", refused)
    assert lines > 5
    assert problems == []
    assert core_of(reg, "ki").counts[4] > lines  # SHORT_CIRCUITED: every refusal was counted


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_sync_success_path(reg: resilience.Registry, timeout: float | None) -> None:
    reg.configure_command("ki", timeout=timeout)
    lines, problems = sync_positions(reg, "ki", lambda: reg.run_sync("ki", plain_sync))
    assert lines > 5
    assert problems == []


async def test_thread_path_from_async_code(reg: resilience.Registry) -> None:
    reg.configure_command("ki", timeout=30.0)
    lines, problems = await async_positions(reg, "ki", lambda: reg.run("ki", plain_sync))
    assert lines > 5
    assert problems == []


class Flaky:
    """Fails every other call: with a retry policy each call fails once, then succeeds."""

    def __init__(self) -> None:
        self.calls = 0

    def sync(self) -> str:
        self.calls += 1
        if self.calls % 2:
            raise ValueError("flaky")
        return "ok"

    async def __call__(self) -> str:
        return self.sync()


RETRY = resilience.Retry(attempts=3, backoff=0.0, budget=None)


@pytest.mark.parametrize("timeout", [None, 30.0])
async def test_coroutine_retry_path(reg: resilience.Registry, timeout: float | None) -> None:
    reg.configure_command("ki", timeout=timeout, retry=RETRY, request_volume_threshold=10**6)
    flaky = Flaky()
    lines, problems = await async_positions(reg, "ki", lambda: reg.run("ki", flaky))
    assert lines > 20
    assert problems == []


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_sync_retry_path(reg: resilience.Registry, timeout: float | None) -> None:
    reg.configure_command("ki", timeout=timeout, retry=RETRY, request_volume_threshold=10**6)
    flaky = Flaky()
    lines, problems = sync_positions(reg, "ki", lambda: reg.run_sync("ki", flaky.sync))
    assert lines > 20
    assert problems == []


async def test_thread_retry_path_from_async_code(reg: resilience.Registry) -> None:
    reg.configure_command("ki", timeout=30.0, retry=RETRY, request_volume_threshold=10**6)
    flaky = Flaky()
    lines, problems = await async_positions(reg, "ki", lambda: reg.run("ki", flaky.sync))
    assert lines > 20
    assert problems == []


_DRIVERS = {sync_positions.__code__, async_positions.__code__}
