"""Real processes (multiprocessing, spawn) sharing one RedisStore: a trip in one reaches the
others within the poll interval, exactly one half-open trial runs across all of them, the
recovered dependency closes everywhere, and their limiters together admit one budget.

The children run the workers of ``_redis_server`` (each with its own store, poll interval
50 ms); they count trial calls in a ``multiprocessing.Value`` and report through a queue.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from typing import Any

import pytest
from _redis_server import (  # noqa: F401
    RedisServer,
    circuit_worker,
    limiter_worker,
    redis_server,
)

PROCESSES = 3
POLL = 0.05


def collect(procs: list[Any], out: Any, timeout: float = 40.0) -> list[Any]:
    """One result per process; fails at once if a process died without one."""
    results: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=0.2))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not dead, f"a child process failed: exit codes {dead}"
            assert time.monotonic() < deadline, "the child processes did not report in time"
    return results


def run_all(procs: list[Any], out: Any) -> list[Any]:
    """Start the processes, collect one result from each, and make sure they all exited 0."""
    for p in procs:
        p.start()
    results: list[Any] = []
    try:
        results = collect(procs, out)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * len(procs)
    return results


@pytest.mark.slow
def test_trip_propagation_one_trial_and_recovery_across_processes(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES)  # every process set up before the trip
    tripped = ctx.Value("d", 0.0)
    trials = ctx.Value("i", 0)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=circuit_worker,
                    args=(redis_server.url, "fleet", i, start, tripped, trials, out))
        for i in range(PROCESSES)
    ]
    results = run_all(procs, out)
    results.sort()
    trip = tripped.value
    assert trip > 0
    for index, seen_open, calls, state, reasons in results:
        assert seen_open is not None, f"process {index} never saw the circuit open"
        # a trip reaches every process within the poll interval (plus scheduling slack)
        assert seen_open - trip <= POLL + 0.25, (index, seen_open - trip)
        assert state == "closed", (index, calls[-5:], reasons)  # recovered everywhere
        assert "ok" in calls
        if index:
            assert reasons[:1] == ["shared_open"], (index, reasons)
    # exactly one trial across all the processes
    assert trials.value == 1, [(r[0], r[4]) for r in results]
    trial_runners = [r[0] for r in results if "trial" in r[4]]
    assert len(trial_runners) == 1, [r[4] for r in results]
    others = [r for r in results if r[0] not in trial_runners]
    assert all("shared_closed" in r[4] for r in others)


@pytest.mark.slow
def test_processes_limiters_together_admit_one_budget(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES)
    out = ctx.Queue()
    procs = [ctx.Process(target=limiter_worker, args=(redis_server.url, "fleet", start, out))
             for _ in range(PROCESSES)]
    granted = run_all(procs, out)
    assert sum(granted) == 10, granted  # 10 an hour in all, not 10 per process
