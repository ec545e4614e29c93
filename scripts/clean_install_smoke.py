"""Clean install proof: run resilience from its wheel with only the runtime dependencies.

``scripts/clean-install.sh`` (part of ``make test``) builds the wheel, installs it alone into a
fresh venv (anyio, prometheus-client and cryptography come with it; nothing else) and runs this
program there, outside the checkout, on plain asyncio::

    python -I scripts/clean_install_smoke.py dist/anyio_resilience-X-py3-none-any.whl

It checks the wheel (``py.typed`` in, no demo, no examples, only the runtime dependencies
required), then uses commands, the worker pool, TLS and metrics, and finally that neither
trio, sniffio nor httpx was imported (or is even installed). Not part of the package.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import ipaddress
import re
import sys
import tempfile
import urllib.request
import zipfile
from functools import partial
from pathlib import Path

DISTRIBUTION = "anyio-resilience"
RUNTIME_DEPENDENCIES = {"anyio", "prometheus-client", "cryptography"}
FORBIDDEN = ("trio", "sniffio", "httpx")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_wheel(wheel: Path) -> None:
    """What the wheel ships: the package with its py.typed marker, nothing else."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = zf.read(metadata).decode()
    tops = {n.split("/", 1)[0] for n in names}
    extra = {t for t in tops if t != "resilience" and not t.endswith(".dist-info")}
    assert not extra, f"the wheel ships more than the package: {sorted(extra)}"
    assert "resilience/py.typed" in names, "the wheel lacks resilience/py.typed"
    demo = [n for n in names if "demo" in n.lower() or "examples" in n.lower()]
    assert not demo, f"the demo or the examples are in the wheel: {demo}"
    required = set()
    for line in meta.splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            required.add(_canonical(re.split(r"[\s;<>=!~\[(]", line.split(":", 1)[1].strip())[0]))
    assert required == RUNTIME_DEPENDENCIES, f"unconditional Requires-Dist: {sorted(required)}"
    print(f"wheel     {wheel.name}: {len(names)} files, py.typed, no demo; "
          f"requires {', '.join(sorted(required))}")


