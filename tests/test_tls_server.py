"""serve_tls: handshakes, limits, close_notify, cancellation, reload and metrics."""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteStream
from anyio.streams.tls import TLSAttribute, TLSStream
from prometheus_client import CollectorRegistry
from test_tls_certs import PKI, der, make_ca, make_pki

from resilience.tls import certificate_expiry, client_context, serve_tls, server_context


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path)


Handler = Callable[[TLSStream], Awaitable[object]]


@asynccontextmanager
async def serving(
    handler: Handler, ctx: ssl.SSLContext, **kwargs: object
) -> AsyncIterator[int]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(functools.partial(
            serve_tls, handler, port=0, ssl_context=ctx, **kwargs  # type: ignore[arg-type]
        ))
        yield port
        tg.cancel_scope.cancel()


async def connect(port: int, ctx: ssl.SSLContext) -> TLSStream:
    return await anyio.connect_tcp(
        "127.0.0.1", port, ssl_context=ctx, tls_hostname="localhost",
        tls_standard_compatible=True,
    )


async def echo(stream: ByteStream) -> None:
    async for chunk in stream:
        await stream.send(chunk)


def sample(registry: CollectorRegistry, metric: str, **labels: str) -> float | None:
    return registry.get_sample_value(metric, labels)


def handshakes(registry: CollectorRegistry, name: str, outcome: str) -> float | None:
    return sample(
        registry, "resilience_tls_handshakes_total", server=name, outcome=outcome
    )


async def test_echo_and_close_notify(pki: PKI, metrics_registry: CollectorRegistry) -> None:
    async def greet(stream: TLSStream) -> None:
        await stream.send(b"hello " + await stream.receive())

    ctx = server_context(pki.cert, pki.key)
    with anyio.fail_after(10):
        async with serving(greet, ctx, metrics_registry=metrics_registry, name="t1") as port:
            assert port > 0
            client = await connect(port, client_context(pki.ca.path))
            await client.send(b"ada")
            assert await client.receive() == b"hello ada"
            # The server closed after the handler: a close_notify, so a clean end of stream
            # (a bare TCP close would be BrokenResourceError on a standard-compatible stream).
            with pytest.raises(anyio.EndOfStream):
                await client.receive()
            await client.aclose()
    assert handshakes(metrics_registry, "t1", "success") == 1
    assert handshakes(metrics_registry, "t1", "failure") == 0


async def test_mutual_tls(pki: PKI, metrics_registry: CollectorRegistry) -> None:
    peers: list[object] = []

    async def hello(stream: TLSStream) -> None:
        peers.append(stream.extra(TLSAttribute.peer_certificate))
        await stream.send(b"hello")
        await stream.receive()

    ctx = server_context(pki.cert, pki.key, client_ca=pki.ca.path)
    client_cert, client_key = pki.ca.issue(pki.dir, "client", client=True, hosts=("client",))
    rogue_ca = make_ca(pki.dir / "rogue", "rogue CA")
    rogue_cert, rogue_key = rogue_ca.issue(pki.dir, "rogue", client=True)
    with anyio.fail_after(10):
        async with serving(hello, ctx, metrics_registry=metrics_registry, name="m") as port:
            good = await connect(
                port, client_context(pki.ca.path, certfile=client_cert, keyfile=client_key)
            )
            assert await good.receive() == b"hello"
            for bad_ctx in (
                client_context(pki.ca.path),
                client_context(pki.ca.path, certfile=rogue_cert, keyfile=rogue_key),
            ):
                # TLS 1.3: the client's handshake completes before the server has checked
                # the client certificate; the refusal shows on the first read.
                bad = await connect(port, bad_ctx)
                assert bad.extra(TLSAttribute.tls_version) == "TLSv1.3"
                with pytest.raises((ssl.SSLError, anyio.BrokenResourceError)):
                    await bad.receive()
                await anyio.aclose_forcefully(bad)
            await good.aclose()
    assert handshakes(metrics_registry, "m", "success") == 1
    assert handshakes(metrics_registry, "m", "failure") == 2
    assert len(peers) == 1 and peers[0]  # the refused clients never reached the handler


