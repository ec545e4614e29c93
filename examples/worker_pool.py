"""Three workers, five jobs: collect results with ``map`` and with ``submit``.

Run: ``python examples/worker_pool.py [asyncio|trio]`` (well under a second).
"""

from __future__ import annotations

import sys
import time

import anyio

from resilience import WorkerPool


async def square(n: int) -> int:
    await anyio.sleep(0.05 * (5 - n))  # later jobs finish first...
    return n * n


async def broken(n: int) -> int:
    raise ValueError(f"job {n} failed")


def checksum(data: bytes) -> int:
    time.sleep(0.01)  # blocking code runs in a worker thread, never in the event loop
    return sum(data) % 251


async def main() -> None:
    async with WorkerPool(workers=3, queue_size=10, name="example") as pool:
        # map: results come back in input order (...but map keeps the order)
        print("map:   ", [r async for r in pool.map(square, range(5))])

        # submit: one handle per job, awaited whenever you like
        handles = [await pool.submit(square, n) for n in range(5)]
        print("submit:", [await h for h in handles])

        # a failing job does not kill its worker: the exception comes back through its handle
        failing = await pool.submit(broken, 5)
        try:
            await failing
        except ValueError as exc:
            print("failed job:", exc, "(its worker lives on)")

        # run = submit + wait; plain def jobs run in worker threads
        print("run:   ", await pool.run(checksum, b"resilience"))
    print("pool closed: every job finished, every worker stopped")


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
