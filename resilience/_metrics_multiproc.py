"""prometheus-client's multi-process mode (``PROMETHEUS_MULTIPROC_DIR``) for resilience's metrics.

In that mode prometheus-client's ``MultiProcessCollector`` only reads the per-process mmap files
its own metric values write. Our hot path stays as it is (plain counters under the series lock);
a background thread per process copies the hub totals into prometheus-client's multi-process
values every ``FLUSH_INTERVAL`` seconds, writing only what changed, and once more at exit and
before each scrape served by ``start_metrics_server``. Counters and histograms then add up across
processes; gauges use a live mode (the file of a dead process is dropped by prometheus-client's
``mark_process_dead``): ``livesum`` for in-flight/queue/busy/connection counts, ``livemax`` for
circuit state and error ratio (1 if any live process is in that state; the worst ratio),
``livemin`` for certificate expiry (the soonest).

A forked child (gunicorn ``--preload``) continues from zero: totals inherited from the parent
are subtracted, so nothing is counted twice. The fork hooks hold every series lock across the
fork, so a child never inherits a lock held by a thread that does not exist there.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

from prometheus_client import values

from ._exporter import (
    CALL_OUTCOMES,
    CIRCUIT_STATES,
    FALLBACK_OUTCOMES,
    HANDSHAKE_OUTCOMES,
    JOB_OUTCOMES,
    CommandSnapshot,
    Hub,
    PoolSnapshot,
    TLSSnapshot,
    _families,
    _fmt,
    command_snapshot,
    pool_snapshot,
    tls_snapshot,
)
from ._lock import TokenLock

__all__ = ["FLUSH_INTERVAL", "active", "flush", "hub_created"]

_log = logging.getLogger("resilience.metrics")

#: Seconds between two flushes of this process's totals into the multi-process files.
FLUSH_INTERVAL = 1.0

GAUGE_MODES: dict[str, str] = {
    "resilience_command_in_flight": "livesum",
    "resilience_circuit_state": "livemax",
    "resilience_circuit_error_ratio": "livemax",
    "resilience_pool_queue_depth": "livesum",
    "resilience_pool_workers_busy": "livesum",
    "resilience_tls_connections_active": "livesum",
    "resilience_tls_certificate_expiry_timestamp_seconds": "livemin",
}

# (type, family, sample name, label names, label values) -> value
_Key = tuple[str, str, str, tuple[str, ...], tuple[str, ...]]
_HELP = {m.name: m.documentation for m in _families()}


def active() -> bool:
    """Whether prometheus-client runs in multi-process mode (decided when it was imported)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def _hist(
    out: dict[_Key, float], fam: str, labels: tuple[str, ...], names: tuple[str, ...],
    bounds: tuple[float, ...], counts: list[int], total: float,
) -> None:
    les = [_fmt(b) for b in bounds] + ["+Inf"]  # read back through float(): any spelling
    for le, n in zip(les, counts, strict=True):  # per bucket, not cumulative: files add up
        k: _Key = ("histogram", fam, fam + "_bucket", (*labels, "le"), (*names, le))
        out[k] = out.get(k, 0) + n
    k = ("histogram", fam, fam + "_sum", labels, names)
    out[k] = out.get(k, 0) + total


def _counters(out: dict[_Key, float], fam: str, label: str, name: str,
              outcomes: tuple[str, ...], counts: list[int]) -> None:
    for outcome, n in zip(outcomes, counts, strict=True):
        k: _Key = ("counter", fam, fam + "_total", (label, "outcome"), (name, outcome))
        out[k] = out.get(k, 0) + n


def _gauge(out: dict[_Key, float], fam: str, labels: tuple[str, ...], names: tuple[str, ...],
           value: float) -> None:
    out[("gauge", fam, fam, labels, names)] = value


_Group = tuple[str, str]  # (kind, name): one name's series in every hub of this process
_Snapshot = CommandSnapshot | PoolSnapshot | TLSSnapshot


def snapshots() -> dict[_Group, list[tuple[Any, _Snapshot]]]:
    """(series, snapshot) of every name, all hubs (registries are moot across processes)."""
    out: dict[_Group, list[tuple[Any, _Snapshot]]] = {}
    for hub in Hub.all():
        commands, pools, servers = hub.series()
        for c in commands:
            out.setdefault(("command", c.name), []).append((c, command_snapshot(c)))
        for p in pools:
            out.setdefault(("pool", p.name), []).append((p, pool_snapshot(p)))
        for t in servers:
            out.setdefault(("server", t.name), []).append((t, tls_snapshot(t)))
    return out


