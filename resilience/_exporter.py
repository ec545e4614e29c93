"""Scrape-time export of resilience's own counters to prometheus-client.

The hot path never touches prometheus-client: each command, pool and TLS server records into
plain integers on a *series* object (one per name and per ``CollectorRegistry``), and one
collector per ``CollectorRegistry`` (a :class:`Hub`) turns them into metric families when
scraped. Because series are shared per name, any number of ``resilience.Registry`` objects may
export to the same ``CollectorRegistry``: equal labels simply add up, and counters never go
backwards (a series outlives the objects that fed it). Gauges are read from the live objects
(held weakly) at scrape time.
"""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import NamedTuple, Protocol, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._lock import TokenLock

__all__ = ["CommandSeries", "Histogram", "Hub", "PoolSeries", "TLSSeries"]

#: Default cap on distinct names of one kind (commands, pools or TLS servers) per hub: names may
#: be built from input by mistake, and every name costs Prometheus dozens of series.
DEFAULT_MAX_NAMES = 1000

#: Default latency buckets (prometheus-client's defaults), in seconds.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)

# Outcome indexes of resilience_command_calls_total (order = label values below).
SUCCESS, FAILURE, TIMEOUT, REJECTED, SHORT_CIRCUITED, IGNORED, CANCELLED = range(7)
CALL_OUTCOMES = (
    "success", "failure", "timeout", "rejected", "short_circuited", "ignored", "cancelled",
)
FALLBACK_OUTCOMES = ("success", "failure")
JOB_OUTCOMES = ("success", "failure", "cancelled")
JOB_OK, JOB_FAIL, JOB_CANCEL = range(3)  # indexes into JOB_OUTCOMES and PoolSeries.jobs
HANDSHAKE_OUTCOMES = ("success", "failure", "timeout")
CIRCUIT_STATES = ("closed", "open", "half_open")


class Histogram:
    """A cumulative-on-read histogram: ``observe`` is one bisect and two additions.

    A hot path that cannot afford even that appends raw values to ``pending`` (one
    ``list.append``, atomic without a lock) and readers :meth:`fold` them into the buckets
    under the series lock, sorted in one go. The worker pool records every job
    this way.
    """

    __slots__ = ("bounds", "counts", "pending", "sum")

    #: A writer folds its pending values itself once there are this many (bounds memory).
    FOLD_AT = 512

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.pending: list[float] = []

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def fold(self) -> None:
        """Move the pending values into the buckets. Call with the series lock held."""
        pending = self.pending
        if not pending:
            return
        batch = pending[:]
        del pending[: len(batch)]  # values appended meanwhile (other threads) stay pending
        batch.sort()  # then one bisect per bucket, not per value: about 20 ns a value
        counts = self.counts
        below = 0
        for index, bound in enumerate(self.bounds):
            upto = bisect_right(batch, bound)  # values <= bound
            counts[index] += upto - below
            below = upto
        counts[-1] += len(batch) - below
        self.sum += sum(batch)


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    acc = 0
    for bound, count in zip(bounds, counts, strict=False):
        acc += count
        out.append((_fmt(bound), acc))
    out.append(("+Inf", acc + counts[-1]))
    return out


def _fmt(bound: float) -> str:
    return repr(float(bound))


class CircuitGauges(Protocol):
    """What the hub reads from a live circuit at scrape time."""

    @property
    def state_index(self) -> int: ...  # index into CIRCUIT_STATES

    @property
    def in_flight(self) -> int: ...

    def error_ratio(self) -> float: ...


class PoolGauges(Protocol):
    @property
    def queue_depth(self) -> int: ...

    @property
    def workers_busy(self) -> int: ...


class TLSGauges(Protocol):
    @property
    def connections_active(self) -> int: ...

    @property
    def certificate_expiry_timestamp(self) -> float | None: ...


