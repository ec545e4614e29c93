"""The ``/metrics`` HTTP(S) server: a small thread-per-connection server in a daemon thread.

It runs beside any event loop (or none), so sync and async applications start it the same way.
HTTPS uses ``resilience.tls.server_context`` (Mozilla intermediate profile; prometheus-client's
own HTTPS server does not meet it) and does each TLS handshake in the connection's own thread
under a timeout, so a slow or hostile client never blocks the accept loop.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from os import PathLike
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from . import _metrics_multiproc
from ._exporter import Hub
from ._metrics_text import exposition

__all__ = ["MetricsServer", "start_metrics_server"]

_log = logging.getLogger("resilience.metrics")

StrPath = str | PathLike[str]

#: Seconds a client may take for the TLS handshake, then for each read of its request.
HANDSHAKE_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0
#: Connections served at once; more are closed at once (a scraper needs one or two).
MAX_CONNECTIONS = 32

_INDEX = b"resilience metrics exporter: Prometheus metrics are at /metrics\n"
_NOT_FOUND = b"not found: Prometheus metrics are at /metrics\n"


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    timeout = REQUEST_TIMEOUT
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection
    server_version = "resilience-metrics"
    sys_version = ""

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def _respond(self, head: bool) -> None:
        url = urlsplit(self.path)
        status, headers = 200, [("Content-Type", "text/plain; charset=utf-8")]
        if url.path == "/metrics":
            try:
                body, headers = self.server.scrape(
                    self.headers.get("Accept", ""),
                    self.headers.get("Accept-Encoding", ""),
                    parse_qs(url.query).get("name[]"),
                )
            except Exception:
                _log.exception("resilience metrics: scrape failed")
                status, body = 500, b"scrape failed; see the server log\n"
        elif url.path == "/":
            body = _INDEX
        else:
            status, body = 404, _NOT_FOUND
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s %s", self.address_string(), format % args)


class _HTTPServer(ThreadingMixIn, HTTPServer):
    daemon_threads = True  # a stuck client never holds up interpreter exit
    block_on_close = False

    def __init__(
        self, addr: str, port: int, ssl_context: ssl.SSLContext | None,
        registry: CollectorRegistry,
    ) -> None:
        infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        self.address_family = infos[0][0]
        self.ssl_context = ssl_context
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.open: set[socket.socket] = set()  # connections being served, ended by close()
        self.open_lock = threading.Lock()
        self.multiprocess = registry is REGISTRY and _metrics_multiproc.active()
        if self.multiprocess:  # every process's files, not just this process's memory
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
            self.hub: Hub | None = None
        else:
            self.registry = registry
            self.hub = Hub.of(registry)
        super().__init__((str(infos[0][4][0]), port), _Handler)

    def scrape(
        self, accept: str, accept_encoding: str, names: list[str] | None
    ) -> tuple[bytes, list[tuple[str, str]]]:
        if self.multiprocess:
            _metrics_multiproc.flush()  # this process's newest values, at least
        return exposition(self.registry, accept, accept_encoding, names, self.hub)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the limit: shed, never queue threads
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is None:
            self._serve(request, client_address)
            return
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
            _log.debug("resilience metrics: TLS handshake from %s failed: %s", client_address, exc)
            return
        try:
            self._serve(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def _serve(self, conn: socket.socket, client_address: Any) -> None:
        with self.open_lock:
            self.open.add(conn)
        try:
            super().finish_request(conn, client_address)
        finally:
            with self.open_lock:
                self.open.discard(conn)

    def end_connections(self) -> None:
        """End kept-alive connections too: a closed server answers nothing more."""
        with self.open_lock:
            conns = list(self.open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("resilience metrics: connection from %s failed", client_address, exc_info=True)


class MetricsServer:
    """A running ``/metrics`` server (see :func:`start_metrics_server`).

    ``port`` is the bound port, ``url`` the full scrape URL; ``close()`` stops it (idempotent).
    Also a context manager.
    """

    def __init__(self, httpd: _HTTPServer, host: str, scheme: str) -> None:
        self._httpd = httpd
        self._lock = threading.Lock()
        self._closed = False
        self.port: int = httpd.server_address[1]
        self.url = f"{scheme}://{host}:{self.port}/metrics"
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"resilience-metrics:{self.port}", daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving, release the port and end open (kept-alive) connections."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.end_connections()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}{' closed' if self._closed else ''}>"


def _url_host(addr: str) -> str:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr or "127.0.0.1"  # a host name
    if ip.is_unspecified:  # listening everywhere: loopback reaches it
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    return f"[{ip}]" if ip.version == 6 else str(ip)


def start_metrics_server(
    port: int = 0,
    addr: str = "127.0.0.1",
    *,
    certfile: StrPath | None = None,
    keyfile: StrPath | None = None,
    client_cafile: StrPath | None = None,
    registry: CollectorRegistry | None = None,
) -> MetricsServer:
    """Serve ``/metrics`` (and ``/``) from a background thread; returns at once.

    HTTPS when ``certfile`` is given (``keyfile`` may be omitted when ``certfile`` holds the
    key too), built by ``resilience.tls.server_context``; ``client_cafile`` then requires
    client certificates signed by that CA (mutual TLS). ``registry`` defaults to
    prometheus-client's default one; in multi-process mode (``PROMETHEUS_MULTIPROC_DIR``) the
    default serves every process's values through ``MultiProcessCollector``.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    if not isinstance(addr, str):
        raise ValueError(f"addr must be a host name or IP address string, got {addr!r}")
    if certfile is None and keyfile is not None:
        raise ValueError(f"keyfile={str(keyfile)!r} given without certfile")
    if certfile is None and client_cafile is not None:
        raise ValueError(f"client_cafile={str(client_cafile)!r} needs HTTPS: give certfile too")
    ctx = None
    if certfile is not None:
        from .tls import server_context  # the TLS helpers are only needed for HTTPS

        ctx = server_context(certfile, keyfile, client_ca=client_cafile)
    try:
        httpd = _HTTPServer(addr, port, ctx, REGISTRY if registry is None else registry)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot serve metrics on {addr!r} port {port}: {exc}") from exc
    return MetricsServer(httpd, _url_host(addr), "https" if ctx else "http")
