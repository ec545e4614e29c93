"""start_metrics_server: /metrics over HTTP and HTTPS (+ mutual TLS), negotiation, promtool."""

from __future__ import annotations

import gzip
import http.client
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from _tools import require_tool
from prometheus_client import CollectorRegistry, Counter
from test_tls_certs import make_ca

import resilience
from resilience.metrics import MetricsServer, start_metrics_server
from resilience.tls import client_context


@dataclass
class PKI:
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    cert, key = ca.issue(d, "server")
    client_cert, client_key = ca.issue(d, "client", client=True)
    return PKI(ca.path, cert, key, client_cert, client_key)


@pytest.fixture
def populated(metrics_registry: CollectorRegistry) -> CollectorRegistry:
    r = resilience.Registry(metrics_registry=metrics_registry)
    r.run_sync("greet", lambda: "hi")
    with pytest.raises(ZeroDivisionError):
        r.run_sync("greet", lambda: 1 / 0)
    Counter("app_hits", "Hits of the application itself.", registry=metrics_registry).inc()
    return metrics_registry


@pytest.fixture
def server(populated: CollectorRegistry) -> Iterator[MetricsServer]:
    with start_metrics_server(registry=populated) as srv:
        yield srv


def get(url: str, headers: dict[str, str] | None = None,
        context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()
    except urllib.error.URLError as err:  # the connection's own error, for pytest.raises
        if isinstance(err.reason, BaseException):
            raise err.reason from err
        raise


def test_serves_metrics_index_and_404_over_http(server: MetricsServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    status, headers, body = get(server.url)
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    assert 'resilience_command_calls_total{command="greet",outcome="success"} 1.0' in text
    assert 'resilience_command_calls_total{command="greet",outcome="failure"} 1.0' in text
    assert "app_hits_total 1.0" in text  # the registry's other collectors are there too
    status, _, body = get(server.url.removesuffix("metrics"))
    assert status == 200 and b"/metrics" in body
    status, _, body = get(server.url.replace("/metrics", "/metricsx"))
    assert status == 404 and b"/metrics" in body


def test_openmetrics_negotiation_gzip_head_and_name_filter(server: MetricsServer) -> None:
    status, headers, body = get(
        server.url, {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n") and body.count(b"# EOF") == 1
    assert b"# TYPE resilience_command_calls counter\n" in body
    status, headers, body = get(server.url, {"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert b"resilience_circuit_state" in gzip.decompress(body)
    _, _, body = get(server.url + "?name[]=resilience_circuit_state")
    names = {line.split("{")[0] for line in body.decode().splitlines() if line[:1] != "#"}
    assert names == {"resilience_circuit_state"}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("HEAD", "/metrics")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.headers["Content-Length"]) > 0 and resp.read() == b""
    conn.close()


def test_close_is_idempotent_and_frees_the_port(populated: CollectorRegistry) -> None:
    srv = start_metrics_server(registry=populated)
    port = srv.port
    assert get(srv.url)[0] == 200
    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # HTTP/1.1 keep-alive
    kept.request("GET", "/")
    assert kept.getresponse().read().startswith(b"resilience metrics")
    srv.close()
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        kept.request("GET", "/metrics")  # a closed server answers nothing, even kept-alive
        kept.getresponse()
    kept.close()
    srv.close()
    assert "closed" in repr(srv)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    again = start_metrics_server(port, registry=populated)  # the port can be bound again
    again.close()


async def test_works_from_async_code(populated: CollectorRegistry) -> None:
    with start_metrics_server(registry=populated) as srv:
        status, _, body = await anyio.to_thread.run_sync(get, srv.url)
    assert status == 200 and b"resilience_command_in_flight" in body


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"port": -1}, ValueError, "port"),
        ({"port": 70000}, ValueError, "port"),
        ({"port": "80"}, ValueError, "port"),
        ({"keyfile": "k.pem"}, ValueError, "keyfile='k.pem' given without certfile"),
        ({"client_cafile": "ca.pem"}, ValueError, "client_cafile='ca.pem' needs HTTPS"),
        ({"certfile": "/nonexistent/cert.pem", "keyfile": "/nonexistent/key.pem"},
         FileNotFoundError, "cert.pem"),
        ({"addr": "no-such-host.invalid"}, OSError, "no-such-host.invalid"),
    ],
)
def test_bad_configuration_is_refused_up_front(
    kwargs: dict[str, object], error: type[Exception], match: str,
) -> None:
    with pytest.raises(error, match=match):
        start_metrics_server(**kwargs)  # type: ignore[arg-type]


def test_port_in_use_names_the_port(populated: CollectorRegistry) -> None:
    with start_metrics_server(registry=populated) as srv:
        with pytest.raises(OSError, match=f"port {srv.port}"):
            start_metrics_server(srv.port, registry=populated)


def test_https_with_our_ca(pki: PKI, populated: CollectorRegistry) -> None:
    with start_metrics_server(
        certfile=pki.cert, keyfile=pki.key, registry=populated
    ) as srv:
        assert srv.url == f"https://127.0.0.1:{srv.port}/metrics"
        # A client that connects and never starts its handshake does not hold up the others.
        with socket.create_connection(("127.0.0.1", srv.port)):
            t0 = time.monotonic()
            status, _, body = get(srv.url, context=client_context(pki.ca))
            assert time.monotonic() - t0 < 5
        assert status == 200 and b'command="greet"' in body
        with pytest.raises(ssl.SSLCertVerificationError):  # not trusted without our CA
            get(srv.url, context=ssl.create_default_context())
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            get(srv.url.replace("https", "http"))  # plain HTTP on the TLS port
        assert get(srv.url, context=client_context(pki.ca))[0] == 200  # still serving


def test_mutual_tls_refuses_clients_without_a_certificate(
    pki: PKI, populated: CollectorRegistry,
) -> None:
    with start_metrics_server(
        certfile=pki.cert, keyfile=pki.key, client_cafile=pki.ca, registry=populated
    ) as srv:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            get(srv.url, context=client_context(pki.ca))
        ctx = client_context(pki.ca, certfile=pki.client_cert, keyfile=pki.client_key)
        assert get(srv.url, context=ctx)[0] == 200


def promtool() -> str:
    return require_tool("promtool")  # skipped without it (failed under CI=true)


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"])
def test_exposition_passes_promtool_check_metrics(
    server: MetricsServer, populated: CollectorRegistry, accept: str,
) -> None:
    from resilience._exporter import Hub

    class Live:
        connections_active = 1
        certificate_expiry_timestamp = 1_900_000_000.0

    live = Live()
    hub = Hub.of(populated)
    hub.tls_server("api").servers.add(live)
    hub.pool("jobs").queue_wait.observe(0.02)
    _, _, body = get(server.url, {"Accept": accept} if accept else None)
    if accept:  # promtool reads the classic format; both must at least carry the same names
        assert b"resilience_tls_certificate_expiry_timestamp_seconds" in body
        return
    done = subprocess.run(
        [promtool(), "check", "metrics"], input=body, capture_output=True, timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    for family in (b"resilience_pool_queue_wait_seconds_bucket", b"resilience_tls_handshakes"):
        assert family in body
