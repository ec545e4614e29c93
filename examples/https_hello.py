"""The seed scenario's "Hello, HTTPS!" server, on resilience.tls and a real HTTP stack.

An ASGI app is served by hypercorn with *our* ``server_context`` (Mozilla intermediate
profile), and an ``httpx`` client verifies it with ``client_context``. A throwaway CA and a
profile-compliant certificate (ECDSA P-256, 89 days, non-critical SAN) are made with
``cryptography`` in a temporary directory, so the example needs nothing else.

Run: ``python examples/https_hello.py [--backend asyncio|trio] [--serve]``: by default it
starts, makes one request, prints the answer and exits; ``--serve`` keeps serving until
Ctrl-C and prints a ``curl`` command to try.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import signal
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypercorn.config import Config

from resilience.tls import certificate_expiry, client_context, server_context

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The whole web application."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b"Hello, HTTPS!\n"
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"strict-transport-security", b"max-age=63072000"),
        ],
    })
    await send({"type": "http.response.body", "body": body})


class ResilienceTLSConfig(Config):
    """Hypercorn settings that serve TLS with a context we made (not hypercorn's own)."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        super().__init__()
        self._ssl_context = ssl_context

    @property
    def ssl_enabled(self) -> bool:
        return True

    def create_ssl_context(self) -> ssl.SSLContext:
        self._ssl_context.set_alpn_protocols(self.alpn_protocols)  # h2, http/1.1
        return self._ssl_context


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a localhost certificate it signed: (ca.pem, server.pem, server.key)."""
    now = dt.datetime.now(dt.UTC)

    def build(subject: str, issuer: x509.Name | None, key: ec.EllipticCurvePrivateKey,
              signer: ec.EllipticCurvePrivateKey, days: int) -> x509.CertificateBuilder:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        return (
            x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        build("https_hello example CA", None, ca_key, ca_key, 30)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        build("localhost", ca_cert.subject, key, ca_key, 89)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem))
    paths[2].write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return paths


async def main(backend: str, serve_forever: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="https-hello-") as tmp:
        ca, cert, key = make_certificates(Path(tmp))
        config = ResilienceTLSConfig(server_context(cert, key))  # Mozilla intermediate
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the bound socket now
        config.accesslog = None
        config.graceful_timeout = 1.0
        stop = anyio.Event()
        if backend == "trio":
            from hypercorn.trio import serve
        else:
            from hypercorn.asyncio import serve  # type: ignore[assignment]
        url = f"https://localhost:{port}/"
        async with anyio.create_task_group() as tg:
            asgi: Any = app  # hypercorn's ASGI types are stricter than this plain example
            tg.start_soon(lambda: serve(asgi, config, shutdown_trigger=stop.wait))
            async with httpx.AsyncClient(verify=client_context(ca), http2=True) as client:
                with anyio.fail_after(10):
                    while True:  # until hypercorn listens (its startup has no ready event)
                        try:
                            response = await client.get(url)
                            break
                        except httpx.ConnectError as exc:
                            if isinstance(exc.__cause__, ssl.SSLError):
                                raise
                            await anyio.sleep(0.02)
            response.raise_for_status()
            print(f"{response.http_version} {response.status_code} from {url}: "
                  f"{response.text.strip()}")
            print(f"certificate expires {certificate_expiry(cert):%Y-%m-%d %H:%M} UTC")
            if serve_forever:
                print(f"serving; try: curl --cacert {ca} {url}   (Ctrl-C to stop)", flush=True)
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break  # then a graceful hypercorn shutdown, not a cancellation
            stop.set()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--serve", action="store_true", help="keep serving until Ctrl-C")
    args = parser.parse_args()
    try:
        anyio.run(main, args.backend, args.serve, backend=args.backend)
    except KeyboardInterrupt:
        pass