def _values(series: Any, snap: _Snapshot, out: dict[_Key, float],
            gauges: dict[_Key, list[float]]) -> None:
    g: dict[_Key, float] = {}
    if isinstance(snap, CommandSnapshot):
        name = (snap.name,)
        _counters(out, "resilience_command_calls", "command", snap.name, CALL_OUTCOMES,
                  snap.calls)
        _counters(out, "resilience_command_fallbacks", "command", snap.name,
                  FALLBACK_OUTCOMES, snap.fallbacks)
        _hist(out, "resilience_command_duration_seconds", ("command",), name,
              series.duration.bounds, snap.duration, snap.duration_sum)
        _gauge(g, "resilience_command_in_flight", ("command",), name, snap.in_flight)
        for state, one in zip(CIRCUIT_STATES, snap.states, strict=True):
            _gauge(g, "resilience_circuit_state", ("command", "state"), (snap.name, state), one)
        _gauge(g, "resilience_circuit_error_ratio", ("command",), name, snap.error_ratio)
    elif isinstance(snap, PoolSnapshot):
        name = (snap.name,)
        _counters(out, "resilience_pool_jobs", "pool", snap.name, JOB_OUTCOMES, snap.jobs)
        _hist(out, "resilience_pool_job_duration_seconds", ("pool",), name,
              series.job_duration.bounds, snap.job_duration, snap.job_duration_sum)
        _hist(out, "resilience_pool_queue_wait_seconds", ("pool",), name,
              series.queue_wait.bounds, snap.queue_wait, snap.queue_wait_sum)
        _gauge(g, "resilience_pool_queue_depth", ("pool",), name, snap.queue_depth)
        _gauge(g, "resilience_pool_workers_busy", ("pool",), name, snap.workers_busy)
    else:
        name = (snap.name,)
        _counters(out, "resilience_tls_handshakes", "server", snap.name, HANDSHAKE_OUTCOMES,
                  snap.handshakes)
        _gauge(g, "resilience_tls_connections_active", ("server",), name,
               snap.connections_active)
        if snap.certificate_expiry is not None:
            _gauge(g, "resilience_tls_certificate_expiry_timestamp_seconds", ("server",), name,
                   snap.certificate_expiry)
    for k, v in g.items():
        gauges.setdefault(k, []).append(v)


def values_of(group: list[tuple[Any, _Snapshot]]) -> dict[_Key, float]:
    """The file values of one name: counters added up over hubs, gauges by their mode."""
    out: dict[_Key, float] = {}
    gauges: dict[_Key, list[float]] = {}
    for series, snap in group:
        _values(series, snap, out, gauges)
    for k, vs in gauges.items():
        mode = GAUGE_MODES[k[1]]
        out[k] = sum(vs) if mode == "livesum" else max(vs) if mode == "livemax" else min(vs)
    return out


class _Flusher:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[_Key, tuple[Any, float | None]] = {}  # key -> (mmap value, written)
        self.seen: dict[_Group, list[_Snapshot]] = {}  # snapshots last written, per name
        self.baseline: dict[_Key, float] = {}  # totals inherited through fork
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.held: ExitStack | None = None

    def flush(self) -> None:
        with self.lock:
            for group, members in snapshots().items():
                snaps = [snap for _, snap in members]
                if self.seen.get(group) == snaps:
                    continue  # an idle name costs one comparison
                for key, value in values_of(members).items():
                    self._write(key, value)
                self.seen[group] = snaps

    def _write(self, key: _Key, value: float) -> None:
        if key[0] != "gauge":
            value -= self.baseline.get(key, 0)
        entry = self.values.get(key)
        if entry is None:
            typ, fam, sample, labels, names = key
            mode = GAUGE_MODES.get(fam, "") if typ == "gauge" else ""
            obj = values.ValueClass(
                typ, fam, sample, labels, names, _HELP[fam], multiprocess_mode=mode
            )
            entry = (obj, None)
        if entry[1] != value:
            entry[0].set(value)
            self.values[key] = (entry[0], value)

    def run(self) -> None:
        while not self.stop.wait(FLUSH_INTERVAL):
            try:
                self.flush()
            except Exception:  # keep flushing; a scrape shows the last good values
                _log.exception("resilience metrics: multi-process flush failed")

    def start(self) -> None:
        self.stop.clear()
        self.thread = threading.Thread(
            target=self.run, name="resilience-metrics-flush", daemon=True
        )
        self.thread.start()

    # -- fork: hold every lock across it; the child subtracts what it inherited ----------------

    def _locks(self) -> Iterator[threading.Lock | TokenLock]:
        # Order: nothing takes a series lock while holding a hub's lock, nor a hub's lock
        # while holding the lock of the hub table.
        yield self.lock
        hubs = Hub.all()
        for hub in hubs:
            commands, pools, servers = hub.series()
            yield from (s.lock for s in commands)
            yield from (s.lock for s in pools)
            yield from (s.lock for s in servers)
        yield from (hub._lock for hub in hubs)
        yield Hub._hubs_lock

    def before_fork(self) -> None:
        stack = ExitStack()
        for lock in self._locks():
            stack.enter_context(lock)
        self.held = stack

    def after_fork_parent(self) -> None:
        self._release()

    def after_fork_child(self) -> None:
        self._release()  # this is the only thread now: the values are those at fork time
        self.baseline = {
            k: v
            for members in snapshots().values()
            for k, v in values_of(members).items()
            if k[0] != "gauge"
        }
        self.seen = {}  # new pid, new files: write everything again
        self.values = {k: (obj, None) for k, (obj, _) in self.values.items()}
        self.start()

    def _release(self) -> None:
        if self.held is not None:
            self.held.close()
            self.held = None


_flusher: _Flusher | None = None
_start_lock = threading.Lock()


def hub_created(hub: Hub) -> None:
    """Start this process's flusher with its first hub, in multi-process mode."""
    global _flusher
    if not active():
        return
    with _start_lock:
        if _flusher is None:
            f = _flusher = _Flusher()
            f.start()
            atexit.register(flush)
            os.register_at_fork(
                before=f.before_fork,
                after_in_parent=f.after_fork_parent,
                after_in_child=f.after_fork_child,
            )


def flush() -> None:
    """Write this process's totals to the multi-process files now (no-op outside that mode)."""
    if _flusher is not None:
        _flusher.flush()

