"""resilience: keep a service alive when what it depends on misbehaves.

Commands (timeout + bulkhead + circuit breaker + fallback + retry), a bounded worker pool,
hardened TLS helpers (``resilience.tls``) and Prometheus metrics (``resilience.metrics``),
on anyio: the same code runs on asyncio and trio.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._circuit import CircuitState
from ._circuit_view import Circuit
from ._config import CommandConfig
from ._decorate import CommandDecorator
from ._errors import (
    CircuitOpenError,
    CommandError,
    CommandTimeoutError,
    ConfigurationWarning,
    FailedResultError,
    MaxConcurrencyError,
    PoolClosedError,
    PoolError,
    PoolFullError,
    RateLimitedError,
    ResilienceError,
)
from ._events import Event, RetryScheduled, StateChange
from ._limiter import RateLimiter
from ._pool import WorkerPool
from ._pool_job import JobHandle, PoolStatistics
from ._registry import Registry, default_registry
from ._retry import Retry
from ._rolling import CircuitStatistics

try:
    __version__ = version("anyio-resilience")
except PackageNotFoundError:  # pragma: no cover - running from a source tree, not installed
    __version__ = "0+unknown"

#: Decorate a function so every call goes through the named command (default registry).
command = default_registry.command
#: ``await run(name, fn, *args, fallback=None)``: one call through a command.
run = default_registry.run
#: ``run_sync(name, fn, *args, fallback=None)``: the same from plain sync code.
run_sync = default_registry.run_sync
#: Change some fields of one command's configuration (or replace it with a CommandConfig).
configure_command = default_registry.configure_command
#: Replace the configuration of several commands: ``configure({"a": CommandConfig(...)})``.
configure = default_registry.configure
#: The circuit of a command, for introspection.
get_circuit = default_registry.get_circuit
#: Forget all circuit state and rolling statistics (configurations stay).
flush = default_registry.flush
#: ``unsubscribe = subscribe(callback)``: receive every Event of the default registry.
subscribe = default_registry.subscribe

__all__ = [
    "Circuit",
    "CircuitOpenError",
    "CircuitState",
    "CircuitStatistics",
    "CommandConfig",
    "CommandDecorator",
    "CommandError",
    "CommandTimeoutError",
    "ConfigurationWarning",
    "Event",
    "FailedResultError",
    "JobHandle",
    "MaxConcurrencyError",
    "PoolClosedError",
    "PoolError",
    "PoolFullError",
    "PoolStatistics",
    "RateLimitedError",
    "RateLimiter",
    "Registry",
    "ResilienceError",
    "Retry",
    "RetryScheduled",
    "StateChange",
    "WorkerPool",
    "__version__",
    "command",
    "configure",
    "configure_command",
    "flush",
    "get_circuit",
    "run",
    "run_sync",
    "subscribe",
]

# Public classes show the package as their home (tracebacks and reprs never name a private
# module).
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
