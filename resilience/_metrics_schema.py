"""The one table of resilience's metrics: name, type, help, labels, multi-process mode.

Every layer that shows a metric reads it from :data:`SCHEMA`: the prometheus-client collector
(``Hub.collect``), the fast exposition renderer and the multi-process flusher. Adding a metric
is one row here plus the code that records it (a field of the kind's series, copied into its
snapshot). Nothing here imports prometheus-client.

A row's ``field`` names the snapshot attribute it shows:

* a list of counts, one per value of the row's second label (``values``), for a counter or a
  one-hot gauge (``resilience_circuit_state``);
* a number, or ``None`` for no sample, for a plain gauge;
* a :class:`~resilience._metrics_records.HistogramSnapshot` for a histogram.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "CALL_OUTCOMES",
    "CIRCUIT_STATES",
    "DECISION_OUTCOMES",
    "FALLBACK_OUTCOMES",
    "GAUGE_MODES",
    "HANDSHAKE_OUTCOMES",
    "JOB_OUTCOMES",
    "KINDS",
    "RETRY_OUTCOMES",
    "SCHEMA",
    "STORE_OPERATIONS",
    "Row",
    "exposed_name",
]

# Outcome indexes of resilience_command_calls_total (order = label values below).
SUCCESS, FAILURE, TIMEOUT, REJECTED, SHORT_CIRCUITED, IGNORED, CANCELLED = range(7)
CALL_OUTCOMES = (
    "success", "failure", "timeout", "rejected", "short_circuited", "ignored", "cancelled",
)
FALLBACK_OUTCOMES = ("success", "failure")
# Indexes into CommandSeries.retries (order = label values of resilience_command_retries_total).
RETRIED, RETRIES_EXHAUSTED, RETRY_BUDGET_EXHAUSTED, RETRY_DEADLINE = range(4)
RETRY_OUTCOMES = ("retried", "exhausted", "budget_exhausted", "deadline")
JOB_OUTCOMES = ("success", "failure", "cancelled")
JOB_OK, JOB_FAIL, JOB_CANCEL = range(3)  # indexes into JOB_OUTCOMES and PoolSeries.jobs
HANDSHAKE_OUTCOMES = ("success", "failure", "timeout")
CIRCUIT_STATES = ("closed", "open", "half_open")
DECISION_OUTCOMES = ("allowed", "waited", "rejected")  # indexes into LimiterSeries.decisions
# Round trips to a shared store (resilience.redis), by what they were for (StoreSeries.errors).
STORE_OPERATIONS = ("sync", "lease", "limit", "refund")

#: The kinds of names, by their label: what the cardinality cap counts separately.
KINDS = ("command", "pool", "server", "limiter", "store")


class Row(NamedTuple):
    """One metric family."""

    family: str  # as prometheus-client names the family: a counter's without "_total"
    type: str  # "counter", "gauge" or "histogram"
    help: str
    labels: tuple[str, ...]  # label names but ``le``: the kind's name label first
    field: str  # the snapshot attribute it shows (see the module doc)
    values: tuple[str, ...] = ()  # values of labels[1], in the field's index order
    mode: str = ""  # multi-process mode of a gauge: livesum, livemax or livemin

    @property
    def kind(self) -> str:
        return self.labels[0]


def _c(family: str, help: str, kind: str, field: str, label: str,
       values: tuple[str, ...]) -> Row:
    return Row(family, "counter", help, (kind, label), field, values)


def _g(family: str, help: str, kind: str, field: str, mode: str) -> Row:
    return Row(family, "gauge", help, (kind,), field, (), mode)


def _h(family: str, help: str, kind: str, field: str) -> Row:
    return Row(family, "histogram", help, (kind,), field)


#: Every family, in exposition order.
SCHEMA: tuple[Row, ...] = (
    _c("resilience_command_calls", "Calls to a command, by outcome.",
       "command", "calls", "outcome", CALL_OUTCOMES),
    _c("resilience_command_fallbacks", "Fallbacks run by a command, by outcome.",
       "command", "fallbacks", "outcome", FALLBACK_OUTCOMES),
    _c("resilience_command_retries", "Retries of a command's calls, by outcome.",
       "command", "retries", "outcome", RETRY_OUTCOMES),
    _h("resilience_command_duration_seconds",
       "Duration of executed command calls (short-circuited and rejected calls excluded).",
       "command", "duration"),
    _g("resilience_command_in_flight", "Executions of a command holding a concurrency slot.",
       "command", "in_flight", "livesum"),
    Row("resilience_circuit_state", "gauge",
        "Circuit state: 1 for the current state, 0 for the others.",
        ("command", "state"), "states", CIRCUIT_STATES, "livemax"),
    _g("resilience_circuit_error_ratio",
       "Error ratio (0..1) of a command over its rolling window.",
       "command", "error_ratio", "livemax"),
    _c("resilience_pool_jobs", "Jobs finished by a worker pool, by outcome.",
       "pool", "jobs", "outcome", JOB_OUTCOMES),
    _g("resilience_pool_queue_depth", "Jobs waiting in a worker pool's queue.",
       "pool", "queue_depth", "livesum"),
    _g("resilience_pool_workers_busy", "Workers of a pool running a job.",
       "pool", "workers_busy", "livesum"),
    _h("resilience_pool_job_duration_seconds", "Run time of a pool's jobs.",
       "pool", "job_duration"),
    _h("resilience_pool_queue_wait_seconds",
       "Time a job waited in a pool's queue before a worker took it.",
       "pool", "queue_wait"),
    _c("resilience_tls_handshakes", "TLS handshakes of a server, by outcome.",
       "server", "handshakes", "outcome", HANDSHAKE_OUTCOMES),
    _g("resilience_tls_connections_active", "TLS connections a server is serving.",
       "server", "connections_active", "livesum"),
    _g("resilience_tls_certificate_expiry_timestamp_seconds",
       "Unix time at which the server's certificate expires.",
       "server", "certificate_expiry", "livemin"),
    _c("resilience_rate_limit_decisions", "Decisions of a rate limiter, by outcome.",
       "limiter", "decisions", "outcome", DECISION_OUTCOMES),
    _g("resilience_store_up", "1 while a shared store answers, 0 while it is down.",
       "store", "up", "livemin"),
    _c("resilience_store_errors", "Failed round trips to a shared store, by operation.",
       "store", "errors", "operation", STORE_OPERATIONS),
)

#: Multi-process mode of every gauge, by family.
GAUGE_MODES: dict[str, str] = {r.family: r.mode for r in SCHEMA if r.type == "gauge"}


def exposed_name(row: Row) -> str:
    """The name users query: a counter's with ``_total``."""
    return row.family + "_total" if row.type == "counter" else row.family
