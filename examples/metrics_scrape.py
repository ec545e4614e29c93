"""A service exposing Prometheus metrics on ``/metrics``, resilience's own among them.

A flaky dependency is called through a command (with a fallback) and jobs run in a worker pool;
``start_metrics_server`` serves prometheus-client's default registry from a background thread,
so the same line works in sync and async services.

Run: ``python examples/metrics_scrape.py [asyncio|trio] [--serve] [--port N]``: by default it
does a round of work, reads its own ``/metrics`` once, prints the resilience lines and exits;
``--serve`` keeps working and serving until Ctrl-C (read it with the ``curl`` line it prints).
"""

from __future__ import annotations

import argparse
import random
import urllib.request

import anyio

import resilience
from resilience import WorkerPool
from resilience.metrics import start_metrics_server

rng = random.Random(7)  # seeded: the same numbers on every run


async def fetch_stock(item: str) -> int:
    """The dependency: answers in a few milliseconds, fails one call in four."""
    await anyio.sleep(rng.uniform(0.001, 0.01))
    if rng.random() < 0.25:
        raise ConnectionError(f"inventory service reset while asking for {item}")
    return len(item)


async def resize(size: int) -> int:
    await anyio.sleep(0.001)
    return size // 2


async def one_round(pool: WorkerPool) -> None:
    for item in ("apple", "pear", "plum", "fig"):
        await resilience.run("inventory", fetch_stock, item, fallback=lambda exc: 0)
    for size in range(8):
        await pool.submit(resize, size)


def show(url: str) -> None:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    shown = ("resilience_command_calls_total", "resilience_command_fallbacks_total",
             "resilience_circuit_state", "resilience_pool_jobs_total")
    for line in text.splitlines():
        if line.startswith(shown) and not line.endswith(" 0.0"):
            print(" ", line)


async def main(serve: bool, port: int) -> None:
    resilience.configure_command("inventory", timeout=0.5, request_volume_threshold=1000)
    with start_metrics_server(port) as server:
        print(f"metrics at {server.url}")
        print(f"read them with: curl -s {server.url} | grep '^resilience_'")
        async with WorkerPool(workers=3, queue_size=16, name="thumbnails") as pool:
            await one_round(pool)
            while serve:
                await anyio.sleep(0.5)
                await one_round(pool)
        await anyio.to_thread.run_sync(show, server.url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend", nargs="?", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--serve", action="store_true", help="keep serving until Ctrl-C")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    args = parser.parse_args()
    try:
        anyio.run(main, args.serve, args.port, backend=args.backend)
    except KeyboardInterrupt:
        print("stopped")
