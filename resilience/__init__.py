"""resilience: keep a service alive when what it depends on misbehaves.

Commands (timeout + bulkhead + circuit breaker + fallback), a bounded worker pool,
hardened TLS helpers (``resilience.tls``) and Prometheus metrics (``resilience.metrics``),
on anyio: the same code runs on asyncio and trio.
"""

from __future__ import annotations

from ._config import CommandConfig
from ._errors import (
    CircuitOpenError,
    CommandError,
    CommandTimeoutError,
    MaxConcurrencyError,
    PoolClosedError,
    PoolError,
    PoolFullError,
    ResilienceError,
)

__version__ = "0.1.0"

__all__ = [
    "CircuitOpenError",
    "CommandConfig",
    "CommandError",
    "CommandTimeoutError",
    "MaxConcurrencyError",
    "PoolClosedError",
    "PoolError",
    "PoolFullError",
    "ResilienceError",
    "__version__",
]
