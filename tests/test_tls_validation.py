"""resilience.tls input checks: certificate validity dates, client_ca holding a CA,
non-regular files, and the arguments of serve_tls (handler, context, address, numbers, name)."""

from __future__ import annotations

import datetime as dt
import errno
import functools
import logging
import os
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from prometheus_client import CollectorRegistry
from test_tls import memory_handshake
from test_tls_certs import PKI, der, make_pki
from test_tls_server import connect, echo, handshakes, serving

from resilience.tls import (
    certificate_expiry,
    client_context,
    reload_certificates,
    serve_tls,
    server_context,
)

NOW = dt.datetime.now(dt.UTC)
PAST = dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
FUTURE = NOW + dt.timedelta(days=30)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path)


def expired(pki: PKI, stem: str = "expired") -> tuple[Path, Path]:
    return pki.ca.issue(pki.dir, stem, not_before=PAST - dt.timedelta(days=30), not_after=PAST)


def not_yet_valid(pki: PKI, stem: str = "future") -> tuple[Path, Path]:
    return pki.ca.issue(pki.dir, stem, not_before=FUTURE, not_after=FUTURE + dt.timedelta(days=30))


# -- validity dates ------------------------------------------------------------------------------


def test_expired_or_not_yet_valid_certificate_is_refused(pki: PKI) -> None:
    old_cert, old_key = expired(pki)
    with pytest.raises(ValueError, match=r"expired\.pem: the certificate expired on 2020-01-02"):
        server_context(old_cert, old_key)
    new_cert, new_key = not_yet_valid(pki)
    with pytest.raises(ValueError, match=rf"future\.pem: .*not yet valid .*{FUTURE:%Y-%m-%d}"):
        server_context(new_cert, new_key)
    # a client certificate for mutual TLS is checked the same way
    with pytest.raises(ValueError, match=r"expired\.pem: .*expired on 2020-01-02"):
        client_context(pki.ca.path, certfile=old_cert, keyfile=old_key)
    with pytest.raises(ValueError, match=r"future\.pem: .*not yet valid"):
        client_context(pki.ca.path, certfile=new_cert, keyfile=new_key)
    assert certificate_expiry(old_cert) == PAST  # monitoring still reads an expired one


@pytest.mark.parametrize("make", [expired, not_yet_valid])
def test_reload_refuses_a_pair_outside_its_validity(
    pki: PKI, make: Callable[[PKI], tuple[Path, Path]], caplog: pytest.LogCaptureFixture
) -> None:
    ctx, client = server_context(pki.cert, pki.key), client_context(pki.ca.path)
    served = der(pki.cert)
    bad_cert, bad_key = make(pki)
    pki.cert.write_bytes(bad_cert.read_bytes())  # a consistent pair, but not valid now
    pki.key.write_bytes(bad_key.read_bytes())
    with caplog.at_level(logging.ERROR, "resilience.tls"):
        assert reload_certificates(ctx) is False
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert re.search(r"server\.pem: the certificate (expired on|is not yet valid)", caplog.text)
    assert memory_handshake(ctx, client)[0].getpeercert(binary_form=True) == served


# -- client_ca must hold a CA --------------------------------------------------------------------


def test_client_ca_without_a_ca_certificate_is_refused(pki: PKI) -> None:
    with pytest.raises(ValueError, match=r"client_ca .*server\.pem holds no CA certificate"):
        server_context(pki.cert, pki.key, client_ca=pki.cert)  # a leaf only
    bundle = pki.dir / "bundle.pem"  # a leaf next to the CA is fine
    bundle.write_bytes(pki.cert.read_bytes() + pki.ca.path.read_bytes())
    assert server_context(pki.cert, pki.key, client_ca=bundle).verify_mode == ssl.CERT_REQUIRED


