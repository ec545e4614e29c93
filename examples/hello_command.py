"""The seed scenario "hello", done with resilience.

``hello()`` is a flaky dependency: it randomly sleeps past its 1000 ms timeout or fails.
``@command("hello")`` gives it a timeout (the slow call is really cancelled), a limit of 100
concurrent executions, a circuit breaker that opens at 50% errors, and a fallback.

Run: ``python examples/hello_command.py [asyncio|trio]`` (about one second).
"""

from __future__ import annotations

import collections
import random
import sys

import anyio

import resilience
from resilience import command

rng = random.Random(2024)  # seeded: the same story on every run
causes: collections.Counter[str] = collections.Counter()


def cached_greeting(exc: BaseException) -> str:
    """The fallback: runs on timeout, failure, rejection and open circuit."""
    causes[type(exc).__name__] += 1
    return "hello from the cache"


@command(
    "hello",
    timeout=1.0,  # 1000 ms
    max_concurrent_requests=100,
    error_percent_threshold=50,
    fallback=cached_greeting,
)
async def hello(name: str) -> str:
    roll = rng.random()
    await anyio.sleep(0.05)  # a round trip to somewhere
    if roll < 0.25:
        await anyio.sleep(5)  # far past the timeout: cancelled after 1 s
    elif roll < 0.6:
        raise ConnectionError(f"no greeting for {name}")
    return f"hello, {name}"


async def round_of_calls(title: str, names: list[str]) -> None:
    causes.clear()
    results: list[str] = []

    async def one(name: str) -> None:
        results.append(await hello(name))

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(one, name)
    circuit = resilience.get_circuit("hello")
    stats = circuit.statistics()
    live = sum(1 for r in results if r.startswith("hello, "))
    print(f"{title}: {len(names)} concurrent calls")
    print(f"  results:   {live} from hello(), {len(results) - live} from the fallback")
    print(f"  fallbacks: {dict(sorted(causes.items()))}")
    print(
        f"  circuit:   {circuit.state.value} (rolling window: {stats.requests} requests, "
        f"{stats.error_percent:.0f}% errors, {stats.short_circuits} short-circuited)"
    )


async def main() -> None:
    names = [f"user{i}" for i in range(40)]
    await round_of_calls("round 1", names)
    # The circuit is open now: calls fail fast into the fallback, hello() is not called.
    await round_of_calls("round 2", names[:10])


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
