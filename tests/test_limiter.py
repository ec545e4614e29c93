"""RateLimiter (docs/ratelimit.md): GCRA, waiting in line, give-back, keys, sync use, metrics.

Decisions run on a FakeClock (exact to the float). Waits run on both backends with the event
loop's clock as the limiter's clock: trio on a ``MockClock`` that jumps ahead whenever every
task sleeps (exact virtual times), asyncio in real time with intervals of 50 ms (order exact,
times within a generous bound). The sync path's ``time.sleep`` is replaced by one that moves
the FakeClock. No test sleeps and hopes.
"""

from __future__ import annotations

import math
import pickle
import re
import threading
import time
from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import trio.testing
from conftest import Backend
from prometheus_client import CollectorRegistry
from test_command_helpers import FakeClock

import resilience
import resilience.metrics
from resilience import RateLimitedError, RateLimiter, ResilienceError

DECISIONS = "resilience_rate_limit_decisions_total"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> Backend:
    """asyncio in real time; trio on a fresh autojumping MockClock for every test."""
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return "asyncio"


def limiter(
    rate: float = 10, per: float = 1.0, *, clock: Callable[[], float] | None = None,
    registry: CollectorRegistry | None = None, name: str = "lim", **kwargs: Any,
) -> RateLimiter:
    return RateLimiter(
        name, rate, per, clock=clock, metrics_registry=registry or CollectorRegistry(), **kwargs
    )


def refused(lim: RateLimiter, key: object = None) -> float:
    """``acquire_sync`` must be refused at once; its ``retry_after``."""
    with pytest.raises(RateLimitedError) as info:
        lim.acquire_sync(key)
    assert info.value.limiter == lim.name
    return info.value.retry_after


def decisions(registry: CollectorRegistry, name: str = "lim") -> dict[str, float | None]:
    return {
        o: registry.get_sample_value(DECISIONS, {"limiter": name, "outcome": o})
        for o in ("allowed", "waited", "rejected")
    }


def counts(lim: RateLimiter) -> tuple[int, int, int]:
    s = lim.statistics()
    return s.allowed, s.waited, s.rejected


# -- GCRA decisions (fake clock) ------------------------------------------------------------------


def test_burst_then_steady_rate() -> None:
    clock = FakeClock()
    lim = limiter(10, burst=5, clock=clock)
    assert [lim.try_acquire() for _ in range(7)] == [True] * 5 + [False] * 2
    for _ in range(20):  # then one permit per interval, exactly
        clock.advance(0.1)
        assert [lim.try_acquire() for _ in range(3)] == [True, False, False]
    clock.advance(0.35)  # 3.5 intervals: 3 permits, the half is kept
    assert [lim.try_acquire() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.05)
    assert lim.try_acquire()
    assert counts(lim) == (5 + 20 + 3 + 1, 0, 2 + 40 + 1)


def test_ten_per_second_for_a_minute_is_ten_per_second() -> None:
    clock = FakeClock()
    lim = limiter(10, clock=clock)  # burst 10
    granted = 0
    for _ in range(600):
        granted += sum(lim.try_acquire() for _ in range(5))
        clock.advance(0.1)
    assert granted == 10 + 599  # the first burst, then one per 0.1 s


@pytest.mark.parametrize(("rate", "burst"), [(10, 10), (2.5, 3), (0.5, 1), (1, 1), (7.01, 8)])
def test_burst_defaults_to_rate_rounded_up(rate: float, burst: int) -> None:
    lim = limiter(rate, clock=FakeClock())
    assert lim.burst == burst
    assert sum(lim.try_acquire() for _ in range(20)) == burst


@pytest.mark.parametrize("burst", [1, 2, 3, 30])
def test_burst_is_the_whole_budget_not_one_more(burst: int) -> None:
    """``burst`` permits at once, not ``burst + 1`` (redis-cell's max_burst confusion)."""
    clock = FakeClock()
    lim = limiter(1, 60, burst=burst, clock=clock)
    assert sum(lim.try_acquire() for _ in range(burst + 5)) == burst
    clock.advance(3600)  # a long idle time refills to burst, never beyond
    assert sum(lim.try_acquire() for _ in range(burst + 5)) == burst


