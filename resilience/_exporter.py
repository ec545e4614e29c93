"""The collector: resilience's series of one ``CollectorRegistry``, as prometheus-client sees them.

The hot path never touches prometheus-client: each command, pool and TLS server records into
plain integers on a *series* object (:mod:`resilience._metrics_records`, one per name and per
``CollectorRegistry``), and one collector per ``CollectorRegistry`` (a :class:`Hub`) turns them
into metric families when scraped, as the schema table (:mod:`resilience._metrics_schema`)
says. Because series are shared per name, any number of ``resilience.Registry`` objects may
export to the same ``CollectorRegistry``: equal labels simply add up, and counters never go
backwards (a series outlives the objects that fed it). Gauges are read from the live objects
(held weakly) at scrape time.

Layers, each importing only those below it: schema and records (no prometheus-client), the
multi-process flusher and its prometheus-client adapter, this collector, the fast renderer
(:mod:`resilience._metrics_text`), and what serves it (the server, the ASGI/WSGI apps).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import cast

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ._metrics_multiproc import hub_created
from ._metrics_records import (
    DEFAULT_MAX_NAMES,
    DURATION_BUCKETS,
    CircuitGauges,
    CommandSeries,
    CommandSnapshot,
    Histogram,
    HistogramSnapshot,
    LimiterSeries,
    PoolGauges,
    PoolSeries,
    PoolSnapshot,
    SeriesTable,
    StoreSeries,
    TLSGauges,
    TLSSeries,
    TLSSnapshot,
    command_snapshot,
    pool_snapshot,
    samples,
    snapshot,
    tls_snapshot,
)
from ._metrics_schema import (
    CALL_OUTCOMES,
    CANCELLED,
    CIRCUIT_STATES,
    FAILURE,
    FALLBACK_OUTCOMES,
    HANDSHAKE_OUTCOMES,
    IGNORED,
    JOB_CANCEL,
    JOB_FAIL,
    JOB_OK,
    JOB_OUTCOMES,
    KINDS,
    REJECTED,
    RETRY_OUTCOMES,
    SCHEMA,
    SHORT_CIRCUITED,
    SUCCESS,
    TIMEOUT,
)

__all__ = [
    "CALL_OUTCOMES",
    "CANCELLED",
    "CIRCUIT_STATES",
    "DEFAULT_MAX_NAMES",
    "DURATION_BUCKETS",
    "FAILURE",
    "FALLBACK_OUTCOMES",
    "HANDSHAKE_OUTCOMES",
    "IGNORED",
    "JOB_CANCEL",
    "JOB_FAIL",
    "JOB_OK",
    "JOB_OUTCOMES",
    "REJECTED",
    "RETRY_OUTCOMES",
    "SHORT_CIRCUITED",
    "SUCCESS",
    "TIMEOUT",
    "CircuitGauges",
    "CommandSeries",
    "CommandSnapshot",
    "Histogram",
    "HistogramSnapshot",
    "Hub",
    "LimiterSeries",
    "PoolGauges",
    "PoolSeries",
    "PoolSnapshot",
    "StoreSeries",
    "TLSGauges",
    "TLSSeries",
    "TLSSnapshot",
    "command_snapshot",
    "families",
    "pool_snapshot",
    "tls_snapshot",
]


class Hub(SeriesTable, Collector):
    """The one collector resilience registers on a ``CollectorRegistry`` (see
    :class:`~resilience._metrics_records.SeriesTable` for the series and the name cap)."""

    def __init__(self) -> None:
        super().__init__()
        self._skip = threading.local()

    @classmethod
    def of(cls, registry: CollectorRegistry | None = None) -> Hub:
        """The hub of ``registry`` (prometheus-client's default one when ``None``)."""
        reg = REGISTRY if registry is None else registry
        hub = cls._hubs.get(reg)
        if hub is None:
            created = False
            with cls._hubs_lock:
                hub = cls._hubs.get(reg)
                if hub is None:
                    hub = cls()
                    reg.register(hub)
                    cls._hubs[reg] = hub
                    created = True
            if created:
                hub_created(hub)
        return cast(Hub, hub)

    @contextmanager
    def skipped(self) -> Iterator[None]:
        """In this block (this thread only) ``collect`` yields nothing: for a caller that
        renders this hub's exposition text itself, faster than prometheus-client would."""
        self._skip.on = True
        try:
            yield
        finally:
            self._skip.on = False

    # -- prometheus-client Collector protocol -------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return families()

    def collect(self) -> Iterable[Metric]:
        if getattr(self._skip, "on", False):
            return []
        out = families()
        snaps = {kind: [snapshot(s) for s in self.series(kind)] for kind in KINDS}
        for row, family in zip(SCHEMA, out, strict=True):
            for snap in snaps[row.kind]:
                for sample, labels, values, value in samples(row, snap):
                    family.add_sample(sample, dict(zip(labels, values, strict=True)), value)
        return out


def families() -> list[Metric]:
    """Every family of the schema, empty."""
    return [Metric(row.family, row.help, row.type) for row in SCHEMA]
