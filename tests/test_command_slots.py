"""Concurrency slots: ``max_wait`` (a bounded, first-come-first-served wait) and
``count_rejections`` (whether rejections count in the circuit's health)."""

from __future__ import annotations

import functools
import threading

import anyio
import pytest
from prometheus_client import CollectorRegistry
from test_command_helpers import Hold, calls_total

import resilience
from resilience import MaxConcurrencyError


async def test_load_alone_does_not_open_the_circuit_with_max_wait(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    """25 callers, 10 slots, a healthy dependency: with max_wait nobody is rejected."""
    reg.configure_command("api", max_concurrent_requests=10, max_wait=30.0, timeout=None)
    release = anyio.Event()
    entered = 0

    async def healthy() -> str:
        nonlocal entered
        entered += 1
        await release.wait()
        return "ok"

    results: list[str] = []

    async def caller() -> None:
        results.append(await reg.run("api", healthy))

    async with anyio.create_task_group() as tg:
        for _ in range(25):
            tg.start_soon(caller)
        for _ in range(50):
            await anyio.lowlevel.checkpoint()
        assert entered == 10  # the limit bounds real work
        assert reg.get_circuit("api").in_flight == 10
        release.set()
    assert results == ["ok"] * 25
    assert calls_total(metrics_registry, "api", "rejected") == 0
    assert reg.get_circuit("api").state == "closed"


async def test_waiters_are_served_first_come_first_served(reg: resilience.Registry) -> None:
    reg.configure_command("fifo", max_concurrent_requests=1, max_wait=30.0, timeout=None)
    holder = Hold()
    order: list[int] = []
    core = reg._core("fifo")

    async def waiter(i: int) -> None:
        async def body() -> None:
            order.append(i)

        await reg.run("fifo", body)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reg.run, "fifo", holder.fn)
        await holder.entered.wait()
        for i in range(5):
            tg.start_soon(waiter, i)
            while len(core.waiters) < i + 1:  # queued before the next one starts
                await anyio.lowlevel.checkpoint()
        holder.release.set()
    assert order == [0, 1, 2, 3, 4]
    assert core.in_flight == 0 and not core.waiters


