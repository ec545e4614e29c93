"""Worker-pool benchmark: ``python -m bench.pool_bench [--quick]`` (part of ``make bench``).

Throughput of trivial ``async def`` jobs at 16 workers on asyncio and trio, beside the usual
ways of doing the same by hand; peak memory of ``map`` over a long input (measured in a fresh
subprocess as the RSS high-water mark above the baseline); and 1 ms sleeping jobs at 100
workers against raw anyio memory streams with a ``*_nowait`` fast path; and ``map`` of
plain-def jobs (pure-Python CPU work, and 1 ms ``time.sleep``) at 8 workers against
``concurrent.futures.ThreadPoolExecutor.map`` with 8 threads. Each figure is the median of
repeated runs whose order is interleaved, so noise from a shared machine spreads over all
cases. The raw-stream peers only run the jobs; the pool also returns every result.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from prometheus_client import CollectorRegistry

from resilience import WorkerPool

N_FULL, N_QUICK = 100_000, 20_000
MEM_FULL, MEM_QUICK = 1_000_000, 200_000
WORKERS = 16
SLEEP_WORKERS = 100
THREADS = 8
SYNC_CPU_FULL, SYNC_CPU_QUICK = 20_000, 4_000
SYNC_SLEEP_FULL, SYNC_SLEEP_QUICK = 4_000, 1_000
SPIN = 2_000  # iterations of a pure-Python loop: ~70 us of CPU per job (holding the GIL)

Case = Callable[[int], Awaitable[None]]


class Rates(NamedTuple):
    wall: float  # jobs per second of elapsed time
    cpu: float  # jobs per second of this process's CPU time (less sensitive to other load)


async def trivial(x: int) -> int:
    return x


async def nap(x: int) -> int:
    await anyio.sleep(0.001)
    return x


def spin(x: int) -> int:
    total = 0
    for i in range(SPIN):
        total += i
    return x


def doze(x: int) -> int:
    time.sleep(0.001)
    return x


# -- the pool --------------------------------------------------------------------------------


def pool_map(job: Callable[[int], Awaitable[int]], workers: int) -> Case:
    async def run(n: int) -> None:
        async with WorkerPool(workers, 100, "bench", metrics_registry=CollectorRegistry()) as p:
            count = 0
            async for _ in p.map(job, range(n)):
                count += 1
        assert count == n

    return run


def pool_map_sync(job: Callable[[int], int], workers: int) -> Case:
    async def run(n: int) -> None:
        async with WorkerPool(workers, 100, "bench", metrics_registry=CollectorRegistry()) as p:
            count = 0
            async for _ in p.map(job, range(n)):
                count += 1
        assert count == n

    return run


async def pool_submit_all(n: int) -> None:
    async with WorkerPool(WORKERS, 100, "bench", metrics_registry=CollectorRegistry()) as p:
        handles = [await p.submit(trivial, i) for i in range(n)]
        for h in handles:
            await h


async def pool_round_trip(n: int) -> None:
    async with WorkerPool(WORKERS, 100, "bench", metrics_registry=CollectorRegistry()) as p:
        for i in range(n):
            await (await p.submit(trivial, i))


# -- peers -----------------------------------------------------------------------------------


async def gather_semaphore(n: int) -> None:
    sem = asyncio.Semaphore(WORKERS)

    async def one(i: int) -> int:
        async with sem:
            return await trivial(i)

    await asyncio.gather(*(one(i) for i in range(n)))


async def taskgroup_semaphore(n: int) -> None:
    sem = asyncio.Semaphore(WORKERS)

    async def one(i: int) -> int:
        async with sem:
            return await trivial(i)

    async with asyncio.TaskGroup() as tg:
        for i in range(n):
            tg.create_task(one(i))


async def aiometer_amap(n: int) -> None:
    import aiometer

    async with aiometer.amap(trivial, range(n), max_at_once=WORKERS) as results:
        async for _ in results:
            pass


async def streams_naive(n: int) -> None:
    send, receive = anyio.create_memory_object_stream[int](100)

    async def worker(rx: MemoryObjectReceiveStream[int]) -> None:
        async with rx:
            async for item in rx:
                await trivial(item)

    async with anyio.create_task_group() as tg:
        for _ in range(WORKERS):
            tg.start_soon(worker, receive.clone())
        receive.close()
        async with send:
            for i in range(n):
                await send.send(i)


def streams_nowait(job: Callable[[int], Awaitable[int]], workers: int) -> Case:
    async def run(n: int) -> None:
        send, receive = anyio.create_memory_object_stream[int](100)

        async def worker(rx: MemoryObjectReceiveStream[int]) -> None:
            async with rx:
                while True:
                    try:
                        item = rx.receive_nowait()
                    except anyio.WouldBlock:
                        try:
                            item = await rx.receive()
                        except anyio.EndOfStream:
                            return
                    except anyio.EndOfStream:
                        return
                    await job(item)

        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker, receive.clone())
            receive.close()
            async with send:
                for i in range(n):
                    try:
                        send.send_nowait(i)
                    except anyio.WouldBlock:
                        await send.send(i)

    return run


def executor_map(job: Callable[[int], int], threads: int) -> Case:
    async def run(n: int) -> None:  # blocks the event loop, which has nothing else to do
        with ThreadPoolExecutor(threads) as executor:
            count = sum(1 for _ in executor.map(job, range(n)))
        assert count == n

    return run


# -- harness ---------------------------------------------------------------------------------


async def measure(cases: dict[str, Case], n: int, repeats: int) -> dict[str, Rates]:
    """Median jobs/s (wall and CPU) of each case; repeats interleaved, order rotated."""
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            gc.collect()
            start, start_cpu = time.perf_counter(), time.process_time()
            await cases[name](n)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(max(time.process_time() - start_cpu, 1e-9))
            await anyio.sleep(0)
    return {
        name: Rates(n / statistics.median(wall[name]), n / statistics.median(cpu[name]))
        for name in cases
    }


def run_backend(
    backend: str, n: int, n_sleep: int, n_sync: tuple[int, int], repeats: int
) -> dict[str, Rates]:
    cases: dict[str, Case] = {
        "pool.map": pool_map(trivial, WORKERS),
        "pool.submit all, await each handle": pool_submit_all,
        "pool submit -> await, one at a time": pool_round_trip,
        "aiometer.amap": aiometer_amap,
        "anyio streams, naive": streams_naive,
        "anyio streams, *_nowait fast path": streams_nowait(trivial, WORKERS),
    }
    if backend == "asyncio":
        cases["asyncio.gather + Semaphore"] = gather_semaphore
        cases["asyncio.TaskGroup + Semaphore"] = taskgroup_semaphore
    sleepers: dict[str, Case] = {
        "sleep 1ms: pool.map": pool_map(nap, SLEEP_WORKERS),
        "sleep 1ms: streams *_nowait": streams_nowait(nap, SLEEP_WORKERS),
    }

    cpu_jobs: dict[str, Case] = {
        "def, cpu: pool.map": pool_map_sync(spin, THREADS),
        "def, cpu: ThreadPoolExecutor.map": executor_map(spin, THREADS),
    }
    sleeping_jobs: dict[str, Case] = {
        "def, sleep 1ms: pool.map": pool_map_sync(doze, THREADS),
        "def, sleep 1ms: ThreadPoolExecutor.map": executor_map(doze, THREADS),
    }

    async def main() -> dict[str, Rates]:
        out = await measure(cases, n, repeats)
        out.update(await measure(sleepers, n_sleep, repeats))
        out.update(await measure(cpu_jobs, n_sync[0], repeats))
        out.update(await measure(sleeping_jobs, n_sync[1], repeats))
        return out

    return anyio.run(main, backend=backend)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(backend: str, items: int) -> None:
    """In a fresh process: print the RSS peak (bytes) of one ``map`` above the baseline."""

    async def main() -> int:
        async with WorkerPool(WORKERS, 100, "bench", metrics_registry=CollectorRegistry()) as p:
            gc.collect()
            base = peak = _rss()
            i = 0
            async for _ in p.map(trivial, range(items)):
                i += 1
                if i % 1000 == 0:
                    peak = max(peak, _rss())
        return peak - base

    print(anyio.run(main, backend=backend))


def memory_peak(backend: str, items: int) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "bench.pool_bench", "--memory-child", backend, str(items)],
        check=True, capture_output=True, text=True,
    )
    return int(out.stdout.strip()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pool_bench")
    parser.add_argument("--quick", action="store_true", help="short run (fewer jobs, repeats)")
    parser.add_argument("--memory-child", nargs=2, metavar=("BACKEND", "ITEMS"),
                        help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return
    n = N_QUICK if args.quick else N_FULL
    n_sleep = N_QUICK if args.quick else N_FULL
    items = MEM_QUICK if args.quick else MEM_FULL
    n_sync = (SYNC_CPU_QUICK, SYNC_SLEEP_QUICK) if args.quick else (SYNC_CPU_FULL, SYNC_SLEEP_FULL)
    repeats = 3 if args.quick else 5
    print(f"worker pool: {n:,} trivial jobs at {WORKERS} workers, median of {repeats} runs")
    print("jobs/s of elapsed time (and of this process's CPU time, less sensitive to other")
    print("load on a shared machine); 'sleep 1ms' rows: 1 ms jobs at 100 workers; 'def' rows:")
    print(f"{n_sync[0]:,} plain-def CPU jobs (~70 us each) and {n_sync[1]:,} plain-def 1 ms")
    print(f"time.sleep jobs at {THREADS} workers, beside ThreadPoolExecutor.map({THREADS} threads)")
    results: dict[str, dict[str, Rates]] = {}
    for b in ("asyncio", "trio"):
        results[b] = run_backend(b, n, n_sleep, n_sync, repeats)
    names = list(results["asyncio"])
    width = max(len(x) for x in names) + 2
    print(f"{'case':<{width}}{'asyncio':>10}{'(cpu)':>11}{'trio':>10}{'(cpu)':>11}")
    for name in names:
        cells = ""
        for b in ("asyncio", "trio"):
            rate = results[b].get(name)
            if rate is None:
                cells += f"{'n/a':>10}{'':>11}"
            else:
                cells += f"{rate.wall:>10,.0f}{f'({rate.cpu:,.0f})':>11}"
        print(f"{name:<{width}}{cells}".rstrip())
    print()
    for b in ("asyncio", "trio"):
        r = results[b]
        fast = r["anyio streams, *_nowait fast path"]
        nap_pool, nap_raw = r["sleep 1ms: pool.map"], r["sleep 1ms: streams *_nowait"]
        print(
            f"{b}: pool.map = {r['pool.map'].wall / fast.wall:.2f}x raw streams *_nowait "
            f"(cpu {r['pool.map'].cpu / fast.cpu:.2f}x), "
            f"{r['pool.map'].wall / r['aiometer.amap'].wall:.1f}x aiometer; sleep 1ms at "
            f"{SLEEP_WORKERS} workers: pool.map = {nap_pool.wall / nap_raw.wall:.2f}x streams "
            f"*_nowait ({nap_pool.wall / (SLEEP_WORKERS * 1000):.0%} of ideal, streams "
            f"{nap_raw.wall / (SLEEP_WORKERS * 1000):.0%})"
        )
        for kind in ("cpu", "sleep 1ms"):
            ours, theirs = r[f"def, {kind}: pool.map"], r[f"def, {kind}: ThreadPoolExecutor.map"]
            print(
                f"{b}: plain-def {kind} jobs: pool.map = {ours.wall / theirs.wall:.2f}x "
                f"ThreadPoolExecutor.map (cpu {ours.cpu / theirs.cpu:.2f}x)"
            )
    peaks = {b: memory_peak(b, items) for b in ("asyncio", "trio")}
    for b, peak in peaks.items():
        print(f"{b}: peak memory of map over {items:,} items: {peak:.1f} MiB above baseline (RSS)")
    print()
    print("targets:")
    for b, map_target in (("asyncio", 300_000), ("trio", 250_000)):
        r = results[b]
        sleep_ratio = r["sleep 1ms: pool.map"].wall / r["sleep 1ms: streams *_nowait"].wall
        map_ratio = r["pool.map"].wall / r["anyio streams, *_nowait fast path"].wall
        cpu_ratio = r["def, cpu: pool.map"].wall / r["def, cpu: ThreadPoolExecutor.map"].wall
        doze_ratio = (
            r["def, sleep 1ms: pool.map"].wall / r["def, sleep 1ms: ThreadPoolExecutor.map"].wall
        )
        checks = [
            ("pool.map >= 0.9x streams *_nowait", map_ratio >= 0.9, f"{map_ratio:.2f}x"),
            (f"pool.map >= {map_target:,} jobs/s", r["pool.map"].wall >= map_target,
             f"{r['pool.map'].wall:,.0f}"),
            ("submit + await each handle >= 100,000 jobs/s",
             r["pool.submit all, await each handle"].wall >= 100_000,
             f"{r['pool.submit all, await each handle'].wall:,.0f}"),
            (f"map over {items:,} items < 20 MiB", peaks[b] < 20, f"{peaks[b]:.1f} MiB"),
            ("sleep 1ms: pool.map >= 0.9x streams *_nowait", sleep_ratio >= 0.9,
             f"{sleep_ratio:.2f}x"),
            ("def, cpu: pool.map >= 0.9x ThreadPoolExecutor.map", cpu_ratio >= 0.9,
             f"{cpu_ratio:.2f}x"),
            ("def, sleep 1ms: pool.map >= 0.9x ThreadPoolExecutor", doze_ratio >= 0.9,
             f"{doze_ratio:.2f}x"),
        ]
        for label, ok, value in checks:
            print(f"  {'PASS' if ok else 'MISS'}  {b:<8}{label:<52}{value:>12}")


if __name__ == "__main__":
    main()
