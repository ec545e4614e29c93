"""What resilience records, and the snapshots every exporter reads: plain Python, no
prometheus-client.

The hot path records into plain integers on a *series* object (one per name and per hub):
:class:`CommandSeries`, :class:`PoolSeries`, :class:`TLSSeries`, :class:`LimiterSeries`,
:class:`StoreSeries`. A
:class:`SeriesTable` holds one hub's series by kind and caps how many names of a kind it takes.
Readers never touch a series' fields directly: :func:`snapshot` copies them under the series
lock (and reads the live objects' gauges), and the exporters turn snapshots into text or
metric values as :data:`~resilience._metrics_schema.SCHEMA` says.
"""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar

from ._lock import TokenLock
from ._metrics_schema import (
    CALL_OUTCOMES,
    DECISION_OUTCOMES,
    HANDSHAKE_OUTCOMES,
    JOB_FAIL,
    JOB_OK,
    JOB_OUTCOMES,
    RETRY_OUTCOMES,
    STORE_OPERATIONS,
    Row,
)
from ._names import check_name

__all__ = [
    "DEFAULT_MAX_NAMES",
    "DURATION_AT",
    "DURATION_BUCKETS",
    "DURATION_SUM",
    "FIRST_BOUND",
    "CommandSeries",
    "Histogram",
    "HistogramSnapshot",
    "LimiterSeries",
    "PoolSeries",
    "SeriesTable",
    "StoreSeries",
    "TLSSeries",
    "observe_duration",
    "samples",
    "snapshot",
]

#: Default cap on distinct names of one kind (commands, pools, TLS servers or limiters) per hub:
#: names may be built from input by mistake, and every name costs Prometheus dozens of series.
DEFAULT_MAX_NAMES = 1000

#: Default latency buckets (prometheus-client's defaults), in seconds.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
#: The command hot path counts a duration up to this straight into the first bucket.
FIRST_BOUND = DURATION_BUCKETS[0]
#: ``CommandSeries.counts`` layout: the outcomes by kind (``CALL_OUTCOMES``) first, then the
#: duration histogram's sum, then its buckets (``DURATION_BUCKETS``, +Inf last).
DURATION_SUM = len(CALL_OUTCOMES)
DURATION_AT = DURATION_SUM + 1


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

    def snapshot(self) -> HistogramSnapshot:
        """A copy (call with the series lock held, after :meth:`fold` if it has pending)."""
        return HistogramSnapshot(self.bounds, list(self.counts), self.sum)


class HistogramSnapshot(NamedTuple):
    bounds: tuple[float, ...]
    counts: list[int]  # per bucket (not cumulative), +Inf last
    sum: float


# -- what the series read from live objects at scrape time -------------------------------------


class CircuitGauges(Protocol):
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


class StoreGauges(Protocol):
    @property
    def up(self) -> bool: ...


# -- series: mutated by the recording code, read through snapshots -----------------------------


class CommandSeries:
    """Lifetime counters of one command name. Mutated under ``lock`` by the circuit.

    ``counts`` holds the calls by outcome (indexed like ``CALL_OUTCOMES``: successes included,
    the hot path counts them) and the duration histogram (``DURATION_SUM``, buckets from
    ``DURATION_AT``) in one list: one object, so that a call at 10,000 commands touches one or
    two cache lines for them, not six. ``fallbacks`` is indexed like ``FALLBACK_OUTCOMES``,
    ``retries`` like ``RETRY_OUTCOMES``.
    """

    __slots__ = ("circuits", "counts", "fallbacks", "lock", "name", "retries")

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = TokenLock()  # taken twice per call on the hot path: see _lock
        zeros: list[Any] = [0] * (DURATION_AT + len(DURATION_BUCKETS) + 1)
        zeros[DURATION_SUM] = 0.0
        self.counts = zeros
        self.fallbacks = [0, 0]
        self.retries = [0] * len(RETRY_OUTCOMES)
        self.circuits: weakref.WeakSet[CircuitGauges] = weakref.WeakSet()


def observe_duration(counts: list[Any], value: float) -> None:
    """Count one duration into a ``CommandSeries.counts`` (series lock held)."""
    counts[DURATION_AT + bisect_left(DURATION_BUCKETS, value)] += 1
    counts[DURATION_SUM] += value


