"""Defects found by running the peers' test suites against ours, each pinned by a test.

- ``run()`` calls exactly what it is given (identity, not equality) and stays cheap at scale;
- a fallback that raises is chained to the error it was given, on every path;
- ``sleep_window=0`` still lets exactly one trial through at a time;
- the caller's deadline beats the command's timeout when both expire together (uvloop too);
- a refused call is a checkpoint;
- a ``BaseException`` from a worker thread reaches the caller as the same object.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any

import anyio
import pytest
from conftest import backends_with_uvloop, make_anyio_backend
from prometheus_client import CollectorRegistry
from test_command_helpers import Boom, FakeClock, Hold

import resilience
import resilience.metrics
from resilience import (
    CircuitOpenError,
    CommandTimeoutError,
    FailedResultError,
    MaxConcurrencyError,
)

anyio_backend = make_anyio_backend(backends_with_uvloop)


# -- run() calls exactly what it is given ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Compares equal whatever its label: the trap of a cache keyed by equality."""

    host: str
    label: str = dataclasses.field(compare=False)

    async def __call__(self) -> str:
        return self.label


async def test_run_calls_the_object_given_not_an_equal_one(reg: resilience.Registry) -> None:
    a, b = Endpoint("h", "A"), Endpoint("h", "B")
    assert a == b and hash(a) == hash(b)
    assert await reg.run("c", a) == "A"
    assert await reg.run("c", b) == "B"
    assert await reg.run("c", a) == "A"


async def test_run_calls_the_fallback_given_not_an_equal_one(reg: resilience.Registry) -> None:
    @dataclasses.dataclass(frozen=True)
    class Fb:
        key: str
        answer: str = dataclasses.field(compare=False)

        def __call__(self, exc: Exception) -> str:
            return self.answer

    async def down() -> str:
        raise Boom()

    assert await reg.run("c", down, fallback=Fb("k", "first")) == "first"
    assert await reg.run("c", down, fallback=Fb("k", "second")) == "second"


async def test_run_cache_is_bounded_per_name_and_not_cleared_by_many_names(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    from resilience._registry import CALLERS_PER_NAME

    async def one(i: int) -> int:
        return i

    resilience.metrics.set_max_names(3000, registry=metrics_registry)
    for name in range(2000):  # many names: each keeps its own cached caller
        assert await reg.run(f"n{name}", one, name) == name
    cached = reg._callers["n0"][id(one)][2]
    assert await reg.run("n0", one, 5) == 5
    assert reg._callers["n0"][id(one)][2] is cached  # not rebuilt after 2,000 other names
    for i in range(100):  # a fresh partial per call: bounded, oldest dropped
        await reg.run("p", functools.partial(one, i))
    assert len(reg._callers["p"]) <= CALLERS_PER_NAME


# -- a raising fallback chains to the error it was given -----------------------------------------


class FallbackFailed(Exception):
    pass


def raising_fallback(exc: Exception) -> Any:
    raise FallbackFailed("fallback down")


async def test_fallback_error_chains_to_a_coroutine_timeout(reg: resilience.Registry) -> None:
    reg.configure_command("t", timeout=0.01)
    with pytest.raises(FallbackFailed) as info:
        await reg.run("t", anyio.sleep_forever, fallback=raising_fallback)
    assert isinstance(info.value.__context__, CommandTimeoutError)


async def test_fallback_error_chains_to_a_thread_timeout(reg: resilience.Registry) -> None:
    reg.configure_command("t", timeout=0.01)
    gate = threading.Event()
    try:
        with pytest.raises(FallbackFailed) as info:
            await reg.run("t", gate.wait, fallback=raising_fallback)
        assert isinstance(info.value.__context__, CommandTimeoutError)
    finally:
        gate.set()


async def test_fallback_error_chains_to_a_short_circuit(reg: resilience.Registry) -> None:
    reg.configure_command("o", force_open=True)
    with pytest.raises(FallbackFailed) as info:
        await reg.run("o", Hold().fn, fallback=raising_fallback)
    assert isinstance(info.value.__context__, CircuitOpenError)


async def test_fallback_error_chains_to_the_functions_error(reg: resilience.Registry) -> None:
    own = Boom("own")

    async def fails() -> None:
        raise own

    with pytest.raises(FallbackFailed) as info:
        await reg.run("f", fails, fallback=raising_fallback)
    assert info.value.__context__ is own


def test_fallback_error_chains_on_sync_paths(reg: resilience.Registry) -> None:
    own = Boom("own")

    def fails() -> None:
        raise own

    for timeout in (None, 5.0):
        reg.configure_command("s", timeout=timeout)
        with pytest.raises(FallbackFailed) as info:
            reg.run_sync("s", fails, fallback=raising_fallback)
        assert info.value.__context__ is own
    reg.configure_command("s", force_open=True)
    with pytest.raises(FallbackFailed) as info:
        reg.run_sync("s", fails, fallback=raising_fallback)
    assert isinstance(info.value.__context__, CircuitOpenError)


async def test_fallback_error_chains_to_a_rejection_and_a_failed_result(
    reg: resilience.Registry,
) -> None:
    reg.configure_command("r", max_concurrent_requests=1, failed_if=lambda v: v == "bad")
    hold = Hold()
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(reg.run, "r", hold.fn))
        await hold.entered.wait()
        with pytest.raises(FallbackFailed) as info:
            await reg.run("r", Hold().fn, fallback=raising_fallback)
        assert isinstance(info.value.__context__, MaxConcurrencyError)
        hold.release.set()

    async def bad() -> str:
        return "bad"

    with pytest.raises(FallbackFailed) as info:
        await reg.run("r", bad, fallback=raising_fallback)
    assert isinstance(info.value.__context__, FailedResultError)
    assert info.value.__context__.result == "bad"


