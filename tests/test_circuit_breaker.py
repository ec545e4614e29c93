"""Circuit breaker rules (docs/commands.md) (closed and open), driven by a fake clock.

Trip exactly at the threshold and not one call before, what counts in health,
short-circuit without calling, sleep window, ``retry_after``/``statistics`` on
``CircuitOpenError``, rolling window, force switches, reconfiguration and flush.
"""

from __future__ import annotations

import anyio
import pytest
from prometheus_client import CollectorRegistry
from test_command_helpers import (
    BREAKER,
    SLEEP,
    Boom,
    Caller,
    FakeClock,
    Hold,
    assert_short_circuited,
    breaker_state,
    calls_total,
    eventually,
    ok,
    recording,
    run_outcome,
    setup_breaker,
    spawn,
    state_gauge,
    trip,
)

import resilience
from resilience import CircuitOpenError, CircuitState, CommandTimeoutError, MaxConcurrencyError

NAME = BREAKER


# -- closed -> open ----------------------------------------------------------------------

TRIP_CASES = [
    # (volume, percent, outcomes, index of the call that trips (0-based) or None)
    (4, 50, ["success", "failure", "success", "failure"], 3),  # exactly 50% at exactly 4
    (4, 50, ["failure", "failure", "failure", "success"], 3),  # a success completes it
    (4, 50, ["failure", "failure", "failure"], None),  # 100% but one call short
    (10, 50, ["failure"] * 10, 9),
    (0, 100, ["failure"], 0),
    (0, 100, ["success", "failure"], None),  # 50% < 100%
    (3, 34, ["success", "success", "failure"], None),  # 33.3% < 34: no rounding up
    (3, 34, ["success", "success", "failure", "failure"], 3),
    (3, 33, ["success", "success", "failure"], 2),  # 33.3% >= 33
    (1, 1, ["success"] * 5 + ["failure"], 5),  # 1/6 = 16.7% >= 1
    (2, 50, ["failure", "ignored", "ignored", "ignored"], None),  # ignored not counted
    (2, 100, ["ignored", "failure", "ignored", "failure"], 3),
]


@pytest.mark.parametrize(("volume", "percent", "outcomes", "trips_at"), TRIP_CASES)
async def test_trips_at_exactly_the_threshold(
    reg: resilience.Registry,
    volume: int,
    percent: int,
    outcomes: list[str],
    trips_at: int | None,
) -> None:
    setup_breaker(reg, request_volume_threshold=volume, error_percent_threshold=percent)
    for i, kind in enumerate(outcomes):
        # The call that completes the condition still returns its own outcome.
        if kind == "success":
            assert await run_outcome(reg, NAME, kind) == "ok"
        else:
            with pytest.raises(Boom if kind == "failure" else Caller):
                await run_outcome(reg, NAME, kind)
        expected = CircuitState.OPEN if trips_at is not None and i >= trips_at else (
            CircuitState.CLOSED
        )
        assert breaker_state(reg) is expected, f"after call {i} ({kind})"
    if trips_at is not None:
        await assert_short_circuited(reg)
    else:
        assert await reg.run(NAME, ok) == "ok"


async def test_timeouts_count_as_errors(reg: resilience.Registry) -> None:
    setup_breaker(reg, request_volume_threshold=2, error_percent_threshold=100, timeout=0.05)
    for i in range(2):
        with pytest.raises(CommandTimeoutError):
            await reg.run(NAME, anyio.sleep_forever)
        assert breaker_state(reg) is (CircuitState.OPEN if i == 1 else CircuitState.CLOSED)
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.requests, stats.timeouts, stats.failures) == (2, 2, 0)
    assert stats.error_percent == 100


