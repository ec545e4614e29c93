"""Command metrics (docs/metrics.md) after a known workload, on private registries."""

from __future__ import annotations

import uuid

import anyio
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from test_command_helpers import (
    Boom,
    Caller,
    FakeClock,
    Hold,
    all_calls,
    failing,
    fallbacks_total,
    make_registry,
    ok,
    ok_sync,
    sample,
    spawn,
    state_gauge,
)

import resilience
from resilience import CircuitOpenError, CommandTimeoutError, MaxConcurrencyError

NAME = "metered"


async def test_metric_values_after_a_known_workload(
    clock: FakeClock, metrics_registry: CollectorRegistry
) -> None:
    reg = make_registry(clock, metrics_registry)
    reg.configure_command(
        NAME, timeout=0.05, max_concurrent_requests=1, request_volume_threshold=1000,
        ignore_exceptions=(Caller,),
    )

    def raise_fb(exc: BaseException) -> str:
        raise RuntimeError("fallback failed")

    for _ in range(3):
        assert await reg.run(NAME, ok) == "ok"
    assert await reg.run(NAME, ok_sync) == "ok"
    assert await reg.run(NAME, failing(Boom()), fallback=lambda exc: "fb") == "fb"
    with pytest.raises(RuntimeError):
        await reg.run(NAME, failing(Boom()), fallback=raise_fb)
    with pytest.raises(CommandTimeoutError):
        await reg.run(NAME, anyio.sleep_forever)
    with pytest.raises(Caller):
        await reg.run(NAME, failing(Caller()))
    reg.configure_command(NAME, timeout=None)
    hold = Hold()
    async with anyio.create_task_group() as tg:
        held = spawn(tg, lambda: reg.run(NAME, hold.fn))
        await hold.entered.wait()
        assert sample(metrics_registry, "resilience_command_in_flight", command=NAME) == 1
        with pytest.raises(MaxConcurrencyError):
            await reg.run(NAME, ok)
        hold.release.set()
    assert held.ok
    cancelled = Hold()
    async with anyio.create_task_group() as tg:
        p = spawn(tg, lambda: reg.run(NAME, cancelled.fn))
        await cancelled.entered.wait()
        p.scope.cancel()
    assert p.cancelled
    reg.configure_command(NAME, force_open=True)
    with pytest.raises(CircuitOpenError):
        await reg.run(NAME, ok)
    assert await reg.run(NAME, ok, fallback=lambda exc: "open-fb") == "open-fb"

    assert all_calls(metrics_registry, NAME) == {
        "success": 5, "failure": 2, "timeout": 1, "rejected": 1, "short_circuited": 2,
        "ignored": 1, "cancelled": 1,
    }
    assert fallbacks_total(metrics_registry, NAME, "success") == 2
    assert fallbacks_total(metrics_registry, NAME, "failure") == 1
    # Executed calls only: success, failure, timeout, ignored (cancelled is debatable).
    count = sample(metrics_registry, "resilience_command_duration_seconds_count", command=NAME)
    assert 9 <= count <= 10
    assert sample(
        metrics_registry, "resilience_command_duration_seconds_bucket", command=NAME, le="+Inf"
    ) == count
    assert sample(metrics_registry, "resilience_command_duration_seconds_sum", command=NAME) >= (
        0.04  # the timed-out call alone took ~0.05 s
    )
    assert sample(metrics_registry, "resilience_command_in_flight", command=NAME) == 0
    stats = reg.get_circuit(NAME).statistics()
    assert (
        stats.requests, stats.successes, stats.failures, stats.timeouts, stats.rejections,
        stats.short_circuits, stats.fallback_successes, stats.fallback_failures,
    ) == (9, 5, 2, 1, 1, 2, 2, 1)
    ratio = sample(metrics_registry, "resilience_circuit_error_ratio", command=NAME)
    assert ratio == pytest.approx(4 / 9)
    assert stats.error_percent == pytest.approx(400 / 9)
    assert sum(state_gauge(metrics_registry, NAME).values()) == 1


async def test_two_registries_on_one_collector_registry_add_up(
    clock: FakeClock, metrics_registry: CollectorRegistry
) -> None:
    one = make_registry(clock, metrics_registry)
    two = make_registry(clock, metrics_registry)  # must not fail with duplicated series
    for _ in range(2):
        await one.run(NAME, ok)
    for _ in range(3):
        await two.run(NAME, ok)
    with pytest.raises(Boom):
        await two.run(NAME, failing(Boom()))
    assert all_calls(metrics_registry, NAME)["success"] == 5
    assert all_calls(metrics_registry, NAME)["failure"] == 1
    assert sample(metrics_registry, "resilience_command_duration_seconds_count", command=NAME) == 6
    h1, h2 = Hold(), Hold()
    async with anyio.create_task_group() as tg:
        spawn(tg, lambda: one.run(NAME, h1.fn))
        spawn(tg, lambda: two.run(NAME, h2.fn))
        await h1.entered.wait()
        await h2.entered.wait()
        assert sample(metrics_registry, "resilience_command_in_flight", command=NAME) == 2
        h1.release.set()
        h2.release.set()
    assert sample(metrics_registry, "resilience_command_in_flight", command=NAME) == 0
    # Their circuits stay separate: only the metric series are shared.
    assert one.get_circuit(NAME).statistics().requests == 3
    assert two.get_circuit(NAME).statistics().requests == 5
    # The exposition renders without error (no duplicated families).
    text = prometheus_client.generate_latest(metrics_registry).decode()
    assert text.count("# TYPE resilience_command_calls_total counter") == 1
    assert f'resilience_command_calls_total{{command="{NAME}",outcome="success"}} 7.0' in text


async def test_many_registries_on_the_default_collector_registry(clock: FakeClock) -> None:
    name = f"test-default-metrics-{uuid.uuid4().hex}"
    default = prometheus_client.REGISTRY
    registries = [resilience.Registry(clock=clock) for _ in range(3)]
    for r in registries:
        assert await r.run(name, ok) == "ok"
    assert sample(default, "resilience_command_calls_total", command=name, outcome="success") == 3


async def test_counters_survive_flush(
    clock: FakeClock, metrics_registry: CollectorRegistry
) -> None:
    reg = make_registry(clock, metrics_registry)
    await reg.run(NAME, ok)
    reg.flush()
    await reg.run(NAME, ok)
    assert all_calls(metrics_registry, NAME)["success"] == 2


async def test_error_ratio_gauge_follows_the_rolling_window(
    clock: FakeClock, metrics_registry: CollectorRegistry
) -> None:
    reg = make_registry(clock, metrics_registry)
    reg.configure_command(NAME, force_closed=True, rolling_window=10.0, buckets=10)
    await reg.run(NAME, ok)
    for _ in range(3):
        with pytest.raises(Boom):
            await reg.run(NAME, failing(Boom()))
    assert sample(metrics_registry, "resilience_circuit_error_ratio", command=NAME) == 0.75
    clock.advance(30.0)  # nothing ran since: the window is empty at scrape time
    assert sample(metrics_registry, "resilience_circuit_error_ratio", command=NAME) == 0
    assert all_calls(metrics_registry, NAME)["failure"] == 3