async def test_handshake_timeout_and_failures_leave_others_alone(
    pki: PKI, metrics_registry: CollectorRegistry
) -> None:
    ctx = server_context(pki.cert, pki.key)
    cctx = client_context(pki.ca.path)
    with anyio.fail_after(10):
        async with serving(
            echo, ctx, handshake_timeout=0.5, metrics_registry=metrics_registry, name="h"
        ) as port:
            good = await connect(port, cctx)
            silent = await anyio.connect_tcp("127.0.0.1", port)  # never says a word
            garbage = await anyio.connect_tcp("127.0.0.1", port)
            await garbage.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                while await garbage.receive():  # the server's alert, then the close
                    pass
            await garbage.aclose()
            closed_early = await anyio.connect_tcp("127.0.0.1", port)
            await closed_early.aclose()
            # the silent client is dropped after handshake_timeout
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await silent.receive()
            await silent.aclose()
            await good.send(b"still here")
            assert await good.receive() == b"still here"
            later = await connect(port, cctx)
            await later.send(b"x")
            assert await later.receive() == b"x"
            await later.aclose()
            await good.aclose()
    assert handshakes(metrics_registry, "h", "timeout") == 1
    assert handshakes(metrics_registry, "h", "failure") == 2
    assert handshakes(metrics_registry, "h", "success") == 2


async def test_max_connections(pki: PKI, metrics_registry: CollectorRegistry) -> None:
    release = anyio.Event()
    entered: list[int] = []
    peak: float = 0

    async def hold(stream: TLSStream) -> None:
        nonlocal peak
        entered.append(1)
        peak = max(peak, sample(
            metrics_registry, "resilience_tls_connections_active", server="cap"
        ) or 0)
        await stream.send(b"in")
        await release.wait()

    second_in = anyio.Event()
    ctx, cctx = server_context(pki.cert, pki.key), client_context(pki.ca.path)
    with anyio.fail_after(10):
        async with serving(
            hold, ctx, max_connections=1, metrics_registry=metrics_registry, name="cap"
        ) as port:
            first = await connect(port, cctx)
            assert await first.receive() == b"in"

            async def second_client() -> None:
                second = await connect(port, cctx)  # waits in the backlog: no handshake yet
                assert await second.receive() == b"in"
                second_in.set()
                await second.aclose()

            async with anyio.create_task_group() as tg:
                tg.start_soon(second_client)
                with anyio.move_on_after(0.3):
                    await second_in.wait()
                assert not second_in.is_set() and len(entered) == 1
                assert handshakes(metrics_registry, "cap", "success") == 1
                release.set()  # the first connection ends, the second is accepted
                with pytest.raises(anyio.EndOfStream):
                    await first.receive()
                await first.aclose()  # answer the close_notify: the server lets go at once
                await second_in.wait()
    assert peak == 1 and len(entered) == 2


