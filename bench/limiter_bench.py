"""Rate-limiter benchmark: ``python -m bench.limiter_bench [--quick]`` (part of ``make bench``).

``resilience.RateLimiter`` next to ``aiolimiter.AsyncLimiter`` (asyncio only; ours on trio too):

1. a non-blocking check: ``try_acquire()`` against aiolimiter's equivalent,
   ``if limiter.has_capacity(): await limiter.acquire()``, with a permit free and with none
   (then ``has_capacity()`` alone), and per key (1,000 keys in rotation; for aiolimiter a dict
   of 1,000 limiters);
2. ``await acquire()`` and ``async with`` at a rate so high that nothing waits (µs per permit
   and permits/s);
3. waiting: 32 tasks take permits from one limiter at 20,000 permits/s with a burst of 10, so
   nearly every permit is waited for: permits/s achieved (the configured rate is the ceiling)
   and this process's CPU time per permit.

Figures 1 and 2 are medians of interleaved repeats of tight loops (``bench._harness``); 3 is
the median of interleaved runs. The goal: faster than aiolimiter on every row it has
(PASS/MISS). Numbers from a shared or busy machine are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import itertools
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import NamedTuple

import anyio
from prometheus_client import CollectorRegistry

from bench._harness import AsyncCase, AsyncLoop, Result, Settings, cpu_model, measure_async
from resilience import RateLimiter

__all__ = ["main"]

Key = tuple[str, str]  # (backend, case name)
Results = dict[Key, Result | str]

HUGE = 1e12  # permits per second: nothing ever waits
KEYS = 1000
TRY = "resilience try_acquire()"
TRY_NO = "resilience try_acquire() (no permit)"
TRY_KEY = f"resilience try_acquire(key) ({KEYS:,} keys)"
ACQ = "resilience await acquire()"
WITH = "resilience async with limiter"
AIO_TRY = "aiolimiter has_capacity() + acquire()"
AIO_NO = "aiolimiter has_capacity() (no permit)"
AIO_KEY = f"aiolimiter dict of {KEYS:,} limiters"
AIO_ACQ = "aiolimiter await acquire()"
AIO_WITH = "aiolimiter async with limiter"
WAIT_RATE, WAIT_BURST, WAIT_TASKS = 20_000.0, 10, 32


def _limiter(rate: float = HUGE, burst: int | None = None, max_wait: float = 0.0) -> RateLimiter:
    return RateLimiter("bench", rate, burst=burst, max_wait=max_wait,
                       metrics_registry=CollectorRegistry())


# -- 1 and 2: tight loops ---------------------------------------------------------------------


async def _try() -> AsyncLoop:
    take = _limiter().try_acquire
    assert take()

    async def loop(n: int) -> None:
        for _ in range(n):
            take()

    return loop


async def _try_refused() -> AsyncLoop:
    lim = _limiter(rate=1e-6, burst=1)
    take = lim.try_acquire
    assert take() and not take()

    async def loop(n: int) -> None:
        for _ in range(n):
            take()

    return loop


async def _try_keyed() -> AsyncLoop:
    lim = _limiter()
    take = lim.try_acquire
    keys = itertools.cycle([f"client-{i}" for i in range(KEYS)]).__next__
    assert all(take(keys()) for _ in range(KEYS)) and lim.statistics().keys == KEYS

    async def loop(n: int) -> None:
        for _ in range(n):
            take(keys())

    return loop


async def _acquire() -> AsyncLoop:
    lim = _limiter()
    acquire = lim.acquire
    await acquire()
    assert lim.statistics().allowed == 1

    async def loop(n: int) -> None:
        for _ in range(n):
            await acquire()

    return loop


async def _async_with() -> AsyncLoop:
    lim = _limiter()

    async def loop(n: int) -> None:
        for _ in range(n):
            async with lim:
                pass

    await loop(1)
    assert lim.statistics().allowed == 1
    return loop


async def _aio_try() -> AsyncLoop:
    from aiolimiter import AsyncLimiter

    lim = AsyncLimiter(HUGE, 1.0)
    assert lim.has_capacity()

    async def loop(n: int) -> None:
        for _ in range(n):
            if lim.has_capacity():
                await lim.acquire()

    return loop


async def _aio_refused() -> AsyncLoop:
    from aiolimiter import AsyncLimiter

    lim = AsyncLimiter(1, 1e6)
    await lim.acquire()
    has_capacity = lim.has_capacity
    assert not has_capacity()

    async def loop(n: int) -> None:
        for _ in range(n):
            if has_capacity():
                await lim.acquire()

    return loop


async def _aio_keyed() -> AsyncLoop:
    from aiolimiter import AsyncLimiter

    limiters = {f"client-{i}": AsyncLimiter(HUGE, 1.0) for i in range(KEYS)}
    keys = itertools.cycle(list(limiters)).__next__

    async def loop(n: int) -> None:
        for _ in range(n):
            lim = limiters[keys()]
            if lim.has_capacity():
                await lim.acquire()

    return loop


async def _aio_acquire() -> AsyncLoop:
    from aiolimiter import AsyncLimiter

    acquire = AsyncLimiter(HUGE, 1.0).acquire

    async def loop(n: int) -> None:
        for _ in range(n):
            await acquire()

    return loop


async def _aio_with() -> AsyncLoop:
    from aiolimiter import AsyncLimiter

    lim = AsyncLimiter(HUGE, 1.0)

    async def loop(n: int) -> None:
        for _ in range(n):
            async with lim:
                pass

    return loop


def _resilience_cases() -> list[AsyncCase]:
    return [AsyncCase(TRY, _try), AsyncCase(TRY_NO, _try_refused),
            AsyncCase(TRY_KEY, _try_keyed), AsyncCase(ACQ, _acquire), AsyncCase(WITH, _async_with)]


def _aiolimiter_cases() -> list[AsyncCase]:
    return [AsyncCase(AIO_TRY, _aio_try), AsyncCase(AIO_NO, _aio_refused),
            AsyncCase(AIO_KEY, _aio_keyed), AsyncCase(AIO_ACQ, _aio_acquire),
            AsyncCase(AIO_WITH, _aio_with)]


# -- 3: waiting -------------------------------------------------------------------------------


class Rates(NamedTuple):
    permits_s: float  # permits per second of elapsed time
    cpu_us: float  # this process's CPU time per permit, µs


async def run_waiting(acquire: Callable[[], Awaitable[None]], permits: int,
                      tasks: int = WAIT_TASKS) -> Rates:
    """``permits`` acquisitions spread over ``tasks`` tasks sharing one limiter."""
    each = permits // tasks

    async def worker() -> None:
        for _ in range(each):
            await acquire()

    wall, cpu = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(worker)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Rates(each * tasks / wall, cpu / (each * tasks) * 1e6)


def _ours_waiting() -> Callable[[], Awaitable[None]]:
    return _limiter(WAIT_RATE, burst=WAIT_BURST, max_wait=60.0).acquire


def _aio_waiting() -> Callable[[], Awaitable[None]]:
    from aiolimiter import AsyncLimiter

    return AsyncLimiter(WAIT_BURST, WAIT_BURST / WAIT_RATE).acquire  # capacity = the burst


async def measure_waiting(makers: dict[str, Callable[[], Callable[[], Awaitable[None]]]],
                          permits: int, repeats: int) -> dict[str, Rates | str]:
    runs: dict[str, list[Rates]] = {name: [] for name in makers}
    out: dict[str, Rates | str] = {}
    for r in range(repeats):
        names = list(runs)
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            try:
                runs[name].append(await run_waiting(makers[name](), permits))
            except Exception as exc:  # a peer that cannot run is reported, not fatal
                out[name] = f"{type(exc).__name__}: {exc}"
                del runs[name]
    for name, rs in runs.items():
        out[name] = Rates(statistics.median(r.permits_s for r in rs),
                          statistics.median(r.cpu_us for r in rs))
    return out


# -- report -----------------------------------------------------------------------------------


def _median(results: Results, key: Key) -> float | None:
    res = results.get(key)
    return res.median_ns if isinstance(res, Result) else None


def _row(results: Results, key: Key, ref: Key | None) -> None:
    backend, name = key
    res = results.get(key, "not measured")
    if isinstance(res, str):
        print(f"   {name:<44}{backend:<9}  skipped: {res[:70]}")
        return
    base = _median(results, ref) if ref else None
    ratio = f"{res.median_ns / base:.2f}" if base else "-"
    spread = f"{res.min_ns / 1000:.3f}..{res.max_ns / 1000:.3f}"
    print(f"   {name:<44}{backend:<9}{res.median_ns / 1000:>9.3f}{spread:>17}"
          f"{1e9 / res.median_ns:>14,.0f}{ratio:>8}")


PAIRS = [(TRY, AIO_TRY), (TRY_NO, AIO_NO), (TRY_KEY, AIO_KEY), (ACQ, AIO_ACQ), (WITH, AIO_WITH)]


def _targets(results: Results, waiting: Mapping[str, Rates | str]) -> list[tuple[str, str, str]]:
    """(PASS/MISS, what, measured) for every row aiolimiter has."""
    out = []
    for ours, theirs in PAIRS:
        m, r = _median(results, ("asyncio", ours)), _median(results, ("asyncio", theirs))
        if m is not None and r:
            out.append(("PASS" if m < r else "MISS", f"asyncio: {ours} < {theirs}",
                        f"{m / r:.2f}x"))
    mine, peer = waiting.get("resilience (asyncio)"), waiting.get("aiolimiter")
    if isinstance(mine, Rates) and isinstance(peer, Rates):
        out.append(("PASS" if mine.permits_s >= peer.permits_s else "MISS",
                    "asyncio waiting: resilience permits/s >= aiolimiter's",
                    f"{mine.permits_s / peer.permits_s:.2f}x"))
        out.append(("PASS" if mine.cpu_us < peer.cpu_us else "MISS",
                    "asyncio waiting: resilience CPU per permit < aiolimiter's",
                    f"{mine.cpu_us / peer.cpu_us:.2f}x"))
    return out


def _versions() -> str:
    out = []
    for dist in ("anyio-resilience", "aiolimiter", "anyio", "trio"):
        try:
            out.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{dist} missing")
    return ", ".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    """Measure, then print the machine, the three sections and the targets."""
    import trio

    parser = argparse.ArgumentParser(prog="python -m bench.limiter_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="3 short repeats instead of 11 (a smoke run, noisier)")
    args, _ = parser.parse_known_args(argv)  # `python -m bench` passes its args to every bench
    settings = Settings(repeats=3, target_s=0.008) if args.quick else Settings()
    permits, repeats = (2_000, 3) if args.quick else (10_000, 5)
    print("== resilience rate-limiter benchmark ==")
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; {platform.python_implementation()} "
          f"{platform.python_version()}; {_versions()}")
    print(f"method: median of {settings.repeats} interleaved repeats of ~"
          f"{settings.target_s * 1000:.0f} ms per case, tight loop in one running event loop")
    results: Results = {}
    cases = [*_resilience_cases(), *_aiolimiter_cases()]
    for name, res in asyncio.run(measure_async("asyncio", cases, settings)).items():
        results["asyncio", name] = res
    for name, res in trio.run(measure_async, "trio", _resilience_cases(), settings).items():
        results["trio", name] = res
    waiting: dict[str, Rates | str] = asyncio.run(measure_waiting(
        {"resilience (asyncio)": _ours_waiting, "aiolimiter": _aio_waiting}, permits, repeats))
    waiting |= trio.run(measure_waiting, {"resilience (trio)": _ours_waiting}, permits, repeats)

    header = f"   {'case':<44}{'backend':<9}{'µs/call':>9}{'min..max':>17}{'calls/s':>14}"
    print("\n1. non-blocking check (x ref = ratio to aiolimiter's equivalent)")
    print(header + f"{'x ref':>8}")
    for ours, theirs in PAIRS[:3]:
        _row(results, ("asyncio", ours), ("asyncio", theirs))
        _row(results, ("asyncio", theirs), None)
    for ours, _ in PAIRS[:3]:
        _row(results, ("trio", ours), None)
    print("\n2. await acquire(), nothing waits (x ref = ratio to aiolimiter's)")
    print(header + f"{'x ref':>8}")
    for ours, theirs in PAIRS[3:]:
        _row(results, ("asyncio", ours), ("asyncio", theirs))
        _row(results, ("asyncio", theirs), None)
    for ours, _ in PAIRS[3:]:
        _row(results, ("trio", ours), None)
    print(f"\n3. waiting: {WAIT_TASKS} tasks, {permits:,} permits at {WAIT_RATE:,.0f}/s, burst "
          f"{WAIT_BURST} (median of {repeats} runs)")
    print(f"   {'limiter':<44}{'permits/s':>12}{'of rate':>9}{'CPU µs/permit':>15}")
    for name, rates in waiting.items():
        if isinstance(rates, str):
            print(f"   {name:<44}  skipped: {rates[:70]}")
        else:
            print(f"   {name:<44}{rates.permits_s:>12,.0f}{rates.permits_s / WAIT_RATE:>9.0%}"
                  f"{rates.cpu_us:>15.1f}")
    print("\ntargets (faster than aiolimiter; judged on medians):")
    for verdict, what, measured in _targets(results, waiting):
        print(f"   {verdict:<5} {what:<90} {measured}")


if __name__ == "__main__":
    main()