async def test_a_waiter_past_max_wait_is_rejected(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    reg.configure_command("mw", max_concurrent_requests=1, max_wait=0.01, timeout=None)
    holder = Hold()
    async with anyio.create_task_group() as tg:
        tg.start_soon(reg.run, "mw", holder.fn)
        await holder.entered.wait()
        with pytest.raises(MaxConcurrencyError) as info:
            await reg.run("mw", Hold().fn)
        assert info.value.command == "mw"
        assert reg.get_circuit("mw").statistics().rejections == 1
        holder.release.set()
    assert calls_total(metrics_registry, "mw", "rejected") == 1
    assert not reg._core("mw").waiters


async def test_a_cancelled_waiter_leaves_nothing_behind(reg: resilience.Registry) -> None:
    reg.configure_command("cw", max_concurrent_requests=1, max_wait=30.0, timeout=None)
    holder, second = Hold(), Hold()
    core = reg._core("cw")
    async with anyio.create_task_group() as tg:
        tg.start_soon(reg.run, "cw", holder.fn)
        await holder.entered.wait()
        doomed = anyio.CancelScope()
        tg.start_soon(functools.partial(_run_in, doomed, reg, "cw"))
        while not core.waiters:
            await anyio.lowlevel.checkpoint()
        doomed.cancel()
        while core.waiters:
            await anyio.lowlevel.checkpoint()
        tg.start_soon(reg.run, "cw", second.fn)
        holder.release.set()
        await second.entered.wait()  # the slot went to the live caller
        second.release.set()
    assert core.in_flight == 0 and not core.waiters


async def _run_in(scope: anyio.CancelScope, reg: resilience.Registry, name: str) -> None:
    with scope:
        await reg.run(name, Hold().fn)


async def test_a_raised_limit_wakes_waiters(reg: resilience.Registry) -> None:
    reg.configure_command("up", max_concurrent_requests=1, max_wait=30.0, timeout=None)
    holder, waiting = Hold(), Hold()
    async with anyio.create_task_group() as tg:
        tg.start_soon(reg.run, "up", holder.fn)
        await holder.entered.wait()
        tg.start_soon(reg.run, "up", waiting.fn)
        while not reg._core("up").waiters:
            await anyio.lowlevel.checkpoint()
        reg.configure_command("up", max_concurrent_requests=2)
        await waiting.entered.wait()
        holder.release.set()
        waiting.release.set()
    assert reg.get_circuit("up").in_flight == 0


async def test_a_lowered_limit_holds_waiters_until_running_calls_are_under_it(
    reg: resilience.Registry,
) -> None:
    reg.configure_command("down", max_concurrent_requests=2, max_wait=30.0, timeout=None)
    first, second, waiting = Hold(), Hold(), Hold()
    core = reg._core("down")
    async with anyio.create_task_group() as tg:
        tg.start_soon(reg.run, "down", first.fn)
        tg.start_soon(reg.run, "down", second.fn)
        await first.entered.wait()
        await second.entered.wait()
        tg.start_soon(reg.run, "down", waiting.fn)
        while not core.waiters:
            await anyio.lowlevel.checkpoint()
        reg.configure_command("down", max_concurrent_requests=1)
        first.release.set()
        while first.finished == 0:
            await anyio.lowlevel.checkpoint()
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        assert waiting.calls == 0 and core.in_flight == 1  # still one over the new limit
        second.release.set()
        await waiting.entered.wait()  # now under it: the waiter gets the freed slot
        assert core.in_flight == 1
        waiting.release.set()
    assert core.in_flight == 0


def test_sync_callers_wait_for_a_slot_too(reg: resilience.Registry) -> None:
    reg.configure_command("sw", max_concurrent_requests=1, max_wait=30.0, timeout=None)
    entered, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def slow() -> str:
        entered.set()
        release.wait(10)
        return "slow"

    def quick() -> str:
        return "quick"

    t = threading.Thread(target=lambda: seen.append(reg.run_sync("sw", slow)))
    t.start()
    assert entered.wait(10)
    w = threading.Thread(target=lambda: seen.append(reg.run_sync("sw", quick)))
    w.start()
    core = reg._core("sw")
    for _ in range(1000):
        if core.waiters:
            break
        threading.Event().wait(0.005)
    assert core.waiters
    release.set()
    t.join(10)
    w.join(10)
    assert sorted(seen) == ["quick", "slow"]
    assert core.in_flight == 0


@pytest.mark.parametrize("count", [True, False])
async def test_count_rejections_decides_whether_rejections_trip(
    reg: resilience.Registry, metrics_registry: CollectorRegistry, count: bool
) -> None:
    reg.configure_command(
        "cr", max_concurrent_requests=1, request_volume_threshold=5, timeout=None,
        count_rejections=count,
    )
    holder = Hold()
    async with anyio.create_task_group() as tg:
        tg.start_soon(reg.run, "cr", holder.fn)
        await holder.entered.wait()
        for _ in range(10):
            try:
                await reg.run("cr", Hold().fn)
            except (MaxConcurrencyError, resilience.CircuitOpenError):
                pass
        holder.release.set()
    stats = reg.get_circuit("cr").statistics()
    if count:
        assert reg.get_circuit("cr").state == "open"
        assert calls_total(metrics_registry, "cr", "short_circuited") > 0
    else:
        assert reg.get_circuit("cr").state == "closed"
        assert stats.rejections == 10  # still counted in statistics and metrics
        assert calls_total(metrics_registry, "cr", "rejected") == 10
        assert stats.error_percent == 0.0


async def test_changing_count_rejections_recounts_the_rejections_already_in_the_window(
    reg: resilience.Registry,
) -> None:
    """The window keeps a running error total: switching ``count_rejections`` mid-window
    recounts it, so health and statistics agree with the new setting at once."""
    reg.configure_command(
        "flip", max_concurrent_requests=1, request_volume_threshold=10**6, timeout=None,
        count_rejections=False,
    )
    holder = Hold()
    async with anyio.create_task_group() as tg:
        tg.start_soon(reg.run, "flip", holder.fn)
        await holder.entered.wait()
        for _ in range(3):
            with pytest.raises(MaxConcurrencyError):
                await reg.run("flip", Hold().fn)
        holder.release.set()
    circuit = reg.get_circuit("flip")
    before = circuit.statistics()
    assert (before.requests, before.rejections, before.error_percent) == (1, 3, 0.0)
    reg.configure_command("flip", count_rejections=True)
    after = circuit.statistics()
    assert (after.requests, after.rejections, after.error_percent) == (4, 3, 75.0)
    reg.configure_command("flip", count_rejections=False)
    assert circuit.statistics() == before