@pytest.mark.parametrize(
    ("rate", "per", "burst"),
    [(10, 1.0, 5), (3, 1.0, 1), (1, 60.0, 1), (7, 0.3, 4), (1000, 1.0, 50), (0.1, 1.0, 2)],
)
def test_retry_after_is_exact_at_the_edges(rate: float, per: float, burst: int) -> None:
    """Waiting exactly ``retry_after`` gets a permit, a little less does not: no rounding to
    seconds, no off-by-one interval (redis-cell #56, #12)."""
    clock = FakeClock()
    lim = limiter(rate, per, burst=burst, clock=clock)
    interval = per / rate
    for _ in range(burst):
        lim.acquire_sync()
    for _ in range(5):
        after = refused(lim)
        assert after == pytest.approx(interval, abs=1e-9)
        clock.advance(after * 0.999)
        assert refused(lim) == pytest.approx(after * 0.001, abs=1e-9)
        clock.advance(after * 0.001)
        assert lim.try_acquire()
    clock.advance(interval / 2)  # half an interval later: the next one is half away
    assert refused(lim) == pytest.approx(interval / 2, abs=1e-9)


def test_retry_after_counts_every_missing_interval() -> None:
    clock = FakeClock()
    lim = limiter(1, 60, burst=1, clock=clock)
    lim.acquire_sync()
    clock.advance(0.5)
    assert refused(lim) == pytest.approx(59.5)  # not 59 (rounded down), not 60
    assert str(RateLimitedError("lim", retry_after=59.5)).endswith("retry after 59.500s")


def test_retry_after_is_never_zero_on_a_large_clock() -> None:
    clock = FakeClock(start=3e6)  # a month of uptime: coarser floats
    lim = limiter(3, burst=2, clock=clock)
    for _ in range(100):
        if not lim.try_acquire():
            after = refused(lim)
            assert after > 0
            clock.advance(after)
            assert lim.try_acquire()
        clock.advance(0.01)


def test_a_refused_try_acquire_costs_nothing() -> None:
    clock = FakeClock()
    lim = limiter(1, burst=1, clock=clock)
    assert lim.try_acquire()
    assert not any(lim.try_acquire() for _ in range(100))
    clock.advance(1.0)  # refusals did not push the budget back
    assert lim.try_acquire()


# -- keys -------------------------------------------------------------------------------------


def test_keys_have_budgets_of_their_own() -> None:
    clock = FakeClock()
    lim = limiter(1, burst=2, clock=clock)
    assert [lim.try_acquire("a") for _ in range(3)] == [True, True, False]
    assert [lim.try_acquire("b") for _ in range(3)] == [True, True, False]
    assert [lim.try_acquire() for _ in range(3)] == [True, True, False]  # None: its own
    assert [lim.try_acquire(("a",)) for _ in range(3)] == [True, True, False]
    lim.acquire_sync(1)
    lim.acquire_sync(1)
    assert refused(lim, 1) == pytest.approx(1.0)
    assert lim.statistics().keys == 4


def test_keys_are_bounded_least_recently_used_first() -> None:
    clock = FakeClock()
    lim = limiter(1, burst=1, max_keys=2, clock=clock)
    assert lim.try_acquire("a") and lim.try_acquire("b")
    assert not lim.try_acquire("a")  # "a" is now the most recently used
    assert lim.try_acquire("c")  # evicts "b"
    assert lim.statistics().keys == 2
    assert not lim.try_acquire("a")  # kept: still empty
    assert lim.try_acquire("b")  # forgotten: a full budget again (evicts "c")
    assert lim.try_acquire("c")
    assert lim.statistics().keys == 2


@pytest.mark.parametrize("key", [[1], {"a": 1}, {1}])
def test_a_key_must_be_hashable(key: Any) -> None:
    lim = limiter(clock=FakeClock())
    for call in (lim.try_acquire, lim.acquire_sync):
        with pytest.raises(TypeError, match="key must be hashable"):
            call(key)
    assert counts(lim) == (0, 0, 0) and lim.statistics().keys == 0


# -- the sync path ------------------------------------------------------------------------------


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> list[float]:
    """``time.sleep`` moves the FakeClock instead of sleeping; the delays asked for."""
    asked: list[float] = []

    def fake_sleep(seconds: float) -> None:
        asked.append(seconds)
        clock.advance(seconds)

    monkeypatch.setattr(time, "sleep", fake_sleep)
    return asked


def test_acquire_sync_waits_for_its_turn(clock: FakeClock, sleeps: list[float]) -> None:
    lim = limiter(4, burst=2, max_wait=1.0, clock=clock)
    for _ in range(6):
        lim.acquire_sync()
    assert sleeps == pytest.approx([0.25] * 4)
    assert counts(lim) == (2, 4, 0)


