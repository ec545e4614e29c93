"""RedisStore (docs/shared-state.md): validation, key layout, the up/down metrics and log, an
outage with recovery on the same port, NOSCRIPT after a restart, closing.

Every test runs against a real ``redis-server`` (``_redis_server``; skipped with how to install
it when missing, failed under CI=true). Waits poll a condition with a deadline (the store's
thread works at its own pace), with a poll interval of 50 ms.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _redis_server import RedisServer, free_port, redis_binary, redis_server  # noqa: F401
from prometheus_client import CollectorRegistry
from test_command_helpers import FakeClock

import resilience
from resilience import CircuitOpenError, RateLimiter
from resilience._store_scripts import GCRA
from resilience.redis import RedisStore

UP = "resilience_store_up"
ERRORS = "resilience_store_errors_total"
POLL = 0.05


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def make_store(url: str, registry: CollectorRegistry, **kwargs: Any) -> RedisStore:
    kwargs.setdefault("poll_interval", POLL)
    return RedisStore(url, metrics_registry=registry, **kwargs)


def up(registry: CollectorRegistry, store: RedisStore) -> float | None:
    return registry.get_sample_value(UP, {"store": store.label})


def errors(registry: CollectorRegistry, store: RedisStore, operation: str) -> float:
    return registry.get_sample_value(ERRORS, {"store": store.label, "operation": operation}) or 0


@pytest.fixture
def store(
    redis_server: RedisServer, metrics_registry: CollectorRegistry  # noqa: F811
) -> Iterator[RedisStore]:
    s = make_store(redis_server.url, metrics_registry)
    try:
        yield s
    finally:
        s.close()


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"url": 6379}, TypeError, "url must be a str, got 6379"),
        ({"url": "http://x"}, ValueError, "url must start with redis://, rediss:// or unix://"),
        ({"prefix": None}, TypeError, "prefix must be a non-empty str, got None"),
        ({"prefix": ""}, ValueError, "prefix must be a non-empty str"),
        ({"prefix": "a b"}, ValueError, "without whitespace, got 'a b'"),
        ({"poll_interval": 0}, ValueError, "poll_interval must be > 0"),
        ({"poll_interval": "1"}, TypeError, "poll_interval must be a number, got '1'"),
        ({"poll_interval": float("nan")}, ValueError, "poll_interval must be a finite number"),
        ({"timeout": True}, TypeError, "timeout must be a number, got True"),
        ({"timeout": -1}, ValueError, "timeout must be > 0"),
        ({"timeout": 1e9}, ValueError, "timeout must be at most 86400"),
        ({"name": ""}, ValueError, "store name must be a non-empty str"),
        ({"metrics_registry": {}}, TypeError, "metrics_registry must be a prometheus_client"),
    ],
)
def test_bad_configuration_names_the_field(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    args = {"url": "redis://127.0.0.1:1/0", **kwargs}
    with pytest.raises(error, match=message.replace("(", r"\(").replace("?", r"\?")):
        RedisStore(**args)


def test_registry_and_limiter_take_only_a_store() -> None:
    with pytest.raises(TypeError, match="store must be a resilience.redis.RedisStore"):
        resilience.Registry(store=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="store= needs a resilience.redis.RedisStore"):
        RateLimiter("x", 1, store=object())


def test_the_label_never_shows_credentials(metrics_registry: CollectorRegistry) -> None:
    s = RedisStore("redis://user:secret@127.0.0.1:1/3", prefix="{app}", timeout=0.05,
                   metrics_registry=metrics_registry)
    try:
        assert s.label == "{app}@127.0.0.1:1/3"
        assert "secret" not in repr(s)
        named = RedisStore("redis://127.0.0.1:1", name="cache", metrics_registry=metrics_registry)
        assert named.label == "cache"
        named.close()
    finally:
        s.close()


# -- up, down, outage, recovery --------------------------------------------------------------------


def test_up_while_the_server_answers(
    store: RedisStore, metrics_registry: CollectorRegistry
) -> None:
    wait_until(lambda: up(metrics_registry, store) == 1)
    assert store.up and "up" in repr(store)
    assert errors(metrics_registry, store, "sync") == 0


def test_a_server_that_never_answers_is_down_and_nothing_fails(
    metrics_registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "resilience.store")
    s = make_store(f"redis://127.0.0.1:{free_port()}/0", metrics_registry, timeout=0.05)
    try:
        wait_until(lambda: errors(metrics_registry, s, "sync") >= 3)
        assert up(metrics_registry, s) == 0 and not s.up
        registry = resilience.Registry(metrics_registry=metrics_registry, store=s)
        assert registry.run_sync("ok", lambda: 1) == 1
        lim = RateLimiter("l", 2, per=3600, store=s, metrics_registry=metrics_registry)
        assert [lim.try_acquire() for _ in range(3)] == [True, True, False]  # local budget
    finally:
        s.close()
    downs = [r for r in caplog.records if r.name == "resilience.store"]
    assert len(downs) == 1, downs  # once per outage, not once per failed round trip
    assert "is down (sync failed" in downs[0].getMessage()


def test_an_outage_mid_run_then_recovery_on_the_same_port(
    redis_server: RedisServer,  # noqa: F811
    metrics_registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "resilience.store")
    s = make_store(redis_server.url, metrics_registry, timeout=0.1)
    try:
        registry = resilience.Registry(metrics_registry=metrics_registry, store=s)
        registry.configure_command("dep", request_volume_threshold=2, sleep_window=30,
                                   timeout=None)
        allow = RateLimiter("allow", 1, per=3600, store=s, fail_mode="allow",
                            metrics_registry=metrics_registry)
        deny = RateLimiter("deny", 100, per=1, store=s, fail_mode="deny",
                           metrics_registry=metrics_registry)
        assert registry.run_sync("dep", lambda: "ok") == "ok"
        wait_until(lambda: up(metrics_registry, s) == 1)
        assert allow.try_acquire() and not allow.try_acquire()  # shared budget: 1 an hour

        redis_server.stop()
        wait_until(lambda: up(metrics_registry, s) == 0)
        # everything keeps working locally; the limiters' fail modes decide
        assert registry.run_sync("dep", lambda: "still ok") == "still ok"
        assert allow.try_acquire() and allow.try_acquire()
        assert not deny.try_acquire()
        with pytest.raises(resilience.RateLimitedError) as info:
            deny.acquire_sync()
        assert info.value.retry_after == s.poll_interval
        for _ in range(2):  # trips locally while the store is down
            with pytest.raises(ZeroDivisionError):
                registry.run_sync("dep", lambda: 1 // 0)
        assert registry.get_circuit("dep").state == "open"
        assert errors(metrics_registry, s, "sync") >= 1

        redis_server.start()  # same port, no data: the local open state is published again
        wait_until(lambda: up(metrics_registry, s) == 1)
        wait_until(lambda: redis_server.command("HGET", s.key("circuit", "dep"), "state")
                   == "open")
        assert allow.try_acquire() and not allow.try_acquire()  # the store's (fresh) budget
        assert deny.try_acquire()
    finally:
        s.close()
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "resilience.store"]
    assert [level for level, _ in logged] == ["WARNING", "INFO"], logged
    assert "answers again" in logged[1][1]


def test_lost_state_is_published_again(
    store: RedisStore, redis_server: RedisServer  # noqa: F811
) -> None:
    registry = resilience.Registry(metrics_registry=CollectorRegistry(), store=store)
    registry.configure_command("dep", request_volume_threshold=1, sleep_window=30, timeout=None)
    with pytest.raises(ZeroDivisionError):
        registry.run_sync("dep", lambda: 1 // 0)
    key = store.key("circuit", "dep")
    wait_until(lambda: redis_server.command("HGET", key, "state") == "open")
    opened = int(redis_server.command("HGET", key, "opened"))
    version = int(redis_server.command("HGET", key, "version"))
    redis_server.command("FLUSHALL")  # the store lost its data
    wait_until(lambda: redis_server.command("HGET", key, "state") == "open")
    # published again with its age (about the same opening time) and a larger version
    assert abs(int(redis_server.command("HGET", key, "opened")) - opened) < 1_000_000
    assert int(redis_server.command("HGET", key, "version")) > version
    assert registry.get_circuit("dep").state == "open"


def test_noscript_after_a_script_flush_or_a_restart_is_handled(
    store: RedisStore, redis_server: RedisServer,  # noqa: F811
    metrics_registry: CollectorRegistry,
) -> None:
    lim = RateLimiter("l", 1000, store=store, metrics_registry=metrics_registry)
    assert lim.try_acquire()
    redis_server.command("SCRIPT", "FLUSH")
    assert lim.try_acquire()  # NOSCRIPT: loaded again, no error
    assert errors(metrics_registry, store, "limit") == 0
    redis_server.restart()  # a new server: no scripts
    wait_until(lambda: store.up)
    assert redis_server.command("SCRIPT", "EXISTS", store._gcra_script.sha) == [0]
    assert lim.try_acquire()
    assert redis_server.command("SCRIPT", "EXISTS", store._gcra_script.sha) == [1]
    assert errors(metrics_registry, store, "limit") == 0
    assert store._gcra_script.script == GCRA


def test_stores_with_different_prefixes_are_independent(
    redis_server: RedisServer, metrics_registry: CollectorRegistry  # noqa: F811
) -> None:
    a = make_store(redis_server.url, metrics_registry, prefix="a")
    b = make_store(redis_server.url, metrics_registry, prefix="b")
    try:
        la = RateLimiter("api", 1, per=3600, store=a, metrics_registry=metrics_registry)
        lb = RateLimiter("api", 1, per=3600, store=b, metrics_registry=metrics_registry)
        assert la.try_acquire() and lb.try_acquire()
        assert not la.try_acquire() and not lb.try_acquire()
        keys = sorted(redis_server.command("KEYS", "*"))
        assert keys == ["a:limiter:api", "b:limiter:api"]
    finally:
        a.close()
        b.close()


def test_names_and_keys_are_escaped_in_key_names(store: RedisStore) -> None:
    assert store.key("circuit", "http:api:443") == "resilience:circuit:http%3Aapi%3A443"
    assert store.key("limiter", "a", "b:c%") == "resilience:limiter:a:b%3Ac%25"
    assert store.key("limiter", "a:b") != store.key("limiter", "a", "b")


# -- closing ---------------------------------------------------------------------------------------


def threads_named(label: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"resilience-store {label}"]


def test_close_and_with_stop_the_thread(
    redis_server: RedisServer, metrics_registry: CollectorRegistry  # noqa: F811
) -> None:
    with make_store(redis_server.url, metrics_registry, name="w") as s:
        wait_until(lambda: up(metrics_registry, s) == 1)
        registry = resilience.Registry(metrics_registry=metrics_registry, store=s)
        registry.run_sync("c", lambda: None)
        assert threads_named("w")
    assert not threads_named("w") and s.closed and "closed" in repr(s)
    assert up(metrics_registry, s) is None  # a closed store has no up sample
    s.close()  # again: harmless
    # the circuits go on locally; a limiter on a closed store decides by its fail mode
    assert registry.run_sync("c", lambda: 2) == 2
    assert RateLimiter("l", 1, store=s, metrics_registry=metrics_registry).try_acquire()


async def test_async_with_stops_the_thread(
    redis_server: RedisServer, metrics_registry: CollectorRegistry  # noqa: F811
) -> None:
    async with make_store(redis_server.url, metrics_registry, name="aw") as s:
        lim = RateLimiter("l", 1, per=3600, store=s, metrics_registry=metrics_registry)
        await lim.acquire()
        with pytest.raises(resilience.RateLimitedError):
            await lim.acquire()
        assert threads_named("aw")
    assert not threads_named("aw")


async def test_a_store_down_never_fails_calls_on_either_backend(
    metrics_registry: CollectorRegistry, clock: FakeClock
) -> None:
    s = make_store(f"redis://127.0.0.1:{free_port()}/0", metrics_registry, timeout=0.05)
    try:
        registry = resilience.Registry(metrics_registry=metrics_registry, store=s, clock=clock)
        registry.configure_command("dep", request_volume_threshold=1, sleep_window=0.05)

        async def ok() -> str:
            return "ok"

        async def boom() -> None:
            raise ConnectionError

        assert await registry.run("dep", ok) == "ok"
        with pytest.raises(ConnectionError):
            await registry.run("dep", boom)
        with pytest.raises(CircuitOpenError):
            await registry.run("dep", ok)
        clock.advance(0.06)
        assert await registry.run("dep", ok) == "ok"  # a local trial: the store is down
        assert registry.get_circuit("dep").state == "closed"
    finally:
        s.close()


def test_the_binary_helper_finds_redis() -> None:
    assert redis_binary().endswith("redis-server")
