"""The ``/metrics`` HTTP(S) server: a small thread-per-connection server in a daemon thread.

It runs beside any event loop (or none), so sync and async applications start it the same way.
HTTPS uses ``resilience.tls.server_context`` (Mozilla intermediate profile; prometheus-client's
own HTTPS server does not meet it) and does each TLS handshake in the connection's own thread,
so a slow or hostile client never blocks the accept loop.

Idle and slow clients cannot keep a scraper out. Each connection has a *deadline*: from accept
(and again after each response on a kept-alive connection) it has ``REQUEST_DEADLINE`` seconds
in all (TLS handshake included) to deliver a complete request, however it trickles the bytes;
the accept loop drops it when that passes. And when all ``MAX_CONNECTIONS`` slots are taken, a
new connection is admitted by dropping the one that has waited longest for its request (or
whose response has been stuck longer than the deadline): a scraper, which sends its request
at once, always gets a slot. Only when every slot is busy sending a response is a newcomer
turned away.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from os import PathLike
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import REGISTRY, CollectorRegistry

from ._metrics_text import Scraper

__all__ = ["MetricsServer", "start_metrics_server"]

_log = logging.getLogger("resilience.metrics")

StrPath = str | PathLike[str]

#: Seconds a client has, from accept or from the end of the previous response, to deliver a
#: complete request (TLS handshake included). Tests lower a server's ``request_deadline``.
REQUEST_DEADLINE = 5.0
#: Seconds to send one response (a client that reads slower loses its connection).
WRITE_TIMEOUT = 30.0
#: Connections served at once (a scraper needs one or two; see the module doc for who goes).
MAX_CONNECTIONS = 32

_INDEX = b"resilience metrics exporter: Prometheus metrics are at /metrics\n"
_NOT_FOUND = b"not found: Prometheus metrics are at /metrics\n"


class _Conn:
    """One accepted connection, as the admission and the deadline see it."""

    __slots__ = ("dropped", "reading", "since", "sock")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock  # the TLS socket once wrapped
        self.since = now  # start of the current phase
        self.reading = True  # waiting for a request (else: sending a response)
        self.dropped = False

    def drop(self) -> None:
        """End the connection from another thread; its own thread then sees EOF and ends.
        (The plain socket's shutdown, so a TLS socket's state is not touched.)"""
        self.dropped = True
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    timeout = None  # socket timeouts are set per phase by the server
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection
    server_version = "resilience-metrics"
    sys_version = ""

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def _respond(self, head: bool) -> None:
        conn = self.server.current.conn
        self.server.phase(conn, reading=False)
        url = urlsplit(self.path)
        status, headers = 200, [("Content-Type", "text/plain; charset=utf-8")]
        if url.path == "/metrics":
            try:
                body, headers = self.server.scrape(
                    self.headers.get("Accept", ""),
                    self.headers.get("Accept-Encoding", ""),
                    url.query,
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
        self.server.phase(conn, reading=True)  # the next request's deadline starts now

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s %s", self.address_string(), format % args)


class _HTTPServer(HTTPServer):
    request_queue_size = 128  # listen backlog: a burst of connects waits for accept (5 drops SYNs)

    def __init__(
        self, addr: str, port: int, ssl_context: ssl.SSLContext | None,
        registry: CollectorRegistry,
    ) -> None:
        infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        self.address_family = infos[0][0]
        self.ssl_context = ssl_context
        self.request_deadline = REQUEST_DEADLINE
        self.max_connections = MAX_CONNECTIONS
        self.conns: dict[_Conn, None] = {}  # being served, oldest first
        self.conns_lock = threading.Lock()
        self.current = threading.local()  # .conn: the _Conn of this connection thread
        self.accepted = self.dropped = 0  # connections so far; dropped at their deadline or
        # to make way for a newcomer (also tests' way to know the accept loop caught up)
        self.scrape = Scraper(registry)
        super().__init__((str(infos[0][4][0]), port), _Handler)

    # -- admission and deadlines (the accept thread) ------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        now = time.monotonic()
        conn = _Conn(request, now)
        with self.conns_lock:
            self.accepted += 1
            if len(self.conns) >= self.max_connections:
                victim = self._victim(now)
                if victim is None:  # every slot is sending a response: shed, never queue
                    self.shutdown_request(request)
                    return
                del self.conns[victim]
                victim.drop()
                self.dropped += 1
            self.conns[conn] = None
        request.settimeout(self.request_deadline)  # a backstop: the deadline is enforced here
        thread = threading.Thread(
            target=self._run, args=(request, client_address, conn), daemon=True,
            name=f"resilience-metrics-conn:{self.server_address[1]}",
        )
        try:
            thread.start()
        except BaseException:
            self._forget(conn)
            self.shutdown_request(request)
            raise

    def _victim(self, now: float) -> _Conn | None:
        """The connection to drop for a newcomer: the one that has waited longest for its
        request, or whose response has been stuck longer than the deadline."""
        stuck = now - self.request_deadline
        return min(
            (c for c in self.conns if c.reading or c.since <= stuck),
            key=lambda c: c.since, default=None,
        )

    def service_actions(self) -> None:
        """Between two accepts (at least every poll interval): drop connections past their
        deadline without a complete request."""
        now = time.monotonic()
        with self.conns_lock:
            late = [c for c in self.conns if c.reading and now - c.since >= self.request_deadline]
            for c in late:
                del self.conns[c]
                c.drop()
            self.dropped += len(late)

    def phase(self, conn: _Conn, reading: bool) -> None:
        """The connection's request is complete (``reading=False``) or answered (``True``)."""
        with self.conns_lock:
            conn.reading = reading
            conn.since = time.monotonic()
        with contextlib.suppress(OSError):
            conn.sock.settimeout(self.request_deadline if reading else WRITE_TIMEOUT)

    def _forget(self, conn: _Conn) -> None:
        with self.conns_lock:
            self.conns.pop(conn, None)

    # -- one connection (its own thread) ------------------------------------------------------

    def _run(self, request: socket.socket, client_address: Any, conn: _Conn) -> None:
        self.current.conn = conn
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._forget(conn)
            self.shutdown_request(request)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        try:
            tls = self.ssl_context.wrap_socket(
                request, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as exc:
            _log.debug("resilience metrics: TLS setup for %s failed: %s", client_address, exc)
            return
        try:
            conn: _Conn = self.current.conn
            with self.conns_lock:
                conn.sock = tls
            if conn.dropped:  # dropped while the socket changed hands
                return
            try:
                tls.do_handshake()  # bounded by the deadline, like the request
            except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
                _log.debug("resilience metrics: TLS handshake from %s failed: %s",
                           client_address, exc)
                return
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def end_connections(self) -> None:
        """End kept-alive connections too: a closed server answers nothing more."""
        with self.conns_lock:
            conns = list(self.conns)
            self.conns.clear()
        for conn in conns:
            conn.drop()

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

    A client has 5 seconds (``REQUEST_DEADLINE``) from accept, and again after each response,
    to send a complete request; idle and slow connections make way for new ones when all 32
    slots are taken (see the module doc).
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
