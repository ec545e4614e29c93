"""Prometheus metrics of commands, pools and TLS servers (``resilience.metrics``).

Everything resilience records is exported on prometheus-client's default registry (or the
``CollectorRegistry`` given to ``Registry``), read at scrape time. This module serves it
(:func:`start_metrics_server`, or :func:`make_asgi_app` / :func:`make_wsgi_app` on an
application's own route), caps label cardinality (:func:`set_max_names`) and flushes
multi-process mode's files (:func:`flush_multiprocess`). See ``docs/metrics.md``.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry

from ._exporter import Hub
from ._metrics_apps import make_asgi_app, make_wsgi_app
from ._metrics_multiproc import FLUSH_INTERVAL
from ._metrics_multiproc import flush as flush_multiprocess
from ._metrics_records import DEFAULT_MAX_NAMES, DURATION_BUCKETS
from ._metrics_schema import (
    CALL_OUTCOMES,
    CIRCUIT_STATES,
    DECISION_OUTCOMES,
    FALLBACK_OUTCOMES,
    GAUGE_MODES,
    HANDSHAKE_OUTCOMES,
    JOB_OUTCOMES,
    RETRY_OUTCOMES,
    SCHEMA,
    exposed_name,
)
from ._metrics_server import MetricsServer, start_metrics_server

__all__ = [
    "CALL_OUTCOMES",
    "CIRCUIT_ERROR_RATIO",
    "CIRCUIT_STATE",
    "CIRCUIT_STATES",
    "COMMAND_CALLS",
    "COMMAND_DURATION",
    "COMMAND_FALLBACKS",
    "COMMAND_IN_FLIGHT",
    "COMMAND_RETRIES",
    "DECISION_OUTCOMES",
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
    "RATE_LIMIT_DECISIONS",
    "RETRY_OUTCOMES",
    "TLS_CERTIFICATE_EXPIRY",
    "TLS_CONNECTIONS_ACTIVE",
    "TLS_HANDSHAKES",
    "flush_multiprocess",
    "get_max_names",
    "make_asgi_app",
    "make_wsgi_app",
    "set_max_names",
    "start_metrics_server",
]

# Metric names as exposed: alerts and dashboards are written on these.
COMMAND_CALLS = "resilience_command_calls_total"
COMMAND_FALLBACKS = "resilience_command_fallbacks_total"
COMMAND_RETRIES = "resilience_command_retries_total"
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
RATE_LIMIT_DECISIONS = "resilience_rate_limit_decisions_total"

#: Every metric name, in exposition order.
METRIC_NAMES: tuple[str, ...] = tuple(exposed_name(row) for row in SCHEMA)


def set_max_names(limit: int, registry: CollectorRegistry | None = None) -> None:
    """Cap the distinct command, pool, server and limiter names exported to ``registry``
    (each kind separately; default :data:`DEFAULT_MAX_NAMES`). A new name beyond the cap
    raises ``ValueError`` where it is first used; names already exported stay."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max names must be an int >= 1, got {limit!r}")
    Hub.of(registry).max_names = limit


def get_max_names(registry: CollectorRegistry | None = None) -> int:
    """The cap set by :func:`set_max_names` for ``registry`` (default registry when ``None``)."""
    return Hub.of(REGISTRY if registry is None else registry).max_names
