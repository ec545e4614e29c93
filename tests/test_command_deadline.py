"""The command deadline in the corner cases a hand-rolled timeout gets wrong.

On asyncio the deadline is asyncio.timeout's cancel/uncancel protocol written inline; these
tests pin that it leaves the task exactly as it found it.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest
from conftest import backends_with_uvloop, make_anyio_backend
from prometheus_client import CollectorRegistry

from resilience import CommandTimeoutError, Registry

#: These run on asyncio, trio and asyncio with uvloop (its timers are the subtle ones).
anyio_backend = make_anyio_backend(backends_with_uvloop)


def _cancelling() -> int:
    if _on_asyncio():
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()
    return 0


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _calls(metrics: CollectorRegistry, name: str, outcome: str) -> float:
    value = metrics.get_sample_value(
        "resilience_command_calls_total", {"command": name, "outcome": outcome}
    )
    return value or 0.0


@pytest.fixture
def metrics() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def reg(metrics: CollectorRegistry) -> Registry:
    return Registry(metrics_registry=metrics)


async def test_function_that_swallows_the_deadline_returns_and_leaves_task_clean(
    reg: Registry, metrics: CollectorRegistry
) -> None:
    @reg.command("swallow", timeout=0.02)
    async def swallow() -> str:
        try:
            await anyio.sleep(5)
        except anyio.get_cancelled_exc_class():
            return "swallowed"
        return "slept"

    assert await swallow() == "swallowed"
    assert _cancelling() == 0
    await anyio.sleep(0)  # not left with a pending cancellation
    assert _calls(metrics, "swallow", "success") == 1


async def test_function_that_turns_the_deadline_into_an_error_is_a_failure(
    reg: Registry, metrics: CollectorRegistry
) -> None:
    @reg.command("convert", timeout=0.02)
    async def convert() -> None:
        try:
            await anyio.sleep(5)
        except anyio.get_cancelled_exc_class():
            raise RuntimeError("converted") from None

    with pytest.raises(RuntimeError, match="converted"):
        await convert()
    assert _cancelling() == 0
    await anyio.sleep(0)
    assert _calls(metrics, "convert", "failure") == 1


async def test_outer_cancellation_at_the_deadline_is_cancellation_not_timeout(
    reg: Registry, metrics: CollectorRegistry
) -> None:
    reg.configure_command("slow", timeout=0.05)
    fallbacks: list[BaseException] = []
    with anyio.move_on_after(0.05) as scope:
        await reg.run("slow", anyio.sleep_forever, fallback=fallbacks.append)
    assert scope.cancelled_caught
    assert fallbacks == [] or isinstance(fallbacks[0], CommandTimeoutError)
    # Whichever fired first, the caller's scope ended the call and nothing is left pending.
    assert _cancelling() == 0
    assert reg.get_circuit("slow").in_flight == 0


async def test_already_cancelled_caller_is_never_a_timeout(
    reg: Registry, metrics: CollectorRegistry
) -> None:
    reg.configure_command("slow", timeout=0.01)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await reg.run("slow", anyio.sleep_forever)
    assert scope.cancelled_caught
    assert _calls(metrics, "slow", "timeout") == 0
    assert _calls(metrics, "slow", "cancelled") == 1
    assert _cancelling() == 0


async def test_many_sequential_timeouts_leave_no_timers_or_cancels(reg: Registry) -> None:
    reg.configure_command("t", timeout=0.001, request_volume_threshold=10**6)
    for _ in range(50):
        with pytest.raises(CommandTimeoutError):
            await reg.run("t", anyio.sleep_forever)
    assert _cancelling() == 0
    assert reg.get_circuit("t").in_flight == 0
    assert reg.get_circuit("t").statistics().timeouts == 50
