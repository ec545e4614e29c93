"""What each process of the example runs (a module of its own: spawned children import it)."""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry

import resilience
from resilience import CircuitOpenError, StateChange
from resilience.redis import RedisStore

SLEEP_WINDOW = 1.0
POLL = 0.1


def run(name: str, url: str, ready: Any, healthy: Any, out: Any) -> None:
    """Call the dependency ``dep`` every 20 ms for a few seconds and report what happened.

    ``healthy`` (a shared flag) says whether the dependency answers; process A trips the
    circuit while it is down; the parent brings it back."""
    logging.getLogger("resilience.circuit").setLevel(logging.ERROR)  # we print events ourselves
    lines: list[str] = []
    started = time.monotonic()
    counts = {"ok": 0, "failed": 0, "refused": 0, "trials run here": 0}

    def log(text: str) -> None:
        lines.append(f"[{name} +{time.monotonic() - started:5.2f}s] {text}")

    def on_event(event: object) -> None:
        if isinstance(event, StateChange):
            log(f"circuit {event.old} -> {event.new} ({event.reason})")
            if event.reason == "trial":
                counts["trials run here"] += 1

    with RedisStore(url, prefix="example", poll_interval=POLL,
                    metrics_registry=CollectorRegistry()) as store:
        registry = resilience.Registry(metrics_registry=CollectorRegistry(), store=store)
        registry.subscribe(on_event)
        registry.configure_command("dep", request_volume_threshold=5, sleep_window=SLEEP_WINDOW,
                                   timeout=None)

        def dependency() -> str:
            if not healthy.value:
                raise ConnectionError("dependency down")
            return "ok"

        registry.run_sync("dep", lambda: "warm-up")  # the circuit exists: in the shared view
        time.sleep(3 * POLL)
        ready.wait()
        started = time.monotonic()
        deadline = time.monotonic() + 3 * SLEEP_WINDOW
        while time.monotonic() < deadline:
            if name == "B" and time.monotonic() - started < 0.5:
                time.sleep(0.02)  # B stays quiet while A meets the outage: it sees no failure
                continue
            try:
                registry.run_sync("dep", dependency)
                counts["ok"] += 1
            except CircuitOpenError:
                counts["refused"] += 1
            except ConnectionError:
                counts["failed"] += 1
            time.sleep(0.02)
        log("calls: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        log(f"circuit at the end: {registry.get_circuit('dep').state}")
    out.put((name, lines))