# -- only regular files are read -------------------------------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    path = tmp_path / "fifo.pem"
    os.mkfifo(path)
    yield path
    try:  # release a reader that is stuck in open() (only code that blocks needs this)
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def returns_without_blocking(call: Callable[[], object]) -> BaseException | None:
    """Run ``call`` in a thread; the exception it raised. Fails if it is still blocked."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)  # a bound for a failure only: the check itself never waits
    assert outcome, "blocked reading a non-regular file"
    return outcome[0]


def test_fifo_is_refused_without_blocking(pki: PKI, fifo: Path) -> None:
    calls: list[Callable[[], object]] = [
        lambda: server_context(fifo, pki.key),
        lambda: server_context(pki.cert, fifo),
        lambda: server_context(fifo, None),
        lambda: server_context(pki.cert, pki.key, client_ca=fifo),
        lambda: client_context(fifo),
        lambda: client_context(pki.ca.path, certfile=fifo),
        lambda: certificate_expiry(fifo),
    ]
    for call in calls:
        exc = returns_without_blocking(call)
        assert isinstance(exc, ValueError), exc
        assert "fifo.pem is not a regular file (a FIFO)" in str(exc)


@pytest.mark.parametrize("where", ["certfile", "keyfile", "client_ca", "cafile"])
def test_directories_and_devices_are_refused(pki: PKI, where: str) -> None:
    def use(path: Path) -> object:
        if where == "cafile":
            return client_context(path)
        cert, key = (path, pki.key) if where == "certfile" else (pki.cert, pki.key)
        return server_context(
            cert, path if where == "keyfile" else key,
            client_ca=path if where == "client_ca" else None,
        )

    with pytest.raises(ValueError, match=rf"{where} .* is not a regular file \(a directory\)"):
        use(pki.dir)
    if os.path.exists("/dev/null"):
        with pytest.raises(ValueError, match=rf"{where} /dev/null is not a regular file"):
            use(Path("/dev/null"))
    if os.path.exists("/dev/zero"):  # endless: must never be read at all
        with pytest.raises(ValueError, match=r"/dev/zero is not a regular file \(a device\)"):
            use(Path("/dev/zero"))
    with pytest.raises(FileNotFoundError):  # a missing file stays FileNotFoundError
        use(pki.dir / "missing.pem")


def test_reload_onto_a_fifo_keeps_the_pair(pki: PKI, fifo: Path) -> None:
    ctx = server_context(pki.cert, pki.key)
    pki.cert.unlink()
    pki.cert.symlink_to(fifo)  # a symlink is followed, what it names is checked
    assert returns_without_blocking(lambda: reload_certificates(ctx) or None) is None
    assert reload_certificates(ctx) is False


# -- serve_tls arguments ---------------------------------------------------------------------------


def plain_handler(stream: object) -> None:
    pass


class AsyncCallable:
    async def __call__(self, stream: object) -> None:
        await echo(stream)  # type: ignore[arg-type]


async def echo_with_prefix(prefix: bytes, stream: object) -> None:
    async for chunk in stream:  # type: ignore[attr-defined]
        await stream.send(prefix + chunk)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("handler", "expect"), [
    (AsyncCallable(), b"x"),
    (functools.partial(echo_with_prefix, b"> "), b"> x"),
    (functools.partial(functools.partial(echo_with_prefix), b"+"), b"+x"),
])
async def test_async_callables_are_handlers(
    pki: PKI, handler: object, expect: bytes, metrics_registry: CollectorRegistry
) -> None:
    ctx = server_context(pki.cert, pki.key)
    with anyio.fail_after(10):
        async with serving(handler, ctx, metrics_registry=metrics_registry) as port:  # type: ignore[arg-type]
            client = await connect(port, client_context(pki.ca.path))
            await client.send(b"x")
            assert await client.receive() == expect
            await client.aclose()


def _client_contexts() -> list[ssl.SSLContext]:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.check_hostname = True  # would fail every server-side handshake
    return [ssl.create_default_context(), ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), tls]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"handler": plain_handler}, TypeError, "handler must be an async function"),
    ({"handler": functools.partial(plain_handler)}, TypeError, "handler"),
    ({"handler": "echo"}, TypeError, "handler"),
    ({"name": None}, TypeError, "TLS server name"),
    ({"name": b"tls"}, TypeError, "TLS server name"),
    ({"name": ""}, ValueError, "TLS server name"),
    ({"name": "bad\ud800"}, ValueError, "TLS server name"),
    ({"port": "443"}, TypeError, "port"),
    ({"port": True}, TypeError, "port"),
    ({"port": -1}, ValueError, "port"),
    ({"handshake_timeout": "10"}, TypeError, "handshake_timeout"),
    ({"handshake_timeout": None}, TypeError, "handshake_timeout"),
    ({"handshake_timeout": float("nan")}, ValueError, "handshake_timeout"),
    ({"handshake_timeout": float("inf")}, ValueError, "handshake_timeout"),
    ({"handshake_timeout": -1}, ValueError, "handshake_timeout"),
    ({"max_connections": 1.5}, TypeError, "max_connections"),
    ({"max_connections": True}, TypeError, "max_connections"),
    ({"max_connections": "10"}, TypeError, "max_connections"),
    ({"reload_interval": "60"}, TypeError, "reload_interval"),
    ({"reload_interval": float("nan")}, ValueError, "reload_interval"),
    ({"reload_interval": 0}, ValueError, "reload_interval"),
    ({"reload_interval": 1e9}, ValueError, "reload_interval"),
    *[({"ssl_context": c}, ValueError, "server context") for c in _client_contexts()],
])
async def test_serve_tls_refuses_bad_arguments_before_serving(
    pki: PKI, kwargs: dict[str, object], error: type[Exception], match: str,
    metrics_registry: CollectorRegistry,
) -> None:
    options: dict[str, object] = {
        "handler": echo, "port": 0, "ssl_context": server_context(pki.cert, pki.key),
        "name": "v", "metrics_registry": metrics_registry, **kwargs,
    }
    handler = options.pop("handler")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            with pytest.raises(error, match=match):  # raised before it listens: not started
                await tg.start(functools.partial(serve_tls, handler, **options))  # type: ignore[arg-type]
            tg.cancel_scope.cancel()  # (it did start: stop it, the test has failed)
    assert handshakes(metrics_registry, str(options["name"]), "success") is None  # no series


async def test_address_in_use_names_host_and_port(
    pki: PKI, metrics_registry: CollectorRegistry
) -> None:
    taken = socket.socket()
    with taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with anyio.fail_after(10), pytest.raises(OSError, match=f"127.0.0.1:{port}") as info:
            await serve_tls(
                echo, port=port, ssl_context=server_context(pki.cert, pki.key),
                metrics_registry=metrics_registry, name="busy",
            )
    assert info.value.errno == errno.EADDRINUSE
    assert handshakes(metrics_registry, "busy", "success") is None
