"""Retry (docs/retry.md): each attempt is a full pass through the command; refusals, ignored
exceptions and cancellation are never retried; the budget, the caller's deadline and
``retry_after`` hints bound the retries; the fallback runs once, after the last attempt.

Delays are zero on asyncio; tests of real sleeping run on trio's ``MockClock`` (no real time
passes). The rolling window (and with it the budget) runs on the registry's FakeClock.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import anyio
import pytest
import trio.testing
from prometheus_client import CollectorRegistry
from test_command_helpers import (
    Boom,
    Caller,
    FakeClock,
    Hold,
    calls_total,
    fallbacks_total,
    recording,
    sample,
    spawn,
)

import resilience
from resilience import (
    CircuitOpenError,
    CommandTimeoutError,
    FailedResultError,
    MaxConcurrencyError,
    Retry,
    RetryScheduled,
)

NAME = "flaky"
#: Zero delays, no budget: the retry mechanics alone.
FAST = Retry(attempts=3, backoff=0.0, jitter=0.0, budget=None)


def retries_total(metrics: CollectorRegistry, outcome: str, command: str = NAME) -> float:
    return sample(metrics, "resilience_command_retries_total", command=command, outcome=outcome)


class Script:
    """A dependency that plays a script: each call raises or returns the next entry."""

    def __init__(self, *steps: object) -> None:
        self.steps = list(steps)
        self.calls = 0
        self.raised: list[BaseException] = []

    def _next(self) -> object:
        step = self.steps[min(self.calls, len(self.steps) - 1)]
        self.calls += 1
        if isinstance(step, BaseException):
            error = type(step)(*step.args)  # a fresh exception per attempt
            for name, value in vars(step).items():
                setattr(error, name, value)
            self.raised.append(error)
            raise error
        return step

    async def __call__(self) -> object:
        await anyio.lowlevel.checkpoint()
        return self._next()

    def sync(self) -> object:
        return self._next()


@pytest.fixture
def events(reg: resilience.Registry) -> Iterator[list[RetryScheduled]]:
    seen: list[RetryScheduled] = []
    unsubscribe = reg.subscribe(lambda e: seen.append(e) if isinstance(e, RetryScheduled) else None)
    yield seen
    unsubscribe()


def configure(reg: resilience.Registry, retry: Retry = FAST, **config: Any) -> None:
    settings: dict[str, Any] = dict(timeout=None, request_volume_threshold=1000, retry=retry)
    settings.update(config)
    reg.configure_command(NAME, **settings)


def intact(reg: resilience.Registry) -> None:
    assert reg.get_circuit(NAME).in_flight == 0


# -- the policy itself ---------------------------------------------------------------------------


def test_defaults() -> None:
    r = Retry()
    assert (r.attempts, r.backoff, r.multiplier, r.max_backoff, r.jitter) == (3, 0.1, 2.0, 5.0, 0.5)
    assert (r.budget, r.min_retries_per_second) == (0.2, 10.0)
    assert r.retries(ValueError()) and r.retries(CommandTimeoutError("x", timeout=1.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.attempts = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        Retry(3)  # type: ignore[call-arg]  # keyword-only


def test_delays_grow_exponentially_up_to_the_cap() -> None:
    r = Retry(backoff=0.1, multiplier=2.0, max_backoff=1.0, jitter=0.0)
    assert [r.delay(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert Retry(backoff=0.3, multiplier=1.0, jitter=0.0).delay(50) == 0.3


def test_huge_attempt_numbers_do_not_overflow() -> None:
    r = Retry(attempts=10**9, backoff=0.1, multiplier=2.0, max_backoff=2.0, jitter=0.0)
    assert r.delay(1025) == 2.0
    assert r.delay(10**9) == 2.0
    assert Retry(multiplier=1.0000001, jitter=0.0, max_backoff=3.0).delay(10**12) == 3.0


def test_jitter_reduces_each_delay_by_up_to_its_fraction() -> None:
    r = Retry(backoff=1.0, multiplier=1.0, jitter=0.5)
    delays = [r.delay(1) for _ in range(500)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert max(delays) - min(delays) > 0.2  # really random


def test_zero_delays_are_fine() -> None:
    assert Retry(backoff=0.0).delay(1) == 0.0
    assert Retry(backoff=0.1, max_backoff=0.0).delay(3) == 0.0


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("attempts", 0, ValueError),
        ("attempts", 1.5, TypeError),
        ("attempts", True, TypeError),
        ("backoff", -0.1, ValueError),
        ("backoff", math.nan, ValueError),
        ("backoff", math.inf, ValueError),
        ("backoff", "0.1", TypeError),
        ("multiplier", 0.5, ValueError),
        ("multiplier", math.inf, ValueError),
        ("max_backoff", -1, ValueError),
        ("max_backoff", 10**6, ValueError),
        ("jitter", 1.5, ValueError),
        ("jitter", -0.1, ValueError),
        ("on", "ValueError", TypeError),
        ("on", (ValueError, 3), TypeError),
        ("budget", -0.1, ValueError),
        ("budget", math.inf, ValueError),
        ("budget", "lots", TypeError),
        ("min_retries_per_second", -1, ValueError),
        ("min_retries_per_second", None, TypeError),
    ],
)
def test_bad_values_name_the_field(field: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=field):
        Retry(**cast(dict[str, Any], {field: value}))


def test_on_accepts_types_collections_and_predicates() -> None:
    assert Retry(on=ValueError).on == (ValueError,)
    assert Retry(on=[ValueError, KeyError]).on == (ValueError, KeyError)
    assert Retry(on=frozenset({KeyError})).on == (KeyError,)
    predicate = Retry(on=lambda exc: "again" in str(exc))
    assert predicate.retries(ValueError("try again")) and not predicate.retries(ValueError("no"))


def test_the_config_field_takes_only_a_policy(reg: resilience.Registry) -> None:
    with pytest.raises(TypeError, match="retry"):
        reg.configure_command(NAME, retry=3)
    with pytest.raises(TypeError, match="retry"):
        resilience.CommandConfig(retry={"attempts": 3})  # type: ignore[arg-type]
    assert reg.configure_command(NAME, retry=FAST).retry is FAST


# -- attempts --------------------------------------------------------------------------------


async def test_a_failing_then_succeeding_call_returns_the_success(
    reg: resilience.Registry, metrics_registry: CollectorRegistry, events: list[RetryScheduled]
) -> None:
    configure(reg)
    script = Script(Boom("1"), Boom("2"), "ok")
    assert await reg.run(NAME, script) == "ok"
    assert script.calls == 3
    assert calls_total(metrics_registry, NAME, "failure") == 2
    assert calls_total(metrics_registry, NAME, "success") == 1
    assert retries_total(metrics_registry, "retried") == 2
    assert retries_total(metrics_registry, "exhausted") == 0
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.requests, stats.failures, stats.successes) == (3, 2, 1)
    assert [(e.command, e.attempt, e.delay) for e in events] == [(NAME, 1, 0.0), (NAME, 2, 0.0)]
    assert [e.error for e in events] == script.raised
    intact(reg)


async def test_attempts_used_up_raise_the_last_error_itself(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    configure(reg)
    script = Script(Boom("down"))
    with pytest.raises(Boom) as caught:
        await reg.run(NAME, script)
    assert caught.value is script.raised[-1]
    assert script.calls == 3
    assert retries_total(metrics_registry, "retried") == 2
    assert retries_total(metrics_registry, "exhausted") == 1
    intact(reg)


async def test_the_fallback_runs_once_with_the_last_error(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    configure(reg)
    script = Script(Boom("down"))
    seen: list[BaseException] = []
    result = await reg.run(NAME, script, fallback=recording(seen, "stale"))
    assert result == "stale"
    assert seen == [script.raised[-1]]
    assert fallbacks_total(metrics_registry, NAME, "success") == 1


async def test_a_raising_fallback_chains_to_the_last_error(reg: resilience.Registry) -> None:
    configure(reg)
    script = Script(Boom("down"))

    def fallback(exc: Exception) -> str:
        raise KeyError("no cache")

    with pytest.raises(KeyError) as caught:
        await reg.run(NAME, script, fallback=fallback)
    assert caught.value.__context__ is script.raised[-1]


async def test_one_attempt_means_no_retry(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    configure(reg, Retry(attempts=1, budget=None))
    script = Script(Boom("down"), "ok")
    with pytest.raises(Boom):
        await reg.run(NAME, script)
    assert script.calls == 1
    assert retries_total(metrics_registry, "exhausted") == 1


async def test_many_attempts_with_zero_delays(reg: resilience.Registry) -> None:
    configure(reg, Retry(attempts=1500, backoff=0.0, budget=None), force_closed=True)
    script = Script(*([Boom("x")] * 1400), "ok")
    assert await reg.run(NAME, script) == "ok"
    assert script.calls == 1401


async def test_timeouts_are_retried(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    configure(reg, timeout=0.005)
    calls = 0

    async def slow_then_fast() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep_forever()
        return "fast"

    assert await reg.run(NAME, slow_then_fast) == "fast"
    assert calls_total(metrics_registry, NAME, "timeout") == 1
    assert calls_total(metrics_registry, NAME, "success") == 1


async def test_the_last_timeout_reaches_the_caller_as_a_command_timeout(
    reg: resilience.Registry,
) -> None:
    configure(reg, Retry(attempts=2, backoff=0.0, budget=None), timeout=0.002)
    with pytest.raises(CommandTimeoutError):
        await reg.run(NAME, anyio.sleep_forever)


async def test_failed_results_are_retried_and_the_last_is_returned(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    configure(reg, failed_if=lambda v: v.startswith("bad"))
    assert await reg.run(NAME, Script("bad1", "good")) == "good"
    assert await reg.run(NAME, Script("bad1", "bad2", "bad3")) == "bad3"
    assert calls_total(metrics_registry, NAME, "failure") == 4
    assert retries_total(metrics_registry, "exhausted") == 1


async def test_a_failed_result_reaches_the_fallback_after_the_last_attempt(
    reg: resilience.Registry,
) -> None:
    configure(reg, failed_if=lambda v: v != "good")
    seen: list[BaseException] = []
    assert await reg.run(NAME, Script("a", "b", "c"), fallback=recording(seen, "fb"))
    assert len(seen) == 1 and isinstance(seen[0], FailedResultError)
    assert seen[0].result == "c"


# -- what is retried -----------------------------------------------------------------------------


async def test_on_limits_what_is_retried(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    configure(reg, Retry(attempts=3, backoff=0.0, on=(ConnectionError,), budget=None))
    script = Script(Boom("not a connection error"), "ok")
    with pytest.raises(Boom):
        await reg.run(NAME, script)
    assert script.calls == 1
    assert retries_total(metrics_registry, "exhausted") == 0  # not retried at all
    assert await reg.run(NAME, Script(ConnectionError("reset"), "ok")) == "ok"


async def test_on_sees_timeouts_and_failed_results_as_the_command_errors(
    reg: resilience.Registry,
) -> None:
    seen: list[BaseException] = []

    def on(exc: Exception) -> bool:
        seen.append(exc)
        return False

    configure(reg, Retry(attempts=3, backoff=0.0, on=on, budget=None), failed_if=bool)
    assert await reg.run(NAME, Script("truthy")) == "truthy"
    assert isinstance(seen[-1], FailedResultError)
    reg.configure_command(NAME, failed_if=None, timeout=0.002)
    with pytest.raises(CommandTimeoutError):
        await reg.run(NAME, anyio.sleep_forever)
    assert isinstance(seen[-1], CommandTimeoutError)
    # a connection-error-only policy retries neither
    reg.configure_command(NAME, retry=Retry(on=(ConnectionError,), backoff=0.0, budget=None))
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await anyio.sleep_forever()

    with pytest.raises(CommandTimeoutError):
        await reg.run(NAME, slow)
    assert calls == 1


async def test_ignored_exceptions_are_not_retried(reg: resilience.Registry) -> None:
    configure(reg, ignore_exceptions=(Caller,))
    script = Script(Caller("bad input"), "ok")
    with pytest.raises(Caller):
        await reg.run(NAME, script)
    assert script.calls == 1
    reg.configure_command(NAME, ignore_exceptions=lambda exc: "bad" in str(exc))
    script = Script(Boom("bad input"), "ok")
    with pytest.raises(Boom):
        await reg.run(NAME, script, fallback=lambda exc: "no fallback for ignored")
    assert script.calls == 1


async def test_an_open_circuit_is_never_retried_into(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    configure(reg, Retry(attempts=5, backoff=0.0, budget=None), request_volume_threshold=2)
    script = Script(Boom("down"))
    with pytest.raises(CircuitOpenError):
        await reg.run(NAME, script)
    assert script.calls == 2  # the second failure tripped it; the third attempt was refused
    assert calls_total(metrics_registry, NAME, "short_circuited") == 1
    seen: list[BaseException] = []
    assert await reg.run(NAME, script, fallback=recording(seen, "fb")) == "fb"
    assert script.calls == 2 and isinstance(seen[0], CircuitOpenError)  # refused at once
    assert retries_total(metrics_registry, "retried") == 2  # the refused attempt was made


async def test_the_fallback_gets_the_refusal_that_ended_the_retries(
    reg: resilience.Registry,
) -> None:
    configure(reg, Retry(attempts=5, backoff=0.0, budget=None), request_volume_threshold=2)
    seen: list[BaseException] = []
    assert await reg.run(NAME, Script(Boom("x")), fallback=recording(seen, 1)) == 1
    assert len(seen) == 1 and isinstance(seen[0], CircuitOpenError)


async def test_a_full_bulkhead_is_never_retried_into(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    configure(reg, max_concurrent_requests=1)
    hold = Hold()
    async with anyio.create_task_group() as tg:
        pending = spawn(tg, lambda: reg.run(NAME, hold.fn))
        await hold.entered.wait()
        script = Script(Boom("x"), "ok")
        with pytest.raises(MaxConcurrencyError):
            await reg.run(NAME, script)
        assert script.calls == 0
        hold.release.set()
    assert pending.value == "held"
    assert retries_total(metrics_registry, "retried") == 0
    intact(reg)


async def test_refusals_from_a_nested_command_are_failures_like_any_other(
    reg: resilience.Registry,
) -> None:
    configure(reg)
    reg.configure_command("inner", force_open=True)
    outer_calls = 0

    async def through_inner() -> object:
        nonlocal outer_calls
        outer_calls += 1
        if outer_calls < 3:
            return await reg.run("inner", Script("unreachable"))
        return "recovered"

    assert await reg.run(NAME, through_inner) == "recovered"
    assert outer_calls == 3


async def test_a_raising_on_predicate_propagates(reg: resilience.Registry) -> None:
    def on(exc: Exception) -> bool:
        raise RuntimeError("bad predicate")

    configure(reg, Retry(on=on, backoff=0.0, budget=None))
    with pytest.raises(RuntimeError, match="bad predicate"):
        await reg.run(NAME, Script(Boom("x")))
    intact(reg)


# -- cancellation ----------------------------------------------------------------------------------


async def test_cancellation_is_never_retried(reg: resilience.Registry) -> None:
    configure(reg)
    calls = 0
    with anyio.CancelScope() as scope:

        async def cancelled() -> None:
            nonlocal calls
            calls += 1
            scope.cancel()
            await anyio.lowlevel.checkpoint()

        await reg.run(NAME, cancelled, fallback=lambda e: "no fallback for a cancellation")
    assert scope.cancelled_caught
    assert calls == 1
    assert reg.get_circuit(NAME).statistics().requests == 0
    intact(reg)


def on_mock_trio(test: Callable[..., Awaitable[None]]) -> Any:
    """Run ``test`` on trio with a MockClock (sleeps jump: no real time passes)."""
    backend = ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return pytest.mark.parametrize("anyio_backend", [backend], ids=["trio-mockclock"])(test)


@on_mock_trio
async def test_a_retry_rejected_by_the_bulkhead_ends_the_retries(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    configure(reg, Retry(attempts=3, backoff=1.0, jitter=0.0, budget=None))
    reg.configure_command(NAME, max_concurrent_requests=1)
    hold = Hold()
    script = Script(Boom("x"), "ok")
    async with anyio.create_task_group() as tg:
        # while the retry sleeps (1 s on the mock clock), another call takes the only slot
        reg.subscribe(lambda e: tg.start_soon(reg.run, NAME, hold.fn))
        with pytest.raises(MaxConcurrencyError):
            await reg.run(NAME, script)
        assert (script.calls, hold.calls) == (1, 1)
        hold.release.set()
    assert calls_total(metrics_registry, NAME, "rejected") == 1
    intact(reg)


@on_mock_trio
async def test_sleeps_take_the_computed_delays(reg: resilience.Registry) -> None:
    configure(reg, Retry(attempts=4, backoff=1.0, multiplier=3.0, jitter=0.0, budget=None))
    start = anyio.current_time()
    assert await reg.run(NAME, Script(Boom("1"), Boom("2"), Boom("3"), "ok")) == "ok"
    assert anyio.current_time() - start == pytest.approx(1.0 + 3.0 + 5.0)  # capped at 5


@on_mock_trio
async def test_a_cancelled_sleep_cancels_the_call(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    configure(reg, Retry(attempts=3, backoff=10.0, max_backoff=10.0, jitter=0.0, budget=None))
    script = Script(Boom("x"), "ok")
    seen: list[BaseException] = []
    start = anyio.current_time()
    with anyio.move_on_after(1.0) as scope:
        # the deadline is 1 s away and the delay 10 s: the deadline rule stops at once
        with pytest.raises(Boom):
            await reg.run(NAME, script)
    assert not scope.cancelled_caught
    assert retries_total(metrics_registry, "deadline") == 1
    with anyio.CancelScope() as outer:

        async def cancel_soon() -> None:
            await anyio.sleep(2.0)
            outer.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_soon)
            script = Script(Boom("x"), "ok")
            await reg.run(NAME, script, fallback=recording(seen, None))
    assert outer.cancelled_caught
    assert anyio.current_time() == pytest.approx(start + 2.0)
    assert seen == []  # cancellation never runs the fallback
    assert script.calls == 1  # cancelled in its sleep: the second attempt never ran
    intact(reg)


async def test_delays_never_run_past_the_callers_deadline(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    configure(reg, Retry(attempts=3, backoff=60.0, max_backoff=60.0, jitter=0.0, budget=None))
    script = Script(Boom("x"), "ok")
    with anyio.fail_after(30.0):
        with pytest.raises(Boom) as caught:
            await reg.run(NAME, script)
    assert caught.value is script.raised[0]
    assert script.calls == 1
    assert retries_total(metrics_registry, "deadline") == 1
    with anyio.fail_after(30.0):
        assert await reg.run(NAME, Script(Boom("x"), "ok"), fallback=lambda e: "fb") == "fb"
    assert retries_total(metrics_registry, "deadline") == 2
    assert retries_total(metrics_registry, "retried") == 0


# -- Retry-After hints --------------------------------------------------------------------------


class Throttled(Exception):
    def __init__(self, message: str = "throttled", retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@on_mock_trio
async def test_a_hint_is_waited_at_least(
    reg: resilience.Registry, events: list[RetryScheduled]
) -> None:
    configure(reg, Retry(attempts=3, backoff=0.1, jitter=0.0, max_backoff=5.0, budget=None))
    start = anyio.current_time()
    assert await reg.run(NAME, Script(Throttled(retry_after=2.5), "ok")) == "ok"
    assert anyio.current_time() - start == pytest.approx(2.5)
    assert events[0].delay == 2.5


async def test_a_hint_beyond_max_backoff_stops_the_retries(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    configure(reg, Retry(attempts=3, backoff=0.0, max_backoff=1.0, budget=None))
    script = Script(Throttled(retry_after=30.0), "ok")
    with pytest.raises(Throttled):
        await reg.run(NAME, script)
    assert script.calls == 1
    assert retries_total(metrics_registry, "exhausted") == 1


async def test_a_nonsense_hint_is_ignored(reg: resilience.Registry) -> None:
    configure(reg, Retry(attempts=2, backoff=0.0, max_backoff=1.0, budget=None))
    error = Throttled()
    error.retry_after = "soon"  # type: ignore[assignment]
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        return "ok"

    assert await reg.run(NAME, fn) == "ok"


async def test_a_failed_result_can_carry_a_hint(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    class FailedIfThrottled:
        def __call__(self, value: object) -> bool:
            return value == 429

        def retry_after_of(self, value: object) -> float:
            return 60.0

    configure(reg, Retry(attempts=3, backoff=0.0, max_backoff=1.0, budget=None))
    reg.configure_command(NAME, failed_if=FailedIfThrottled())
    seen: list[BaseException] = []
    await reg.run(NAME, Script(429, 200), fallback=recording(seen, None))
    assert isinstance(seen[0], FailedResultError) and seen[0].retry_after == 60.0
    assert retries_total(metrics_registry, "exhausted") == 1


# -- the budget ------------------------------------------------------------------------------------


async def test_a_zero_budget_refuses_every_retry(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    configure(reg, Retry(attempts=3, backoff=0.0, budget=0.0, min_retries_per_second=0.0))
    script = Script(Boom("x"), "ok")
    with pytest.raises(Boom):
        await reg.run(NAME, script)
    assert script.calls == 1
    assert retries_total(metrics_registry, "budget_exhausted") == 1


async def test_the_budget_is_a_fraction_of_first_attempts(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    configure(reg, Retry(attempts=10, backoff=0.0, budget=0.5, min_retries_per_second=0.0))
    for _ in range(4):
        await reg.run(NAME, Script("ok"))
    script = Script(Boom("x"))
    with pytest.raises(Boom):
        await reg.run(NAME, script)
    # first attempts 5: 2 retries fit in 0.5 x 5 = 2.5, a third does not
    assert script.calls == 3
    assert retries_total(metrics_registry, "retried") == 2
    assert retries_total(metrics_registry, "budget_exhausted") == 1


async def test_the_floor_allows_retries_per_second_of_window(
    reg: resilience.Registry, clock: FakeClock, metrics_registry: CollectorRegistry
) -> None:
    configure(
        reg,
        Retry(attempts=10, backoff=0.0, budget=0.0, min_retries_per_second=1.0),
        rolling_window=2.0,
        buckets=2,
    )
    script = Script(Boom("x"))
    with pytest.raises(Boom):
        await reg.run(NAME, script)
    assert script.calls == 3  # 1 retry/s x 2 s of window
    clock.advance(2.0)  # the window forgets those retries
    script = Script(Boom("x"))
    with pytest.raises(Boom):
        await reg.run(NAME, script)
    assert script.calls == 3
    assert retries_total(metrics_registry, "budget_exhausted") == 2


async def test_the_budget_is_per_command(reg: resilience.Registry) -> None:
    policy = Retry(attempts=3, backoff=0.0, budget=0.0, min_retries_per_second=0.5)
    configure(reg, policy, rolling_window=2.0)
    reg.configure_command("other", retry=policy, timeout=None, rolling_window=2.0)
    first, second = Script(Boom("x")), Script(Boom("x"))
    with pytest.raises(Boom):
        await reg.run(NAME, first)
    with pytest.raises(Boom):
        await reg.run("other", second)
    assert (first.calls, second.calls) == (2, 2)


# -- per-call state --------------------------------------------------------------------------------


async def test_concurrent_calls_keep_their_own_attempt_counts(
    reg: resilience.Registry, events: list[RetryScheduled]
) -> None:
    configure(reg, Retry(attempts=3, backoff=0.0, budget=None), max_concurrent_requests=10)
    scripts = [Script(Boom("a"), Boom("b"), f"ok{i}") for i in range(5)]
    results: dict[int, object] = {}

    async def one(i: int) -> None:
        results[i] = await reg.run(NAME, scripts[i])

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(one, i)
    assert results == {i: f"ok{i}" for i in range(5)}
    assert sorted(e.attempt for e in events) == [1] * 5 + [2] * 5
    intact(reg)


# -- configuration is live -----------------------------------------------------------------------


async def test_adding_and_removing_a_policy_takes_effect_on_the_next_call(
    reg: resilience.Registry,
) -> None:
    reg.configure_command(NAME, timeout=None)
    script = Script(Boom("x"), "ok")
    with pytest.raises(Boom):
        await reg.run(NAME, script)
    reg.configure_command(NAME, retry=FAST)
    assert await reg.run(NAME, Script(Boom("x"), "ok")) == "ok"
    reg.configure_command(NAME, retry=None)
    with pytest.raises(Boom):
        await reg.run(NAME, Script(Boom("x"), "ok"))


async def test_the_decorator_takes_a_policy(reg: resilience.Registry) -> None:
    script = Script(Boom("x"), "decorated")

    @reg.command(NAME, timeout=None, retry=FAST)
    async def call() -> object:
        return await script()

    assert await call() == "decorated"


async def test_a_half_open_trial_that_fails_is_not_retried_into_the_open_circuit(
    reg: resilience.Registry, clock: FakeClock, metrics_registry: CollectorRegistry
) -> None:
    configure(reg, request_volume_threshold=1, sleep_window=5.0)
    with pytest.raises(CircuitOpenError):
        await reg.run(NAME, Script(Boom("x")))  # trips on the first failure
    clock.advance(5.0)
    script = Script(Boom("still down"), "ok")
    with pytest.raises(CircuitOpenError):
        await reg.run(NAME, script)  # the trial failed: the retry is refused
    assert script.calls == 1
    assert reg.get_circuit(NAME).state is resilience.CircuitState.OPEN


# -- plain functions ----------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_sync_retries(
    reg: resilience.Registry, metrics_registry: CollectorRegistry, timeout: float | None
) -> None:
    configure(reg, timeout=timeout)
    script = Script(Boom("1"), Boom("2"), "ok")
    assert reg.run_sync(NAME, script.sync) == "ok"
    assert script.calls == 3
    assert retries_total(metrics_registry, "retried") == 2
    script = Script(Boom("x"))
    with pytest.raises(Boom) as caught:
        reg.run_sync(NAME, script.sync)
    assert caught.value is script.raised[-1]
    assert reg.run_sync(NAME, script.sync, fallback=lambda e: "fb") == "fb"
    intact(reg)


def test_sync_retries_stay_in_the_callers_thread_without_a_timeout(
    reg: resilience.Registry,
) -> None:
    configure(reg)
    threads: list[int] = []

    @reg.command(NAME)
    def call() -> str:
        threads.append(threading.get_ident())
        if len(threads) < 3:
            raise Boom("x")
        return "ok"

    assert call() == "ok"
    assert threads == [threading.get_ident()] * 3


def test_sync_retries_sleep_the_computed_delays(
    reg: resilience.Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr("time.sleep", slept.append)
    configure(reg, Retry(attempts=3, backoff=0.5, multiplier=2.0, jitter=0.0, budget=None))
    assert reg.run_sync(NAME, Script(Boom("1"), Boom("2"), "ok").sync) == "ok"
    assert slept == [0.5, 1.0]


def test_sync_refusals_and_failed_results(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    configure(reg, Retry(attempts=5, backoff=0.0, budget=None), request_volume_threshold=2)
    script = Script(Boom("x"))
    with pytest.raises(CircuitOpenError):
        reg.run_sync(NAME, script.sync)
    assert script.calls == 2
    reg.flush()
    reg.configure_command(NAME, failed_if=lambda v: v == "bad", request_volume_threshold=100)
    assert reg.run_sync(NAME, Script("bad", "good").sync) == "good"
    assert reg.run_sync(NAME, Script("bad").sync) == "bad"


async def test_plain_functions_run_from_async_code_are_retried(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    configure(reg, timeout=5.0)
    script = Script(Boom("1"), "ok")
    assert await reg.run(NAME, script.sync) == "ok"
    assert script.calls == 2
    script = Script(Boom("x"))
    with pytest.raises(Boom):
        await reg.run(NAME, script.sync)
    assert script.calls == 3
    intact(reg)