async def test_rejections_count_as_errors_and_late_successes_are_stale(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    setup_breaker(
        reg, request_volume_threshold=2, error_percent_threshold=100, max_concurrent_requests=2
    )
    hold = Hold()
    async with anyio.create_task_group() as tg:
        held = [spawn(tg, lambda: reg.run(NAME, hold.fn)) for _ in range(2)]
        await eventually(lambda: hold.calls == 2)
        for i in range(2):
            with pytest.raises(MaxConcurrencyError):
                await reg.run(NAME, ok)
            assert breaker_state(reg) is (CircuitState.OPEN if i == 1 else CircuitState.CLOSED)
        # The circuit opened while two calls admitted as closed were still running.
        await assert_short_circuited(reg)
        hold.release.set()
    assert all(p.value == "held" for p in held)
    assert breaker_state(reg) is CircuitState.OPEN  # their late successes do not close it
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.requests, stats.successes, stats.rejections) == (2, 0, 2)
    assert calls_total(metrics_registry, NAME, "success") == 2  # lifetime metrics count them


async def test_short_circuits_are_not_requests(reg: resilience.Registry) -> None:
    setup_breaker(reg)
    await trip(reg)
    for _ in range(5):
        await assert_short_circuited(reg)
    stats = reg.get_circuit(NAME).statistics()
    assert stats.requests == 4
    assert stats.failures == 4
    assert stats.short_circuits == 5
    assert stats.error_percent == 100


# -- open ----------------------------------------------------------------------------------


async def test_open_circuit_reports_retry_after_and_statistics(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    setup_breaker(reg)
    assert await run_outcome(reg, NAME, "success") == "ok"
    for _ in range(3):
        with pytest.raises(Boom):
            await run_outcome(reg, NAME, "failure")
    assert breaker_state(reg) is CircuitState.OPEN
    err = await assert_short_circuited(reg)
    assert isinstance(err, resilience.CommandError)
    assert isinstance(err, resilience.ResilienceError)
    assert NAME in str(err)
    assert err.retry_after == pytest.approx(SLEEP)
    assert err.statistics.requests == 4
    assert err.statistics.successes == 1
    assert err.statistics.failures == 3
    assert err.statistics.error_percent == pytest.approx(75)
    clock.advance(2.0)
    err = await assert_short_circuited(reg)
    assert err.retry_after == pytest.approx(SLEEP - 2.0)
    # The snapshot is a snapshot: later calls do not change it.
    before = err.statistics.short_circuits
    await assert_short_circuited(reg)
    assert err.statistics.short_circuits == before


async def test_sleep_window(reg: resilience.Registry, clock: FakeClock) -> None:
    setup_breaker(reg)
    await trip(reg)
    clock.advance(SLEEP - 0.01)
    await assert_short_circuited(reg)
    clock.advance(0.02)
    calls = 0

    async def trial() -> str:
        nonlocal calls
        calls += 1
        return "trial"

    assert await reg.run(NAME, trial) == "trial"
    assert calls == 1
    assert breaker_state(reg) is CircuitState.CLOSED


async def test_zero_sleep_window_allows_a_trial_at_once(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    setup_breaker(reg, sleep_window=0)
    await trip(reg)
    clock.advance(0.001)
    assert await reg.run(NAME, ok) == "ok"
    assert breaker_state(reg) is CircuitState.CLOSED


# -- rolling window ------------------------------------------------------------------------


async def test_rolling_window_forgets(reg: resilience.Registry, clock: FakeClock) -> None:
    setup_breaker(reg, request_volume_threshold=5, rolling_window=10.0, buckets=10)
    for _ in range(3):
        with pytest.raises(Boom):
            await run_outcome(reg, NAME, "failure")
    clock.advance(5.5)
    assert await run_outcome(reg, NAME, "success") == "ok"
    clock.advance(3.0)  # 8.5 s after the failures: all still inside the window
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.requests, stats.failures, stats.successes) == (4, 3, 1)
    clock.advance(3.0)  # 11.5 s after the failures, 6 s after the success
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.requests, stats.failures, stats.successes) == (1, 0, 1)
    assert stats.error_percent == 0
    # Forgotten failures no longer count toward tripping (with them: 5 requests, 80%).
    with pytest.raises(Boom):
        await run_outcome(reg, NAME, "failure")
    assert breaker_state(reg) is CircuitState.CLOSED
    for _ in range(3):
        with pytest.raises(Boom):
            await run_outcome(reg, NAME, "failure")
    assert breaker_state(reg) is CircuitState.OPEN  # 4 of 5 in the window: counting still works
    clock.advance(20.0)
    stats = reg.get_circuit(NAME).statistics()
    assert stats.requests == 0
    assert stats.error_percent == 0


