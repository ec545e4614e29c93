"""Stress: thousands of concurrent calls with mixed outcomes; every count must add up.

Each caller records what it observed (value, its own exception object, timeout, rejection,
short-circuit, cancellation, fallback); afterwards the lifetime metrics must equal those
tallies exactly, the rolling statistics must agree with them, and no slot may be left over.
"""

from __future__ import annotations

from collections import Counter

import anyio
import pytest
from prometheus_client import CollectorRegistry
from test_command_helpers import (
    Boom,
    Caller,
    FakeClock,
    all_calls,
    eventually,
    make_registry,
    sample,
)

import resilience
from resilience import CircuitOpenError, CommandTimeoutError, MaxConcurrencyError

NAME = "stress"
CALLS = 3000
KINDS = ("success", "failure", "timeout", "cancel", "sync", "ignored")
BY_ERROR = {
    CircuitOpenError: "short_circuited",
    MaxConcurrencyError: "rejected",
    CommandTimeoutError: "timeout",
}


@pytest.mark.parametrize("breaker", [False, True], ids=["force_closed", "breaker"])
async def test_thousands_of_mixed_calls_add_up(
    metrics_registry: CollectorRegistry, breaker: bool
) -> None:
    clock = FakeClock()
    reg: resilience.Registry = make_registry(clock, metrics_registry)
    reg.configure_command(
        NAME, timeout=0.05, max_concurrent_requests=30, request_volume_threshold=20,
        error_percent_threshold=50, sleep_window=5.0, rolling_window=86_400,
        ignore_exceptions=(Caller,), force_closed=not breaker,
    )
    observed: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    entered: Counter[str] = Counter()
    executed_by_kind: Counter[str] = Counter()

    async def one(i: int) -> None:
        kind = KINDS[i % len(KINDS)]
        await anyio.sleep((i % 250) * 0.004)  # spread arrivals over 1 s: outcomes mix
        own = Boom(i)
        use_fallback = breaker and i % 12 == 1

        async def fn() -> int:
            entered[kind] += 1
            if kind == "failure":
                raise own
            if kind == "ignored":
                raise Caller(i)
            if kind in ("timeout", "cancel"):
                await anyio.sleep_forever()
            await anyio.sleep(0)
            return i

        def sync_fn() -> int:
            entered[kind] += 1
            return i

        def fallback(exc: BaseException) -> str:
            outcome = "failure" if exc is own else BY_ERROR[type(exc)]
            observed[outcome] += 1
            if outcome in ("failure", "timeout"):
                executed_by_kind[kind] += 1
            fallbacks["success"] += 1
            return "fb"

        with anyio.CancelScope() as scope:
            if kind == "cancel":
                scope.deadline = anyio.current_time() + 0.02  # before the command timeout
            try:
                result = await reg.run(
                    NAME, sync_fn if kind == "sync" else fn,
                    fallback=fallback if use_fallback else None,
                )
            except Caller:
                observed["ignored"] += 1
                executed_by_kind[kind] += 1
                return
            except Boom as exc:
                assert exc is own, "the caller must get its own exception object"
                observed["failure"] += 1
                executed_by_kind[kind] += 1
                return
            except (CircuitOpenError, MaxConcurrencyError, CommandTimeoutError) as exc:
                assert exc.command == NAME
                observed[BY_ERROR[type(exc)]] += 1
                if isinstance(exc, CommandTimeoutError):
                    executed_by_kind[kind] += 1
                return
            if result == "fb":
                return
            assert result == i
            observed["success"] += 1
            executed_by_kind[kind] += 1
            return
        assert scope.cancelled_caught, "cancellation was swallowed"
        observed["cancelled"] += 1
        executed_by_kind[kind] += 1

    async def open_the_sleep_windows(done: anyio.Event) -> None:
        while not done.is_set():  # lets trials through while the calls run
            await anyio.sleep(0.03)
            clock.advance(6.0)

    done = anyio.Event()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as outer:
            if breaker:
                outer.start_soon(open_the_sleep_windows, done)
            async with anyio.create_task_group() as tg:
                for i in range(CALLS):
                    tg.start_soon(one, i)
            done.set()
        await eventually(lambda: reg.get_circuit(NAME).in_flight == 0)

    assert sum(observed.values()) == CALLS
    assert observed["success"] > 0 and observed["failure"] > 0
    assert observed["timeout"] > 0 and observed["rejected"] > 0
    assert observed["cancelled"] > 0
    if breaker:
        assert observed["short_circuited"] > 0
    else:
        assert observed["short_circuited"] == 0
    # Lifetime metrics equal what the callers saw, outcome by outcome.
    calls = all_calls(metrics_registry, NAME)
    assert calls == {k: float(observed[k]) for k in calls}, (calls, observed)
    fb = sample(metrics_registry, "resilience_command_fallbacks_total", command=NAME,
                outcome="success")
    assert fb == fallbacks["success"]
    # Every execution entered the function exactly once (the cancel kind may be cancelled
    # before admission, at the checkpoint of a call that found no free slot; every other kind
    # is admitted or refused).
    for kind in ("success", "failure", "timeout", "sync", "ignored"):
        assert entered[kind] == executed_by_kind[kind], kind
    assert entered["cancel"] <= executed_by_kind["cancel"]
    executed = sum(executed_by_kind.values())
    count = sample(metrics_registry, "resilience_command_duration_seconds_count", command=NAME)
    assert executed - observed["cancelled"] <= count <= executed
    assert sample(metrics_registry, "resilience_command_in_flight", command=NAME) == 0
    stats = reg.get_circuit(NAME).statistics()
    assert stats.requests == stats.successes + stats.failures + stats.timeouts + (
        stats.rejections
    )
    if not breaker:  # nothing is ever stale: the window holds exactly what was observed
        assert (
            stats.successes, stats.failures, stats.timeouts, stats.rejections,
            stats.short_circuits,
        ) == (
            observed["success"], observed["failure"], observed["timeout"],
            observed["rejected"], 0,
        )
    else:
        assert stats.successes <= observed["success"]
        assert stats.failures <= observed["failure"]
        assert stats.timeouts <= observed["timeout"]
        assert stats.rejections <= observed["rejected"]
        assert stats.short_circuits <= observed["short_circuited"]
        assert stats.fallback_successes <= fallbacks["success"]