def write_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost/127.0.0.1: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("smoke CA")).issuer_name(name("smoke CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return paths


def check_sync_commands() -> None:
    """Plain blocking code: the decorator on a def, and run_sync."""
    import resilience
    from resilience import command

    @command("smoke-sync", timeout=1.0)
    def shout(word: str) -> str:
        return word.upper()

    assert shout("abc") == "ABC"
    assert resilience.run_sync("smoke-run-sync", str.lower, "ABC") == "abc"


async def check_commands() -> None:
    import anyio

    import resilience
    from resilience import CircuitOpenError, command

    @command("smoke-async", timeout=1.0, fallback=lambda exc: f"fallback: {type(exc).__name__}")
    async def hello(name: str) -> str:
        await anyio.sleep(0)
        return f"hello, {name}"

    @command("smoke-slow", timeout=0.05, fallback=lambda exc: f"fallback: {type(exc).__name__}")
    async def slow() -> str:
        await anyio.sleep(10)
        return "never"

    assert await hello("ada") == "hello, ada"
    assert await slow() == "fallback: CommandTimeoutError"

    async def plain(name: str) -> str:
        await anyio.sleep(0)
        return f"hi, {name}"

    assert await resilience.run("smoke-run", plain, "bob") == "hi, bob"

    # An open circuit: two failures out of two calls trip it; then the fallback answers.
    resilience.configure_command("smoke-flaky", request_volume_threshold=2,
                                 error_percent_threshold=50, sleep_window=60)

    async def down() -> str:
        raise ConnectionError("down")

    for _ in range(2):
        try:
            await resilience.run("smoke-flaky", down)
        except ConnectionError:
            pass
        else:
            raise AssertionError("the failure did not reach the caller")
    assert resilience.get_circuit("smoke-flaky").state == "open"
    answer = await resilience.run("smoke-flaky", down, fallback=lambda exc: type(exc).__name__)
    assert answer == "CircuitOpenError", answer
    try:
        await resilience.run("smoke-flaky", down)
    except CircuitOpenError:
        pass
    else:
        raise AssertionError("an open circuit let a call through")
    print("commands  @command async and sync, run, run_sync, timeout and open circuit fallbacks")


async def check_pool() -> None:
    import anyio

    from resilience import WorkerPool

    async def square(n: int) -> int:
        await anyio.sleep(0)
        return n * n

    async with WorkerPool(workers=3, queue_size=10, name="smoke") as pool:
        assert [r async for r in pool.map(square, range(6))] == [0, 1, 4, 9, 16, 25]
        handle = await pool.submit(square, 7)
        assert await handle == 49
    print("pool      WorkerPool map and submit")


async def check_tls(directory: Path) -> None:
    import anyio
    from anyio.abc import ByteStream

    from resilience.tls import client_context, serve_tls, server_context

    ca, cert, key = write_certificates(directory)

    async def pong(stream: ByteStream) -> None:
        assert await stream.receive() == b"ping"
        await stream.send(b"pong")

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            port = await tg.start(partial(
                serve_tls, pong, port=0, name="smoke", ssl_context=server_context(cert, key)
            ))
            stream = await anyio.connect_tcp(
                "127.0.0.1", port, ssl_context=client_context(ca), tls_hostname="localhost"
            )
            async with stream:
                await stream.send(b"ping")
                assert await stream.receive() == b"pong"
            tg.cancel_scope.cancel()
    print(f"tls       server_context + client_context, serve_tls handshake on 127.0.0.1:{port}")


def check_metrics() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from resilience.metrics import start_metrics_server

    with start_metrics_server(port=0) as server:
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.status == 200
            text = response.read().decode()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }
    for name, labels, value in (
        ("resilience_command_calls_total", {"command": "smoke-async", "outcome": "success"}, 1),
        ("resilience_command_calls_total", {"command": "smoke-sync", "outcome": "success"}, 1),
        ("resilience_command_fallbacks_total", {"command": "smoke-flaky", "outcome": "success"},
         1),
        ("resilience_circuit_state", {"command": "smoke-flaky", "state": "open"}, 1),
        ("resilience_pool_jobs_total", {"pool": "smoke", "outcome": "success"}, 7),
        ("resilience_tls_handshakes_total", {"server": "smoke", "outcome": "success"}, 1),
    ):
        key = (name, tuple(sorted(labels.items())))
        assert values.get(key) == value, f"{name}{labels} = {values.get(key)}, not {value}:\n{text}"
    print(f"metrics   start_metrics_server, GET {server.url}: {len(values)} samples")


def check_imports() -> None:
    import resilience

    here = Path(resilience.__file__).resolve()
    assert "site-packages" in here.parts, f"resilience imported from {here}, not the wheel"
    installed = importlib.metadata.version(DISTRIBUTION)
    assert resilience.__version__ == installed, (resilience.__version__, installed)
    loaded = sorted(m for m in sys.modules if m.split(".", 1)[0] in FORBIDDEN)
    assert not loaded, f"imported without need: {loaded}"
    present = sorted(
        {_canonical(d.metadata["Name"]) for d in importlib.metadata.distributions()}
        & set(FORBIDDEN)
    )
    assert not present, f"installed with the runtime dependencies: {present}"
    print(f"imports   resilience {installed} from {here.parent}; "
          f"{', '.join(FORBIDDEN)} neither imported nor installed")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} WHEEL", file=sys.stderr)
        return 2
    check_wheel(Path(argv[1]))
    check_sync_commands()

    import anyio

    async def run_all(directory: Path) -> None:
        await check_commands()
        await check_pool()
        await check_tls(directory)

    with tempfile.TemporaryDirectory(prefix="resilience-smoke-") as tmp:
        anyio.run(run_all, Path(tmp))  # plain asyncio
    check_metrics()
    check_imports()
    print("clean install: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
