"""Fallback rules and exception identity (docs/commands.md).

``fallback(exc)`` (sync or async) runs on circuit-open, rejection, timeout and failure; its
value is the result and its exception propagates; never for ignored exceptions or
cancellation. Without a fallback the caller gets the function's own exception object.
"""

from __future__ import annotations

import threading
import traceback

import anyio
import pytest
from conftest import backends_with_uvloop, make_anyio_backend
from prometheus_client import CollectorRegistry
from test_command_helpers import (
    Boom,
    Caller,
    FakeClock,
    Hold,
    calls_total,
    failing,
    fallbacks_total,
    make_registry,
    recording,
    spawn,
)

import resilience
from resilience import (
    CircuitOpenError,
    CircuitState,
    CommandTimeoutError,
    MaxConcurrencyError,
)

NAME = "fallback"

#: These run on asyncio, trio and asyncio with uvloop (its timers are the subtle ones).
anyio_backend = make_anyio_backend(backends_with_uvloop)


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


# -- fallback ------------------------------------------------------------------------------


@pytest.mark.parametrize("async_fallback", [False, True])
async def test_fallback_on_failure_gets_the_exception(
    reg: resilience.Registry, metrics_registry: CollectorRegistry, async_fallback: bool
) -> None:
    err = Boom("down")
    seen: list[BaseException] = []

    def sync_fb(exc: BaseException) -> str:
        seen.append(exc)
        return "sync"

    async def async_fb(exc: BaseException) -> str:
        seen.append(exc)
        await anyio.sleep(0)
        return "async"

    result = await reg.run(NAME, failing(err), fallback=async_fb if async_fallback else sync_fb)
    assert result == ("async" if async_fallback else "sync")
    assert len(seen) == 1 and seen[0] is err
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.failures, stats.fallback_successes, stats.fallback_failures) == (1, 1, 0)
    assert fallbacks_total(metrics_registry, NAME, "success") == 1
    assert calls_total(metrics_registry, NAME, "failure") == 1
    assert in_flight(reg) == 0


async def test_fallback_on_timeout(reg: resilience.Registry) -> None:
    reg.configure_command(NAME, timeout=0.05)
    seen: list[BaseException] = []
    result = await reg.run(
        NAME, anyio.sleep_forever, fallback=recording(seen, "late")
    )
    assert result == "late"
    assert isinstance(seen[0], CommandTimeoutError)


async def test_fallback_on_rejection(reg: resilience.Registry) -> None:
    reg.configure_command(NAME, max_concurrent_requests=1)
    hold = Hold()
    seen: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        spawn(tg, lambda: reg.run(NAME, hold.fn))
        await hold.entered.wait()
        result = await reg.run(NAME, hold.fn, fallback=recording(seen, "busy"))
        hold.release.set()
    assert result == "busy"
    assert isinstance(seen[0], MaxConcurrencyError)
    assert hold.calls == 1


async def test_fallback_on_open_circuit_without_calling_the_function(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    reg.configure_command(NAME, request_volume_threshold=1, error_percent_threshold=100)
    with pytest.raises(Boom):
        await reg.run(NAME, failing(Boom()))
    assert reg.get_circuit(NAME).state is CircuitState.OPEN
    hold = Hold()
    seen: list[BaseException] = []
    result = await reg.run(NAME, hold.fn, fallback=recording(seen, "cached"))
    assert result == "cached"
    assert hold.calls == 0
    assert isinstance(seen[0], CircuitOpenError)
    assert seen[0].retry_after is not None
    assert calls_total(metrics_registry, NAME, "short_circuited") == 1
    assert fallbacks_total(metrics_registry, NAME, "success") == 1
    assert reg.get_circuit(NAME).statistics().fallback_successes == 1


@pytest.mark.parametrize("async_fallback", [False, True])
async def test_fallback_raising_propagates_its_exception(
    reg: resilience.Registry, metrics_registry: CollectorRegistry, async_fallback: bool
) -> None:
    fb_err = RuntimeError("fallback is down too")

    def sync_fb(exc: BaseException) -> str:
        raise fb_err

    async def async_fb(exc: BaseException) -> str:
        await anyio.sleep(0)
        raise fb_err

    with pytest.raises(RuntimeError) as info:
        await reg.run(NAME, failing(Boom()), fallback=async_fb if async_fallback else sync_fb)
    assert info.value is fb_err
    assert fallbacks_total(metrics_registry, NAME, "failure") == 1
    assert fallbacks_total(metrics_registry, NAME, "success") == 0
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.fallback_failures, stats.fallback_successes) == (1, 0)


