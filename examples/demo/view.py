"""The demo's live view: read resilience's Prometheus metrics once a second and show rates.

Everything shown comes from the public metric names (``resilience.metrics``) read from a
``CollectorRegistry``, exactly what a dashboard would see: the view doubles as a check that
the metrics tell the story. A terminal gets a redrawn block (plain ANSI escapes, no curses);
anything else gets one line per second.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

from prometheus_client import CollectorRegistry

from resilience.metrics import (
    CIRCUIT_ERROR_RATIO,
    CIRCUIT_STATE,
    COMMAND_CALLS,
    COMMAND_DURATION,
    COMMAND_FALLBACKS,
    COMMAND_RETRIES,
    POOL_JOBS,
    POOL_QUEUE_DEPTH,
    POOL_WORKERS_BUSY,
    TLS_CONNECTIONS_ACTIVE,
    TLS_HANDSHAKES,
)

__all__ = ["LiveView", "Sample", "Tick", "quantile", "read_sample"]

Key = tuple[str, tuple[tuple[str, str], ...]]

_STATE_COLORS = {"closed": "\x1b[32m", "open": "\x1b[31m", "half_open": "\x1b[33m"}
_RESET, _BOLD, _DIM = "\x1b[0m", "\x1b[1m", "\x1b[2m"


@dataclass(frozen=True, slots=True)
class Sample:
    """Every resilience_* sample of a registry at one moment."""

    time: float
    values: dict[Key, float]

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, lab), v in self.values.items() if n == name and want <= set(lab))

    def label_values(self, name: str, label: str) -> list[str]:
        seen = {dict(lab).get(label) for (n, lab) in self.values if n == name}
        return sorted(v for v in seen if v is not None)

    def buckets(self, name: str, **labels: str) -> list[tuple[float, float]]:
        """Cumulative ``(upper bound, count)`` pairs of a histogram, sorted by bound."""
        want = set(labels.items())
        out: dict[float, float] = {}
        for (n, lab), v in self.values.items():
            if n == name + "_bucket" and want <= set(lab):
                bound = float(dict(lab)["le"])
                out[bound] = out.get(bound, 0.0) + v
        return sorted(out.items())


def read_sample(registry: CollectorRegistry, now: float) -> Sample:
    values: dict[Key, float] = {}
    for family in registry.collect():
        if not family.name.startswith("resilience_"):
            continue
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return Sample(now, values)


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative buckets; ``None`` without data."""
    pairs = list(buckets)
    if not pairs or pairs[-1][1] <= 0:
        return None
    rank = q * pairs[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in pairs:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


@dataclass(frozen=True, slots=True)
class CommandRow:
    name: str
    state: str
    calls: float  # per second, every outcome
    error_percent: float  # rolling window, as the breaker sees it
    p50: float | None
    p99: float | None
    fallbacks: float
    rejected: float
    short_circuited: float
    retries: float = 0.0


@dataclass(frozen=True, slots=True)
class PoolRow:
    name: str
    queue_depth: int
    busy: int
    jobs: float


@dataclass(frozen=True, slots=True)
class Tick:
    """Rates between two samples."""

    commands: tuple[CommandRow, ...]
    pools: tuple[PoolRow, ...]
    handshakes: float
    connections: int

    @classmethod
    def between(cls, old: Sample, new: Sample) -> Tick:
        dt = max(new.time - old.time, 1e-6)

        def rate(name: str, **labels: str) -> float:
            return max(new.total(name, **labels) - old.total(name, **labels), 0.0) / dt

        commands = []
        for cmd in new.label_values(COMMAND_CALLS, "command"):
            states = [
                s for s in ("closed", "open", "half_open")
                if new.total(CIRCUIT_STATE, command=cmd, state=s) >= 1
            ]
            h = COMMAND_DURATION
            delta = [
                (bound, count - dict(old.buckets(h, command=cmd)).get(bound, 0.0))
                for bound, count in new.buckets(h, command=cmd)
            ]
            calls = COMMAND_CALLS
            commands.append(CommandRow(
                name=cmd,
                state="/".join(states) or "?",
                calls=rate(calls, command=cmd),
                error_percent=100 * new.total(CIRCUIT_ERROR_RATIO, command=cmd),
                p50=quantile(0.5, delta),
                p99=quantile(0.99, delta),
                fallbacks=rate(COMMAND_FALLBACKS, command=cmd),
                rejected=rate(calls, command=cmd, outcome="rejected"),
                short_circuited=rate(calls, command=cmd, outcome="short_circuited"),
                retries=rate(COMMAND_RETRIES, command=cmd, outcome="retried"),
            ))
        pools = [
            PoolRow(
                name=p,
                queue_depth=int(new.total(POOL_QUEUE_DEPTH, pool=p)),
                busy=int(new.total(POOL_WORKERS_BUSY, pool=p)),
                jobs=rate(POOL_JOBS, pool=p),
            )
            for p in new.label_values(POOL_JOBS, "pool")
        ]
        return cls(
            commands=tuple(commands),
            pools=tuple(pools),
            handshakes=rate(TLS_HANDSHAKES),
            connections=int(new.total(TLS_CONNECTIONS_ACTIVE)),
        )


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"


class LiveView:
    """Draws ticks and events: a redrawn ANSI block on a terminal, plain lines otherwise."""

    def __init__(self, out: TextIO, *, live: bool, color: bool, workers: int) -> None:
        self.out = out
        self.live = live
        self.color = color and live
        self.workers = workers
        self.events: collections.deque[str] = collections.deque(maxlen=6)
        self._drawn = 0
        self._cursor_hidden = False

    def _paint(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.color else text

    def start(self) -> None:
        if self.live:
            self.out.write("\x1b[?25l")  # hide the cursor while redrawing
            self.out.flush()
            self._cursor_hidden = True

    def stop(self) -> None:
        """Show the cursor again (idempotent)."""
        if self._cursor_hidden:
            self.out.write("\x1b[?25h")
            self.out.flush()
            self._cursor_hidden = False

    def event(self, text: str) -> None:
        """A one-off happening (a circuit transition): kept in the block, or printed at once."""
        if self.live:
            self.events.append(text)
        else:
            self.out.write(f"  * {text}\n")
            self.out.flush()

    def show(self, elapsed: float, duration: float, phase: str, tick: Tick) -> None:
        if self.live:
            self._draw(self._block(elapsed, duration, phase, tick))
        else:
            self.out.write(self._line(elapsed, phase, tick) + "\n")
            self.out.flush()

    def _line(self, elapsed: float, phase: str, tick: Tick) -> str:
        parts = [f"[{elapsed:5.1f}s {phase:<9}]"]
        for c in tick.commands:
            parts.append(
                f"{c.name}: {c.state:<9} {c.calls:6.0f} calls/s  err {c.error_percent:5.1f}%"
                f"  p50 {_ms(c.p50)} p99 {_ms(c.p99)}  fallbacks {c.fallbacks:.0f}/s"
                f"  rejected {c.rejected:.0f}/s  short-circuited {c.short_circuited:.0f}/s"
                f"  retries {c.retries:.0f}/s"
            )
        for p in tick.pools:
            parts.append(
                f"pool {p.name}: queue {p.queue_depth} busy {p.busy}/{self.workers}"
                f" {p.jobs:.0f} jobs/s"
            )
        return " | ".join(parts)

    def _block(self, elapsed: float, duration: float, phase: str, tick: Tick) -> list[str]:
        bar_width = 30
        done = min(int(bar_width * elapsed / duration), bar_width)
        lines = [
            self._paint(_BOLD, f"t = {elapsed:5.1f}s / {duration:.0f}s")
            + f"  [{'#' * done}{'.' * (bar_width - done)}]  upstream phase: "
            + self._paint(_BOLD, phase),
            "",
            self._paint(_DIM, f"{'COMMAND':<10} {'STATE':<10} {'CALLS/S':>8} {'ERR%':>6} "
                        f"{'P50':>7} {'P99':>7} {'FALLBACK/S':>11} {'REJECT/S':>9} "
                        f"{'SHORT/S':>8} {'RETRY/S':>8}"),
        ]
        for c in tick.commands:
            state = self._paint(_STATE_COLORS.get(c.state, ""), f"{c.state:<10}")
            lines.append(
                f"{c.name:<10} {state} {c.calls:8.0f} {c.error_percent:6.1f} {_ms(c.p50):>7} "
                f"{_ms(c.p99):>7} {c.fallbacks:11.0f} {c.rejected:9.0f} {c.short_circuited:8.0f}"
                f" {c.retries:8.0f}"
            )
        lines += ["", self._paint(_DIM, f"{'POOL':<10} {'QUEUE':>6} {'BUSY':>6} {'JOBS/S':>8}")]
        for p in tick.pools:
            lines.append(
                f"{p.name:<10} {p.queue_depth:6d} {f'{p.busy}/{self.workers}':>6} {p.jobs:8.0f}"
            )
        lines += [
            "",
            f"TLS upstream: {tick.connections} connections open, "
            f"{tick.handshakes:.0f} handshakes/s",
            "",
            self._paint(_DIM, "events (Ctrl-C to stop):"),
            *(f"  {e}" for e in self.events),
        ]
        return lines

    def _draw(self, lines: list[str]) -> None:
        buf = []
        if self._drawn > 0:
            buf.append(f"\x1b[{self._drawn}F")  # back to the first line of the last frame
        buf.extend(f"\x1b[2K{line}\n" for line in lines)
        if len(lines) < self._drawn:
            buf.append("\x1b[J")  # clear what is left of a longer previous frame
        self._drawn = len(lines)
        self.out.write("".join(buf))
        self.out.flush()