async def test_handler_errors_are_logged_not_fatal(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(stream: TLSStream) -> None:
        raise RuntimeError("handler bug")

    ctx, cctx = server_context(pki.cert, pki.key), client_context(pki.ca.path)
    with anyio.fail_after(10), caplog.at_level(logging.ERROR, "resilience.tls"):
        async with serving(broken, ctx, metrics_registry=CollectorRegistry()) as port:
            for _ in range(2):
                client = await connect(port, cctx)
                with pytest.raises(anyio.EndOfStream):
                    await client.receive()
                await client.aclose()
    assert sum("handler bug" in (r.exc_text or "") for r in caplog.records) == 2


async def test_cancellation_closes_everything(
    pki: PKI, metrics_registry: CollectorRegistry
) -> None:
    in_handler = anyio.Event()
    handler_exited = anyio.Event()

    async def wait_forever(stream: TLSStream) -> None:
        try:
            in_handler.set()
            await anyio.sleep_forever()
        finally:
            handler_exited.set()

    ctx, cctx = server_context(pki.cert, pki.key), client_context(pki.ca.path)
    server_scope = anyio.CancelScope()
    closed: list[str] = []

    async def run_server(*, task_status: anyio.abc.TaskStatus[int]) -> None:
        with server_scope:
            await serve_tls(
                wait_forever, port=0, ssl_context=ctx, metrics_registry=metrics_registry,
                name="c", task_status=task_status,
            )

    async def expect_close_notify(client: TLSStream) -> None:
        with pytest.raises(anyio.EndOfStream):  # a clean close: close_notify
            await client.receive()
        await client.aclose()
        closed.append("tls")

    async def expect_close(sock: ByteStream) -> None:
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await sock.receive()
        await sock.aclose()
        closed.append("tcp")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            port = await tg.start(run_server)
            client = await connect(port, cctx)
            half = await anyio.connect_tcp("127.0.0.1", port)  # mid-handshake
            await in_handler.wait()
            assert sample(metrics_registry, "resilience_tls_connections_active", server="c") == 1
            tg.start_soon(expect_close_notify, client)
            tg.start_soon(expect_close, half)
            await anyio.wait_all_tasks_blocked()
            server_scope.cancel()
        assert sorted(closed) == ["tcp", "tls"]
        assert handler_exited.is_set()
        with pytest.raises(OSError):  # the listener is closed
            await anyio.connect_tcp("127.0.0.1", port)
    # the stopped server no longer reports gauges
    assert sample(metrics_registry, "resilience_tls_connections_active", server="c") == 0
    assert sample(
        metrics_registry, "resilience_tls_certificate_expiry_timestamp_seconds", server="c"
    ) is None


async def test_automatic_reload(
    pki: PKI, metrics_registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    ctx, cctx = server_context(pki.cert, pki.key), client_context(pki.ca.path)
    expiry = "resilience_tls_certificate_expiry_timestamp_seconds"

    async def served_cert(port: int) -> bytes:
        conn = await connect(port, cctx)
        peer = conn.extra(TLSAttribute.peer_certificate_binary)
        await conn.aclose()
        assert peer is not None
        return peer

    async def until(condition: Callable[[], Awaitable[bool]]) -> None:
        while not await condition():
            await anyio.sleep(0.02)

    with anyio.fail_after(15), caplog.at_level(logging.INFO, "resilience.tls"):
        async with serving(
            echo, ctx, reload_interval=0.05, metrics_registry=metrics_registry, name="r"
        ) as port:
            assert sample(metrics_registry, expiry, server="r") == (
                certificate_expiry(pki.cert).timestamp()
            )
            old = await connect(port, cctx)
            first_der = der(pki.cert)
            assert old.extra(TLSAttribute.peer_certificate_binary) == first_der

            new_cert, new_key = pki.ca.issue(pki.dir, "next", days=30)
            pki.key.write_bytes(new_key.read_bytes())  # key first: half-written for a moment
            pki.cert.write_bytes(new_cert.read_bytes())

            async def serves_new() -> bool:
                return await served_cert(port) == der(new_cert)

            await until(serves_new)
            assert sample(metrics_registry, expiry, server="r") == (
                certificate_expiry(new_cert).timestamp()
            )
            await old.send(b"old connection")  # untouched by the reload
            assert await old.receive() == b"old connection"
            assert old.extra(TLSAttribute.peer_certificate_binary) == first_der

            caplog.clear()
            broken_cert, _ = pki.ca.issue(pki.dir, "broken")
            pki.cert.write_bytes(broken_cert.read_bytes())  # its key never comes

            async def reported() -> bool:
                return any(
                    r.levelno == logging.ERROR and "keeps its current certificate" in r.message
                    and "server.pem" in r.message for r in caplog.records
                )

            await until(reported)
            assert await served_cert(port) == der(new_cert)  # the good pair stays
            assert sample(metrics_registry, expiry, server="r") == (
                certificate_expiry(new_cert).timestamp()
            )
            errors = sum(r.levelno == logging.ERROR for r in caplog.records)
            await anyio.sleep(0.2)  # unchanged broken files are reported once, not every tick
            assert sum(r.levelno == logging.ERROR for r in caplog.records) == errors

            caplog.clear()  # a consistent pair that has expired is refused as well
            old_cert, old_key = pki.ca.issue(
                pki.dir, "expired", not_before=datetime(2020, 1, 1, tzinfo=UTC),
                not_after=datetime(2020, 2, 1, tzinfo=UTC),
            )
            pki.key.write_bytes(old_key.read_bytes())
            pki.cert.write_bytes(old_cert.read_bytes())

            async def expired_reported() -> bool:
                return "server.pem: the certificate expired on 2020-02-01" in caplog.text

            await until(expired_reported)
            assert await served_cert(port) == der(new_cert)
            await old.aclose()


async def test_foreign_context_is_served_as_is(
    pki: PKI, metrics_registry: CollectorRegistry
) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.cert, pki.key)
    with anyio.fail_after(10):
        async with serving(echo, ctx, metrics_registry=metrics_registry, name="f") as port:
            client = await connect(port, client_context(pki.ca.path))
            await client.send(b"x")
            assert await client.receive() == b"x"
            await client.aclose()
            assert sample(
                metrics_registry, "resilience_tls_certificate_expiry_timestamp_seconds",
                server="f",
            ) is None


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"handshake_timeout": 0}, "handshake_timeout"),
    ({"max_connections": 0}, "max_connections"),
    ({"reload_interval": -1.0}, "reload_interval"),
    ({"port": 70000}, "port"),
])
async def test_serve_tls_validates_arguments(
    pki: PKI, kwargs: dict[str, object], field: str
) -> None:
    options: dict[str, object] = {
        "port": 0, "ssl_context": server_context(pki.cert, pki.key), **kwargs
    }
    with pytest.raises(ValueError, match=field):
        await serve_tls(echo, **options)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ssl_context"):
        await serve_tls(echo, port=0, ssl_context="nope")  # type: ignore[arg-type]


