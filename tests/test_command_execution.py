"""Execution semantics (docs/commands.md): timeouts, slots, cancellation, thread pools.

Timeouts really cancel async work; slots come back exactly once whatever happens; a sync
function keeps its slot until its thread returns; cancellation is never swallowed, counted
or "fallen back" from; an inner command's errors are the outer function's own failures.
"""

from __future__ import annotations

import functools
import threading

import anyio
import pytest
from conftest import backends_with_uvloop, make_anyio_backend
from prometheus_client import CollectorRegistry
from test_command_helpers import (
    Boom,
    Caller,
    FakeClock,
    Hold,
    SyncHold,
    calls_total,
    eventually,
    failing,
    make_registry,
    ok,
    spawn,
    thread_wait,
)

import resilience
from resilience import (
    CommandTimeoutError,
    MaxConcurrencyError,
)

NAME = "exec"

#: These run on asyncio, trio and asyncio with uvloop (its timers are the subtle ones).
anyio_backend = make_anyio_backend(backends_with_uvloop)


class Fatal(BaseException):
    """A BaseException that is neither cancellation nor an ordinary failure."""


@pytest.fixture
def reg(clock: FakeClock, metrics_registry: CollectorRegistry) -> resilience.Registry:
    r = make_registry(clock, metrics_registry)
    r.configure_command(
        NAME, timeout=None, max_concurrent_requests=2, ignore_exceptions=(Caller,),
        request_volume_threshold=1000,
    )
    return r


def in_flight(reg: resilience.Registry) -> int:
    return reg.get_circuit(NAME).in_flight


# -- timeouts ------------------------------------------------------------------------------


async def test_timeout_really_cancels_async_work(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    reg.configure_command(NAME, timeout=0.05)
    cleaned_up = False

    async def slow() -> None:
        nonlocal cleaned_up
        try:
            await anyio.sleep_forever()
        finally:
            cleaned_up = True

    start = anyio.current_time()
    with pytest.raises(CommandTimeoutError) as info:
        await reg.run(NAME, slow)
    elapsed = anyio.current_time() - start
    assert cleaned_up, "the coroutine must have been cancelled before run() returned"
    assert 0.04 <= elapsed < 2.0
    err = info.value
    assert isinstance(err, TimeoutError)
    assert isinstance(err, resilience.CommandError)
    assert err.command == NAME
    assert NAME in str(err)
    assert in_flight(reg) == 0
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.timeouts, stats.failures) == (1, 0)
    assert calls_total(metrics_registry, NAME, "timeout") == 1


