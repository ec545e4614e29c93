"""The demo's flaky HTTPS upstream: a phase schedule and a tiny HTTP/1.1 responder.

The upstream is served by :func:`resilience.tls.serve_tls`; how it misbehaves depends on the
phase of the demo (healthy -> degraded -> down -> recovered), so the client side can show the
circuit breaker opening during the outage and closing after recovery.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass

import anyio
import anyio.abc

__all__ = ["PHASES", "Phase", "Schedule", "Upstream"]


@dataclass(frozen=True, slots=True)
class Phase:
    """One stretch of the demo: its share of the run and how the upstream behaves in it."""

    name: str
    share: float
    error_rate: float  # fraction of requests answered 503
    slow_rate: float  # fraction answered only after ``slow_delay`` (past the client's timeout)
    description: str

    def __post_init__(self) -> None:
        if not 0 < self.share <= 1:
            raise ValueError(f"phase {self.name!r}: share must be in (0, 1], got {self.share!r}")
        for field in ("error_rate", "slow_rate"):
            value = getattr(self, field)
            if not 0 <= value <= 1:
                raise ValueError(f"phase {self.name!r}: {field} must be in [0, 1], got {value!r}")


PHASES: tuple[Phase, ...] = (
    Phase("healthy", 0.20, 0.00, 0.00, "fast, correct replies"),
    Phase("degraded", 0.25, 0.10, 0.15, "10% errors, 15% slow replies"),
    Phase("down", 0.25, 1.00, 0.00, "every request fails (503)"),
    Phase("recovered", 0.30, 0.00, 0.00, "healthy again"),
)


class Schedule:
    """Maps time since the start of the demo to a phase; phase lengths scale with ``duration``."""

    def __init__(self, duration: float, phases: tuple[Phase, ...] = PHASES) -> None:
        if not duration > 0:
            raise ValueError(f"duration must be > 0 seconds, got {duration!r}")
        self.duration = duration
        self.phases = phases
        self.start = time.monotonic()
        total = sum(p.share for p in phases)
        bounds: list[tuple[float, float]] = []
        t = 0.0
        for p in phases:
            length = duration * p.share / total
            bounds.append((t, t + length))
            t += length
        self.bounds = tuple(bounds)

    def restart(self) -> None:
        """Start the story now (call once everything is up)."""
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def phase_at(self, elapsed: float) -> Phase:
        for phase, (_, end) in zip(self.phases, self.bounds, strict=True):
            if elapsed < end:
                return phase
        return self.phases[-1]

    def window(self, name: str) -> tuple[float, float]:
        """(start, end) in seconds since the start of the named phase."""
        for phase, bounds in zip(self.phases, self.bounds, strict=True):
            if phase.name == name:
                return bounds
        raise KeyError(f"no phase named {name!r}")

    def current(self) -> Phase:
        return self.phase_at(self.elapsed())


class Upstream:
    """A tiny keep-alive HTTP/1.1 responder for ``GET /quote``, misbehaving per the schedule."""

    def __init__(self, schedule: Schedule, *, slow_delay: float, rng: random.Random) -> None:
        self.schedule = schedule
        self.slow_delay = slow_delay
        self.rng = rng
        self.served = 0

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        """Serve requests on one connection until the client goes away."""
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    buffer += await stream.receive()
                    if len(buffer) > 16_384:
                        return  # not a client of ours
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                await stream.send(await self._reply(head))
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return

    async def _reply(self, head: bytes) -> bytes:
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        if not request_line.startswith("GET /quote"):
            return _response(404, {"error": f"no such resource: {request_line!r}"})
        phase = self.schedule.current()
        roll = self.rng.random()
        if roll < phase.error_rate:
            await anyio.sleep(0.002)
            return _response(503, {"error": f"upstream {phase.name}"})
        if roll < phase.error_rate + phase.slow_rate:
            await anyio.sleep(self.slow_delay)
        else:
            await anyio.sleep(self.rng.uniform(0.002, 0.02))
        self.served += 1
        return _response(200, {"quote": 100 + self.served % 50, "seq": self.served})


def _response(status: int, payload: dict[str, object]) -> bytes:
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    body = json.dumps(payload).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode() + body