class CommandSeries:
    """Lifetime counters of one command name. Mutated under ``lock`` by the circuit.

    ``calls[SUCCESS]`` stays 0: successes are derived when read (``command_snapshot``) as the
    duration histogram's count less failures, timeouts and ignored calls.
    """

    __slots__ = ("calls", "circuits", "duration", "fallbacks", "lock", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = TokenLock()  # taken twice per call on the hot path: see _lock
        self.calls = [0] * len(CALL_OUTCOMES)
        self.fallbacks = [0, 0]
        self.duration = Histogram()
        self.circuits: weakref.WeakSet[CircuitGauges] = weakref.WeakSet()


class PoolSeries:
    """Lifetime counters of one pool name.

    Workers append each job's two samples to the histograms' ``pending`` lists without the
    lock; failures (counted with their samples, under the lock) and cancellations are rare.
    """

    __slots__ = ("job_duration", "jobs", "lock", "name", "pools", "queue_wait")

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = TokenLock()
        self.jobs = [0] * len(JOB_OUTCOMES)
        self.job_duration = Histogram()
        self.queue_wait = Histogram()
        self.pools: weakref.WeakSet[PoolGauges] = weakref.WeakSet()

    def fold(self) -> None:
        """Fold pending samples into both histograms. Call with ``lock`` held."""
        self.job_duration.fold()
        self.queue_wait.fold()


class TLSSeries:
    """Lifetime counters of one TLS server name."""

    __slots__ = ("handshakes", "lock", "name", "servers")

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.handshakes = [0] * len(HANDSHAKE_OUTCOMES)
        self.servers: weakref.WeakSet[TLSGauges] = weakref.WeakSet()


_S = TypeVar("_S", CommandSeries, PoolSeries, TLSSeries)


class Hub(Collector):
    """The one collector resilience registers on a ``CollectorRegistry``.

    ``max_names`` caps the distinct names of each kind (a new name beyond it raises
    ``ValueError``), so a name built from input cannot flood Prometheus with series.
    """

    _hubs: weakref.WeakKeyDictionary[CollectorRegistry, Hub] = weakref.WeakKeyDictionary()
    _hubs_lock = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.max_names = DEFAULT_MAX_NAMES
        self.commands: dict[str, CommandSeries] = {}
        self.pools: dict[str, PoolSeries] = {}
        self.tls: dict[str, TLSSeries] = {}
        self._skip = threading.local()

    @classmethod
    def of(cls, registry: CollectorRegistry | None = None) -> Hub:
        """The hub of ``registry`` (prometheus-client's default one when ``None``)."""
        reg = REGISTRY if registry is None else registry
        hub = cls._hubs.get(reg)
        if hub is None:
            with cls._hubs_lock:
                hub = cls._hubs.get(reg)
                if hub is None:
                    hub = cls()
                    reg.register(hub)
                    cls._hubs[reg] = hub
                    from ._metrics_multiproc import hub_created  # imports this module

                    hub_created(hub)
        return hub

    @classmethod
    def all(cls) -> list[Hub]:
        """Every live hub (the multi-process flusher writes them all)."""
        with cls._hubs_lock:
            return list(cls._hubs.values())

    def command(self, name: str) -> CommandSeries:
        return self.commands.get(name) or self._new(self.commands, name, CommandSeries, "command")

    def pool(self, name: str) -> PoolSeries:
        return self.pools.get(name) or self._new(self.pools, name, PoolSeries, "pool")

    def tls_server(self, name: str) -> TLSSeries:
        return self.tls.get(name) or self._new(self.tls, name, TLSSeries, "server")

    def _new(self, table: dict[str, _S], name: str, factory: Callable[[str], _S], kind: str) -> _S:
        with self._lock:
            series = table.get(name)
            if series is None:
                if len(table) >= self.max_names:
                    raise ValueError(
                        f"resilience metrics: refusing new {kind} name {name!r}: this registry "
                        f"already exports {len(table)} {kind} names, the limit is "
                        f"{self.max_names} (resilience.metrics.set_max_names raises it)"
                    )
                series = table[name] = factory(name)
            return series

    def series(self) -> tuple[list[CommandSeries], list[PoolSeries], list[TLSSeries]]:
        """Every series of this hub, by kind."""
        with self._lock:
            return list(self.commands.values()), list(self.pools.values()), list(self.tls.values())

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
        return list(_families())

    def collect(self) -> Iterable[Metric]:
        if getattr(self._skip, "on", False):
            return []
        fam = dict((m.name, m) for m in _families())
        commands, pools, servers = self.series()
        for c in commands:
            _collect_command(fam, c)
        for p in pools:
            _collect_pool(fam, p)
        for t in servers:
            _collect_tls(fam, t)
        return fam.values()


def _families() -> Iterator[Metric]:
    yield CounterMetricFamily(
        "resilience_command_calls", "Calls to a command, by outcome.",
        labels=["command", "outcome"],
    )
    yield CounterMetricFamily(
        "resilience_command_fallbacks", "Fallbacks run by a command, by outcome.",
        labels=["command", "outcome"],
    )
    yield HistogramMetricFamily(
        "resilience_command_duration_seconds",
        "Duration of executed command calls (short-circuited and rejected calls excluded).",
        labels=["command"],
    )
    yield GaugeMetricFamily(
        "resilience_command_in_flight", "Executions of a command holding a concurrency slot.",
        labels=["command"],
    )
    yield GaugeMetricFamily(
        "resilience_circuit_state", "Circuit state: 1 for the current state, 0 for the others.",
        labels=["command", "state"],
    )
    yield GaugeMetricFamily(
        "resilience_circuit_error_ratio",
        "Error ratio (0..1) of a command over its rolling window.",
        labels=["command"],
    )
    yield CounterMetricFamily(
        "resilience_pool_jobs", "Jobs finished by a worker pool, by outcome.",
        labels=["pool", "outcome"],
    )
    yield GaugeMetricFamily(
        "resilience_pool_queue_depth", "Jobs waiting in a worker pool's queue.", labels=["pool"],
    )
    yield GaugeMetricFamily(
        "resilience_pool_workers_busy", "Workers of a pool running a job.", labels=["pool"],
    )
    yield HistogramMetricFamily(
        "resilience_pool_job_duration_seconds", "Run time of a pool's jobs.", labels=["pool"],
    )
    yield HistogramMetricFamily(
        "resilience_pool_queue_wait_seconds",
        "Time a job waited in a pool's queue before a worker took it.",
        labels=["pool"],
    )
    yield CounterMetricFamily(
        "resilience_tls_handshakes", "TLS handshakes of a server, by outcome.",
        labels=["server", "outcome"],
    )
    yield GaugeMetricFamily(
        "resilience_tls_connections_active", "TLS connections a server is serving.",
        labels=["server"],
    )
    yield GaugeMetricFamily(
        "resilience_tls_certificate_expiry_timestamp_seconds",
        "Unix time at which the server's certificate expires.",
        labels=["server"],
    )


def _counter(fam: dict[str, Metric], name: str) -> CounterMetricFamily:
    m = fam[name]
    assert isinstance(m, CounterMetricFamily)
    return m


def _gauge(fam: dict[str, Metric], name: str) -> GaugeMetricFamily:
    m = fam[name]
    assert isinstance(m, GaugeMetricFamily)
    return m


def _hist(fam: dict[str, Metric], name: str) -> HistogramMetricFamily:
    m = fam[name]
    assert isinstance(m, HistogramMetricFamily)
    return m


# -- snapshots: the one place that reads series (collect, fast text, multi-process flush) ------


class CommandSnapshot(NamedTuple):
    name: str
    calls: list[int]
    fallbacks: list[int]
    duration: list[int]  # per-bucket (not cumulative) counts, +Inf last
    duration_sum: float
    in_flight: int
    states: list[int]  # by CIRCUIT_STATES
    error_ratio: float


class PoolSnapshot(NamedTuple):
    name: str
    jobs: list[int]
    queue_depth: int
    workers_busy: int
    job_duration: list[int]
    job_duration_sum: float
    queue_wait: list[int]
    queue_wait_sum: float


class TLSSnapshot(NamedTuple):
    name: str
    handshakes: list[int]
    connections_active: int
    certificate_expiry: float | None  # the soonest, the one to alert on


def command_snapshot(s: CommandSeries) -> CommandSnapshot:
    with s.lock:
        calls = list(s.calls)
        # Every executed call is observed once in the duration histogram, and every outcome
        # but success is counted: successes are the difference (one counter less to bump on
        # the hot path).
        calls[SUCCESS] = sum(s.duration.counts) - calls[FAILURE] - calls[TIMEOUT] - calls[IGNORED]
        fallbacks = list(s.fallbacks)
        counts = list(s.duration.counts)
        total = s.duration.sum
        circuits = list(s.circuits)
        states = [0, 0, 0]
        in_flight = 0
        ratio = 0.0
        for c in circuits:
            states[c.state_index] += 1
            in_flight += c.in_flight
            ratio = max(ratio, c.error_ratio())
    if not circuits:
        states[0] = 1  # a command nobody runs any more reads as closed and idle
    return CommandSnapshot(s.name, calls, fallbacks, counts, total, in_flight, states, ratio)


def pool_snapshot(s: PoolSeries) -> PoolSnapshot:
    with s.lock:
        s.fold()
        jobs = list(s.jobs)
        dur, dur_sum = list(s.job_duration.counts), s.job_duration.sum
        # workers count failures, not successes: every finished job is in the duration
        # histogram (cancelled ones are not), so successes = its count - failures. A failure
        # records its samples and its count under the lock, together: this never goes back
        jobs[JOB_OK] = sum(dur) - jobs[JOB_FAIL]
        wait, wait_sum = list(s.queue_wait.counts), s.queue_wait.sum
        pools = list(s.pools)
    depth = sum(p.queue_depth for p in pools)
    busy = sum(p.workers_busy for p in pools)
    return PoolSnapshot(s.name, jobs, depth, busy, dur, dur_sum, wait, wait_sum)


def tls_snapshot(s: TLSSeries) -> TLSSnapshot:
    with s.lock:
        handshakes = list(s.handshakes)
        servers = list(s.servers)
    active = sum(srv.connections_active for srv in servers)
    expiries = [
        e for srv in servers if (e := srv.certificate_expiry_timestamp) is not None
    ]
    return TLSSnapshot(s.name, handshakes, active, min(expiries) if expiries else None)


def _collect_command(fam: dict[str, Metric], s: CommandSeries) -> None:
    snap = command_snapshot(s)
    name = s.name
    for outcome, value in zip(CALL_OUTCOMES, snap.calls, strict=True):
        _counter(fam, "resilience_command_calls").add_metric([name, outcome], value)
    for outcome, value in zip(FALLBACK_OUTCOMES, snap.fallbacks, strict=True):
        _counter(fam, "resilience_command_fallbacks").add_metric([name, outcome], value)
    _hist(fam, "resilience_command_duration_seconds").add_metric(
        [name], _cumulative(s.duration.bounds, snap.duration), snap.duration_sum
    )
    _gauge(fam, "resilience_command_in_flight").add_metric([name], snap.in_flight)
    for state, value in zip(CIRCUIT_STATES, snap.states, strict=True):
        _gauge(fam, "resilience_circuit_state").add_metric([name, state], value)
    _gauge(fam, "resilience_circuit_error_ratio").add_metric([name], snap.error_ratio)


def _collect_pool(fam: dict[str, Metric], s: PoolSeries) -> None:
    snap = pool_snapshot(s)
    name = s.name
    for outcome, value in zip(JOB_OUTCOMES, snap.jobs, strict=True):
        _counter(fam, "resilience_pool_jobs").add_metric([name, outcome], value)
    _gauge(fam, "resilience_pool_queue_depth").add_metric([name], snap.queue_depth)
    _gauge(fam, "resilience_pool_workers_busy").add_metric([name], snap.workers_busy)
    _hist(fam, "resilience_pool_job_duration_seconds").add_metric(
        [name], _cumulative(s.job_duration.bounds, snap.job_duration), snap.job_duration_sum
    )
    _hist(fam, "resilience_pool_queue_wait_seconds").add_metric(
        [name], _cumulative(s.queue_wait.bounds, snap.queue_wait), snap.queue_wait_sum
    )


def _collect_tls(fam: dict[str, Metric], s: TLSSeries) -> None:
    snap = tls_snapshot(s)
    name = s.name
    for outcome, value in zip(HANDSHAKE_OUTCOMES, snap.handshakes, strict=True):
        _counter(fam, "resilience_tls_handshakes").add_metric([name, outcome], value)
    _gauge(fam, "resilience_tls_connections_active").add_metric([name], snap.connections_active)
    if snap.certificate_expiry is not None:
        _gauge(fam, "resilience_tls_certificate_expiry_timestamp_seconds").add_metric(
            [name], snap.certificate_expiry
        )