def test_acquire_sync_refuses_at_once_beyond_max_wait(
    clock: FakeClock, sleeps: list[float]
) -> None:
    lim = limiter(1, burst=1, max_wait=0.75, clock=clock)
    lim.acquire_sync()
    assert refused(lim) == pytest.approx(1.0)  # its turn is 1 s away: more than 0.75
    clock.advance(0.25)
    lim.acquire_sync()  # 0.75 s away: waits
    assert sleeps == [0.75]  # no sleep for the refused one
    assert counts(lim) == (1, 1, 1)


def test_acquire_sync_interrupted_gives_its_turn_back(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    lim = limiter(1, burst=1, max_wait=5.0, clock=clock)
    lim.acquire_sync()

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lim.acquire_sync()
    assert lim.statistics().waiting == 0
    clock.advance(1.0)
    assert lim.try_acquire()  # the interrupted waiter took nothing
    assert counts(lim) == (2, 0, 0)


def test_acquire_sync_really_sleeps_in_each_thread_in_turn() -> None:
    lim = limiter(50, burst=1, max_wait=1.0)  # time.monotonic, one permit per 20 ms
    turns: list[float] = []
    lim.acquire_sync()
    start = time.monotonic()

    def take() -> None:
        lim.acquire_sync()
        turns.append(time.monotonic() - start)

    threads = [threading.Thread(target=take) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert turns == sorted(turns) and turns[-1] >= 0.06 - 1e-3  # 3 turns of 20 ms
    assert counts(lim) == (1, 3, 0)


def test_many_threads_on_a_frozen_clock_admit_exactly_burst() -> None:
    registry = CollectorRegistry()
    lim = limiter(100, burst=50, clock=FakeClock(), registry=registry)
    granted: list[int] = []
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        granted.append(sum(lim.try_acquire() for _ in range(200)))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 50
    assert counts(lim) == (50, 0, 8 * 200 - 50)
    assert decisions(registry) == {"allowed": 50, "waited": 0, "rejected": 8 * 200 - 50}


def test_many_threads_on_many_keys_admit_exactly_burst_per_key() -> None:
    lim = limiter(1, burst=3, max_keys=100, clock=FakeClock())
    granted: dict[int, int] = {}

    def hammer(n: int) -> None:
        granted[n] = sum(lim.try_acquire(k) for k in range(20) for _ in range(10))

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted.values()) == 20 * 3


# -- waiting (both backends) ------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """The interval of the waiting tests, and how exactly times can be checked."""

    unit: float
    exact: bool
    start: float

    def at(self, units: float) -> None:
        """Now should be ``units`` intervals after the start."""
        elapsed, expected = anyio.current_time() - self.start, units * self.unit
        if self.exact:
            assert elapsed == pytest.approx(expected, abs=1e-9)
        else:  # never early; late by less than an interval
            assert expected - 1e-3 <= elapsed <= expected + 0.9 * self.unit, (elapsed, expected)

    def since(self) -> float:
        return (anyio.current_time() - self.start) / self.unit


@pytest.fixture
def timing(anyio_backend: Backend) -> Callable[[], Timing]:
    exact = anyio_backend != "asyncio"
    return lambda: Timing(1.0 if exact else 0.05, exact, anyio.current_time())


def waiting_limiter(t: Timing, *, burst: int = 1, max_wait: float = 10.0, **kw: Any) -> RateLimiter:
    return limiter(1 / t.unit, burst=burst, max_wait=max_wait * t.unit,
                   clock=anyio.current_time, **kw)


async def until_waiting(lim: RateLimiter, n: int) -> None:
    while lim.statistics().waiting < n:
        await anyio.lowlevel.checkpoint()


async def until_decided(lim: RateLimiter, n: int) -> None:
    """Until ``n`` calls were decided (granted, reserved or refused)."""
    while sum(counts(lim)) + lim.statistics().waiting < n:
        await anyio.lowlevel.checkpoint()


async def test_acquire_within_the_burst_does_not_wait(timing: Callable[[], Timing]) -> None:
    t = timing()
    lim = waiting_limiter(t, burst=3)
    for _ in range(3):
        await lim.acquire()
    t.at(0)
    assert counts(lim) == (3, 0, 0)


async def test_waiters_are_served_in_order_each_at_its_turn(
    timing: Callable[[], Timing],
) -> None:
    t = timing()
    lim = waiting_limiter(t, burst=2)
    served: list[tuple[int, float]] = []

    async def waiter(i: int) -> None:
        await lim.acquire()
        served.append((i, t.since()))

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(waiter, i)
            await until_decided(lim, i + 1)  # each in line before the next starts
    assert [i for i, _ in served] == list(range(6))
    expected = [0, 0, 1, 2, 3, 4]
    if t.exact:
        assert [at for _, at in served] == pytest.approx(expected, abs=1e-9)
    else:
        for (_, at), units in zip(served, expected, strict=True):
            assert units - 0.02 <= at <= units + 0.9
    assert counts(lim) == (2, 4, 0)


async def test_beyond_max_wait_is_refused_at_once(timing: Callable[[], Timing]) -> None:
    t = timing()
    lim = waiting_limiter(t, burst=1, max_wait=1.5)
    await lim.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lim.acquire)  # its turn: in 1 interval
        await until_waiting(lim, 1)
        with pytest.raises(RateLimitedError) as info:
            await lim.acquire()  # would need 2 intervals > 1.5
        t.at(0)  # at once, while the other one waits
        assert info.value.retry_after == pytest.approx(2 * t.unit, abs=0.02 * t.unit)
        assert info.value.limiter == "lim"
    t.at(1)
    assert counts(lim) == (1, 1, 1)