async def test_peer_breaking_the_connection_is_not_an_error(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    handler_done = anyio.Event()
    seen: list[BaseException] = []

    async def reader(stream: TLSStream) -> None:
        try:
            await stream.receive()
        except BaseException as exc:
            seen.append(exc)
            raise
        finally:
            handler_done.set()

    ctx, cctx = server_context(pki.cert, pki.key), client_context(pki.ca.path)
    with anyio.fail_after(10), caplog.at_level(logging.DEBUG, "resilience.tls"):
        async with serving(reader, ctx, metrics_registry=CollectorRegistry()) as port:
            client = await connect(port, cctx)
            await anyio.aclose_forcefully(client)  # no close_notify: a truncated stream
            await handler_done.wait()
    assert seen and isinstance(seen[0], anyio.BrokenResourceError)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("connection broken" in r.message for r in caplog.records)


async def test_receive_drains_buffered_records_in_order(
    pki: PKI, metrics_registry: CollectorRegistry
) -> None:
    """A receive returns every record already buffered (up to max_bytes), data intact, and
    a close_notify right behind the data still ends the stream after all of it."""
    sizes: list[int] = []
    received = bytearray()
    ended = anyio.Event()

    async def collect(stream: TLSStream) -> None:
        async for chunk in stream:
            sizes.append(len(chunk))
            received.extend(chunk)
        ended.set()  # EndOfStream after the last byte

    payload = bytes(range(256)) * 4096  # 1 MiB: 64 full TLS records
    ctx = server_context(pki.cert, pki.key)
    with anyio.fail_after(10):
        async with serving(collect, ctx, metrics_registry=metrics_registry) as port:
            client = await connect(port, client_context(pki.ca.path))
            await client.send(payload)
            await client.aclose()  # close_notify right behind the data, then the server's
            await ended.wait()
    assert bytes(received) == payload
    assert max(sizes) > 16384 and all(s <= 65536 for s in sizes)  # several records at once