async def test_statistics_forget_even_when_idle_for_long(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    setup_breaker(reg, rolling_window=1.0, buckets=1)
    with pytest.raises(Boom):
        await run_outcome(reg, NAME, "failure")
    clock.advance(10_000.0)
    assert reg.get_circuit(NAME).statistics().requests == 0


# -- operator switches ---------------------------------------------------------------------


async def test_force_open_rejects_everything(
    reg: resilience.Registry, clock: FakeClock, metrics_registry: CollectorRegistry
) -> None:
    setup_breaker(reg, force_open=True)
    for _ in range(3):
        err = await assert_short_circuited(reg)
        assert err.retry_after is None
        clock.advance(SLEEP * 3)  # no trial ever under force_open
    assert calls_total(metrics_registry, NAME, "short_circuited") == 3
    seen: list[BaseException] = []
    result = await reg.run(NAME, ok, fallback=recording(seen, "fallback"))
    assert result == "fallback"
    assert isinstance(seen[0], CircuitOpenError)
    reg.configure_command(NAME, force_open=False)
    assert await reg.run(NAME, ok) == "ok"


async def test_force_closed_never_trips_but_keeps_statistics(reg: resilience.Registry) -> None:
    setup_breaker(reg, force_closed=True)
    for _ in range(30):
        with pytest.raises(Boom):
            await run_outcome(reg, NAME, "failure")
    assert breaker_state(reg) is CircuitState.CLOSED
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.requests, stats.failures) == (30, 30)
    assert stats.error_percent == 100
    assert await reg.run(NAME, ok) == "ok"


async def test_force_open_wins_over_force_closed(reg: resilience.Registry) -> None:
    setup_breaker(reg, force_open=True, force_closed=True)
    err = await assert_short_circuited(reg)
    assert err.retry_after is None


