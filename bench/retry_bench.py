"""Retry benchmark: ``python -m bench.retry_bench [--quick]`` (part of ``make bench``).

1. What a retry policy costs a call that succeeds: the same ``@command`` (no timeout) with and
   without ``retry=Retry(...)``, on asyncio and trio. Goal: <= +0.1 µs.
2. A call that fails once and then succeeds (zero delays everywhere, so only the machinery is
   measured), async and sync: a resilience command with ``Retry(attempts=3)`` against
   tenacity's ``@retry(stop=stop_after_attempt(3))`` and stamina's
   ``@retry(on=Exception, attempts=3)``. Ours does more per attempt (circuit, bulkhead,
   metrics, budget), theirs only retry. Goal: faster than both.

Medians of interleaved repeats of tight loops (``bench._harness``); compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import CollectorRegistry

import resilience
from bench._harness import (
    AsyncCase,
    AsyncLoop,
    Result,
    Settings,
    SyncCase,
    SyncLoop,
    measure_async,
    measure_sync,
)

__all__ = ["main"]

Key = tuple[str, str]
Results = dict[Key, Result | str]

PLAIN = "resilience @command, no retry policy"
POLICY = "resilience @command, retry=Retry(...)"
OURS = "resilience @command, Retry(attempts=3)"
TENACITY = "tenacity @retry(stop_after_attempt(3))"
STAMINA = "stamina @retry(on=Exception, attempts=3)"
RETRY = resilience.Retry(attempts=3, backoff=0.0, jitter=0.0, budget=None)


class Flaky:
    """Fails every other call: each retried call is one failure, then one success."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls & 1:
            raise ConnectionError("flaky")
        return self.calls


def _registry() -> resilience.Registry:
    return resilience.Registry(metrics_registry=CollectorRegistry())


def _success(policy: resilience.Retry | None) -> Callable[[], Awaitable[AsyncLoop]]:
    async def setup() -> AsyncLoop:
        reg = _registry()

        @reg.command("ok", timeout=None, retry=policy)
        async def ok() -> int:
            return 1

        async def loop(n: int) -> None:
            for _ in range(n):
                await ok()

        await loop(1)
        assert reg.get_circuit("ok").statistics().successes == 1
        return loop

    return setup


def _loop_of(call: Callable[[], Awaitable[int]]) -> AsyncLoop:
    async def loop(n: int) -> None:
        for _ in range(n):
            await call()

    return loop


async def _ours() -> AsyncLoop:
    reg, flaky = _registry(), Flaky()
    reg.configure_command("flaky", timeout=None, retry=RETRY, request_volume_threshold=10**9)

    @reg.command("flaky")
    async def call() -> int:
        return flaky()

    assert await call() == 2 and flaky.calls == 2
    return _loop_of(call)


async def _tenacity() -> AsyncLoop:
    import tenacity

    flaky = Flaky()

    @tenacity.retry(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none(), reraise=True)
    async def call() -> int:
        return flaky()

    assert await call() == 2
    return _loop_of(call)


async def _stamina() -> AsyncLoop:
    import stamina

    flaky = Flaky()

    @stamina.retry(on=Exception, attempts=3, timeout=None, wait_initial=0.0, wait_max=0.0,
                   wait_jitter=0.0)
    async def call() -> int:
        return flaky()

    assert await call() == 2
    return _loop_of(call)


def _sync_loop(call: Callable[[], int]) -> SyncLoop:
    def loop(n: int) -> None:
        for _ in range(n):
            call()

    return loop


def _ours_sync() -> SyncLoop:
    reg, flaky = _registry(), Flaky()
    reg.configure_command("flaky", timeout=None, retry=RETRY, request_volume_threshold=10**9)
    call = reg.command("flaky")(flaky.__call__)
    assert call() == 2
    return _sync_loop(call)


def _tenacity_sync() -> SyncLoop:
    import tenacity

    flaky = Flaky()
    call = tenacity.retry(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none(),
                          reraise=True)(flaky.__call__)
    assert call() == 2
    return _sync_loop(call)


def _stamina_sync() -> SyncLoop:
    import stamina

    flaky = Flaky()
    call = stamina.retry(on=Exception, attempts=3, timeout=None, wait_initial=0.0, wait_max=0.0,
                         wait_jitter=0.0)(flaky.__call__)
    assert call() == 2
    return _sync_loop(call)


