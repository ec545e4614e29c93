"""Command benchmark: the cost of a resilience command next to bare awaits and its peers.

Run with ``python -m bench.commands_bench [--quick]`` (or ``make bench``). Everything runs in
one process; each figure is the median of interleaved repeats of a tight loop of calls inside
one running event loop, in nanoseconds (printed as µs) per call. The targets (PASS/MISS):

* success path (breaker + concurrency limit + metrics, ``timeout=None``): <= +0.5 µs over a
  bare ``await f()`` (asyncio and trio), and below every breaker-only peer (asyncio);
* with ``timeout=1.0``: <= 0.75x a bare ``asyncio.timeout`` block;
* a rejected call (a checkpoint: a refused call yields once): <= one bare
  ``anyio.lowlevel.checkpoint()`` + 1.0 µs, and below interlock-cb's rejection;
* sync ``@command`` with ``timeout=None`` (runs in the caller's thread): <= +3 µs over a
  bare call (shown next to pybreaker);
* scale: ``run(name, fn)`` over 10,000 names <= 1.5x a decorated call over 10,000 names;
  10,000 names <= 2.5x one name; failure path and ``statistics()`` at 1,000 buckets <= 1.5x
  10 buckets; sparse calls (each one rolls the window, fake clock) <= 2x steady calls.

Numbers from a shared or busy machine are noisy: compare within one run, rerun on a quiet one.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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
    cpu_model,
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
CHECKPOINT = _peers.CHECKPOINT
TRIO_TIMEOUT = "trio.fail_after(1.0) block"


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


# --- scale cases: how the cost grows with names and buckets -----------------------------------

NAMES = 10_000
SCALE_RUN = "run(name, fn), 10,000 names in rotation"
SCALE_CMD = "@command, 10,000 names in rotation"
SCALE_CMD_1 = "@command, 1 name (same rotation loop)"
FAIL_10 = "failure path, buckets=10"
FAIL_1000 = "failure path, buckets=1000"
STATS_10 = "get_circuit(n).statistics(), 10 live buckets"
STATS_1000 = "get_circuit(n).statistics(), 1000 live buckets"
STEADY_10 = "steady calls (fake clock), buckets=10"
SPARSE_10 = "sparse calls (each rolls), buckets=10"
STEADY_1000 = "steady calls (fake clock), buckets=1000"
SPARSE_1000 = "sparse calls (each rolls), buckets=1000"


def _many_names_registry(names: int) -> resilience.Registry:
    """A registry whose private CollectorRegistry accepts ``names`` names (and some more)."""
    from prometheus_client import CollectorRegistry

    import resilience
    import resilience.metrics

    metrics = CollectorRegistry()
    resilience.metrics.set_max_names(max(20_000, 2 * names), registry=metrics)
    return resilience.Registry(metrics_registry=metrics)


def _rotation_decorated(names: int, distinct: bool = True) -> Callable[[], Awaitable[AsyncLoop]]:
    """A loop over ``names`` decorated functions (``distinct``), or over one, repeated."""

    async def setup() -> AsyncLoop:
        reg = _many_names_registry(names)
        if distinct:
            calls = [reg.command(f"bench-{i}", timeout=None)(_peers.work) for i in range(names)]
        else:
            calls = [reg.command("bench", timeout=None)(_peers.work)] * names
        for call in calls:  # every name once: created, warm, and checked
            if await call() != 1:
                raise RuntimeError("@command did not return the function's result")
        _check_successes(reg, "bench-0" if distinct else "bench", 1 if distinct else names)
        rotation = itertools.cycle(calls)

        async def loop(n: int) -> None:
            for call in itertools.islice(rotation, n):
                await call()

        return loop

    return setup


def _rotation_run(names: int) -> Callable[[], Awaitable[AsyncLoop]]:
    """``await run(name, work)`` over ``names`` names (one function, cached per name)."""

    async def setup() -> AsyncLoop:
        reg = _many_names_registry(names)
        run, work = reg.run, _peers.work
        all_names = [f"bench-{i}" for i in range(names)]
        for name in all_names:
            reg.configure_command(name, timeout=None)
            if await run(name, work) != 1:
                raise RuntimeError("registry.run did not return the function's result")
        _check_successes(reg, all_names[-1], 1)
        rotation = itertools.cycle(all_names)

        async def loop(n: int) -> None:
            for name in itertools.islice(rotation, n):
                await run(name, work)

        return loop

    return setup


def _failing(buckets: int) -> Callable[[], Awaitable[AsyncLoop]]:
    """Every call fails (caught); the circuit never trips (volume threshold out of reach)."""

    async def setup() -> AsyncLoop:
        reg = _registry()
        call = reg.command("bench", timeout=None, buckets=buckets,
                           request_volume_threshold=10**12)(_peers.flaky)
        loop = _peers.open_circuit_loop(call, _peers.Boom)
        await loop(3)
        stats = reg.get_circuit("bench").statistics()
        if stats.failures != 3 or reg.get_circuit("bench").state.value != "closed":
            raise RuntimeError(f"failure path: expected 3 failures, closed; got {stats}")
        return loop

    return setup


class FakeClock:
    """A registry clock the benchmark moves by hand (seconds)."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _statistics(buckets: int) -> Callable[[], SyncLoop]:
    """``get_circuit(name).statistics()`` with every bucket of the window holding a count."""

    def setup() -> SyncLoop:
        from prometheus_client import CollectorRegistry

        import resilience

        clock = FakeClock()
        reg = resilience.Registry(metrics_registry=CollectorRegistry(), clock=clock)
        width = 10.0 / buckets
        call = reg.command("bench", timeout=None, buckets=buckets, rolling_window=10.0)(
            _peers.work_sync)
        start = (clock.now // width + 1) * width  # the start of a bucket
        for b in range(buckets):
            clock.now = start + (b + 0.5) * width
            call()
        got = reg.get_circuit("bench").statistics().successes
        if got != buckets:
            raise RuntimeError(f"statistics: expected {buckets} live successes, got {got}")
        get_circuit = reg.get_circuit

        def loop(n: int) -> None:
            for _ in range(n):
                get_circuit("bench").statistics()

        return loop

    return setup


def _paced(buckets: int, sparse: bool) -> Callable[[], Awaitable[AsyncLoop]]:
    """Successes on a fake clock: steady (one bucket) or sparse (> a bucket apart: each call
    rolls the window and takes the full health path)."""

    async def setup() -> AsyncLoop:
        from prometheus_client import CollectorRegistry

        import resilience

        clock = FakeClock()
        reg = resilience.Registry(metrics_registry=CollectorRegistry(), clock=clock)
        call = reg.command("bench", timeout=None, buckets=buckets, rolling_window=10.0)(
            _peers.work)
        step = 1.5 * 10.0 / buckets if sparse else 0.0
        for _ in range(30):
            clock.now += step
            await call()
        stats = reg.get_circuit("bench").statistics()
        expected = 30 if not sparse else min(30, int(10.0 / step) + 1)
        if not sparse and stats.successes != expected:
            raise RuntimeError(f"steady calls: expected {expected} successes, got {stats}")
        if sparse and not 0 < stats.successes <= expected:
            raise RuntimeError(f"sparse calls: expected <= {expected} live successes, got {stats}")

        async def loop(n: int) -> None:
            for _ in range(n):
                clock.now += step
                await call()

        return loop

    return setup


def _scale_async_cases(names: int = NAMES) -> list[AsyncCase]:
    return [
        AsyncCase(SCALE_RUN, _rotation_run(names)),
        AsyncCase(SCALE_CMD, _rotation_decorated(names)),
        AsyncCase(SCALE_CMD_1, _rotation_decorated(names, distinct=False)),
        AsyncCase(FAIL_10, _failing(10)),
        AsyncCase(FAIL_1000, _failing(1000)),
        AsyncCase(STEADY_10, _paced(10, sparse=False)),
        AsyncCase(SPARSE_10, _paced(10, sparse=True)),
        AsyncCase(STEADY_1000, _paced(1000, sparse=False)),
        AsyncCase(SPARSE_1000, _paced(1000, sparse=True)),
    ]


def _scale_sync_cases() -> list[SyncCase]:
    return [SyncCase(STATS_10, _statistics(10)), SyncCase(STATS_1000, _statistics(1000))]


# --- running ----------------------------------------------------------------------------------


def _measure_all(settings: Settings, scale: bool = True) -> Results:
    """Main cases (asyncio, trio, sync), then the scale cases in runs of their own (their
    10,000-name registries stay out of the main cases' heap)."""
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
    if scale:
        for name, res in asyncio.run(
                measure_async("asyncio", _scale_async_cases(), settings)).items():
            results["asyncio", name] = res
        for name, res in measure_sync(_scale_sync_cases(), settings).items():
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
    opened = [("asyncio", p.open_label) for p in _peers.PEERS if p.breaker_only]
    bare = {"asyncio": BARE, "trio": BARE}
    checkpoint = {"asyncio": CHECKPOINT, "trio": CHECKPOINT}
    return [
        Section("1. baseline: bare `await f()` (f a trivial async def), one checkpoint",
                [(b, n) for b in ("asyncio", "trio") for n in (BARE, CHECKPOINT)], bare),
        Section("2. success path, timeout=None (breaker + concurrency limit + metrics)",
                [(b, n) for b in ("asyncio", "trio") for n in (BARE, CMD_NONE, RUN_NONE)],
                bare),
        Section("3. success path with a timeout of 1.0 s",
                [("asyncio", ASYNCIO_TIMEOUT), ("asyncio", "anyio.fail_after(1.0) block"),
                 ("asyncio", CMD_T), ("asyncio", RUN_T),
                 *timed,
                 ("trio", TRIO_TIMEOUT), ("trio", "anyio.fail_after(1.0) block"),
                 ("trio", CMD_T), ("trio", RUN_T)],
                {"asyncio": ASYNCIO_TIMEOUT, "trio": TRIO_TIMEOUT}),
        Section("4. a call rejected by an open circuit (caught; a refusal yields once)",
                [("asyncio", CHECKPOINT), ("asyncio", OPEN), ("asyncio", TRIPPED), *opened,
                 ("trio", CHECKPOINT), ("trio", OPEN), ("trio", TRIPPED)], checkpoint),
        Section("5. peers and raw primitives (asyncio), same run",
                [("asyncio", BARE), ("asyncio", ASYNCIO_TIMEOUT),
                 ("asyncio", "anyio.fail_after(1.0) block"),
                 ("asyncio", "asyncio.Semaphore(10) block"),
                 ("asyncio", "asyncio Semaphore + timeout (hand-rolled)"), *peers,
                 ("asyncio", CMD_NONE), ("asyncio", CMD_T)], {"asyncio": CMD_NONE}),
        Section("6. sync path: plain def called from sync code (timeout=None: caller's thread)",
                [("sync", n) for n in (BARE_SYNC, PYBREAKER, EXECUTOR, SYNC_NONE, SYNC_T,
                                       RUN_SYNC)], {"sync": PYBREAKER}),
        Section("7. scale: names in rotation (asyncio, timeout=None)",
                [("asyncio", n) for n in (BARE, SCALE_CMD_1, SCALE_CMD, SCALE_RUN)],
                {"asyncio": SCALE_CMD_1}),
        Section("8. scale: buckets (asyncio; statistics() from sync code)",
                [*[("asyncio", n) for n in (BARE, FAIL_10, FAIL_1000, STEADY_10, SPARSE_10,
                                            STEADY_1000, SPARSE_1000)],
                 ("sync", STATS_10), ("sync", STATS_1000)],
                {"asyncio": STEADY_10, "sync": STATS_10}),
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
    print(f"   {'case':<48}{'backend':<9}{'µs/call':>9}{'min..max':>17}{'+µs bare':>10}"
          f"{'x ref':>8}")
    for backend, name in section.rows:
        res = results.get((backend, name), "not measured")
        if isinstance(res, str):
            print(f"   {name:<48}{backend:<9}  skipped: {res[:70]}")
            continue
        bare = _median(results, (backend, BARE_SYNC if backend == "sync" else BARE))
        ref = _median(results, (backend, section.ref.get(backend, "")))
        over = f"{(res.median_ns - bare) / 1000:+.3f}" if bare is not None else "-"
        ratio = f"{res.median_ns / ref:.2f}" if ref else "-"
        spread = f"{_us(res.min_ns)}..{_us(res.max_ns)}"
        print(f"   {name:<48}{backend:<9}{_us(res.median_ns):>9}{spread:>17}{over:>10}"
              f"{ratio:>8}")


@dataclass(frozen=True)
class Target:
    """``case`` compared with ``ref`` (both ``(backend, name)``): ``over`` in µs, or ``ratio``
    (``limit`` inclusive unless ``strict``)."""

    label: str
    case: Key
    ref: Key
    mode: str  # "over" | "ratio"
    limit: float
    strict: bool = False

    def value(self, results: Results, best: bool) -> float | None:
        m, r = _median(results, self.case, best), _median(results, self.ref, best)
        if m is None or not r:
            return None
        return (m - r) / 1000 if self.mode == "over" else m / r


def _fastest(results: Results, keys: Sequence[Key]) -> Key:
    measured = [k for k in keys if _median(results, k) is not None]
    return min(measured, key=lambda k: _median(results, k) or 0.0) if measured else keys[0]


def _target_list(results: Results) -> list[Target]:
    breakers = [("asyncio", p.label) for p in _peers.PEERS if p.breaker_only]
    interlock_open = ("asyncio", "interlock-cb rejected (open)")
    out: list[Target] = []
    for b in ("asyncio", "trio"):
        out += [Target(f"{b}: {n} - bare await", (b, n), (b, BARE), "over", 0.5)
                for n in (CMD_NONE, RUN_NONE)]
    fastest = _fastest(results, breakers)
    out.append(Target(f"{CMD_NONE} / fastest breaker-only peer ({fastest[1]})",
                      ("asyncio", CMD_NONE), fastest, "ratio", 1.0, strict=True))
    out += [Target(f"{n} / asyncio.timeout block", ("asyncio", n), ("asyncio", ASYNCIO_TIMEOUT),
                   "ratio", 0.75) for n in (CMD_T, RUN_T)]
    for b in ("asyncio", "trio"):
        out += [Target(f"{b}: {n} - bare checkpoint", (b, n), (b, CHECKPOINT), "over", 1.0)
                for n in (OPEN, TRIPPED)]
    out += [Target(f"{n} / interlock-cb rejected (open)", ("asyncio", n), interlock_open,
                   "ratio", 1.0, strict=True) for n in (OPEN, TRIPPED)]
    out.append(Target(f"{SYNC_NONE} - bare f()", ("sync", SYNC_NONE), ("sync", BARE_SYNC),
                      "over", 3.0))
    out += [
        Target(f"scale: {SCALE_RUN} / {SCALE_CMD}", ("asyncio", SCALE_RUN),
               ("asyncio", SCALE_CMD), "ratio", 1.5),
        Target(f"scale: {SCALE_CMD} / 1 name", ("asyncio", SCALE_CMD), ("asyncio", SCALE_CMD_1),
               "ratio", 2.5),
        Target("scale: failure path, buckets 1000 / 10", ("asyncio", FAIL_1000),
               ("asyncio", FAIL_10), "ratio", 1.5),
        Target("scale: statistics(), buckets 1000 / 10", ("sync", STATS_1000), ("sync", STATS_10),
               "ratio", 1.5),
        Target("scale: sparse / steady calls, buckets=10", ("asyncio", SPARSE_10),
               ("asyncio", STEADY_10), "ratio", 2.0),
        Target("scale: sparse / steady calls, buckets=1000", ("asyncio", SPARSE_1000),
               ("asyncio", STEADY_1000), "ratio", 2.0),
    ]
    return out


def _targets(results: Results) -> list[tuple[str, str, str, str]]:
    """(verdict, target, measured, limit) per target, judged on medians.

    The measured text also gives the figure from the fastest samples ("best"): on a busy
    machine noise only ever adds time, so a MISS whose best figure passes is worth a rerun.
    """
    out: list[tuple[str, str, str, str]] = []
    for t in _target_list(results):
        value, best = t.value(results, False), t.value(results, True)
        fmt = "{:+.3f} µs" if t.mode == "over" else "{:.2f}x"
        limit = f"{'<' if t.strict else '<='} {fmt.format(t.limit)}"
        if value is None or best is None:
            out.append(("n/a", t.label, "not measured", limit))
            continue
        ok = value < t.limit if t.strict else value <= t.limit
        out.append(("PASS" if ok else "MISS", t.label,
                    f"{fmt.format(value)} (best {fmt.format(best)})", limit))
    return out


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
                        help="3 short repeats per case instead of 11 (a smoke run, noisier)")
    args, _ = parser.parse_known_args(argv)  # `python -m bench` passes its args to every bench
    settings = Settings(repeats=3, target_s=0.008) if args.quick else Settings()
    print("== resilience command benchmark ==")
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} "
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
    print("\ntargets (judged on medians; 'best' = from the fastest samples):")
    for verdict, target, measured, limit in _targets(results):
        print(f"   {verdict:<5} {target:<86} {measured:<30} {limit}")
    for n in (CMD_T, RUN_T):  # no target on trio: the figure, for the record
        m, ref = _median(results, ("trio", n)), _median(results, ("trio", TRIO_TIMEOUT))
        if m is not None and ref:
            print(f"   info  trio: {n} = {m / ref:.2f}x {TRIO_TIMEOUT}")
    sync_none = _median(results, ("sync", SYNC_NONE))
    for ref in (PYBREAKER, EXECUTOR):
        base = _median(results, ("sync", ref))
        if sync_none is not None and base:
            print(f"   info  {SYNC_NONE} = {sync_none / base:.2f}x {ref}")

if __name__ == "__main__":
    main()
