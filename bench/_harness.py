"""Timing harness for the benchmarks: median of interleaved repeats, ns per call.

Every case is a *loop*: a callable that performs ``n`` calls of the thing measured in a tight
loop. Cases of one backend are built and run inside one running event loop, and their repeats
are interleaved (round-robin, rotating the order each round) so that the noise of a shared
machine spreads over all cases instead of landing on one. Between chunks of calls the harness
yields to the event loop (outside the timed region), as a real program would: otherwise timer
handles of cancelled deadlines pile up in a loop that never turns.
"""

from __future__ import annotations

import gc
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
import anyio.lowlevel

__all__ = [
    "AsyncCase",
    "Result",
    "Settings",
    "SyncCase",
    "cpu_model",
    "measure_async",
    "measure_sync",
]

AsyncLoop = Callable[[int], Awaitable[None]]
SyncLoop = Callable[[int], None]

#: Calls per timed chunk; the harness yields to the event loop between chunks.
CHUNK = 256


@dataclass(frozen=True)
class Settings:
    """How long to measure: ``repeats`` samples of about ``target_s`` seconds each."""

    repeats: int = 11
    target_s: float = 0.025

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats!r}")
        if not self.target_s > 0:
            raise ValueError(f"target_s must be > 0, got {self.target_s!r}")


@dataclass(frozen=True)
class AsyncCase:
    """``setup`` runs inside the event loop, checks the case once and returns its loop."""

    name: str
    setup: Callable[[], Awaitable[AsyncLoop]]


@dataclass(frozen=True)
class SyncCase:
    """``setup`` runs in the main thread (no event loop), checks once, returns its loop."""

    name: str
    setup: Callable[[], SyncLoop]


@dataclass(frozen=True)
class Result:
    """Nanoseconds per call over the repeats: median, fastest and slowest sample."""

    name: str
    backend: str
    median_ns: float
    min_ns: float
    max_ns: float
    calls: int


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


def _chunks_for(chunk_ns: float, settings: Settings) -> int:
    return max(1, round(settings.target_s * 1e9 / max(chunk_ns, 1.0)))


async def measure_async(
    backend: str, cases: Sequence[AsyncCase], settings: Settings
) -> dict[str, Result | str]:
    """Run ``cases`` in the current event loop; a case that fails gives its error text."""
    out: dict[str, Result | str] = {}
    loops: dict[str, AsyncLoop] = {}
    chunks: dict[str, int] = {}
    for case in cases:
        try:
            loop = await case.setup()
            await loop(CHUNK)  # warm-up (and a second check that the loop runs)
            t0 = time.perf_counter_ns()
            await loop(CHUNK)
            chunks[case.name] = _chunks_for(time.perf_counter_ns() - t0, settings)
        except Exception as exc:  # a peer that cannot run is reported, not fatal
            out[case.name] = _describe(exc)
            continue
        loops[case.name] = loop
        await anyio.lowlevel.checkpoint()
    samples: dict[str, list[float]] = {name: [] for name in loops}
    names = list(loops)
    for r in range(settings.repeats):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            loop, total = loops[name], 0
            gc.collect()
            for _ in range(chunks[name]):
                t0 = time.perf_counter_ns()
                await loop(CHUNK)
                total += time.perf_counter_ns() - t0
                await anyio.lowlevel.checkpoint()
            samples[name].append(total / (chunks[name] * CHUNK))
    for name, s in samples.items():
        out[name] = Result(name, backend, statistics.median(s), min(s), max(s),
                           chunks[name] * CHUNK)
    return out


def measure_sync(cases: Sequence[SyncCase], settings: Settings) -> dict[str, Result | str]:
    """Like :func:`measure_async`, for plain functions called from sync code."""
    out: dict[str, Result | str] = {}
    loops: dict[str, SyncLoop] = {}
    chunks: dict[str, int] = {}
    for case in cases:
        try:
            loop = case.setup()
            loop(CHUNK)
            t0 = time.perf_counter_ns()
            loop(CHUNK)
            chunks[case.name] = _chunks_for(time.perf_counter_ns() - t0, settings)
        except Exception as exc:
            out[case.name] = _describe(exc)
            continue
        loops[case.name] = loop
    samples: dict[str, list[float]] = {name: [] for name in loops}
    names = list(loops)
    for r in range(settings.repeats):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            gc.collect()
            t0 = time.perf_counter_ns()
            loops[name](chunks[name] * CHUNK)
            samples[name].append((time.perf_counter_ns() - t0) / (chunks[name] * CHUNK))
    for name, s in samples.items():
        out[name] = Result(name, "sync", statistics.median(s), min(s), max(s),
                           chunks[name] * CHUNK)
    return out


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows: for the report header."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
