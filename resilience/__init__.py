"""resilience: keep a service alive when what it depends on misbehaves.

Commands (timeout + bulkhead + circuit breaker + fallback), a bounded worker pool,
hardened TLS helpers (``resilience.tls``) and Prometheus metrics (``resilience.metrics``),
on anyio: the same code runs on asyncio and trio.
"""

from __future__ import annotations

from ._circuit import Circuit, CircuitState, CircuitStatistics
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
from ._pool import WorkerPool
from ._pool_job import JobHandle, PoolStatistics
from ._registry import CommandDecorator, Registry, default_registry

__version__ = "0.1.0"

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

__all__ = [
    "Circuit",
    "CircuitOpenError",
    "CircuitState",
    "CircuitStatistics",
    "CommandConfig",
    "CommandDecorator",
    "CommandError",
    "CommandTimeoutError",
    "JobHandle",
    "MaxConcurrencyError",
    "PoolClosedError",
    "PoolError",
    "PoolFullError",
    "PoolStatistics",
    "Registry",
    "ResilienceError",
    "WorkerPool",
    "__version__",
    "command",
    "configure",
    "configure_command",
    "flush",
    "get_circuit",
    "run",
    "run_sync",
]