def success_cases() -> list[AsyncCase]:
    return [AsyncCase(PLAIN, _success(None)), AsyncCase(POLICY, _success(RETRY))]


def flaky_cases() -> list[AsyncCase]:
    return [AsyncCase(OURS, _ours), AsyncCase(TENACITY, _tenacity), AsyncCase(STAMINA, _stamina)]


def flaky_sync_cases() -> list[SyncCase]:
    return [SyncCase(OURS, _ours_sync), SyncCase(TENACITY, _tenacity_sync),
            SyncCase(STAMINA, _stamina_sync)]


def _us(value: Result | str | None) -> str:
    if isinstance(value, Result):
        return f"{value.median_ns / 1000:8.2f}"
    return "  failed" if value else "     n/a"


def _ns(results: Results, key: Key) -> float | None:
    value = results.get(key)
    return value.median_ns if isinstance(value, Result) else None


def targets(results: Results) -> list[tuple[str, str, str]]:
    """``(PASS|MISS|n/a, what, measured)`` for each goal."""
    out: list[tuple[str, str, str]] = []
    for backend in ("asyncio", "trio"):
        plain, policy = _ns(results, (backend, PLAIN)), _ns(results, (backend, POLICY))
        if plain is None or policy is None:
            out.append(("n/a", f"{backend}: success path with a policy <= +0.1 µs", "no data"))
            continue
        extra = (policy - plain) / 1000
        out.append(("PASS" if extra <= 0.1 else "MISS",
                    f"{backend}: success path with a policy <= +0.1 µs", f"{extra:+.3f} µs"))
    for backend in ("asyncio", "sync"):
        ours = _ns(results, (backend, OURS))
        for peer in (TENACITY, STAMINA):
            theirs = _ns(results, (backend, peer))
            what = f"{backend}: fail-then-succeed faster than {peer.split()[0]}"
            if ours is None or theirs is None:
                out.append(("n/a", what, "no data"))
                continue
            ratio = ours / theirs
            out.append(("PASS" if ratio < 1.0 else "MISS", what, f"{ratio:.2f}x"))
    return out


def _versions() -> str:
    parts = []
    for dist in ("anyio-resilience", "tenacity", "stamina"):
        try:
            parts.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{dist} missing")
    return ", ".join(parts)


def measure(settings: Settings) -> Results:
    import stamina.instrumentation
    import trio

    stamina.instrumentation.set_on_retry_hooks([])  # no logging per retry: machinery only

    results: Results = {}
    cases = [*success_cases(), *flaky_cases()]
    for name, res in asyncio.run(measure_async("asyncio", cases, settings)).items():
        results["asyncio", name] = res
    for name, res in trio.run(measure_async, "trio", success_cases(), settings).items():
        results["trio", name] = res
    for name, res in measure_sync(flaky_sync_cases(), settings).items():
        results["sync", name] = res
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.retry_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 short repeats (a smoke run)")
    args, _ = parser.parse_known_args(argv)
    settings = Settings(repeats=3, target_s=0.008) if args.quick else Settings()
    print("== resilience retry benchmark ==")
    print(f"versions: {_versions()}")
    results = measure(settings)
    print("\n1. success path: µs per call")
    for backend in ("asyncio", "trio"):
        for name in (PLAIN, POLICY):
            print(f"   {name:<46}{backend:<9}{_us(results.get((backend, name)))}")
    print("\n2. fails once, then succeeds (zero delays): µs per call (two attempts)")
    for backend in ("asyncio", "sync"):
        ours = _ns(results, (backend, OURS))
        for name in (OURS, TENACITY, STAMINA):
            value = results.get((backend, name))
            ratio = ""
            theirs = _ns(results, (backend, name))
            if ours is not None and theirs is not None and name != OURS:
                ratio = f"  ours {ours / theirs:.2f}x"
            print(f"   {name:<46}{backend:<9}{_us(value)}{ratio}")
    print("\ntargets:")
    for verdict, what, measured in targets(results):
        print(f"   {verdict:<5} {what:<60} {measured}")


if __name__ == "__main__":
    main()
