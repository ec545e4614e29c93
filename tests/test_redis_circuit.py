"""Circuits shared through a RedisStore (docs/shared-state.md), in one test process.

Two registries with a store each stand for two processes (each store has its own owner id
and thread, exactly as in two processes; the multi-process tests are in
test_redis_processes.py). Against a real ``redis-server``; waits poll a condition with a
deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from _redis_server import RedisServer, redis_server  # noqa: F401
from prometheus_client import CollectorRegistry
from test_redis_store import POLL, make_store, wait_until

import resilience
from resilience import CircuitOpenError, StateChange
from resilience._registry import core_of
from resilience.redis import RedisStore


class Process:
    """A registry on its own store: what one process of a fleet has."""

    def __init__(self, url: str, prefix: str = "t", **store_kwargs: Any) -> None:
        self.metrics = CollectorRegistry()
        self.store = make_store(url, self.metrics, prefix=prefix, **store_kwargs)
        self.registry = resilience.Registry(metrics_registry=self.metrics, store=self.store)
        self.events: list[StateChange] = []
        self.registry.subscribe(
            lambda e: self.events.append(e) if isinstance(e, StateChange) else None
        )

    def configure(self, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", None)
        kwargs.setdefault("request_volume_threshold", 2)
        self.registry.configure_command("dep", **kwargs)
        self.registry.run_sync("dep", lambda: None)  # the circuit exists: attached

    def state(self) -> str:
        return self.registry.get_circuit("dep").state

    def trip(self) -> None:
        for _ in range(10):
            with pytest.raises(ConnectionError):
                self.registry.run_sync("dep", fail)
            if self.state() == "open":
                return
        raise AssertionError("did not trip")

    def call(self, fn: Any = None) -> Any:
        return self.registry.run_sync("dep", fn or (lambda: "ok"))

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]


def fail() -> None:
    raise ConnectionError("down")


@pytest.fixture
def pair(redis_server: RedisServer) -> Iterator[tuple[Process, Process]]:  # noqa: F811
    a, b = Process(redis_server.url), Process(redis_server.url)
    try:
        yield a, b
    finally:
        a.store.close()
        b.store.close()


def shared(server: RedisServer, store: RedisStore, field: str) -> str | None:
    value: str | None = server.command("HGET", store.key("circuit", "dep"), field)
    return value


# -- trips ---------------------------------------------------------------------------------------


def test_a_trip_reaches_the_others_within_the_poll_interval(pair: tuple[Process, Process]) -> None:
    a, b = pair
    a.configure(sleep_window=30)
    b.configure(sleep_window=30)
    a.trip()
    started = time.monotonic()
    wait_until(lambda: b.state() == "open")
    assert time.monotonic() - started <= 2 * POLL + 0.1
    called = []
    with pytest.raises(CircuitOpenError) as info:
        b.call(lambda: called.append(1))
    assert called == []  # short-circuited: the function never ran
    assert info.value.retry_after is not None and 29 < info.value.retry_after <= 30
    wait_until(lambda: b.events)  # delivered after the state changed (outside the lock)
    assert b.events[-1].old == "closed" and b.events[-1].new == "open"
    assert b.reasons() == ["shared_open"]
    assert a.reasons() == ["tripped"]


def test_an_open_circuit_is_never_re_stamped(redis_server: RedisServer) -> None:  # noqa: F811
    a = Process(redis_server.url)
    b = Process(redis_server.url, poll_interval=30.0)  # reads the store only when told to
    try:
        syncs: list[object] = []
        sync = b.store._sync

        def counted(*args: Any) -> Any:
            syncs.append(args)
            return sync(*args)

        b.store._sync = counted  # type: ignore[method-assign,assignment]
        a.configure(sleep_window=5)
        b.configure(sleep_window=5)
        wait_until(lambda: syncs)  # b read the circuit once (closed, never written)
        a.trip()
        wait_until(lambda: shared(redis_server, a.store, "state") == "open")
        opened = shared(redis_server, a.store, "opened")
        version = shared(redis_server, a.store, "version")
        time.sleep(0.3)
        b.trip()  # its own trip, on a stale view ("never written")
        b.store.refresh()
        wait_until(lambda: b.registry.get_circuit("dep").state == "open" and b.events)
        time.sleep(0.1)
        assert shared(redis_server, a.store, "opened") == opened  # the stale writer lost
        assert shared(redis_server, a.store, "version") == version
        with pytest.raises(CircuitOpenError) as info:
            b.call()
        # b adopted the shared opening time: its sleep window ends with a's, not 5 s from now
        wait_until(lambda: _retry_after(b) < 4.85)
        assert info.value.retry_after is not None
    finally:
        a.store.close()
        b.store.close()


def _retry_after(p: Process) -> float:
    try:
        p.call()
    except CircuitOpenError as exc:
        assert exc.retry_after is not None
        return exc.retry_after
    return -1.0


# -- the one trial ---------------------------------------------------------------------------------


def _trip_and_wait_out(a: Process, b: Process, sleep_window: float = 0.3) -> None:
    """``a`` trips, ``b`` sees it open, then the sleep window passes (on the server's clock:
    a real sleep) so that the next call anywhere may be the trial."""
    a.configure(sleep_window=sleep_window)
    b.configure(sleep_window=sleep_window)
    a.trip()
    wait_until(lambda: b.state() == "open")
    time.sleep(sleep_window + 0.05)


def test_exactly_one_trial_and_its_success_closes_everywhere(
    pair: tuple[Process, Process],
) -> None:
    a, b = pair
    _trip_and_wait_out(a, b)
    ran: list[str] = []

    def trial_of_a() -> str:
        ran.append("a")
        # meanwhile, the other process tries too: refused at once, its function never runs
        with pytest.raises(CircuitOpenError) as info:
            b.call(lambda: ran.append("b"))
        assert info.value.retry_after is not None and info.value.retry_after > 0.2
        return "recovered"

    assert a.call(trial_of_a) == "recovered"
    assert ran == ["a"] and a.state() == "closed"
    wait_until(lambda: b.state() == "closed")
    assert b.call() == "ok"
    assert a.reasons() == ["tripped", "trial", "trial_succeeded"]
    assert b.reasons() == ["shared_open", "shared_closed"]


def test_a_failed_trial_reopens_everywhere(
    pair: tuple[Process, Process], redis_server: RedisServer  # noqa: F811
) -> None:
    a, b = pair
    _trip_and_wait_out(a, b)
    with pytest.raises(ConnectionError):
        b.call(fail)  # b's trial this time, and it fails
    assert b.reasons() == ["shared_open", "trial", "trial_failed"]
    # published (the lease is gone), opened again on the server's clock, and a knows it
    wait_until(lambda: shared(redis_server, b.store, "owner") is None)
    version = shared(redis_server, b.store, "version")
    hook = core_of(a.registry, "dep").shared
    wait_until(lambda: getattr(hook, "seen", None) == version)
    assert 0.15 < _retry_after(a) <= 0.3  # a full sleep window from the failure
    time.sleep(0.35)
    assert a.call() == "ok"  # a's trial now
    wait_until(lambda: b.state() == "closed")


def test_a_lease_held_by_a_dead_process_expires(
    pair: tuple[Process, Process], redis_server: RedisServer  # noqa: F811
) -> None:
    a, b = pair
    _trip_and_wait_out(a, b)
    # a process that took the lease and died: lease for 0.3 s, no verdict ever
    key = a.store.key("circuit", "dep")
    version = redis_server.command("HGET", key, "version")
    reply = a.store._lease(key, "dead-process", version, 300_000, 300_000)
    assert reply[2] == 1
    with pytest.raises(CircuitOpenError):
        b.call()
    with pytest.raises(CircuitOpenError):
        a.call()
    time.sleep(0.35)  # the lease expired
    assert b.call() == "ok"
    wait_until(lambda: a.state() == "closed")


def test_a_stale_writer_loses_every_shared_write(
    pair: tuple[Process, Process], redis_server: RedisServer  # noqa: F811
) -> None:
    store = pair[0].store
    key = store.key("circuit", "raw")

    def sync(op: str, seen: str, owner: str = "x", a: int = 1_000_000, b: int = 0) -> list[Any]:
        reply = store._sync([key], [op, seen, owner, a, b])
        view: list[Any] = reply[2]
        return view

    state, opened, v1, _, _, won = sync("o", "0")
    assert (state, won) == ("open", 1) and int(v1) > 10**15  # seeded from the server's clock
    assert sync("o", "0")[5] == 0  # stale: loses
    assert sync("o", v1)[5] == 0  # current, but the circuit is open: never re-stamped
    assert sync("r", "0")[1] == opened
    # the lease: stale version refused; the sleep window not over refused; then granted
    assert store._lease(key, "p1", "0", 1_000_000, 0)[2] == 0
    assert store._lease(key, "p1", v1, 1_000_000, 60_000_000)[2] == 0
    granted = store._lease(key, "p1", v1, 1_000_000, 0)
    assert granted[2] == 1
    v2 = granted[5]
    assert int(v2) > int(v1)
    assert store._lease(key, "p2", v2, 1_000_000, 0)[2] == 0  # held by p1
    assert sync("s", v2, owner="p2")[5] == 0  # not the holder
    assert sync("s", v1, owner="p1")[5] == 0  # the holder, on a stale version
    closed = sync("s", v2, owner="p1")
    assert closed[0] == "closed" and closed[5] == 1
    assert store._lease(key, "p1", closed[2], 1_000_000, 0)[2] == 2  # closed: no lease
    # data loss: the key is gone; re-published with its age, versions still grow
    redis_server.command("DEL", key)
    assert sync("p", "whatever", a=1_000_000, b=2_000_000)[5] == 1
    state, opened2, v3, _, _, _ = sync("p", "whatever")
    assert state == "open" and int(v3) > int(closed[2])
    assert int(opened2) < int(opened) + 60_000_000


# -- what stays local ------------------------------------------------------------------------------


def test_closed_calls_never_touch_the_store(pair: tuple[Process, Process]) -> None:
    a, _ = pair
    a.configure(sleep_window=30)
    main = threading.current_thread()
    seen: list[object] = []
    original = a.store.attempt

    def attempt(*args: Any) -> Any:
        if threading.current_thread() is main:
            seen.append(args[0])
        return original(*args)

    a.store.attempt = attempt  # type: ignore[method-assign,assignment]
    for _ in range(1000):
        assert a.call() == "ok"
    assert seen == []


def test_force_closed_and_flush_stay_local(
    pair: tuple[Process, Process], redis_server: RedisServer  # noqa: F811
) -> None:
    a, b = pair
    a.configure(sleep_window=30)
    b.configure(sleep_window=30, force_closed=True)
    a.trip()
    wait_until(lambda: shared(redis_server, a.store, "state") == "open")
    version = shared(redis_server, a.store, "version")
    hook = core_of(b.registry, "dep").shared
    wait_until(lambda: getattr(hook, "seen", None) == version)  # b has read the opening
    assert b.state() == "closed" and b.call() == "ok"  # the operator's switch wins
    a.registry.flush()
    assert a.state() == "closed"
    b.registry.configure_command("dep", force_closed=False)
    c = Process(b.store._url)
    try:
        c.configure(sleep_window=30)
        wait_until(lambda: c.state() == "open")  # a's flush did not close the shared circuit
    finally:
        c.store.close()


async def test_shared_circuits_on_either_backend(pair: tuple[Process, Process]) -> None:
    a, b = pair
    a.configure(sleep_window=0.2)
    b.configure(sleep_window=0.2)

    async def boom() -> None:
        raise ConnectionError

    async def ok() -> str:
        return "ok"

    with pytest.raises(ConnectionError):
        await a.registry.run("dep", boom)  # 1 of 2 requests failed: 50%, tripped
    assert a.state() == "open"
    with anyio.fail_after(5):
        while b.state() != "open":
            await anyio.sleep(0.01)
    with pytest.raises(CircuitOpenError):
        await b.registry.run("dep", ok)
    await anyio.sleep(0.25)
    assert await b.registry.run("dep", ok) == "ok"  # b's trial (a lease round trip)
    with anyio.fail_after(5):
        while a.state() != "closed":
            await anyio.sleep(0.01)
    assert await a.registry.run("dep", ok) == "ok"


def test_threads_of_one_process_never_wait_for_the_lease_round_trip(
    pair: tuple[Process, Process],
) -> None:
    a, b = pair
    a.configure(sleep_window=0.2)
    b.configure(sleep_window=0.2)
    a.trip()
    wait_until(lambda: b.state() == "open")
    lease = b.store._lease

    def slow_lease(*args: Any) -> Any:
        time.sleep(0.2)  # a slow store: the lock is not held meanwhile
        return lease(*args)

    b.store._lease = slow_lease  # type: ignore[method-assign,assignment]
    time.sleep(0.25)
    ran: list[int] = []
    refused: list[float] = []
    barrier = threading.Barrier(8)

    def call() -> None:
        barrier.wait()
        started = time.monotonic()
        try:
            b.call(lambda: ran.append(1))
        except CircuitOpenError:
            refused.append(time.monotonic() - started)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ran) == 1 and len(refused) == 7  # one trial; the others refused...
    assert sorted(refused)[5] < 0.1  # ...at once, not after the round trip (scheduling aside)
    wait_until(lambda: a.state() == "closed")