def test_run_sync_from_many_threads_adds_up(metrics_registry: CollectorRegistry) -> None:
    """Plain sync callers in many OS threads (a threaded web app): nothing lost or doubled."""
    import sys
    import threading

    reg = make_registry(FakeClock(), metrics_registry)
    reg.configure_command(
        NAME, timeout=None, max_concurrent_requests=3, force_closed=True, rolling_window=86_400,
        ignore_exceptions=(Caller,),
    )
    threads, per_thread = 8, 150
    observed: Counter[str] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for j in range(per_thread):
                kind = ("success", "failure", "ignored")[(t + j) % 3]
                own = Boom(t, j)

                def fn(kind: str = kind, own: Boom = own) -> str:
                    if kind == "failure":
                        raise own
                    if kind == "ignored":
                        raise Caller()
                    return kind

                try:
                    reg.run_sync(NAME, fn)
                    outcome = "success"
                except Boom as exc:
                    assert exc is own
                    outcome = "failure"
                except Caller:
                    outcome = "ignored"
                except MaxConcurrencyError:
                    outcome = "rejected"
                with lock:
                    observed[outcome] += 1
        except BaseException as exc:  # surfaced below with its traceback
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # more thread switches: races show up sooner
    try:
        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join(60)
    finally:
        sys.setswitchinterval(old)
    if errors:
        raise errors[0]
    assert sum(observed.values()) == threads * per_thread
    calls = all_calls(metrics_registry, NAME)
    assert calls == {k: float(observed[k]) for k in calls}, (calls, observed)
    circuit = reg.get_circuit(NAME)
    assert circuit.in_flight == 0
    s = circuit.statistics()
    assert (s.successes, s.failures, s.rejections) == (
        observed["success"], observed["failure"], observed["rejected"]
    )