async def test_default_max_wait_is_zero(timing: Callable[[], Timing]) -> None:
    t = timing()
    lim = limiter(1 / t.unit, burst=1, clock=anyio.current_time)
    assert lim.max_wait == 0.0
    await lim.acquire()
    with pytest.raises(RateLimitedError) as info:
        await lim.acquire()
    assert info.value.retry_after == pytest.approx(t.unit, abs=0.02 * t.unit)
    t.at(0)
    await anyio.sleep(info.value.retry_after)
    await lim.acquire()  # after retry_after: a permit, at once
    t.at(1)


async def test_a_cancelled_waiter_does_not_consume_a_permit(
    timing: Callable[[], Timing],
) -> None:
    registry = CollectorRegistry()
    t = timing()
    lim = waiting_limiter(t, registry=registry)
    await lim.acquire()
    with anyio.move_on_after(0.5 * t.unit) as scope:
        await lim.acquire()  # its turn would be at 1
    assert scope.cancelled_caught
    assert lim.statistics().waiting == 0
    await lim.acquire()  # takes the turn at 1, not 2
    t.at(1)
    assert counts(lim) == (1, 1, 0)  # the cancelled one counted nowhere
    assert decisions(registry) == {"allowed": 1, "waited": 1, "rejected": 0}


class Line:
    """Waiters started one after another (each has reserved its turn before the next
    starts), each in a cancel scope of its own; ``served`` says who got a permit, when."""

    def __init__(self, lim: RateLimiter, t: Timing, tg: anyio.abc.TaskGroup) -> None:
        self.lim, self.t, self.tg = lim, t, tg
        self.scopes: dict[str, anyio.CancelScope] = {}
        self.served: list[tuple[str, float]] = []

    async def join(self, name: str) -> None:
        scope = self.scopes[name] = anyio.CancelScope()
        before = self.lim.statistics().waiting
        self.tg.start_soon(self._wait, name, scope)
        await until_waiting(self.lim, before + 1)

    async def _wait(self, name: str, scope: anyio.CancelScope) -> None:
        with scope:
            await self.lim.acquire()
            self.served.append((name, self.t.since()))

    async def cancel(self, *names: str) -> None:
        left = self.lim.statistics().waiting - len(names)
        for name in names:
            self.scopes[name].cancel()
        while self.lim.statistics().waiting != left:
            await anyio.lowlevel.checkpoint()

    def check(self, expected: list[tuple[str, float]]) -> None:
        """Served in this order, at these times (waiters due at the same instant are woken
        together, in no particular order among themselves)."""
        assert sorted(self.served, key=lambda s: round(s[1])) == self.served
        groups: dict[float, set[str]] = {}
        for name, units in expected:
            groups.setdefault(units, set()).add(name)
        assert {round(at): {n for n, a in self.served if round(a) == round(at)}
                for _, at in self.served} == groups, self.served
        for name, at in self.served:
            units = next(u for n, u in expected if n == name)
            if self.t.exact:
                assert at == pytest.approx(units, abs=1e-9)
            else:
                assert units - 0.02 <= at <= units + 0.9, (self.served, expected)


