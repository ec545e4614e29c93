"""start_metrics_server against idle and slow clients: real sockets on loopback.

A client has a total deadline (5 s; lowered here through the server's ``request_deadline``) from
accept, and again after each response, to send a complete request; when every slot is taken,
the connection that has waited longest for its request makes way for a new one.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from test_tls_certs import make_ca

import resilience
from resilience import _metrics_server
from resilience.metrics import MetricsServer, start_metrics_server
from resilience.tls import client_context

HEAD = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
PAD = b"X-Pad: " + b"p" * 200 + b"\r\n"  # a long request, trickled byte by byte


@pytest.fixture
def populated(metrics_registry: CollectorRegistry) -> CollectorRegistry:
    r = resilience.Registry(metrics_registry=metrics_registry)
    r.configure_command("greet", timeout=1.0)
    return metrics_registry


@pytest.fixture
def server(populated: CollectorRegistry) -> Iterator[MetricsServer]:
    with start_metrics_server(registry=populated) as srv:
        yield srv


def wait_until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the server ends the connection within ``timeout`` (EOF or reset)."""
    ready, _, _ = select.select([sock], [], [], timeout)
    if not ready:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionError:
        return True


def scrape(url: str) -> tuple[int, bytes, float]:
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read(), time.monotonic() - t0


def test_defaults_are_the_documented_ones() -> None:
    assert _metrics_server.REQUEST_DEADLINE == 5.0
    assert _metrics_server.MAX_CONNECTIONS == 32


def test_40_idle_and_trickling_connections_do_not_keep_a_scraper_out(
    server: MetricsServer,
) -> None:
    httpd = server._httpd
    held = []
    try:
        for i in range(40):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            if i % 2:  # half start a request and never finish it, half send nothing
                s.sendall(HEAD[:10])
            held.append(s)
        wait_until(lambda: httpd.accepted >= 40)  # the accept loop has seen every one
        for _ in range(3):  # with every slot held by idle and incomplete connections
            status, body, elapsed = scrape(server.url)
            assert status == 200 and b'command="greet"' in body
            assert elapsed < 2.0  # at once: not after anyone's 5 s deadline
        with httpx.Client(timeout=10) as client:  # a keep-alive client, as Prometheus is
            for _ in range(3):
                resp = client.get(server.url)
                assert resp.status_code == 200 and b"resilience_circuit_state" in resp.content
        assert httpd.dropped >= 40 + 1 - httpd.max_connections  # the oldest made way
        assert len(httpd.conns) <= httpd.max_connections
    finally:
        for s in held:
            s.close()


def test_a_trickler_is_dropped_at_its_deadline_not_per_read(server: MetricsServer) -> None:
    server._httpd.request_deadline = 0.5
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        t0 = time.monotonic()
        dropped = False
        for byte in HEAD + PAD * 4:  # one byte every 20 ms: each read is quick, the whole slow
            try:
                s.sendall(bytes([byte]))
            except OSError:
                dropped = True
                break
            if closed_by_peer(s, 0.02):
                dropped = True
                break
        elapsed = time.monotonic() - t0
    assert dropped, "a trickling client kept its connection past the deadline"
    assert 0.45 <= elapsed < 1.5


def test_the_deadline_restarts_for_each_request_on_a_kept_alive_connection(
    server: MetricsServer,
) -> None:
    server._httpd.request_deadline = 0.6
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.connect()
    t0 = time.monotonic()
    for _ in range(3):  # 0.3 s + a response, three times: past one deadline from accept
        assert not closed_by_peer(conn.sock, 0.3)
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read().startswith(b"resilience metrics")
    answered = time.monotonic()
    assert answered - t0 > 0.6
    assert closed_by_peer(conn.sock, 3.0)  # idle after its last response: dropped
    assert 0.5 <= time.monotonic() - answered < 1.6
    conn.close()


def test_a_complete_request_sent_slowly_within_the_deadline_is_served(
    server: MetricsServer,
) -> None:
    server._httpd.request_deadline = 2.0
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        for part in (HEAD[:12], HEAD[12:], b"Accept-Encoding: identity\r\n", b"\r\n"):
            s.sendall(part)
            assert not closed_by_peer(s, 0.1)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")


def test_an_idle_tls_client_is_dropped_at_its_deadline(
    tmp_path: Path, populated: CollectorRegistry,
) -> None:
    ca = make_ca(tmp_path)
    cert, key = ca.issue(tmp_path, "server")
    with start_metrics_server(certfile=cert, keyfile=key, registry=populated) as srv:
        srv._httpd.request_deadline = 0.5
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as idle:
            t0 = time.monotonic()
            assert closed_by_peer(idle, 3.0)  # never started its handshake
            assert 0.45 <= time.monotonic() - t0 < 1.5
        # a handshake then no request: the same deadline (it covers the handshake too)
        ctx = client_context(ca.path)
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        t0 = time.monotonic()
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            try:
                data = tls.recv(1)  # reads the session tickets, then the server's close
            except (ssl.SSLError, ConnectionError):
                data = b""
            assert data == b""
            assert 0.45 <= time.monotonic() - t0 < 1.5
        status, body, _ = scrape_tls(srv.url, ctx)
        assert status == 200 and b'command="greet"' in body


def scrape_tls(url: str, ctx: ssl.SSLContext) -> tuple[int, bytes, float]:
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=10, context=ctx) as resp:
        return resp.status, resp.read(), time.monotonic() - t0


def test_close_ends_held_connections(populated: CollectorRegistry) -> None:
    srv = start_metrics_server(registry=populated)
    held = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(5)]
    wait_until(lambda: srv._httpd.accepted >= 5)
    srv.close()
    try:
        assert all(closed_by_peer(s, 3.0) for s in held)
    finally:
        for s in held:
            s.close()
