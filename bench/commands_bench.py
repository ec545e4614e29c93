"""Command benchmark: the cost of a resilience command next to bare awaits and its peers.

Run with ``python -m bench.commands_bench [--quick]`` (or ``make bench``). Everything runs in
one process; each figure is the median of interleaved repeats of a tight loop of calls inside
one running event loop, in nanoseconds (printed as µs) per call. The targets come from issue 2:

* success path (breaker + concurrency limit + metrics, ``timeout=None``): <= 1.0 µs over a bare
  ``await f()`` on asyncio;
* with ``timeout=1.0``: <= 1.5x a bare ``asyncio.timeout`` block;
* a call rejected by an open circuit: <= 1.5 µs.

Numbers from a shared or busy machine are noisy: compare within one run, rerun on a quiet one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench import _peers
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

if TYPE_CHECKING:
    import resilience

__all__ = ["main"]

Key = tuple[str, str]  # (backend, case name)
Results = dict[Key, Result | str]

BARE = "bare await f()"
BARE_SYNC = "bare f()"
CMD_NONE = "resilience @command (timeout=None)"
RUN_NONE = "resilience registry.run (timeout=None)"
CMD_T = "resilience @command (timeout=1.0)"
RUN_T = "resilience registry.run (timeout=1.0)"
OPEN = "resilience rejected (force_open)"
TRIPPED = "resilience rejected (tripped)"
SYNC_T = "resilience @command def (timeout=1.0)"
SYNC_NONE = "resilience @command def (timeout=None)"
RUN_SYNC = "resilience registry.run_sync (timeout=1.0)"
EXECUTOR = "ThreadPoolExecutor.submit(f).result()"
PYBREAKER = "pybreaker (breaker, no thread)"
ASYNCIO_TIMEOUT = "asyncio.timeout(1.0) block"


# --- resilience cases -------------------------------------------------------------------------


def _registry() -> resilience.Registry:
    """An isolated resilience registry exporting to a throw-away CollectorRegistry."""
    from prometheus_client import CollectorRegistry

    import resilience

    return resilience.Registry(metrics_registry=CollectorRegistry())


def _check_successes(reg: resilience.Registry, name: str, expected: int) -> None:
    got = reg.get_circuit(name).statistics().successes
    if got != expected:
        raise RuntimeError(f"command {name!r}: expected {expected} successes, statistics say {got}")


def _decorated(timeout: float | None) -> Callable[[], Awaitable[AsyncLoop]]:
    async def setup() -> AsyncLoop:
        reg = _registry()
        call = reg.command("bench", timeout=timeout)(_peers.work)
        if await call() != 1:
            raise RuntimeError("@command did not return the function's result")
        _check_successes(reg, "bench", 1)
        return _peers.call_loop(call)

    return setup


def _run(timeout: float | None) -> Callable[[], Awaitable[AsyncLoop]]:
    async def setup() -> AsyncLoop:
        reg = _registry()
        reg.configure_command("bench", timeout=timeout)
        run, work = reg.run, _peers.work
        if await run("bench", work) != 1:
            raise RuntimeError("registry.run did not return the function's result")
        _check_successes(reg, "bench", 1)

        async def loop(n: int) -> None:
            for _ in range(n):
                await run("bench", work)

        return loop

    return setup


def _rejected(force_open: bool) -> Callable[[], Awaitable[AsyncLoop]]:
    """Open by the operator switch, or tripped by one failure (volume threshold 1)."""

    async def setup() -> AsyncLoop:
        import resilience

        reg, calls = _registry(), 0

        async def flaky() -> int:
            nonlocal calls
            calls += 1
            raise _peers.Boom

        if force_open:
            call = reg.command("bench", force_open=True)(flaky)
        else:
            call = reg.command("bench", request_volume_threshold=1, sleep_window=3600.0)(flaky)
            try:
                await call()
            except _peers.Boom:
                pass
        before = calls
        try:
            await call()
        except resilience.CircuitOpenError:
            if calls != before:
                raise RuntimeError("an open circuit called the function") from None
            return _peers.open_circuit_loop(call, resilience.CircuitOpenError)
        except _peers.Boom:
            pass
        raise RuntimeError("the circuit did not reject the call")

    return setup


def _sync_decorated(timeout: float | None, via_run: bool = False) -> Callable[[], SyncLoop]:
    def setup() -> SyncLoop:
        reg, work = _registry(), _peers.work_sync
        if via_run:
            run_sync = reg.run_sync
            if run_sync("bench", work) != 1:
                raise RuntimeError("registry.run_sync did not return the function's result")

            def run_loop(n: int) -> None:
                for _ in range(n):
                    run_sync("bench", work)

            return run_loop
        call = reg.command("bench", timeout=timeout)(work)
        if call() != 1:
            raise RuntimeError("sync @command did not return the function's result")
        _check_successes(reg, "bench", 1)

        def loop(n: int) -> None:
            for _ in range(n):
                call()

        return loop

    return setup


def _resilience_async_cases() -> list[AsyncCase]:
    return [
        AsyncCase(CMD_NONE, _decorated(None)),
        AsyncCase(RUN_NONE, _run(None)),
        AsyncCase(CMD_T, _decorated(1.0)),
        AsyncCase(RUN_T, _run(1.0)),
        AsyncCase(OPEN, _rejected(force_open=True)),
        AsyncCase(TRIPPED, _rejected(force_open=False)),
    ]


# --- running ----------------------------------------------------------------------------------


def _measure_all(settings: Settings) -> Results:
    import trio

    results: Results = {}
    ok, opened = _peers.peer_cases()
    asyncio_cases = [*_peers.asyncio_primitives(), *_resilience_async_cases(), *ok, *opened]
    trio_cases = [*_peers.trio_primitives(), *_resilience_async_cases()]
    sync_cases = [
        *_peers.sync_references(),
        SyncCase(SYNC_T, _sync_decorated(1.0)),
        SyncCase(SYNC_NONE, _sync_decorated(None)),
        SyncCase(RUN_SYNC, _sync_decorated(1.0, via_run=True)),
    ]
    for name, res in asyncio.run(measure_async("asyncio", asyncio_cases, settings)).items():
        results["asyncio", name] = res
    for name, res in trio.run(measure_async, "trio", trio_cases, settings).items():
        results["trio", name] = res
    for name, res in measure_sync(sync_cases, settings).items():
        results["sync", name] = res
    return results


# --- report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """Rows to print; ``ref`` names, per backend, the row the ``x ref`` column divides by."""

    title: str
    rows: list[Key]
    ref: dict[str, str] = field(default_factory=dict)


def _sections() -> list[Section]:
    peers = [("asyncio", p.label) for p in _peers.PEERS]
    timed = [("asyncio", p.label) for p in _peers.PEERS if p.has_timeout]
    opened = [("asyncio", p.open_label) for p in _peers.PEERS if not p.has_timeout]
    bare = {"asyncio": BARE, "trio": BARE}
    return [
        Section("1. baseline: bare `await f()` (f a trivial async def)",
                [("asyncio", BARE), ("trio", BARE)], {"asyncio": BARE, "trio": BARE}),
        Section("2. success path, timeout=None (breaker + concurrency limit + metrics)",
                [(b, n) for b in ("asyncio", "trio") for n in (BARE, CMD_NONE, RUN_NONE)],
                bare),
        Section("3. success path with a timeout of 1.0 s",
                [("asyncio", ASYNCIO_TIMEOUT), ("asyncio", "anyio.fail_after(1.0) block"),
                 ("asyncio", CMD_T), ("asyncio", RUN_T),
                 *timed,
                 ("trio", "trio.fail_after(1.0) block"), ("trio", "anyio.fail_after(1.0) block"),
                 ("trio", CMD_T), ("trio", RUN_T)],
                {"asyncio": ASYNCIO_TIMEOUT, "trio": "trio.fail_after(1.0) block"}),
        Section("4. a call rejected by an open circuit (exception caught)",
                [("asyncio", BARE), ("asyncio", OPEN), ("asyncio", TRIPPED), *opened,
                 ("trio", BARE), ("trio", OPEN), ("trio", TRIPPED)], bare),
        Section("5. peers and raw primitives (asyncio), same run",
                [("asyncio", BARE), ("asyncio", ASYNCIO_TIMEOUT),
                 ("asyncio", "anyio.fail_after(1.0) block"),
                 ("asyncio", "asyncio.Semaphore(10) block"),
                 ("asyncio", "asyncio Semaphore + timeout (hand-rolled)"), *peers,
                 ("asyncio", CMD_NONE), ("asyncio", CMD_T)], {"asyncio": CMD_T}),
        Section("6. sync path: plain def called from sync code (resilience hops to a thread)",
                [("sync", n) for n in (BARE_SYNC, PYBREAKER, EXECUTOR, SYNC_T, SYNC_NONE,
                                       RUN_SYNC)], {"sync": EXECUTOR}),
    ]


def _us(ns: float) -> str:
    return f"{ns / 1000:.3f}"


def _median(results: Results, key: Key, best: bool = False) -> float | None:
    """Median ns/call of a measured case (its fastest sample if ``best``), else None."""
    res = results.get(key)
    if not isinstance(res, Result):
        return None
    return res.min_ns if best else res.median_ns


def _print_section(section: Section, results: Results) -> None:
    refs = ", ".join(f"{b}: {n}" for b, n in section.ref.items())
    print(f"\n{section.title}\n   x ref = ratio to {refs}; min..max = fastest and slowest sample")
    print(f"   {'case':<44}{'backend':<9}{'µs/call':>9}{'min..max':>17}{'+µs bare':>10}"
          f"{'x ref':>8}")
    for backend, name in section.rows:
        res = results.get((backend, name), "not measured")
        if isinstance(res, str):
            print(f"   {name:<44}{backend:<9}  skipped: {res[:70]}")
            continue
        bare = _median(results, (backend, BARE_SYNC if backend == "sync" else BARE))
        ref = _median(results, (backend, section.ref.get(backend, "")))
        over = f"{(res.median_ns - bare) / 1000:+.3f}" if bare is not None else "-"
        ratio = f"{res.median_ns / ref:.2f}" if ref else "-"
        spread = f"{_us(res.min_ns)}..{_us(res.max_ns)}"
        print(f"   {name:<44}{backend:<9}{_us(res.median_ns):>9}{spread:>17}{over:>10}"
              f"{ratio:>8}")


def _targets(results: Results) -> list[tuple[str, str, str, str]]:
    """(verdict, target, measured, limit) per target of issue 2 (asyncio), judged on medians.

    The measured text also gives the figure from the fastest samples ("best"): on a busy
    machine noise only ever adds time, so a MISS whose best figure passes is worth a rerun.
    """

    def overhead(name: str, best: bool) -> float | None:
        m = _median(results, ("asyncio", name), best)
        bare = _median(results, ("asyncio", BARE), best)
        return None if m is None or bare is None else (m - bare) / 1000

    def vs_timeout(name: str, best: bool) -> float | None:
        m = _median(results, ("asyncio", name), best)
        ref = _median(results, ("asyncio", ASYNCIO_TIMEOUT), best)
        return None if m is None or not ref else m / ref

    def cost(name: str, best: bool) -> float | None:
        m = _median(results, ("asyncio", name), best)
        return None if m is None else m / 1000

    Metric = Callable[[str, bool], float | None]
    specs: list[tuple[str, str, Metric, str, float]] = [
        *[(n, f"{n}: overhead over bare await", overhead, "µs", 1.0) for n in (CMD_NONE, RUN_NONE)],
        *[(n, f"{n} / asyncio.timeout block", vs_timeout, "x", 1.5) for n in (CMD_T, RUN_T)],
        *[(n, f"{n}: cost per call", cost, "µs", 1.5) for n in (OPEN, TRIPPED)],
    ]
    out: list[tuple[str, str, str, str]] = []
    for name, label, metric, unit, limit in specs:
        value, best = metric(name, False), metric(name, True)
        if value is None or best is None:
            out.append(("n/a", label, "not measured", f"<= {limit} ({unit})"))
            continue
        fmt = "{:.3f} µs" if unit == "µs" else "{:.2f}x"
        verdict = "PASS" if value <= limit else "MISS"
        out.append((verdict, label, f"{fmt.format(value)} (best {fmt.format(best)})",
                    f"<= {fmt.format(limit)}"))
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _resilience_version() -> str:
    try:
        import resilience

        resilience.Registry  # noqa: B018 - the benchmark needs the command API
        return str(resilience.__version__)
    except Exception as exc:
        return f"not usable ({type(exc).__name__}: {exc})"


def main(argv: Sequence[str] | None = None) -> None:
    """Measure, then print the machine, one table per section and the targets."""
    parser = argparse.ArgumentParser(prog="python -m bench.commands_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="3 short repeats per case instead of 7 (a smoke run, noisier)")
    args, _ = parser.parse_known_args(argv)  # `python -m bench` passes its args to every bench
    settings = Settings(repeats=3, target_s=0.008) if args.quick else Settings()
    print("== resilience command benchmark ==")
    print(f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} "
          f"{platform.release()}; {platform.python_implementation()} "
          f"{platform.python_version()}")
    versions = {"resilience": _resilience_version(), **_peers.peer_versions()}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"method: median of {settings.repeats} interleaved repeats of ~"
          f"{settings.target_s * 1000:.0f} ms per case, tight loop in one running event loop; "
          "µs per call")
    load_before = _load()
    results = _measure_all(settings)
    print(f"load average before: {load_before}, after: {_load()} (a shared machine is noisy: "
          "compare ratios within one run, rerun on a quiet machine for absolute numbers)")
    for section in _sections():
        _print_section(section, results)
    print("\ntargets (issue 2, asyncio):")
    for verdict, target, measured, limit in _targets(results):
        print(f"   {verdict:<5} {target:<67} {measured:<26} {limit}")
    sync_t = _median(results, ("sync", SYNC_T))
    for ref in (PYBREAKER, EXECUTOR):
        base = _median(results, ("sync", ref))
        if sync_t is not None and base:
            print(f"   info  {SYNC_T} = {sync_t / base:.2f}x {ref}")


if __name__ == "__main__":
    main()
