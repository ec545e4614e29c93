"""``make demo``: every part of resilience working together on loopback, in about 30 seconds.

A flaky HTTPS upstream (served by :func:`resilience.tls.serve_tls`) goes healthy -> degraded
-> down -> recovered. Many tasks call it through ``@command("upstream")`` (timeout, bulkhead,
breaker, retries, fallback to the last good answer) and a :class:`~resilience.WorkerPool`
processes a stream of jobs that call it too. ``/metrics`` is served the whole time; a live view
shows the metrics once a second; the run ends with checks that the story happened (exit 1 if not).

Run ``python -m examples.demo --help`` from the repository's root (or ``make demo``). Ctrl-C
stops it cleanly (exit status 130).
"""

from __future__ import annotations

import argparse
import contextvars
import math
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TextIO

import anyio
import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from resilience import Retry, RetryScheduled, WorkerPool, command, get_circuit, subscribe, tls
from resilience.metrics import CIRCUIT_STATE, COMMAND_CALLS, start_metrics_server

from .certs import write_certificates
from .story import Reply, Story, reason
from .upstream import Schedule, Upstream
from .view import LiveView, Tick, read_sample

__all__ = ["Options", "main"]

TIMEOUT = 0.25  # the command's deadline; the upstream's slow replies take SLOW_DELAY
SLOW_DELAY = 0.6
MAX_CONCURRENT = 10
POOL_WORKERS = 4
POOL_QUEUE = 32
JOBS_PER_SECOND = 15.0
STOP_GRACE = 2.0  # after Ctrl-C: how long running calls and jobs may take to finish


@dataclass(frozen=True, slots=True)
class Options:
    """Command-line options of the demo, validated."""

    duration: float = 30.0
    backend: str = "asyncio"
    plain: bool = False
    color: bool = True
    callers: int = 10
    metrics_port: int = 0

    def __post_init__(self) -> None:
        if not 4 <= self.duration < math.inf:
            raise ValueError(f"--duration must be >= 4 seconds (finite), got {self.duration!r}")
        if self.backend not in ("asyncio", "trio"):
            raise ValueError(f"--backend must be 'asyncio' or 'trio', got {self.backend!r}")
        if self.callers < 1:
            raise ValueError(f"--callers must be >= 1, got {self.callers!r}")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"--metrics-port must be in 0..65535, got {self.metrics_port!r}")

    @property
    def sleep_window(self) -> float:
        return min(max(self.duration / 15, 0.5), 2.0)

    @property
    def rolling_window(self) -> float:
        return min(max(self.duration / 6, 1.0), 5.0)


def _make_fetch(
    http: httpx.AsyncClient, story: Story, opts: Options
) -> Callable[[], Awaitable[Reply]]:
    """The ``upstream`` command: GET /quote, retried twice, falling back to the last good
    quote. Retries are counted per phase, and per call (a task-local counter that the
    ``RetryScheduled`` subscriber bumps: events arrive in the task that retries)."""
    last_good = [Reply(quote=0, live=False)]
    retries_of_call: contextvars.ContextVar[list[int]] = contextvars.ContextVar("retries")

    def on_event(event: object) -> None:
        if isinstance(event, RetryScheduled) and event.command == "upstream":
            story.retries[story.schedule.current().name] += 1
            counter = retries_of_call.get(None)
            if counter is not None:
                counter[0] += 1

    subscribe(on_event)

    def fallback(exc: BaseException) -> Reply:
        story.fallback_reasons[reason(exc)] += 1
        return Reply(last_good[0].quote, live=False)

    @command(
        "upstream",
        timeout=TIMEOUT,
        max_concurrent_requests=MAX_CONCURRENT,
        request_volume_threshold=20,
        error_percent_threshold=50,
        sleep_window=opts.sleep_window,
        rolling_window=opts.rolling_window,
        # each retry goes through the circuit: once it opens, retries stop at once
        retry=Retry(attempts=3, backoff=0.02, max_backoff=0.2, jitter=0.5),
        fallback=fallback,
    )
    async def fetch() -> Reply:
        response = await http.get("/quote")
        response.raise_for_status()
        reply = Reply(quote=int(response.json()["quote"]), live=True)
        last_good[0] = reply
        return reply

    async def call() -> Reply:
        phase = story.schedule.current().name
        counter = [0]
        retries_of_call.set(counter)
        try:
            reply = await fetch()
        except Exception as exc:  # the story says callers never see one
            story.errors[reason(exc)] += 1
            return Reply(quote=0, live=False)
        story.answer(phase, reply, retried=counter[0] > 0)
        return reply

    return call