async def test_no_fallback_for_ignored_exceptions(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    err = Caller("your fault")
    seen: list[BaseException] = []
    with pytest.raises(Caller) as info:
        await reg.run(NAME, failing(err), fallback=seen.append)
    assert info.value is err
    assert seen == []
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.requests, stats.failures) == (0, 0)
    assert calls_total(metrics_registry, NAME, "ignored") == 1
    assert calls_total(metrics_registry, NAME, "failure") == 0


async def test_ignored_exception_subclasses_are_ignored_too(reg: resilience.Registry) -> None:
    class SubCaller(Caller):
        pass

    err = SubCaller()
    with pytest.raises(SubCaller) as info:
        await reg.run(NAME, failing(err))
    assert info.value is err
    assert reg.get_circuit(NAME).statistics().requests == 0


async def test_no_fallback_when_the_caller_is_cancelled(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    hold = Hold()
    seen: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        p = spawn(tg, lambda: reg.run(NAME, hold.fn, fallback=seen.append))
        await hold.entered.wait()
        p.scope.cancel()
    assert p.cancelled and p.error is None
    assert seen == []
    assert fallbacks_total(metrics_registry, NAME, "success") == 0
    assert calls_total(metrics_registry, NAME, "cancelled") == 1
    assert in_flight(reg) == 0


async def test_cancelled_during_async_fallback(reg: resilience.Registry) -> None:
    entered = anyio.Event()

    async def slow_fallback(exc: BaseException) -> str:
        entered.set()
        await anyio.sleep_forever()
        return "never"

    async with anyio.create_task_group() as tg:
        p = spawn(tg, lambda: reg.run(NAME, failing(Boom()), fallback=slow_fallback))
        await entered.wait()
        p.scope.cancel()
    assert p.cancelled and p.error is None
    assert in_flight(reg) == 0


# -- exception identity --------------------------------------------------------------------


def _frames(exc: BaseException) -> list[str]:
    return [f.name for f in traceback.extract_tb(exc.__traceback__)]


async def test_async_exception_is_the_same_object_with_its_traceback(
    reg: resilience.Registry,
) -> None:
    cause = KeyError("root cause")
    err = Boom("original")

    async def deep_failure() -> None:
        try:
            raise cause
        except KeyError as exc:
            raise err from exc

    with pytest.raises(Boom) as info:
        await reg.run(NAME, deep_failure)
    assert type(info.value) is Boom  # not wrapped, not an ExceptionGroup
    assert info.value is err
    assert info.value.__cause__ is cause
    assert _frames(info.value)[-1] == "deep_failure"


async def test_sync_exception_is_the_same_object_with_its_traceback(
    reg: resilience.Registry,
) -> None:
    err = Boom("from a thread")

    def sync_failure() -> None:
        raise err

    with pytest.raises(Boom) as info:
        await reg.run(NAME, sync_failure)
    assert info.value is err
    assert _frames(info.value)[-1] == "sync_failure"
    assert info.value.__context__ is None  # nothing of the machinery chained onto it


async def test_exception_context_is_left_alone(reg: resilience.Registry) -> None:
    err = Boom("clean")
    with pytest.raises(Boom) as info:
        await reg.run(NAME, failing(err))
    assert info.value is err
    assert info.value.__context__ is None
    assert info.value.__cause__ is None
    with pytest.raises(Boom):
        reg.configure_command(NAME, timeout=5.0)
        await reg.run(NAME, failing(err))  # the same path with a deadline in place
    assert err.__context__ is None


async def test_exception_from_decorated_function_is_unchanged(reg: resilience.Registry) -> None:
    err = Boom("decorated")

    @reg.command(NAME)
    async def decorated_failure() -> None:
        raise err

    with pytest.raises(Boom) as info:
        await decorated_failure()
    assert info.value is err
    assert _frames(info.value)[-1] == "decorated_failure"


async def test_sync_function_runs_in_a_worker_thread(reg: resilience.Registry) -> None:
    idents: list[int] = []

    def where() -> str:
        idents.append(threading.get_ident())
        return "thread"

    assert await reg.run(NAME, where) == "thread"
    assert idents and idents[0] != threading.get_ident()

async def test_fallback_returning_none_is_a_result(reg: resilience.Registry) -> None:
    assert await reg.run(NAME, failing(Boom()), fallback=lambda exc: None) is None

    async def async_none(exc: BaseException) -> None:
        return None

    assert await reg.run(NAME, failing(Boom()), fallback=async_none) is None
    assert reg.get_circuit(NAME).statistics().fallback_successes == 2