async def test_giving_back_with_later_waiters_keeps_their_order(
    timing: Callable[[], Timing],
) -> None:
    """w1 (turn 1) is cancelled while w2 (turn 2) waits: the next caller w3 gets the permit
    w1 gave back, served with w2 (at 2, after it), and w4 at 3 (not 4)."""
    t = timing()
    lim = waiting_limiter(t)
    await lim.acquire()
    async with anyio.create_task_group() as tg:
        line = Line(lim, t, tg)
        await line.join("w1")
        await line.join("w2")
        await anyio.sleep(0.5 * t.unit)
        await line.cancel("w1")
        await line.join("w3")
        await line.join("w4")
    line.check([("w2", 2), ("w3", 2), ("w4", 3)])
    assert counts(lim) == (1, 3, 0)


async def test_all_waiters_cancelled_is_as_if_none_had_asked(
    timing: Callable[[], Timing],
) -> None:
    t = timing()
    lim = waiting_limiter(t)
    await lim.acquire()
    with anyio.move_on_after(0.5 * t.unit):
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(lim.acquire)  # turns at 1, 2, 3, 4
    assert lim.statistics().waiting == 0
    await lim.acquire()
    t.at(1)
    await lim.acquire()
    t.at(2)
    assert counts(lim) == (1, 2, 0)


async def test_no_caller_gets_ahead_of_a_waiter_after_cancellations(
    timing: Callable[[], Timing],
) -> None:
    """Turns 1, 2, 3 reserved; 1 and 2 cancelled: nobody is served before 3, the two
    permits given back go to the next two callers (at 3, with the waiter), then 4."""
    t = timing()
    lim = waiting_limiter(t)
    await lim.acquire()
    async with anyio.create_task_group() as tg:
        line = Line(lim, t, tg)
        for name in ("w1", "w2", "w3"):
            await line.join(name)
        await line.cancel("w1", "w2")
        assert not lim.try_acquire()  # no barging ahead of w3
        for name in ("w4", "w5", "w6"):
            await line.join(name)
    line.check([("w3", 3), ("w4", 3), ("w5", 3), ("w6", 4)])
    assert counts(lim) == (1, 4, 1)


async def test_async_with_acquires_on_entry(timing: Callable[[], Timing]) -> None:
    t = timing()
    lim = waiting_limiter(t, burst=1)
    async with lim:
        pass
    async with lim(key="a"):
        pass
    async with lim(key="b"):
        pass
    t.at(0)  # three budgets, one permit each
    async with lim(key="a"):
        t.at(1)
    assert counts(lim) == (3, 1, 0)
    assert lim.statistics().keys == 2


async def test_a_waiting_key_does_not_hold_up_another(timing: Callable[[], Timing]) -> None:
    t = timing()
    lim = waiting_limiter(t)
    done: list[tuple[str, float]] = []

    async def take(key: str) -> None:
        await lim.acquire(key)
        done.append((key, round(t.since())))

    async with anyio.create_task_group() as tg:
        for n, key in enumerate(("a", "a", "a", "b"), 1):
            tg.start_soon(take, key)
            await until_decided(lim, n)
        assert done == [("a", 0), ("b", 0)]  # "b" is not behind the two waiting on "a"
    assert done == [("a", 0), ("b", 0), ("a", 1), ("a", 2)]
    t.at(2)


async def test_metrics_count_allowed_waited_rejected(timing: Callable[[], Timing]) -> None:
    registry = CollectorRegistry()
    t = timing()
    lim = waiting_limiter(t, max_wait=1.0, registry=registry, name="github")
    assert decisions(registry, "github") == {"allowed": 0, "waited": 0, "rejected": 0}
    await lim.acquire()
    await lim.acquire()  # waits 1
    assert not lim.try_acquire()
    other = waiting_limiter(t, max_wait=0.5, registry=registry, name="github")  # the same name:
    await other.acquire()  # the counts add up
    with pytest.raises(RateLimitedError):
        await other.acquire()
    assert decisions(registry, "github") == {"allowed": 2, "waited": 1, "rejected": 2}
    assert counts(lim) == (1, 1, 1) and counts(other) == (1, 0, 1)