async def _stopped(stop: anyio.Event, delay: float) -> bool:
    """Wait ``delay`` seconds or until ``stop``; true when stopped."""
    with anyio.move_on_after(delay):
        await stop.wait()
    return stop.is_set()


async def _caller(call: Callable[[], Awaitable[Reply]], stop: anyio.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        await call()
        await _stopped(stop, rng.uniform(0.02, 0.06))


async def _jobs(call: Callable[[], Awaitable[Reply]], story: Story, stop: anyio.Event) -> None:
    """A steady stream of jobs through a worker pool; a slow upstream makes the queue grow."""
    rng = random.Random(7)

    async def job(n: int) -> int:
        total = 0
        for _ in range(3):  # price three items: a slow upstream makes slow jobs
            total += (await call()).quote
        await anyio.sleep(rng.uniform(0.06, 0.18))
        return total + n

    async def stream() -> AsyncIterator[int]:
        n = 0
        while not await _stopped(stop, 1 / JOBS_PER_SECOND):
            yield n
            n += 1

    async with WorkerPool(workers=POOL_WORKERS, queue_size=POOL_QUEUE, name="jobs") as pool:
        try:
            async for _ in pool.map(job, stream()):
                story.jobs_done += 1
        except Exception as exc:
            story.job_failures.append(repr(exc))


async def _watch(story: Story, view: LiveView, stop: anyio.Event) -> None:
    """Poll the circuit's state and the phase; report every change as an event."""
    circuit = get_circuit("upstream")
    state, phase = "closed", ""
    while not await _stopped(stop, 0.01):
        elapsed = story.schedule.elapsed()
        now_phase = story.schedule.phase_at(elapsed)
        if now_phase.name != phase:
            phase = now_phase.name
            view.event(f"{elapsed:5.1f}s upstream is {phase}: {now_phase.description}")
        now = circuit.state.value
        if now == "open":
            story.open_seen.add(phase)
        if now != state:
            story.transitions.append((elapsed, now, phase))
            view.event(f"{elapsed:5.1f}s circuit 'upstream': {state} -> {now}")
            state = now
    story.final_state = circuit.state.value


async def _refresh(story: Story, view: LiveView, stop: anyio.Event) -> None:
    """Once a second: read the metrics registry and redraw."""
    prev = read_sample(REGISTRY, time.monotonic())
    while not await _stopped(stop, 1.0):
        new = read_sample(REGISTRY, time.monotonic())
        s = story.schedule
        view.show(s.elapsed(), s.duration, s.current().name, Tick.between(prev, new))
        prev = new


async def _scrape(url: str) -> dict[str, float]:
    """Read /metrics the way Prometheus would; pick out the series the checks need."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(url)).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("command") != "upstream":
                continue
            if s.name == COMMAND_CALLS:
                found[s.labels["outcome"]] = s.value
            elif s.name == CIRCUIT_STATE:
                found[s.labels["state"]] = s.value
    return found


async def _signals(stop: anyio.Event, scope: anyio.CancelScope, story: Story) -> None:
    """Ctrl-C (or SIGTERM): wind down (no new calls or jobs, running ones finish), but give up
    waiting after ``STOP_GRACE`` seconds or at a second Ctrl-C."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            break
        story.interrupted = True
        stop.set()
        with anyio.move_on_after(STOP_GRACE):
            async for _ in signals:
                break
    scope.cancel()


def _header(opts: Options, schedule: Schedule, port: int, metrics_url: str, out: TextIO) -> None:
    phases = " -> ".join(
        f"{p.name} ({end - start:.1f}s)" for p, (start, end) in zip(
            schedule.phases, schedule.bounds, strict=True
        )
    )
    out.write(
        f"resilience demo on {opts.backend}, {opts.duration:g}s: {phases}\n"
        f"  upstream  https://127.0.0.1:{port}/quote (mutual TLS, throwaway CA made at start)\n"
        f"  command   'upstream': timeout {TIMEOUT * 1000:.0f}ms, {MAX_CONCURRENT} concurrent, "
        f"opens at >= 50% errors over >= 20 calls ({opts.rolling_window:g}s window), "
        f"sleep window {opts.sleep_window:g}s, fallback: last good quote\n"
        f"  pool      'jobs': {POOL_WORKERS} workers, queue {POOL_QUEUE}, "
        f"{JOBS_PER_SECOND:g} jobs/s; {opts.callers} more tasks call the upstream directly\n"
        f"  metrics   {metrics_url}\n"
        f"            curl -s {metrics_url} | grep '^resilience_'\n\n"
    )
    out.flush()


async def _main(opts: Options, out: TextIO) -> int:
    live = not opts.plain and out.isatty()
    view = LiveView(out, live=live, color=opts.color, workers=POOL_WORKERS)
    schedule = Schedule(opts.duration)
    story = Story(schedule)
    with tempfile.TemporaryDirectory(prefix="resilience-demo-") as tmp:
        certs = write_certificates(Path(tmp))
        upstream = Upstream(schedule, slow_delay=SLOW_DELAY, rng=random.Random(42))
        try:
            metrics = start_metrics_server(port=opts.metrics_port)
        except OSError as exc:
            message = f"resilience demo: --metrics-port {opts.metrics_port}: {exc}"
            raise SystemExit(message) from None
        try:
            async with anyio.create_task_group() as tg:
                stop = anyio.Event()
                tg.start_soon(_signals, stop, tg.cancel_scope, story)
                port = await tg.start(partial(
                    tls.serve_tls, upstream.handle, port=0, name="upstream",
                    ssl_context=tls.server_context(
                        certs.server_cert, certs.server_key, client_ca=certs.ca
                    ),
                ))
                async with httpx.AsyncClient(
                    base_url=f"https://127.0.0.1:{port}",
                    verify=tls.client_context(
                        certs.ca, certfile=certs.client_cert, keyfile=certs.client_key
                    ),
                    timeout=10.0,
                    limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
                ) as http:
                    call = _make_fetch(http, story, opts)
                    _header(opts, schedule, port, metrics.url, out)
                    view.start()
                    schedule.restart()
                    async with anyio.create_task_group() as work:
                        work.start_soon(_watch, story, view, stop)
                        work.start_soon(_refresh, story, view, stop)
                        work.start_soon(_jobs, call, story, stop)
                        for i in range(opts.callers):
                            work.start_soon(_caller, call, stop, i)
                        await _stopped(stop, opts.duration)
                        stop.set()
                    view.stop()
                    if not story.interrupted:
                        story.scrape = await _scrape(metrics.url)
                tg.cancel_scope.cancel()
        finally:
            view.stop()
            metrics.close()
    passed = story.report(out, judge=not story.interrupted)
    out.flush()
    if story.interrupted:
        return 130
    return 0 if passed else 1


def _parse(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo",
        description="Every part of resilience working together against a flaky HTTPS upstream.",
    )
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds the story takes (phases scale with it; >= 4; default 30)")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--plain", action="store_true",
                        help="one line per second instead of the live view (default off a TTY)")
    parser.add_argument("--no-color", action="store_true", help="no ANSI colors (or NO_COLOR=1)")
    parser.add_argument("--callers", type=int, default=10,
                        help="tasks calling the upstream directly (default 10)")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="port of /metrics (default: any free port)")
    args = parser.parse_args(argv)
    try:
        return Options(
            duration=args.duration,
            backend=args.backend,
            plain=args.plain,
            color=not args.no_color and not os.environ.get("NO_COLOR"),
            callers=args.callers,
            metrics_port=args.metrics_port,
        )
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; the exit status: 0 the story happened, 1 it did not, 130 interrupted."""
    opts = _parse(argv)
    try:
        return anyio.run(_main, opts, sys.stdout, backend=opts.backend)
    except KeyboardInterrupt:  # Ctrl-C before the signal handler was installed
        if sys.stdout.isatty():
            sys.stdout.write("\x1b[?25h")
        sys.stdout.write("\ninterrupted\n")
        return 130