# -- sleep_window=0: one trial at a time ----------------------------------------------------------


async def test_zero_sleep_window_admits_exactly_one_trial(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    reg.configure_command(
        "z", sleep_window=0.0, request_volume_threshold=1, timeout=None,
        max_concurrent_requests=100,
    )

    async def fails() -> None:
        raise Boom()

    with pytest.raises(Boom):
        await reg.run("z", fails)
    assert reg.get_circuit("z").state == "open"
    trial = Hold()
    refused: list[BaseException] = []

    async def caller() -> None:
        try:
            await reg.run("z", trial.fn)
        except CircuitOpenError as exc:
            refused.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(caller)
        await trial.entered.wait()
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert trial.calls == 1
        assert reg.get_circuit("z").state == "half_open"
        trial.release.set()
    assert len(refused) == 4
    assert reg.get_circuit("z").state == "closed"


# -- the caller's deadline wins a tie -----------------------------------------------------------


async def test_caller_deadline_at_the_same_instant_wins(reg: resilience.Registry) -> None:
    """Both deadlines expire together: the caller's cancellation, never a timeout."""
    for _ in range(5):
        reg.configure_command("tie", timeout=0.02)
        fallbacks: list[BaseException] = []
        with anyio.CancelScope() as scope:
            scope.deadline = anyio.current_time() + 0.02  # set just before the command's
            await reg.run("tie", anyio.sleep_forever, fallback=fallbacks.append)
        assert scope.cancelled_caught
        assert fallbacks == []
        assert reg.get_circuit("tie").in_flight == 0


# -- refusals are checkpoints --------------------------------------------------------------------


async def test_a_loop_of_refused_calls_lets_deadlines_fire_and_tasks_run(
    reg: resilience.Registry,
) -> None:
    reg.configure_command("open", force_open=True)
    other_ran = anyio.Event()

    async def other() -> None:
        other_ran.set()

    refusals = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        with anyio.move_on_after(0.05) as scope:
            while True:
                try:
                    await reg.run("open", Hold().fn)
                except CircuitOpenError:
                    refusals += 1
    assert scope.cancelled_caught
    assert other_ran.is_set()
    assert refusals > 0


# -- BaseException from a thread is the same object ----------------------------------------------


async def test_generator_exit_from_a_thread_reaches_the_caller_unchanged(
    reg: resilience.Registry,
) -> None:
    error = GeneratorExit("from the thread")

    def raises() -> None:
        raise error

    reg.configure_command("g", timeout=None)
    with pytest.raises(GeneratorExit) as info:
        await reg.run("g", raises)
    assert info.value is error
    assert reg.get_circuit("g").in_flight == 0
