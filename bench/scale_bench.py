"""How command costs grow: names, buckets, sparse calls, the sync path, refusals.

Run with ``python -m bench.scale_bench [--quick]`` (``make bench`` runs it too). Each figure
is the best of interleaved repeats of a tight loop, in µs per call; each row prints the ratio
to its reference and PASS/MISS against the goal.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
from prometheus_client import CollectorRegistry

import resilience
import resilience.metrics

__all__ = ["main"]

QUICK = "--quick" in sys.argv
REPEATS = 5 if QUICK else 11
CALLS = 2_000 if QUICK else 10_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _registry(names: int = 10, clock: Callable[[], float] | None = None) -> resilience.Registry:
    metrics = CollectorRegistry()
    resilience.metrics.set_max_names(names + 10, registry=metrics)
    return resilience.Registry(metrics_registry=metrics, clock=clock)


async def _ok() -> int:
    return 1


async def _boom() -> int:
    raise ConnectionError


def _sync_ok() -> int:
    return 1


AsyncLoop = Callable[[], Awaitable[None]]


async def _best(loops: dict[str, AsyncLoop]) -> dict[str, float]:
    """Best µs per call of each loop (CALLS calls), interleaved over REPEATS rounds."""
    best = dict.fromkeys(loops, float("inf"))
    for _ in range(REPEATS):
        for name, loop in loops.items():
            await anyio.lowlevel.checkpoint()
            start = time.perf_counter()
            await loop()
            best[name] = min(best[name], (time.perf_counter() - start) / CALLS * 1e6)
    return best


def _names_loops() -> dict[str, AsyncLoop]:
    one = _registry(1)
    one_fn = one.command("only", timeout=None)(_ok)
    many = _registry(10_000)
    fns = [many.command(f"n{i}", timeout=None)(_ok) for i in range(10_000)]
    run_reg = _registry(10_000)
    names = [f"r{i}" for i in range(10_000)]
    for name in names:
        run_reg.configure_command(name, timeout=None)

    async def decorated_1() -> None:
        for _ in range(CALLS):
            await one_fn()

    async def decorated_10k() -> None:
        for i in range(CALLS):
            await fns[i % 10_000]()

    async def run_10k() -> None:
        run = run_reg.run
        for i in range(CALLS):
            await run(names[i % 10_000], _ok)

    return {"decorated, 1 name": decorated_1, "decorated, 10,000 names": decorated_10k,
            "run(), 10,000 names": run_10k}


def _bucket_loops() -> dict[str, AsyncLoop]:
    loops: dict[str, AsyncLoop] = {}
    for buckets in (10, 1000):
        clock = Clock()
        reg = _registry(clock=clock)
        reg.configure_command("f", timeout=None, buckets=buckets, force_closed=True)
        fail = reg.command("f")(_boom)
        reg.configure_command("s", timeout=None, buckets=buckets)
        ok = reg.command("s")(_ok)
        circuit = reg.get_circuit("s")
        width = 10.0 / buckets

        async def failures(fail: Callable[[], Awaitable[int]] = fail) -> None:
            for _ in range(CALLS):
                try:
                    await fail()
                except ConnectionError:
                    pass

        async def stats(circuit: resilience.Circuit = circuit) -> None:
            for _ in range(CALLS):
                circuit.statistics()

        async def steady(ok: Callable[[], Awaitable[int]] = ok, clock: Clock = clock) -> None:
            for _ in range(CALLS):
                clock.now += 0.0 * 1.5  # the sparse loop's clock step, standing still
                await ok()

        async def sparse(
            ok: Callable[[], Awaitable[int]] = ok, clock: Clock = clock, width: float = width
        ) -> None:
            for _ in range(CALLS):
                clock.now += width * 1.5  # every call opens a new bucket
                await ok()

        loops[f"failure, {buckets} buckets"] = failures
        loops[f"statistics(), {buckets} buckets"] = stats
        loops[f"success, {buckets} buckets"] = steady
        loops[f"sparse success, {buckets} buckets"] = sparse
    return loops


def _refusal_loops() -> dict[str, AsyncLoop]:
    reg = _registry()
    reg.configure_command("open", force_open=True)
    refused = reg.command("open")(_ok)

    async def bare_checkpoint() -> None:
        for _ in range(CALLS):
            await anyio.lowlevel.checkpoint()

    async def rejected() -> None:
        for _ in range(CALLS):
            try:
                await refused()
            except resilience.CircuitOpenError:
                pass

    async def bare() -> None:
        for _ in range(CALLS):
            await _ok()

    return {"bare await": bare, "bare anyio checkpoint": bare_checkpoint,
            "rejected (open circuit)": rejected}


def _sync_rows() -> dict[str, float]:
    reg = _registry()
    reg.configure_command("sync", timeout=None)
    fn = reg.command("sync")(_sync_ok)
    best = {"bare f()": float("inf"), "@command def, timeout=None": float("inf")}
    for _ in range(REPEATS):
        for name, f in (("bare f()", _sync_ok), ("@command def, timeout=None", fn)):
            start = time.perf_counter()
            for _ in range(CALLS):
                f()
            best[name] = min(best[name], (time.perf_counter() - start) / CALLS * 1e6)
    return best


def _row(label: str, value: float, goal: float, unit: str = "x") -> None:
    verdict = "PASS" if value <= goal else "MISS"
    print(f"   {verdict}  {label:<58} {value:7.2f}{unit}   goal <= {goal:g}{unit}")


async def _backend_rows(backend: str) -> None:
    t = await _best({**_names_loops(), **_bucket_loops(), **_refusal_loops()})
    print(f"\n{backend}: µs per call")
    for name, value in t.items():
        print(f"   {name:<40} {value:8.3f}")
    print(f"targets ({backend}):")
    _row("run() at 10,000 names / decorated at 10,000 names",
         t["run(), 10,000 names"] / t["decorated, 10,000 names"], 1.5)
    _row("decorated at 10,000 names / at 1 name",
         t["decorated, 10,000 names"] / t["decorated, 1 name"], 2.5)
    _row("failure path, 1,000 buckets / 10", t["failure, 1000 buckets"]
         / t["failure, 10 buckets"], 1.5)
    _row("statistics(), 1,000 buckets / 10", t["statistics(), 1000 buckets"]
         / t["statistics(), 10 buckets"], 1.5)
    for buckets in (10, 1000):
        _row(f"sparse calls / steady, {buckets} buckets",
             t[f"sparse success, {buckets} buckets"] / t[f"success, {buckets} buckets"], 2.0)
    _row("rejected call - bare anyio checkpoint",
         t["rejected (open circuit)"] - t["bare anyio checkpoint"], 1.0, " µs")
    # (the production clock: the steady rows above run on the test clock the sparse rows
    # need, whose Python-level call adds ~0.1 µs that no application pays)
    _row("@command, timeout=None - bare await (real clock)",
         t["decorated, 1 name"] - t["bare await"], 0.5, " µs")


def main() -> None:
    logging.getLogger("resilience").setLevel(logging.ERROR)  # forced-open warnings
    print("scale benchmark: how command costs grow" + (" (quick)" if QUICK else ""))
    for backend in ("asyncio", "trio"):
        anyio.run(_backend_rows, backend, backend=backend)
    s = _sync_rows()
    print("\nsync: µs per call")
    for name, value in s.items():
        print(f"   {name:<40} {value:8.3f}")
    _row("sync @command def, timeout=None - bare f() (same thread)",
         s["@command def, timeout=None"] - s["bare f()"], 3.0, " µs")


if __name__ == "__main__":
    main()
