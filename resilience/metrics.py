"""Prometheus metrics of commands, pools and TLS servers (``resilience.metrics``).

Everything resilience records is exported on prometheus-client's default registry (or the
``CollectorRegistry`` given to ``Registry``), read at scrape time. This module serves it
(:func:`start_metrics_server`), caps label cardinality (:func:`set_max_names`) and flushes
multi-process mode's files (:func:`flush_multiprocess`). See ``docs/metrics.md``.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry

from ._exporter import (
    CALL_OUTCOMES,
    CIRCUIT_STATES,
    DEFAULT_MAX_NAMES,
    DURATION_BUCKETS,
    FALLBACK_OUTCOMES,
    HANDSHAKE_OUTCOMES,
    JOB_OUTCOMES,
    Hub,
)
from ._metrics_multiproc import FLUSH_INTERVAL, GAUGE_MODES
from ._metrics_multiproc import flush as flush_multiprocess
from ._metrics_server import MetricsServer, start_metrics_server

__all__ = [
    "CALL_OUTCOMES",
    "CIRCUIT_STATES",
    "COMMAND_CALLS",
    "COMMAND_DURATION",
    "COMMAND_FALLBACKS",
    "COMMAND_IN_FLIGHT",
    "CIRCUIT_ERROR_RATIO",
    "CIRCUIT_STATE",
    "DEFAULT_MAX_NAMES",
    "DURATION_BUCKETS",
    "FALLBACK_OUTCOMES",
    "FLUSH_INTERVAL",
    "GAUGE_MODES",
    "HANDSHAKE_OUTCOMES",
    "JOB_OUTCOMES",
    "METRIC_NAMES",
    "MetricsServer",
    "POOL_JOBS",
    "POOL_JOB_DURATION",
    "POOL_QUEUE_DEPTH",
    "POOL_QUEUE_WAIT",
    "POOL_WORKERS_BUSY",
    "TLS_CERTIFICATE_EXPIRY",
    "TLS_CONNECTIONS_ACTIVE",
    "TLS_HANDSHAKES",
    "flush_multiprocess",
    "get_max_names",
    "set_max_names",
    "start_metrics_server",
]

# Metric names as exposed (DESIGN section 4): alerts and dashboards are written on these.
COMMAND_CALLS = "resilience_command_calls_total"
COMMAND_FALLBACKS = "resilience_command_fallbacks_total"
COMMAND_DURATION = "resilience_command_duration_seconds"
COMMAND_IN_FLIGHT = "resilience_command_in_flight"
CIRCUIT_STATE = "resilience_circuit_state"
CIRCUIT_ERROR_RATIO = "resilience_circuit_error_ratio"
POOL_JOBS = "resilience_pool_jobs_total"
POOL_QUEUE_DEPTH = "resilience_pool_queue_depth"
POOL_WORKERS_BUSY = "resilience_pool_workers_busy"
POOL_JOB_DURATION = "resilience_pool_job_duration_seconds"
POOL_QUEUE_WAIT = "resilience_pool_queue_wait_seconds"
TLS_HANDSHAKES = "resilience_tls_handshakes_total"
TLS_CONNECTIONS_ACTIVE = "resilience_tls_connections_active"
TLS_CERTIFICATE_EXPIRY = "resilience_tls_certificate_expiry_timestamp_seconds"

#: Every metric name, in exposition order.
METRIC_NAMES: tuple[str, ...] = (
    COMMAND_CALLS, COMMAND_FALLBACKS, COMMAND_DURATION, COMMAND_IN_FLIGHT, CIRCUIT_STATE,
    CIRCUIT_ERROR_RATIO, POOL_JOBS, POOL_QUEUE_DEPTH, POOL_WORKERS_BUSY, POOL_JOB_DURATION,
    POOL_QUEUE_WAIT, TLS_HANDSHAKES, TLS_CONNECTIONS_ACTIVE, TLS_CERTIFICATE_EXPIRY,
)


def set_max_names(limit: int, registry: CollectorRegistry | None = None) -> None:
    """Cap the distinct command, pool and server names exported to ``registry`` (each kind
    separately; default :data:`DEFAULT_MAX_NAMES`). A new name beyond the cap raises
    ``ValueError`` where it is first used; names already exported stay."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max names must be an int >= 1, got {limit!r}")
    Hub.of(registry).max_names = limit


def get_max_names(registry: CollectorRegistry | None = None) -> int:
    """The cap set by :func:`set_max_names` for ``registry`` (default registry when ``None``)."""
    return Hub.of(REGISTRY if registry is None else registry).max_names