async def test_reconfiguration_keeps_circuit_state(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    setup_breaker(reg)
    await trip(reg)
    reg.configure_command(NAME, timeout=2.0, max_concurrent_requests=3)
    assert breaker_state(reg) is CircuitState.OPEN
    assert reg.get_circuit(NAME).statistics().failures == 4
    err = await assert_short_circuited(reg)
    assert err.retry_after == pytest.approx(SLEEP)


async def test_flush_forgets_state_and_statistics_but_keeps_config_and_counters(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    setup_breaker(reg, timeout=0.3)
    await trip(reg)
    reg.flush()
    circuit = reg.get_circuit(NAME)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.config.timeout == 0.3
    assert circuit.config.request_volume_threshold == 4
    stats = circuit.statistics()
    assert (stats.requests, stats.failures, stats.short_circuits) == (0, 0, 0)
    assert calls_total(metrics_registry, NAME, "failure") == 4  # counters never go back
    assert state_gauge(metrics_registry, NAME) == {"closed": 1, "open": 0, "half_open": 0}
    assert await reg.run(NAME, ok) == "ok"


async def test_flush_with_a_call_in_flight_keeps_the_slot_accounting(
    reg: resilience.Registry,
) -> None:
    setup_breaker(reg, max_concurrent_requests=1)
    slow = Hold()
    async with anyio.create_task_group() as tg:
        p = spawn(tg, lambda: reg.run(NAME, slow.fn))
        await slow.entered.wait()
        reg.flush()
        # The slow call still does real work: the limit still counts it.
        with pytest.raises(MaxConcurrencyError):
            await reg.run(NAME, ok)
        slow.release.set()
    assert p.ok
    assert reg.get_circuit(NAME).in_flight == 0
    assert await reg.run(NAME, ok) == "ok"
    assert reg.get_circuit(NAME).in_flight == 0


async def test_state_gauge_follows_the_circuit(
    reg: resilience.Registry, clock: FakeClock, metrics_registry: CollectorRegistry
) -> None:
    setup_breaker(reg)
    assert await reg.run(NAME, ok) == "ok"
    assert state_gauge(metrics_registry, NAME) == {"closed": 1, "open": 0, "half_open": 0}
    for _ in range(3):
        with pytest.raises(Boom):
            await run_outcome(reg, NAME, "failure")
    assert state_gauge(metrics_registry, NAME) == {"closed": 0, "open": 1, "half_open": 0}
    ratio = metrics_registry.get_sample_value(
        "resilience_circuit_error_ratio", {"command": NAME}
    )
    assert ratio == pytest.approx(reg.get_circuit(NAME).statistics().error_percent / 100)
    assert ratio == pytest.approx(3 / 4)
    clock.advance(SLEEP + 1)
    assert await reg.run(NAME, ok) == "ok"
    assert state_gauge(metrics_registry, NAME) == {"closed": 1, "open": 0, "half_open": 0}


async def test_circuit_open_error_is_a_snapshot_taken_when_raised(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    setup_breaker(reg)
    await trip(reg)
    clock.advance(1.0)
    errors: list[CircuitOpenError] = []
    for _ in range(2):
        try:
            await reg.run(NAME, ok)
        except CircuitOpenError as exc:
            errors.append(exc)
    seen: list[BaseException] = []
    await reg.run(NAME, ok, fallback=recording(seen, "fb"))
    # Only now look at them, after time passed and more calls were short-circuited.
    clock.advance(2.0)
    for _ in range(3):
        await assert_short_circuited(reg)
    first, second = errors
    assert first.retry_after == pytest.approx(SLEEP - 1.0)
    assert second.retry_after == pytest.approx(SLEEP - 1.0)
    assert first.statistics.short_circuits in (0, 1)  # before or including itself
    assert second.statistics.short_circuits == first.statistics.short_circuits + 1
    assert first.statistics.requests == 4 and first.statistics.failures == 4
    fb_err = seen[0]
    assert isinstance(fb_err, CircuitOpenError)
    assert fb_err.retry_after == pytest.approx(SLEEP - 1.0)
    assert fb_err.statistics.short_circuits == second.statistics.short_circuits + 1


async def test_sleep_window_starts_when_the_tripping_outcome_lands(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    setup_breaker(reg, request_volume_threshold=2, error_percent_threshold=100)
    slow = Hold(error=Boom("slow failure"))
    async with anyio.create_task_group() as tg:
        p = spawn(tg, lambda: reg.run(NAME, slow.fn))
        await slow.entered.wait()
        with pytest.raises(Boom):
            await run_outcome(reg, NAME, "failure")
        clock.advance(3.0)  # the slow call completes the condition 3 s after it started
        slow.release.set()
        await p.done.wait()
    assert isinstance(p.error, Boom)
    assert breaker_state(reg) is CircuitState.OPEN
    err = await assert_short_circuited(reg)
    assert err.retry_after == pytest.approx(SLEEP)


async def test_huge_idle_gap_with_tiny_buckets_is_cheap(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    setup_breaker(reg, rolling_window=1.0, buckets=1000, force_closed=True)
    with pytest.raises(Boom):
        await run_outcome(reg, NAME, "failure")
    clock.advance(1e9)  # 1e12 bucket widths later: rolling must not walk them one by one

    def after_the_gap() -> tuple[int, int]:
        before = reg.get_circuit(NAME).statistics().requests
        reg.run_sync(NAME, lambda: "ok")
        return before, reg.get_circuit(NAME).statistics().requests

    with anyio.fail_after(5):
        assert await anyio.to_thread.run_sync(after_the_gap, abandon_on_cancel=True) == (0, 1)


async def test_window_that_buckets_do_not_divide_evenly(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    setup_breaker(reg, rolling_window=1.0, buckets=3, force_closed=True)
    with pytest.raises(Boom):
        await run_outcome(reg, NAME, "failure")
    clock.advance(0.6)  # within rolling_window minus one bucket: still counted
    assert reg.get_circuit(NAME).statistics().requests == 1
    clock.advance(0.8)  # beyond rolling_window plus one bucket: forgotten
    assert reg.get_circuit(NAME).statistics().requests == 0