async def test_functions_own_timeout_error_is_a_failure_not_a_command_timeout(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    reg.configure_command(NAME, timeout=5.0)
    own = TimeoutError("the dependency's own deadline")
    with pytest.raises(TimeoutError) as info:
        await reg.run(NAME, failing(own))
    assert info.value is own
    assert not isinstance(info.value, CommandTimeoutError)
    assert calls_total(metrics_registry, NAME, "failure") == 1
    assert calls_total(metrics_registry, NAME, "timeout") == 0


async def test_callers_own_deadline_is_cancellation_not_timeout(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    reg.configure_command(NAME, timeout=10.0)
    fallback_calls: list[BaseException] = []
    with anyio.move_on_after(0.05) as scope:
        await reg.run(NAME, anyio.sleep_forever, fallback=fallback_calls.append)
    assert scope.cancelled_caught
    assert fallback_calls == []
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.requests, stats.timeouts, stats.failures) == (0, 0, 0)
    assert calls_total(metrics_registry, NAME, "cancelled") == 1
    assert calls_total(metrics_registry, NAME, "timeout") == 0
    assert in_flight(reg) == 0


async def test_configured_timeout_applies_to_the_next_call(reg: resilience.Registry) -> None:
    reg.configure_command(NAME, timeout=0.05)
    with pytest.raises(CommandTimeoutError):
        await reg.run(NAME, anyio.sleep_forever)
    reg.configure_command(NAME, timeout=None)
    with anyio.move_on_after(0.2) as scope:
        await reg.run(NAME, anyio.sleep_forever)
    assert scope.cancelled_caught  # no command timeout any more: only our deadline ended it


# -- slots ---------------------------------------------------------------------------------


async def test_rejection_is_immediate_and_does_not_call_the_function(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    hold = Hold()
    async with anyio.create_task_group() as tg:
        for _ in range(2):
            spawn(tg, lambda: reg.run(NAME, hold.fn))
        await eventually(lambda: hold.calls == 2)
        assert in_flight(reg) == 2
        with anyio.fail_after(2):  # must not wait for a slot
            with pytest.raises(MaxConcurrencyError) as info:
                await reg.run(NAME, hold.fn)
        assert hold.calls == 2
        assert info.value.command == NAME
        assert NAME in str(info.value)
        hold.release.set()
    assert in_flight(reg) == 0
    assert reg.get_circuit(NAME).statistics().rejections == 1
    assert calls_total(metrics_registry, NAME, "rejected") == 1


async def test_slot_comes_back_after_timeout(reg: resilience.Registry) -> None:
    reg.configure_command(NAME, timeout=0.05, max_concurrent_requests=1)
    for _ in range(3):
        with pytest.raises(CommandTimeoutError):
            await reg.run(NAME, anyio.sleep_forever)
        assert in_flight(reg) == 0
    assert await reg.run(NAME, ok) == "ok"


async def test_slot_comes_back_after_cancellation(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    reg.configure_command(NAME, max_concurrent_requests=1)
    for _ in range(3):
        hold = Hold()
        async with anyio.create_task_group() as tg:
            p = spawn(tg, functools.partial(reg.run, NAME, hold.fn))
            await hold.entered.wait()
            assert in_flight(reg) == 1
            p.scope.cancel()
        assert p.cancelled and p.error is None, "cancellation must not be swallowed"
        assert hold.cancelled == 1
        assert in_flight(reg) == 0
    assert await reg.run(NAME, ok) == "ok"
    assert calls_total(metrics_registry, NAME, "cancelled") == 3
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.requests, stats.failures) == (1, 0)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_task_cancel_is_propagated_and_releases_the_slot(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    import asyncio

    hold = Hold()
    seen: list[BaseException] = []
    task = asyncio.ensure_future(reg.run(NAME, hold.fn, fallback=seen.append))
    await hold.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hold.cancelled == 1
    assert seen == []
    assert in_flight(reg) == 0
    assert calls_total(metrics_registry, NAME, "cancelled") == 1
    assert reg.get_circuit(NAME).statistics().failures == 0


async def test_task_group_cancel_releases_slots(reg: resilience.Registry) -> None:
    hold = Hold()
    async with anyio.create_task_group() as tg:
        for _ in range(2):
            spawn(tg, lambda: reg.run(NAME, hold.fn))
        await eventually(lambda: hold.calls == 2)
        tg.cancel_scope.cancel()
    assert hold.cancelled == 2
    assert in_flight(reg) == 0


@pytest.mark.parametrize("exc_type", [Fatal, KeyboardInterrupt, SystemExit])
async def test_slot_comes_back_after_base_exception(
    reg: resilience.Registry, metrics_registry: CollectorRegistry, exc_type: type[BaseException]
) -> None:
    reg.configure_command(NAME, max_concurrent_requests=1)
    err = exc_type()
    fallback_calls: list[BaseException] = []
    with pytest.raises(exc_type) as info:
        await reg.run(NAME, failing(err), fallback=fallback_calls.append)
    assert info.value is err
    assert fallback_calls == [], "no fallback for a BaseException"
    assert in_flight(reg) == 0
    assert await reg.run(NAME, ok) == "ok"
    if exc_type is KeyboardInterrupt:  # a cancellation, never a failure
        assert reg.get_circuit(NAME).statistics().failures == 0
        assert calls_total(metrics_registry, NAME, "failure") == 0
        assert calls_total(metrics_registry, NAME, "cancelled") == 1


async def test_sync_function_keeps_its_slot_until_its_thread_returns(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    reg.configure_command(NAME, timeout=0.05, max_concurrent_requests=1)
    hold = SyncHold()
    try:
        with pytest.raises(CommandTimeoutError):
            await reg.run(NAME, hold.fn)
        assert hold.entered.is_set()
        assert not hold.returned.is_set()
        assert in_flight(reg) == 1, "the thread still runs: it still holds its slot"
        with pytest.raises(MaxConcurrencyError):
            await reg.run(NAME, ok)
    finally:
        hold.release.set()
    await thread_wait(hold.returned)
    await eventually(lambda: in_flight(reg) == 0)
    assert await reg.run(NAME, ok) == "ok"
    assert in_flight(reg) == 0
    # The thread's late return is not a second outcome of the timed-out call.
    assert calls_total(metrics_registry, NAME, "timeout") == 1
    assert calls_total(metrics_registry, NAME, "rejected") == 1
    assert calls_total(metrics_registry, NAME, "success") == 1
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.successes, stats.timeouts, stats.rejections) == (1, 1, 1)


async def test_sync_function_cancelled_caller_keeps_slot_until_thread_returns(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    reg.configure_command(NAME, max_concurrent_requests=1)
    hold = SyncHold()
    try:
        async with anyio.create_task_group() as tg:
            p = spawn(tg, lambda: reg.run(NAME, hold.fn))
            await thread_wait(hold.entered)
            p.scope.cancel()
            with anyio.move_on_after(5):
                await p.done.wait()
            assert p.done.is_set(), "a cancelled caller must not wait for the thread"
        assert p.cancelled and p.error is None
        assert in_flight(reg) == 1
        with pytest.raises(MaxConcurrencyError):
            await reg.run(NAME, ok)
    finally:
        hold.release.set()
    await thread_wait(hold.returned)
    await eventually(lambda: in_flight(reg) == 0)
    assert await reg.run(NAME, ok) == "ok"
    assert calls_total(metrics_registry, NAME, "cancelled") == 1
    assert calls_total(metrics_registry, NAME, "success") == 1  # the late return: not counted
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.successes, stats.failures) == (1, 0)


async def test_sync_function_base_exception_releases_slot(reg: resilience.Registry) -> None:
    err = Fatal()

    def boom() -> None:
        raise err

    with pytest.raises(Fatal) as info:
        await reg.run(NAME, boom)
    assert info.value is err
    await eventually(lambda: in_flight(reg) == 0)
    assert in_flight(reg) == 0


async def test_in_flight_never_negative_when_limit_shrinks_during_calls(
    reg: resilience.Registry,
) -> None:
    reg.configure_command(NAME, max_concurrent_requests=5)
    hold = Hold()
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            spawn(tg, lambda: reg.run(NAME, hold.fn))
        await eventually(lambda: hold.calls == 3)
        reg.configure_command(NAME, max_concurrent_requests=1)  # safe while calls run
        with pytest.raises(MaxConcurrencyError):
            await reg.run(NAME, ok)
        hold.release.set()
    assert in_flight(reg) == 0
    second = Hold()
    async with anyio.create_task_group() as tg:
        spawn(tg, lambda: reg.run(NAME, second.fn))
        await second.entered.wait()
        with pytest.raises(MaxConcurrencyError):
            await reg.run(NAME, ok)
        second.release.set()
    assert in_flight(reg) == 0


async def test_raising_the_limit_lets_the_next_call_in(reg: resilience.Registry) -> None:
    reg.configure_command(NAME, max_concurrent_requests=1)
    hold = Hold()
    async with anyio.create_task_group() as tg:
        spawn(tg, lambda: reg.run(NAME, hold.fn))
        await hold.entered.wait()
        with pytest.raises(MaxConcurrencyError):
            await reg.run(NAME, ok)
        reg.configure_command(NAME, max_concurrent_requests=2)
        assert await reg.run(NAME, ok) == "ok"
        hold.release.set()
    assert in_flight(reg) == 0


# -- nesting, deadlines, thread pools -----------------------------------------------------


async def test_errors_of_an_inner_command_are_the_outer_functions_own_failures(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    reg.configure_command("outer", timeout=5.0, request_volume_threshold=1000)
    reg.configure_command("inner", timeout=0.05, request_volume_threshold=1000,
                          max_concurrent_requests=1)

    async def outer_fn() -> object:
        return await reg.run("inner", anyio.sleep_forever)

    with pytest.raises(CommandTimeoutError) as info:
        await reg.run("outer", outer_fn)
    assert info.value.command == "inner"  # unchanged: the inner command's own error
    assert calls_total(metrics_registry, "inner", "timeout") == 1
    assert calls_total(metrics_registry, "outer", "timeout") == 0
    assert calls_total(metrics_registry, "outer", "failure") == 1
    hold = Hold()
    async with anyio.create_task_group() as tg:
        spawn(tg, lambda: reg.run("inner", hold.fn))
        await hold.entered.wait()
        with pytest.raises(MaxConcurrencyError) as rejected:
            await reg.run("outer", lambda: reg.run("inner", ok))
        hold.release.set()
    assert rejected.value.command == "inner"
    assert calls_total(metrics_registry, "outer", "rejected") == 0
    assert calls_total(metrics_registry, "outer", "failure") == 2
    stats = reg.get_circuit("outer").statistics()
    assert (stats.failures, stats.timeouts, stats.rejections) == (2, 0, 0)


async def test_returned_awaitable_shares_the_deadline_with_the_thread(
    reg: resilience.Registry,
) -> None:
    import time

    reg.configure_command(NAME, timeout=0.1)

    async def second_half() -> str:
        await anyio.sleep(0.07)
        return "in time"

    def first_half() -> object:
        time.sleep(0.07)  # each half fits the timeout; both together do not
        return second_half()

    with pytest.raises(CommandTimeoutError):
        await reg.run(NAME, first_half)


@pytest.mark.parametrize("exc_type", [Fatal, KeyboardInterrupt])
async def test_sync_function_base_exceptions_propagate_unchanged(
    reg: resilience.Registry, metrics_registry: CollectorRegistry, exc_type: type[BaseException]
) -> None:
    err = exc_type()
    seen: list[BaseException] = []

    def raiser() -> None:
        raise err

    with pytest.raises(exc_type) as info:
        await reg.run(NAME, raiser, fallback=seen.append)
    assert info.value is err
    assert seen == []
    await eventually(lambda: in_flight(reg) == 0)
    if exc_type is KeyboardInterrupt:
        assert calls_total(metrics_registry, NAME, "failure") == 0
        assert calls_total(metrics_registry, NAME, "cancelled") == 1
        assert reg.get_circuit(NAME).statistics().requests == 0


async def test_sync_executions_up_to_the_limit_run_at_once_per_command(
    reg: resilience.Registry,
) -> None:
    """Each command's own limit bounds its threads, not a global pool shared by all."""

    per_command = 30
    barrier = threading.Barrier(2 * per_command, timeout=10)
    for name in ("threads-a", "threads-b"):
        reg.configure_command(name, timeout=None, max_concurrent_requests=per_command)

    def meet() -> str:
        barrier.wait()  # BrokenBarrierError unless all 60 run at the same time
        return "met"

    results: list[object] = []

    async def one(name: str) -> None:
        results.append(await reg.run(name, meet))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for name in ("threads-a", "threads-b"):
                for _ in range(per_command):
                    tg.start_soon(one, name)
    assert results == ["met"] * (2 * per_command)


async def test_replacing_the_whole_config_while_calls_run_is_safe(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    ok_hold, fail_hold = Hold(), Hold(error=Boom())
    async with anyio.create_task_group() as tg:
        a = spawn(tg, lambda: reg.run(NAME, ok_hold.fn))
        b = spawn(tg, lambda: reg.run(NAME, fail_hold.fn))
        await ok_hold.entered.wait()
        await fail_hold.entered.wait()
        reg.configure_command(
            NAME,
            resilience.CommandConfig(
                timeout=None, rolling_window=4.0, buckets=4, max_concurrent_requests=5
            ),
        )
        ok_hold.release.set()
        fail_hold.release.set()
    assert a.value == "held" and isinstance(b.error, Boom)
    assert in_flight(reg) == 0
    assert calls_total(metrics_registry, NAME, "success") == 1
    assert calls_total(metrics_registry, NAME, "failure") == 1
    s = reg.get_circuit(NAME).statistics()
    assert s.requests == s.successes + s.failures + s.timeouts + s.rejections <= 2
    assert await reg.run(NAME, ok) == "ok"
