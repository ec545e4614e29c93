"""httpx transports that send every request through a command (``resilience.httpx``).

``AsyncCommandTransport`` (for ``httpx.AsyncClient``) and ``CommandTransport`` (for
``httpx.Client``) give each upstream host its own command by default (``"http:" + host``, plus
``":port"`` for an explicit non-default port): a timeout up to the response headers, a
concurrency limit held until each response is closed, a circuit breaker, retries of idempotent
requests, and failed statuses (429, 5xx) counted as failures. Refusals and timeouts raise
errors that are both the resilience error and the matching httpx error.

Needs the ``[httpx]`` extra (``import resilience`` alone never imports httpx). See
``docs/http.md``.
"""

from __future__ import annotations

try:
    import httpx  # noqa: F401  (the extra's one dependency)
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "resilience.httpx needs httpx: pip install 'anyio-resilience[httpx]' (or httpx)"
    ) from exc

from ._errors import HTTPCircuitOpenError, HTTPCommandTimeoutError, HTTPMaxConcurrencyError
from ._transport import AsyncCommandTransport, CommandTransport

__all__ = [
    "AsyncCommandTransport",
    "CommandTransport",
    "HTTPCircuitOpenError",
    "HTTPCommandTimeoutError",
    "HTTPMaxConcurrencyError",
]

# Public classes show this module as their home (reprs and tracebacks name no private module).
for _cls in (AsyncCommandTransport, CommandTransport, HTTPCircuitOpenError,
             HTTPCommandTimeoutError, HTTPMaxConcurrencyError):
    _cls.__module__ = __name__
del _cls