# -- validation, surface ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"rate": 0}, ValueError, "rate must be > 0, got 0"),
        ({"rate": -1.5}, ValueError, "rate must be > 0, got -1.5"),
        ({"rate": math.nan}, ValueError, "rate must be a finite number, got nan"),
        ({"rate": math.inf}, ValueError, "rate must be a finite number, got inf"),
        ({"rate": True}, TypeError, "rate must be a number, got True"),
        ({"rate": "10"}, TypeError, "rate must be a number, got '10'"),
        ({"per": 0}, ValueError, "per must be > 0, got 0"),
        ({"per": -1}, ValueError, "per must be > 0, got -1"),
        ({"per": math.inf}, ValueError, "per must be a finite number, got inf"),
        ({"per": None}, TypeError, "per must be a number, got None"),
        ({"burst": 0}, ValueError, "burst must be >= 1, got 0"),
        ({"burst": 2.0}, TypeError, "burst must be an int, got 2.0"),
        ({"burst": False}, TypeError, "burst must be an int, got False"),
        ({"max_wait": -0.1}, ValueError, "max_wait must be >= 0, got -0.1"),
        ({"max_wait": math.nan}, ValueError, "max_wait must be a finite number, got nan"),
        ({"max_wait": math.inf}, ValueError, "max_wait must be a finite number, got inf"),
        ({"max_keys": 0}, ValueError, "max_keys must be >= 1, got 0"),
        ({"max_keys": 1.5}, TypeError, "max_keys must be an int, got 1.5"),
        ({"fail_mode": "open"}, ValueError, "fail_mode must be one of 'local', 'allow', 'deny', "
                                            "got 'open'"),
        ({"fail_mode": None}, TypeError, "fail_mode must be a str, got None"),
        ({"store": object()}, TypeError, "store= needs a resilience.redis.RedisStore"),
        ({"clock": 1.0}, TypeError, "clock must be a zero-argument callable, got 1.0"),
        ({"metrics_registry": {}}, TypeError, "metrics_registry must be a prometheus_client"),
        ({"rate": 1e-320, "per": 1e300}, ValueError, "interval between permits"),
    ],
)
def test_bad_configuration_names_the_field_and_value(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    args: dict[str, Any] = {"name": "lim", "rate": 10, "metrics_registry": CollectorRegistry()}
    with pytest.raises(error, match=re.escape(message)):
        RateLimiter(**{**args, **kwargs})


@pytest.mark.parametrize(("name", "error"), [("", ValueError), (None, TypeError),
                                             (b"x", TypeError), ("\ud800", ValueError)])
def test_bad_names_are_refused(name: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="limiter name"):
        RateLimiter(name, 10, metrics_registry=CollectorRegistry())


def test_the_name_cap_applies_to_limiters() -> None:
    registry = CollectorRegistry()
    resilience.metrics.set_max_names(2, registry=registry)
    RateLimiter("a", 1, metrics_registry=registry)
    RateLimiter("b", 1, metrics_registry=registry)
    RateLimiter("a", 1, metrics_registry=registry)  # a name already exported: fine
    with pytest.raises(ValueError, match="refusing new limiter name 'c'.*set_max_names"):
        RateLimiter("c", 1, metrics_registry=registry)


def test_configuration_is_readable_and_repr_says_it() -> None:
    lim = RateLimiter("github", 10, burst=20, max_wait=0.5, metrics_registry=CollectorRegistry())
    assert (lim.name, lim.rate, lim.per, lim.burst, lim.max_wait, lim.max_keys, lim.fail_mode) \
        == ("github", 10.0, 1.0, 20, 0.5, 10_000, "local")
    assert lim.interval == pytest.approx(0.1)
    assert repr(lim) == (
        "<RateLimiter 'github': rate=10 per=1s burst=20 max_wait=0.5s keys=0 waiting=0>"
    )
    assert type(lim).__module__ == "resilience"
    with pytest.raises(AttributeError):
        lim.rate = 5  # type: ignore[misc]


def test_statistics_is_a_frozen_snapshot() -> None:
    lim = limiter(1, burst=1, clock=FakeClock())
    lim.try_acquire("k")
    lim.try_acquire("k")
    stats = lim.statistics()
    assert (stats.name, stats.allowed, stats.waited, stats.rejected, stats.waiting, stats.keys) \
        == ("lim", 1, 0, 1, 0, 1)
    with pytest.raises(FrozenInstanceError):
        stats.allowed = 5  # type: ignore[misc]
    lim.try_acquire()
    assert stats.allowed == 1  # a snapshot


def test_rate_limited_error() -> None:
    exc = RateLimitedError("github", retry_after=0.25)
    assert isinstance(exc, ResilienceError)
    assert (exc.limiter, exc.retry_after) == ("github", 0.25)
    copy = pickle.loads(pickle.dumps(exc))
    assert (type(copy), copy.limiter, copy.retry_after) == (RateLimitedError, "github", 0.25)