class PoolSeries:
    """Lifetime counters of one pool name.

    Workers append each job's two samples to the histograms' ``pending`` lists without the
    lock; failures (counted with their samples, under the lock) and cancellations are rare.
    ``jobs[JOB_OK]`` stays 0: successes are derived when read (see :func:`pool_snapshot`).
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


class LimiterSeries:
    """Lifetime counters of one rate limiter name (``decisions`` like ``DECISION_OUTCOMES``).
    Mutated under ``lock`` by the limiters of that name, which decide under it too."""

    __slots__ = ("decisions", "lock", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = TokenLock()  # taken once per decision on the hot path: see _lock
        self.decisions = [0] * len(DECISION_OUTCOMES)


class StoreSeries:
    """Lifetime counters of one shared store (``errors`` like ``STORE_OPERATIONS``), and the
    live stores of that name (``up`` is read from them at scrape time)."""

    __slots__ = ("errors", "lock", "name", "stores")

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.errors = [0] * len(STORE_OPERATIONS)
        self.stores: weakref.WeakSet[StoreGauges] = weakref.WeakSet()


Series = CommandSeries | PoolSeries | TLSSeries | LimiterSeries | StoreSeries

# -- snapshots: the one place that reads series (collect, fast text, multi-process flush) ------


class CommandSnapshot(NamedTuple):
    name: str
    calls: list[int]
    fallbacks: list[int]
    retries: list[int]
    duration: HistogramSnapshot
    in_flight: int
    states: list[int]  # by CIRCUIT_STATES
    error_ratio: float


class PoolSnapshot(NamedTuple):
    name: str
    jobs: list[int]
    queue_depth: int
    workers_busy: int
    job_duration: HistogramSnapshot
    queue_wait: HistogramSnapshot


class TLSSnapshot(NamedTuple):
    name: str
    handshakes: list[int]
    connections_active: int
    certificate_expiry: float | None  # the soonest, the one to alert on


class LimiterSnapshot(NamedTuple):
    name: str
    decisions: list[int]


class StoreSnapshot(NamedTuple):
    name: str
    up: int | None  # 1 if every live store of the name answers; None: none is open
    errors: list[int]


Snapshot = CommandSnapshot | PoolSnapshot | TLSSnapshot | LimiterSnapshot | StoreSnapshot


def command_snapshot(s: CommandSeries) -> CommandSnapshot:
    with s.lock:
        counts = list(s.counts)
        fallbacks = list(s.fallbacks)
        retries = list(s.retries)
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
    duration = HistogramSnapshot(DURATION_BUCKETS, counts[DURATION_AT:], counts[DURATION_SUM])
    return CommandSnapshot(
        s.name, counts[:DURATION_SUM], fallbacks, retries, duration, in_flight, states, ratio
    )


def pool_snapshot(s: PoolSeries) -> PoolSnapshot:
    with s.lock:
        s.fold()
        jobs = list(s.jobs)
        duration = s.job_duration.snapshot()
        # workers count failures, not successes: every finished job is in the duration
        # histogram (cancelled ones are not), so successes = its count - failures. A failure
        # records its samples and its count under the lock, together: this never goes back
        jobs[JOB_OK] = sum(duration.counts) - jobs[JOB_FAIL]
        wait = s.queue_wait.snapshot()
        pools = list(s.pools)
    depth = sum(p.queue_depth for p in pools)
    busy = sum(p.workers_busy for p in pools)
    return PoolSnapshot(s.name, jobs, depth, busy, duration, wait)


def tls_snapshot(s: TLSSeries) -> TLSSnapshot:
    with s.lock:
        handshakes = list(s.handshakes)
        servers = list(s.servers)
    active = sum(srv.connections_active for srv in servers)
    expiries = [
        e for srv in servers if (e := srv.certificate_expiry_timestamp) is not None
    ]
    return TLSSnapshot(s.name, handshakes, active, min(expiries) if expiries else None)


def limiter_snapshot(s: LimiterSeries) -> LimiterSnapshot:
    with s.lock:
        return LimiterSnapshot(s.name, list(s.decisions))


def store_snapshot(s: StoreSeries) -> StoreSnapshot:
    with s.lock:
        errors = list(s.errors)
        stores = list(s.stores)
    up = int(all(st.up for st in stores)) if stores else None
    return StoreSnapshot(s.name, up, errors)


_SNAPSHOTS: dict[type, Callable[[Any], Snapshot]] = {
    CommandSeries: command_snapshot,
    PoolSeries: pool_snapshot,
    TLSSeries: tls_snapshot,
    LimiterSeries: limiter_snapshot,
    StoreSeries: store_snapshot,
}


def snapshot(series: Series) -> Snapshot:
    """A consistent copy of one series (its lock held only to copy)."""
    return _SNAPSHOTS[type(series)](series)


# -- the series of one hub ---------------------------------------------------------------------

_S = TypeVar("_S", CommandSeries, PoolSeries, TLSSeries, LimiterSeries, StoreSeries)
_WHAT = {
    "command": "command", "pool": "pool", "server": "TLS server", "limiter": "limiter",
    "store": "store",
}


class SeriesTable:
    """One hub's series by kind (``commands``, ``pools``, ``tls``, ``limiters``, ``stores``).

    ``max_names`` caps the distinct names of each kind (a new name beyond it raises
    ``ValueError``), so a name built from input cannot flood Prometheus with series. Every
    table of the process is listed by :meth:`all`, keyed by the object it exports to.
    """

    _hubs: ClassVar[weakref.WeakKeyDictionary[Any, SeriesTable]] = weakref.WeakKeyDictionary()
    _hubs_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.max_names = DEFAULT_MAX_NAMES
        self.commands: dict[str, CommandSeries] = {}
        self.pools: dict[str, PoolSeries] = {}
        self.tls: dict[str, TLSSeries] = {}
        self.limiters: dict[str, LimiterSeries] = {}
        self.stores: dict[str, StoreSeries] = {}
        self.by_kind: dict[str, dict[str, Any]] = {
            "command": self.commands, "pool": self.pools, "server": self.tls,
            "limiter": self.limiters, "store": self.stores,
        }

    @classmethod
    def all(cls) -> list[SeriesTable]:
        """Every live table (the multi-process flusher writes them all)."""
        with cls._hubs_lock:
            return list(cls._hubs.values())

    def command(self, name: str) -> CommandSeries:
        return self.commands.get(name) or self._new(self.commands, name, CommandSeries, "command")

    def pool(self, name: str) -> PoolSeries:
        return self.pools.get(name) or self._new(self.pools, name, PoolSeries, "pool")

    def tls_server(self, name: str) -> TLSSeries:
        return self.tls.get(name) or self._new(self.tls, name, TLSSeries, "server")

    def limiter(self, name: str) -> LimiterSeries:
        return self.limiters.get(name) or self._new(self.limiters, name, LimiterSeries, "limiter")

    def store(self, name: str) -> StoreSeries:
        return self.stores.get(name) or self._new(self.stores, name, StoreSeries, "store")

    def _new(self, table: dict[str, _S], name: str, factory: Callable[[str], _S], kind: str) -> _S:
        # Only for names not seen yet: the validation of every caller, once more, so that no
        # name that would break the exposition ever reaches a series.
        name = check_name(name, _WHAT[kind])
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

    def series(self, kind: str) -> list[Any]:
        """The series of one kind (``"command"``, ``"pool"``, ``"server"``, ``"limiter"``,
        ``"store"``)."""
        with self._lock:
            return list(self.by_kind[kind].values())

    def every_series(self) -> Iterator[Series]:
        with self._lock:
            tables = [list(t.values()) for t in self.by_kind.values()]
        for t in tables:
            yield from t


# -- snapshots as samples, as a schema row says ---------------------------------------------------

#: (sample name, label names, label values, value)
Sample = tuple[str, tuple[str, ...], tuple[str, ...], float]


def le_values(bounds: tuple[float, ...]) -> list[str]:
    """The ``le`` label values of histogram buckets with these upper bounds, ``+Inf`` last."""
    return [repr(float(b)) for b in bounds] + ["+Inf"]


def samples(row: Row, snap: Snapshot, cumulative: bool = True) -> Iterator[Sample]:
    """The samples of one row for one name. Histograms: ``cumulative`` buckets and a
    ``_count`` as exposed; otherwise per-bucket counts and no ``_count`` (multi-process files,
    which add up per bucket)."""
    name = snap.name
    value = getattr(snap, row.field)
    if row.type == "histogram":
        labels, names = (*row.labels, "le"), (name,)
        acc = 0
        for le, n in zip(le_values(value.bounds), value.counts, strict=True):
            acc += n
            yield row.family + "_bucket", labels, (name, le), acc if cumulative else n
        if cumulative:
            yield row.family + "_count", row.labels, names, acc
        yield row.family + "_sum", row.labels, names, value.sum
    elif row.values:
        sample = row.family + "_total" if row.type == "counter" else row.family
        for label, v in zip(row.values, value, strict=True):
            yield sample, row.labels, (name, label), v
    elif value is not None:
        yield row.family, row.labels, (name,), value
