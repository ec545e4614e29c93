"""A real ``redis-server`` for the shared-state tests (``resilience.redis``).

:class:`RedisServer` starts the Debian package's ``redis-server`` on a free loopback port with
no persistence (``--save "" --appendonly no``: a restart loses every key, which is what the
data-loss tests want), waits until it answers ``PING``, and stops it by its pid. It can be
stopped and started again on the same port (an outage, then recovery). :func:`redis_binary`
skips the calling test when the binary is missing, saying how to install it (and fails under
CI=true, like every external tool: see ``_tools.require_tool``).

The worker functions at the bottom run in child processes (``multiprocessing`` spawn) of the
multi-process tests; they live here so that the children import them from a small module.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _tools import require_tool

__all__ = ["HOW", "RedisServer", "redis_binary", "redis_server_fixture"]

HOW = (
    "apt-get install redis-server (Debian/Ubuntu; the binary is /usr/bin/redis-server), "
    "brew install redis (macOS); or run `make tools`"
)


def redis_binary() -> str:
    """The ``redis-server`` binary, or skip (fail under CI) with how to get it."""
    __tracebackhide__ = True
    return require_tool("redis-server", HOW)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ping(port: int, timeout: float = 0.2) -> bool:
    """Whether a server on ``port`` answers ``PING`` (raw RESP, no client library)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port`` (a free port by default)."""

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--protected-mode", "no", "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while not ping(self.port):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.proc = None
                raise RuntimeError(f"redis-server on port {self.port} exited: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop it by its pid (SIGTERM, then SIGKILL) and wait until the port is closed."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        """Stopped, then started on the same port: every key is gone."""
        self.stop()
        self.start()

    def command(self, *args: str) -> Any:
        """One command through redis-py (for checks and setup in tests)."""
        import redis

        client = redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            client.close()


def redis_server_fixture() -> Iterator[RedisServer]:
    """The body of a ``redis_server`` fixture: one server, stopped afterwards."""
    server = RedisServer(redis_binary())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server for one test."""
    yield from redis_server_fixture()


# -- workers of the multi-process tests (run in spawned children) --------------------------------


def _store(url: str, prefix: str) -> Any:
    from prometheus_client import CollectorRegistry

    from resilience.redis import RedisStore

    return RedisStore(url, prefix=prefix, poll_interval=0.05, timeout=1.0,
                      metrics_registry=CollectorRegistry())


def circuit_worker(
    url: str, prefix: str, index: int, start: Any, tripped: Any, trials: Any, out: Any,
) -> None:
    """One process of the shared-circuit test. Process 0 trips the circuit; every process
    reports when it saw it open; then all of them call the recovered dependency in a loop
    until it is closed here: ``trials`` counts the calls that ran as a half-open trial
    (across processes)."""
    import resilience
    from resilience import CircuitOpenError

    store = _store(url, prefix)
    events: list[str] = []
    try:
        from prometheus_client import CollectorRegistry

        registry = resilience.Registry(metrics_registry=CollectorRegistry(), store=store)
        registry.subscribe(lambda e: events.append(getattr(e, "reason", "")))
        registry.configure_command(
            "dep", request_volume_threshold=5, error_percent_threshold=50, sleep_window=1.0,
            timeout=None,
        )
        registry.run_sync("dep", lambda: None)  # attached, and in the shared view
        time.sleep(0.2)
        start.wait(timeout=30)

        def fail() -> None:
            raise ConnectionError("down")

        if index == 0:
            while registry.get_circuit("dep").state != "open":
                try:
                    registry.run_sync("dep", fail)
                except ConnectionError:
                    pass
            tripped.value = time.time()
        # how long until this process refuses calls (0 for the tripping process)
        deadline = time.monotonic() + 10
        seen_open = None
        while time.monotonic() < deadline:
            if registry.get_circuit("dep").state == "open":
                seen_open = time.time()
                break
            time.sleep(0.002)

        circuit = registry.get_circuit("dep")

        def recovered() -> str:
            if circuit.state == "half_open":  # a trial (not a call after the recovery)
                with trials.get_lock():
                    trials.value += 1
                time.sleep(0.2)  # a slow trial: everybody else calls meanwhile
            return "ok"

        results: list[str] = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            try:
                results.append(registry.run_sync("dep", recovered))
            except CircuitOpenError:
                results.append("open")
            if results[-1] == "ok" and circuit.state == "closed" and results.count("ok") >= 3:
                break
            time.sleep(0.005)
        out.put((index, seen_open, results, registry.get_circuit("dep").state, events))
    finally:
        store.close()


def limiter_worker(url: str, prefix: str, start: Any, out: Any) -> None:
    """One process of the shared-budget test: 20 tries at a budget of 10 per hour."""
    from prometheus_client import CollectorRegistry

    from resilience import RateLimiter

    store = _store(url, prefix)
    try:
        lim = RateLimiter("api", rate=10, per=3600.0, store=store,
                          metrics_registry=CollectorRegistry())
        start.wait(timeout=30)
        granted = sum(lim.try_acquire() for _ in range(20))
        out.put(granted)
    finally:
        store.close()
