"""Half-open and generation rules (docs/commands.md), driven by a fake clock.

Exactly one trial (tasks and threads), trial success/failure/timeout, cancelled, ignored,
hung (re-armed) and rejected trials, and stale outcomes from earlier generations.
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
    SyncHold,
    assert_short_circuited,
    breaker_state,
    calls_total,
    eventually,
    eventually_sync,
    failing,
    ok,
    run_outcome,
    setup_breaker,
    spawn,
    state_gauge,
    thread_wait,
    trip,
)

import resilience
from resilience import CircuitOpenError, CircuitState, CommandTimeoutError, MaxConcurrencyError

NAME = BREAKER


# -- half-open -----------------------------------------------------------------------------


async def test_exactly_one_trial_under_100_concurrent_callers(
    reg: resilience.Registry, clock: FakeClock, metrics_registry: CollectorRegistry
) -> None:
    setup_breaker(reg, max_concurrent_requests=200)
    await trip(reg)
    clock.advance(SLEEP + 0.5)
    hold = Hold(value="trial")
    short = 0

    async def caller() -> object:
        nonlocal short
        try:
            return await reg.run(NAME, hold.fn)
        except CircuitOpenError:
            short += 1
            raise

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            pending = [spawn(tg, caller) for _ in range(100)]
            # Every caller has either been short-circuited or entered the function.
            await eventually(lambda: short + hold.calls >= 100)
            assert hold.calls == 1, "exactly one trial call may run"
            assert short == 99
            assert breaker_state(reg) is CircuitState.HALF_OPEN
            assert state_gauge(metrics_registry, NAME)["half_open"] == 1
            hold.release.set()
    results = [p.value for p in pending if p.error is None]
    assert results == ["trial"]
    assert all(isinstance(p.error, CircuitOpenError) for p in pending if p.error is not None)
    assert breaker_state(reg) is CircuitState.CLOSED


async def test_trial_success_closes_and_resets_statistics(
    reg: resilience.Registry, clock: FakeClock, metrics_registry: CollectorRegistry
) -> None:
    setup_breaker(reg)
    await trip(reg)
    await assert_short_circuited(reg)
    clock.advance(SLEEP + 0.5)
    assert await reg.run(NAME, ok) == "ok"
    assert breaker_state(reg) is CircuitState.CLOSED
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.failures, stats.timeouts, stats.rejections, stats.short_circuits) == (0,) * 4
    assert stats.successes in (0, 1)
    assert stats.requests == stats.successes
    assert stats.error_percent == 0
    # The old failures are really forgotten: three new failures do not trip (4 needed).
    for _ in range(3):
        with pytest.raises(Boom):
            await run_outcome(reg, NAME, "failure")
    expected = CircuitState.CLOSED if stats.successes == 0 else CircuitState.OPEN
    assert breaker_state(reg) is expected
    # Lifetime metrics are not reset.
    assert calls_total(metrics_registry, NAME, "failure") == 7
    assert calls_total(metrics_registry, NAME, "short_circuited") == 1


async def test_trial_failure_reopens_with_a_new_sleep_window(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    setup_breaker(reg)
    await trip(reg)
    clock.advance(SLEEP + 1)
    with pytest.raises(Boom):
        await run_outcome(reg, NAME, "failure")
    assert breaker_state(reg) is CircuitState.OPEN
    err = await assert_short_circuited(reg)
    assert err.retry_after == pytest.approx(SLEEP)
    clock.advance(SLEEP - 0.5)  # 2 * SLEEP + 0.5 after the first opening: still open
    await assert_short_circuited(reg)
    clock.advance(1.0)
    assert await reg.run(NAME, ok) == "ok"
    assert breaker_state(reg) is CircuitState.CLOSED


async def test_trial_timeout_reopens(reg: resilience.Registry, clock: FakeClock) -> None:
    setup_breaker(reg, timeout=0.05)
    await trip(reg)
    clock.advance(SLEEP + 1)
    with pytest.raises(CommandTimeoutError):
        await reg.run(NAME, anyio.sleep_forever)
    assert breaker_state(reg) is CircuitState.OPEN
    err = await assert_short_circuited(reg)
    assert err.retry_after == pytest.approx(SLEEP)


async def test_cancelled_trial_does_not_wedge(
    reg: resilience.Registry, clock: FakeClock, metrics_registry: CollectorRegistry
) -> None:
    setup_breaker(reg)
    await trip(reg)
    clock.advance(SLEEP + 1)
    hold = Hold()
    async with anyio.create_task_group() as tg:
        trial = spawn(tg, lambda: reg.run(NAME, hold.fn))
        await hold.entered.wait()
        await assert_short_circuited(reg)  # the trial is running: others short-circuit
        trial.scope.cancel()
    assert trial.cancelled and trial.error is None
    assert hold.cancelled == 1
    assert breaker_state(reg) is not CircuitState.CLOSED
    # No clock advance: the very next call may trial again.
    assert await reg.run(NAME, ok) == "ok"
    assert breaker_state(reg) is CircuitState.CLOSED
    assert calls_total(metrics_registry, NAME, "cancelled") == 1
    assert calls_total(metrics_registry, NAME, "failure") == 4


async def test_ignored_trial_does_not_wedge(reg: resilience.Registry, clock: FakeClock) -> None:
    setup_breaker(reg)
    await trip(reg)
    clock.advance(SLEEP + 1)
    err = Caller("bad input")
    with pytest.raises(Caller) as info:
        await reg.run(NAME, failing(err))
    assert info.value is err
    assert breaker_state(reg) is not CircuitState.CLOSED
    assert await reg.run(NAME, ok) == "ok"
    assert breaker_state(reg) is CircuitState.CLOSED


async def test_hung_trial_is_rearmed_after_another_sleep_window(
    reg: resilience.Registry, clock: FakeClock, metrics_registry: CollectorRegistry
) -> None:
    setup_breaker(reg)
    await trip(reg)
    clock.advance(SLEEP + 1)
    hung = Hold(error=Boom("late"))
    async with anyio.create_task_group() as tg:
        first = spawn(tg, lambda: reg.run(NAME, hung.fn))
        await hung.entered.wait()
        clock.advance(SLEEP - 0.5)
        err = await assert_short_circuited(reg)
        assert err.retry_after == pytest.approx(0.5)  # a new trial may run 0.5 s from now
        clock.advance(1.0)
        assert await reg.run(NAME, ok) == "ok", "the re-armed trial must be let through"
        assert breaker_state(reg) is CircuitState.CLOSED
        hung.release.set()
    assert isinstance(first.error, Boom)
    # The hung trial's late failure belongs to an older generation: it changes nothing.
    assert breaker_state(reg) is CircuitState.CLOSED
    assert reg.get_circuit(NAME).statistics().failures == 0
    assert calls_total(metrics_registry, NAME, "failure") == 5


async def test_trial_rejected_by_the_concurrency_limit_gives_its_permit_back(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    setup_breaker(reg, max_concurrent_requests=1)
    slow = Hold()
    async with anyio.create_task_group() as tg:
        spawn(tg, lambda: reg.run(NAME, slow.fn))  # admitted while closed, keeps the slot
        await slow.entered.wait()
        for _ in range(4):  # 4 rejections at 100% trip the circuit
            with pytest.raises(MaxConcurrencyError):
                await reg.run(NAME, ok)
        assert breaker_state(reg) is CircuitState.OPEN
        clock.advance(SLEEP + 1)
        with pytest.raises(MaxConcurrencyError):
            await reg.run(NAME, ok)  # the trial finds no free slot
        slow.release.set()
    assert reg.get_circuit(NAME).in_flight == 0
    # Same clock time: the rejected trial gave its permit back, so a trial may run now.
    assert await reg.run(NAME, ok) == "ok"
    assert breaker_state(reg) is CircuitState.CLOSED


# -- generations: an outcome only acts on the state it was admitted in --------------------


async def test_stale_success_does_not_close_an_open_circuit(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    setup_breaker(reg, request_volume_threshold=2)
    slow = Hold(value="slow")
    async with anyio.create_task_group() as tg:
        late = spawn(tg, lambda: reg.run(NAME, slow.fn))
        await slow.entered.wait()
        for _ in range(2):
            with pytest.raises(Boom):
                await run_outcome(reg, NAME, "failure")
        assert breaker_state(reg) is CircuitState.OPEN
        before = reg.get_circuit(NAME).statistics()
        slow.release.set()
    assert late.value == "slow"
    assert breaker_state(reg) is CircuitState.OPEN
    after = reg.get_circuit(NAME).statistics()
    assert (after.requests, after.successes) == (before.requests, before.successes) == (2, 0)
    assert calls_total(metrics_registry, NAME, "success") == 1
    await assert_short_circuited(reg)


async def test_stale_outcomes_during_half_open_change_nothing(
    reg: resilience.Registry, clock: FakeClock, metrics_registry: CollectorRegistry
) -> None:
    setup_breaker(reg, request_volume_threshold=2)
    old_fail = Hold(error=Boom("pre-trip failure"))
    old_ok = Hold(value="pre-trip success")
    old_fail2 = Hold(error=Boom("pre-trip failure 2"))
    trial = Hold(value="trial")
    async with anyio.create_task_group() as tg:
        a = spawn(tg, lambda: reg.run(NAME, old_fail.fn))
        b = spawn(tg, lambda: reg.run(NAME, old_ok.fn))
        c = spawn(tg, lambda: reg.run(NAME, old_fail2.fn))
        for h in (old_fail, old_ok, old_fail2):
            await h.entered.wait()
        for _ in range(2):
            with pytest.raises(Boom):
                await run_outcome(reg, NAME, "failure")
        assert breaker_state(reg) is CircuitState.OPEN
        clock.advance(SLEEP + 1)
        t = spawn(tg, lambda: reg.run(NAME, trial.fn))
        await trial.entered.wait()
        assert breaker_state(reg) is CircuitState.HALF_OPEN
        old_fail.release.set()  # a pre-trip failure lands during half-open: no reopen
        await a.done.wait()
        assert isinstance(a.error, Boom)
        assert breaker_state(reg) is CircuitState.HALF_OPEN
        old_ok.release.set()  # a pre-trip success lands during half-open: no close
        await b.done.wait()
        assert b.value == "pre-trip success"
        assert breaker_state(reg) is CircuitState.HALF_OPEN
        await assert_short_circuited(reg)  # the trial still holds the only permit
        trial.release.set()
        await t.done.wait()
        assert t.value == "trial"
        assert breaker_state(reg) is CircuitState.CLOSED
        old_fail2.release.set()  # a pre-trip failure lands after the circuit re-closed
        await c.done.wait()
    assert isinstance(c.error, Boom)
    assert breaker_state(reg) is CircuitState.CLOSED
    stats = reg.get_circuit(NAME).statistics()
    assert stats.failures == 0
    assert stats.requests == stats.successes <= 1
    # Stale outcomes still count in the lifetime metrics.
    assert calls_total(metrics_registry, NAME, "failure") == 4
    assert calls_total(metrics_registry, NAME, "success") == 2


async def test_trial_failure_with_stale_success_reopens(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    setup_breaker(reg, request_volume_threshold=2)
    old_ok = Hold()
    trial = Hold(error=Boom("trial failed"))
    async with anyio.create_task_group() as tg:
        old = spawn(tg, lambda: reg.run(NAME, old_ok.fn))
        await old_ok.entered.wait()
        for _ in range(2):
            with pytest.raises(Boom):
                await run_outcome(reg, NAME, "failure")
        clock.advance(SLEEP + 1)
        t = spawn(tg, lambda: reg.run(NAME, trial.fn))
        await trial.entered.wait()
        old_ok.release.set()
        await old.done.wait()
        assert breaker_state(reg) is CircuitState.HALF_OPEN
        trial.release.set()
        await t.done.wait()
    assert breaker_state(reg) is CircuitState.OPEN
    err = await assert_short_circuited(reg)
    assert err.retry_after == pytest.approx(SLEEP)


async def test_stale_outcomes_of_a_superseded_trial_change_nothing(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    setup_breaker(reg)
    await trip(reg)
    clock.advance(SLEEP + 1)
    first_ok = Hold(value="first trial, late success")
    first_fail = Hold(error=Boom("first trial, late failure"))
    async with anyio.create_task_group() as tg:
        a = spawn(tg, lambda: reg.run(NAME, first_ok.fn))
        await first_ok.entered.wait()
        clock.advance(SLEEP + 1)  # re-armed: a second trial may run
        with pytest.raises(Boom):
            await run_outcome(reg, NAME, "failure")  # ... and fails: open again
        assert breaker_state(reg) is CircuitState.OPEN
        opened_at = clock()
        first_ok.release.set()  # the superseded trial succeeds late: must not close
        await a.done.wait()
        assert a.value == "first trial, late success"
        assert breaker_state(reg) is CircuitState.OPEN
        err = await assert_short_circuited(reg)
        assert err.retry_after == pytest.approx(SLEEP)
        clock.advance(SLEEP + 1)
        b = spawn(tg, lambda: reg.run(NAME, first_fail.fn))  # third trial, hangs
        await first_fail.entered.wait()
        clock.advance(SLEEP + 1)
        assert await reg.run(NAME, ok) == "ok"  # fourth trial closes
        assert breaker_state(reg) is CircuitState.CLOSED
        first_fail.release.set()  # the superseded third trial fails late: stays closed
        await b.done.wait()
    assert isinstance(b.error, Boom)
    assert breaker_state(reg) is CircuitState.CLOSED
    assert reg.get_circuit(NAME).statistics().failures == 0
    assert opened_at < clock()


async def test_late_return_of_a_timed_out_sync_trial_does_not_close(
    reg: resilience.Registry, clock: FakeClock, metrics_registry: CollectorRegistry
) -> None:
    setup_breaker(reg, timeout=0.05)
    await trip(reg)
    clock.advance(SLEEP + 1)
    hold = SyncHold()
    try:
        with pytest.raises(CommandTimeoutError):
            await reg.run(NAME, hold.fn)
        assert breaker_state(reg) is CircuitState.OPEN
    finally:
        hold.release.set()
    await thread_wait(hold.returned)
    await eventually(lambda: reg.get_circuit(NAME).in_flight == 0)
    assert breaker_state(reg) is CircuitState.OPEN
    assert calls_total(metrics_registry, NAME, "success") == 0
    err = await assert_short_circuited(reg)
    assert err.retry_after == pytest.approx(SLEEP)


def test_exactly_one_trial_among_many_sync_threads(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    import sys
    import threading

    setup_breaker(reg, max_concurrent_requests=100)
    for _ in range(4):
        with pytest.raises(Boom):
            reg.run_sync(NAME, _boom)
    assert breaker_state(reg) is CircuitState.OPEN
    clock.advance(SLEEP + 1)
    hold = SyncHold(value="trial")
    threads = 16
    barrier = threading.Barrier(threads)
    results: list[object] = []
    lock = threading.Lock()

    def caller() -> None:
        barrier.wait(10)
        try:
            outcome: object = reg.run_sync(NAME, hold.fn)
        except CircuitOpenError as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    pool = [threading.Thread(target=caller) for _ in range(threads)]
    try:
        for t in pool:
            t.start()
        eventually_sync(lambda: len(results) >= threads - 1 or hold.calls > 1)
        assert hold.calls == 1, "exactly one trial may run"
    finally:
        sys.setswitchinterval(old)
        hold.release.set()
        for t in pool:
            t.join(10)
    assert results.count("trial") == 1
    assert sum(isinstance(r, CircuitOpenError) for r in results) == threads - 1
    assert breaker_state(reg) is CircuitState.CLOSED


def _boom() -> None:
    raise Boom()


async def test_cancelled_sync_trial_does_not_wedge(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    setup_breaker(reg)
    await trip(reg)
    clock.advance(SLEEP + 1)
    hold = SyncHold()
    try:
        async with anyio.create_task_group() as tg:
            trial = spawn(tg, lambda: reg.run(NAME, hold.fn))
            await thread_wait(hold.entered)
            trial.scope.cancel()
        assert trial.cancelled and trial.error is None
        # The thread still runs (and holds its slot), but the permit is free again.
        assert await reg.run(NAME, ok) == "ok"
        assert breaker_state(reg) is CircuitState.CLOSED
    finally:
        hold.release.set()
    await thread_wait(hold.returned)
    await eventually(lambda: reg.get_circuit(NAME).in_flight == 0)
