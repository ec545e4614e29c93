"""prometheus-client's multi-process mode (``PROMETHEUS_MULTIPROC_DIR``) for resilience's metrics.

In that mode prometheus-client's ``MultiProcessCollector`` only reads the per-process mmap files
its own metric values write. Our hot path stays as it is (plain counters under the series lock);
a background thread per process copies the hub totals into those files every ``FLUSH_INTERVAL``
seconds, writing only what changed, and once more at exit and before each scrape served by
``start_metrics_server`` or the ASGI/WSGI apps. Counters and histograms then add up across
processes; gauges use the live mode of their schema row (the file of a dead process is dropped
by prometheus-client's ``mark_process_dead``): ``livesum`` for in-flight/queue/busy/connection
counts, ``livemax`` for circuit state and error ratio (1 if any live process is in that state;
the worst ratio), ``livemin`` for certificate expiry (the soonest).

A forked child (gunicorn ``--preload``) continues from zero: totals inherited from the parent
are subtracted, so nothing is counted twice. The fork hooks hold every series lock across the
fork, so a child never inherits a lock held by a thread that does not exist there.

This module sits below the collector: it reads series tables and the schema, and writes
through :mod:`resilience._metrics_prom`; the hub calls :func:`hub_created`.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import ExitStack

from ._lock import TokenLock
from ._metrics_prom import FileValue, file_value, multiprocess_active
from ._metrics_records import SeriesTable, Snapshot, samples, snapshot
from ._metrics_schema import GAUGE_MODES, KINDS, SCHEMA, Row

__all__ = ["FLUSH_INTERVAL", "GAUGE_MODES", "active", "flush", "hub_created"]

_log = logging.getLogger("resilience.metrics")

#: Seconds between two flushes of this process's totals into the multi-process files.
FLUSH_INTERVAL = 1.0

# (type, family, sample name, label names, label values) -> value
_Key = tuple[str, str, str, tuple[str, ...], tuple[str, ...]]
_Group = tuple[str, str]  # (kind, name): one name's series in every hub of this process
_HELP = {r.family: r.help for r in SCHEMA}
_ROWS: dict[str, list[Row]] = {k: [r for r in SCHEMA if r.kind == k] for k in KINDS}

active = multiprocess_active


def snapshots() -> dict[_Group, list[Snapshot]]:
    """The snapshots of every name, all hubs (registries are moot across processes)."""
    out: dict[_Group, list[Snapshot]] = {}
    for hub in SeriesTable.all():
        for kind in KINDS:
            for s in hub.series(kind):
                out.setdefault((kind, s.name), []).append(snapshot(s))
    return out


def values_of(kind: str, group: list[Snapshot]) -> dict[_Key, float]:
    """The file values of one name: counters added up over hubs, gauges by their mode."""
    out: dict[_Key, float] = {}
    gauges: dict[_Key, list[float]] = {}
    for snap in group:
        for row in _ROWS[kind]:
            for sample, labels, names, value in samples(row, snap, cumulative=False):
                k: _Key = (row.type, row.family, sample, labels, names)
                if row.type == "gauge":
                    gauges.setdefault(k, []).append(value)
                else:
                    out[k] = out.get(k, 0) + value
    for k, vs in gauges.items():
        mode = GAUGE_MODES[k[1]]
        out[k] = sum(vs) if mode == "livesum" else max(vs) if mode == "livemax" else min(vs)
    return out


class _Flusher:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[_Key, tuple[FileValue, float | None]] = {}  # key -> (entry, written)
        self.seen: dict[_Group, list[Snapshot]] = {}  # snapshots last written, per name
        self.baseline: dict[_Key, float] = {}  # totals inherited through fork
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.held: ExitStack | None = None

    def flush(self) -> None:
        with self.lock:
            for group, snaps in snapshots().items():
                if self.seen.get(group) == snaps:
                    continue  # an idle name costs one comparison
                for key, value in values_of(group[0], snaps).items():
                    self._write(key, value)
                self.seen[group] = snaps

    def _write(self, key: _Key, value: float) -> None:
        if key[0] != "gauge":
            value -= self.baseline.get(key, 0)
        entry = self.values.get(key)
        if entry is None:
            typ, fam, sample, labels, names = key
            mode = GAUGE_MODES.get(fam, "") if typ == "gauge" else ""
            entry = (file_value(typ, fam, sample, labels, names, _HELP[fam], mode), None)
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
        hubs = SeriesTable.all()
        for hub in hubs:
            yield from (s.lock for s in hub.every_series())
        yield from (hub._lock for hub in hubs)
        yield SeriesTable._hubs_lock

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
            for group, snaps in snapshots().items()
            for k, v in values_of(group[0], snaps).items()
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


def hub_created(hub: SeriesTable) -> None:
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
