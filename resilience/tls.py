"""Hardened TLS for servers and clients (``resilience.tls``).

* :func:`server_context` / :func:`client_context`: ``ssl.SSLContext`` objects meeting Mozilla's
  Server Side TLS profiles (``"intermediate"``: TLS 1.2 + 1.3, ECDHE with AEAD only;
  ``"modern"``: TLS 1.3 only), key exchange limited to X25519, prime256v1 and secp384r1.
* :func:`serve_tls`: an anyio TLS listener with handshake timeouts, a connection limit,
  automatic certificate reload and Prometheus metrics.
* :func:`reload_certificates` and :func:`certificate_expiry` for rotation and monitoring.

See ``docs/tls.md``.
"""

from __future__ import annotations

from ._tls_context import certificate_expiry, client_context, reload_certificates, server_context
from ._tls_server import serve_tls

__all__ = [
    "certificate_expiry",
    "client_context",
    "reload_certificates",
    "serve_tls",
    "server_context",
]
