"""RateLimiter(store=RedisStore(...)) (docs/shared-state.md): one GCRA budget in the store,
decisions on the server's clock, waiting, give-back, keys, fail modes, metrics.

Several limiters on stores of their own stand for several processes (the multi-process test
is in test_redis_processes.py). Budgets that must not refill during a test use a long
``per``; waits use real time (the server's clock decides), on both backends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from _redis_server import RedisServer, free_port, redis_server  # noqa: F401
from prometheus_client import CollectorRegistry
from test_redis_store import make_store, wait_until

from resilience import RateLimitedError, RateLimiter
from resilience._store import REFUND
from resilience.redis import RedisStore

DECISIONS = "resilience_rate_limit_decisions_total"


@pytest.fixture
def stores(redis_server: RedisServer) -> Iterator[list[RedisStore]]:  # noqa: F811
    made = [make_store(redis_server.url, CollectorRegistry()) for _ in range(3)]
    try:
        yield made
    finally:
        for s in made:
            s.close()


def limiter(store: RedisStore, rate: float = 10, per: float = 3600.0, **kwargs: Any) -> RateLimiter:
    kwargs.setdefault("metrics_registry", CollectorRegistry())
    return RateLimiter("api", rate, per, store=store, **kwargs)


def decisions(lim: RateLimiter, registry: CollectorRegistry) -> dict[str, float | None]:
    return {
        o: registry.get_sample_value(DECISIONS, {"limiter": lim.name, "outcome": o})
        for o in ("allowed", "waited", "rejected")
    }


def test_several_limiters_share_one_budget(stores: list[RedisStore]) -> None:
    lims = [limiter(s, rate=10, burst=10) for s in stores]
    granted = [sum(lim.try_acquire() for _ in range(10)) for lim in lims]
    assert granted == [10, 0, 0]  # one burst in all, not one per process
    assert all(lim.statistics().rejected == r for lim, r in zip(lims, [0, 10, 10], strict=True))


def test_refused_with_the_servers_retry_after(stores: list[RedisStore]) -> None:
    lim = limiter(stores[0], rate=1, per=100.0)
    lim.acquire_sync()
    with pytest.raises(RateLimitedError) as info:
        limiter(stores[1], rate=1, per=100.0).acquire_sync()
    assert info.value.limiter == "api"
    assert 99 < info.value.retry_after <= 100


def test_keys_have_budgets_of_their_own(
    stores: list[RedisStore], redis_server: RedisServer  # noqa: F811
) -> None:
    a, b = limiter(stores[0], rate=1), limiter(stores[1], rate=1)
    assert a.try_acquire("1.2.3.4") and a.try_acquire(7) and a.try_acquire()
    assert not b.try_acquire("1.2.3.4") and not b.try_acquire(7) and not b.try_acquire()
    assert not b.try_acquire("7")  # keys are matched by their text: 7 and "7" share one
    assert b.try_acquire(("x", 1))
    keys = set(redis_server.command("KEYS", "*"))
    assert keys == {
        "resilience:limiter:api", "resilience:limiter:api:1.2.3.4", "resilience:limiter:api:7",
        "resilience:limiter:api:('x', 1)",
    }
    ttl = redis_server.command("PTTL", "resilience:limiter:api")
    assert 3_590_000 < ttl <= 3_600_001  # gone when it would be full again
    with pytest.raises(TypeError, match="key must be hashable"):
        a.try_acquire([1])  # type: ignore[arg-type]


def test_metrics_count_shared_decisions(stores: list[RedisStore]) -> None:
    registry = CollectorRegistry()
    lim = limiter(stores[0], rate=2, metrics_registry=registry)
    assert [lim.try_acquire() for _ in range(3)] == [True, True, False]
    assert decisions(lim, registry) == {"allowed": 2, "waited": 0, "rejected": 1}


def test_waiters_reserve_their_turn_sync(stores: list[RedisStore]) -> None:
    a = limiter(stores[0], rate=20, per=1.0, burst=1, max_wait=1.0)
    b = limiter(stores[1], rate=20, per=1.0, burst=1, max_wait=1.0)
    started = time.monotonic()
    a.acquire_sync()
    b.acquire_sync()  # waits for its turn: one interval (50 ms)
    a.acquire_sync()  # and the next one
    elapsed = time.monotonic() - started
    assert 0.09 <= elapsed < 0.5
    assert (a.statistics().allowed, a.statistics().waited, b.statistics().waited) == (1, 1, 1)


def test_a_turn_past_max_wait_is_refused_at_once(stores: list[RedisStore]) -> None:
    a = limiter(stores[0], rate=1, per=10.0, max_wait=0.5)
    a.acquire_sync()
    started = time.monotonic()
    with pytest.raises(RateLimitedError) as info:
        limiter(stores[1], rate=1, per=10.0, max_wait=0.5).acquire_sync()
    assert time.monotonic() - started < 0.2  # no pointless wait
    assert 9 < info.value.retry_after <= 10


async def test_acquire_waits_for_its_turn_on_either_backend(stores: list[RedisStore]) -> None:
    a = limiter(stores[0], rate=20, per=1.0, burst=1, max_wait=1.0)
    b = limiter(stores[1], rate=20, per=1.0, burst=1, max_wait=1.0)
    order: list[str] = []
    started = time.monotonic()
    await a.acquire()

    async def take(lim: RateLimiter, name: str) -> None:
        await lim.acquire()
        order.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, b, "b")
        await anyio.sleep(0.02)
        tg.start_soon(take, a, "a")
    assert order == ["b", "a"]  # served in the order they reserved
    assert 0.09 <= time.monotonic() - started < 0.5
    async with b:
        pass  # (a third interval)
    assert b.statistics().waited == 2


async def test_a_cancelled_waiter_gives_its_reservation_back(stores: list[RedisStore]) -> None:
    a = limiter(stores[0], rate=2, per=1.0, burst=1, max_wait=5.0)
    b = limiter(stores[1], rate=2, per=1.0, burst=1, max_wait=5.0)
    refunded: list[object] = []
    attempt = stores[1].attempt

    def counted(op: Any, *args: Any) -> Any:
        result = attempt(op, *args)
        if op == REFUND:
            refunded.append(result)  # the round trip is over, not just taken off the queue
        return result

    stores[1].attempt = counted  # type: ignore[method-assign,assignment]
    await a.acquire()
    with anyio.move_on_after(0.1):
        await b.acquire()  # reserved (due in 0.5 s), then cancelled
    assert b.statistics().waiting == 0 and b.statistics().waited == 0
    wait_until(lambda: refunded)  # the store's thread gave it back
    started = time.monotonic()
    await a.acquire()  # the turn given back: due 0.5 s after the first permit, not 1 s
    assert time.monotonic() - started < 0.45


def test_fail_modes_when_the_store_is_down() -> None:
    store = make_store(f"redis://127.0.0.1:{free_port()}/0", CollectorRegistry(), timeout=0.05)
    try:
        wait_until(lambda: not store.usable)
        local = limiter(store, rate=1, fail_mode="local")
        allow = limiter(store, rate=1, fail_mode="allow")
        deny = limiter(store, rate=1, fail_mode="deny")
        assert [local.try_acquire() for _ in range(2)] == [True, False]  # its own budget
        assert all(allow.try_acquire() for _ in range(5))
        assert not deny.try_acquire()
        with pytest.raises(RateLimitedError) as info:
            deny.acquire_sync()
        assert info.value.retry_after == store.poll_interval
    finally:
        store.close()


async def test_fail_modes_when_the_store_is_down_async() -> None:
    store = make_store(f"redis://127.0.0.1:{free_port()}/0", CollectorRegistry(), timeout=0.05)
    try:
        wait_until(lambda: not store.usable)
        await limiter(store, rate=1, fail_mode="allow").acquire()
        local = limiter(store, rate=1, fail_mode="local")
        await local.acquire()
        with pytest.raises(RateLimitedError):
            await local.acquire()
        with pytest.raises(RateLimitedError):
            await limiter(store, rate=1, fail_mode="deny").acquire()
    finally:
        store.close()


def test_a_server_past_its_timeout_counts_as_down(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    registry = CollectorRegistry()
    store = make_store(redis_server.url, registry, timeout=0.1)
    try:
        lim = limiter(store, rate=1, fail_mode="allow")
        assert lim.try_acquire()
        redis_server.command("CLIENT", "PAUSE", "1000", "ALL")  # answers nothing for 1 s
        started = time.monotonic()
        assert lim.try_acquire()  # past the timeout: the fail mode decides
        assert time.monotonic() - started < 0.5
        assert registry.get_sample_value(
            "resilience_store_errors_total", {"store": store.label, "operation": "limit"}
        ) == 1
        assert not store.up
    finally:
        store.close()
