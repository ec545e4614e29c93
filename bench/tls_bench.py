"""TLS server benchmark: ``python -m bench.tls_bench [--quick]`` (issue 11).

``serve_tls`` (on asyncio and on trio) next to ``asyncio.start_server(ssl=...)``, each an echo
server on loopback with the same ``server_context`` (TLS 1.3, X25519, ECDSA P-256), each in its
own child process so that its CPU time (``getrusage``) and memory (RSS) are its own; the
clients run in this process. Figures, the median of interleaved rounds:

* CPU per handshake: the server's CPU time for one full connection (accept, handshake, a
  1-byte echo, close_notify both ways), clients one after another;
* echo throughput: MB/s through one connection (64 KiB writes, reader and writer running at
  once), and the server's CPU time per MB;
* memory per idle connection: RSS growth of the server with many open, idle connections.

A bare anyio server (``TLSStream.wrap`` and the same echo, without limits, timeouts, metrics)
is measured too, as the floor that anyio's streams put under ``serve_tls``.

Targets (issue 11): CPU per handshake <= 1.2x asyncio's, echo MB/s >= 0.9x asyncio's, memory per
idle connection no worse than today (0.10x asyncio's; the check allows up to 0.5x).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import anyio
import anyio.to_thread
from anyio.abc import ByteStream, SocketAttribute, SocketStream
from anyio.streams.tls import TLSStream

__all__ = ["main"]

PEER = "asyncio.start_server"
SERVERS = {  # label: (kind, backend)
    PEER: ("asyncio", "asyncio"),
    "serve_tls (asyncio)": ("serve_tls", "asyncio"),
    "serve_tls (trio)": ("serve_tls", "trio"),
    "bare anyio TLSStream (asyncio)": ("anyio", "asyncio"),  # the floor under serve_tls
}
CHUNK = 64 * 1024


class Figures(NamedTuple):
    handshake_cpu_us: float  # server CPU per connection
    handshakes_per_s: float  # wall, one client at a time
    echo_mb_s: float  # wall
    echo_cpu_ms_per_mb: float  # server CPU
    idle_kib: float  # RSS per idle connection


# -- certificates -------------------------------------------------------------------------------


def make_certs(directory: Path) -> None:
    """``ca.pem``, ``server.pem`` and ``server.key`` (ECDSA P-256, for localhost)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def build(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
              signer: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = build("bench CA", ca_key, ca_name, ca_key, True)
    leaf = build("localhost", key, ca_name, ca_key, False)
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(leaf.public_bytes(pem))
    (directory / "server.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))


# -- the server child ---------------------------------------------------------------------------


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _control(port: int) -> None:
    """Answer the parent on stdin/stdout: ``cpu``, ``rss``; end on ``quit`` or EOF."""
    print(port, flush=True)
    while True:
        line = (await anyio.to_thread.run_sync(sys.stdin.readline)).strip()
        if line == "cpu":
            print(_cpu(), flush=True)
        elif line == "rss":
            print(_rss(), flush=True)
        else:
            return


async def _echo(stream: ByteStream) -> None:
    async for chunk in stream:
        await stream.send(chunk)


def server_child(kind: str, backend: str, certs: Path) -> None:
    from prometheus_client import CollectorRegistry

    from resilience.tls import serve_tls, server_context

    ctx = server_context(certs / "server.pem", certs / "server.key")
    if kind == "asyncio":

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(CHUNK):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()

        async def peer() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
            async with server:
                await _control(server.sockets[0].getsockname()[1])

        asyncio.run(peer())
        return

    async def bare() -> None:  # what anyio itself costs: no limits, timeouts nor metrics
        async def one(sock: SocketStream) -> None:
            async with await TLSStream.wrap(sock, server_side=True, ssl_context=ctx) as tls:
                try:
                    await _echo(tls)
                except anyio.BrokenResourceError:
                    pass

        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, one, tg)
                await _control(listener.extra(SocketAttribute.local_port))
                tg.cancel_scope.cancel()

    async def ours() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(functools.partial(
                serve_tls, _echo, port=0, ssl_context=ctx, metrics_registry=CollectorRegistry(),
                name="bench", max_connections=10_000,
            ))
            await _control(port)
            tg.cancel_scope.cancel()

    anyio.run(bare if kind == "anyio" else ours, backend=backend)


class Server:
    """A server child process and its control channel."""

    def __init__(self, kind: str, backend: str, certs: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.tls_bench", "--server-child", kind, backend,
             str(certs)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.port = int(self._line())

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server child exited with {self.proc.wait()}")
        return line

    def ask(self, what: str) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return float(self._line())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


# -- clients (in this process) ------------------------------------------------------------------


def _connect(port: int, cctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = cctx.wrap_socket(raw, server_hostname="localhost")
    conn.sendall(b"x")  # the server finished its handshake and runs the handler
    assert conn.recv(1) == b"x"
    return conn


def _close(conn: ssl.SSLSocket) -> None:
    conn.unwrap().close()  # close_notify both ways, then the TCP close


def handshakes(server: Server, cctx: ssl.SSLContext, n: int) -> tuple[float, float]:
    """(server CPU µs per connection, connections per second of wall time)."""
    cpu0, t0 = server.ask("cpu"), time.perf_counter()
    for _ in range(n):
        _close(_connect(server.port, cctx))
    wall = time.perf_counter() - t0
    return (server.ask("cpu") - cpu0) / n * 1e6, n / wall


def echo(server: Server, cctx: ssl.SSLContext, total: int) -> tuple[float, float]:
    """(MB/s through one connection, server CPU ms per MB)."""
    block = os.urandom(CHUNK)

    async def run() -> float:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=cctx, server_hostname="localhost"
        )

        async def send() -> None:
            for _ in range(total // CHUNK):
                writer.write(block)
                await writer.drain()

        t0 = time.perf_counter()
        sender = asyncio.create_task(send())
        got = 0
        while got < total:
            data = await reader.read(1 << 20)
            assert data
            got += len(data)
        await sender
        wall = time.perf_counter() - t0
        writer.close()
        await writer.wait_closed()
        return wall

    cpu0 = server.ask("cpu")
    wall = asyncio.run(run())
    mb = total / 1e6
    return mb / wall, (server.ask("cpu") - cpu0) * 1e3 / mb


def idle_memory(server: Server, cctx: ssl.SSLContext, n: int) -> float:
    """RSS growth of the server per open, idle connection, in KiB."""
    for _ in range(3):  # warm up: first-use allocations are not per connection
        _close(_connect(server.port, cctx))
    before = server.ask("rss")
    conns = [_connect(server.port, cctx) for _ in range(n)]
    after = server.ask("rss")
    for conn in conns:
        _close(conn)
    return (after - before) / n / 1024


def measure(certs: Path, rounds: int, n_handshakes: int, echo_bytes: int,
            idle: int) -> dict[str, Figures]:
    cctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    servers = {label: Server(kind, backend, certs) for label, (kind, backend) in SERVERS.items()}
    try:
        memory = {label: idle_memory(s, cctx, idle) for label, s in servers.items()}
        samples: dict[str, list[tuple[float, float, float, float]]] = {s: [] for s in servers}
        names = list(servers)
        for r in range(rounds):
            for label in names[r % len(names):] + names[: r % len(names)]:
                server = servers[label]
                cpu, rate = handshakes(server, cctx, n_handshakes)
                mb_s, ms_mb = echo(server, cctx, echo_bytes)
                samples[label].append((cpu, rate, mb_s, ms_mb))
    finally:
        for s in servers.values():
            s.close()
    out: dict[str, Figures] = {}
    for label, rows in samples.items():
        cpu, rate, mb_s, ms_mb = (statistics.median(col) for col in zip(*rows, strict=True))
        out[label] = Figures(cpu, rate, mb_s, ms_mb, memory[label])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tls_bench")
    parser.add_argument("--quick", action="store_true", help="short run (fewer rounds)")
    parser.add_argument("--server-child", nargs=3, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.server_child:
        kind, backend, certs = args.server_child
        server_child(kind, backend, Path(certs))
        return
    rounds, n_hs, echo_mib, idle = (3, 100, 16, 200) if args.quick else (7, 300, 64, 500)
    print(f"TLS echo servers on loopback, median of {rounds} interleaved rounds: {n_hs} "
          f"connections one at a time, {echo_mib} MiB echoed, {idle} idle connections")
    with tempfile.TemporaryDirectory(prefix="tls-bench-") as tmp:
        make_certs(Path(tmp))
        results = measure(Path(tmp), rounds, n_hs, echo_mib << 20, idle)
    header = ("server", "CPU/handshake", "handshakes/s", "echo MB/s", "CPU ms/MB",
              "KiB/idle conn")
    width = max(map(len, results)) + 2
    print(f"{header[0]:<{width}}" + "".join(f"{h:>15}" for h in header[1:]))
    for label, f in results.items():
        print(f"{label:<{width}}{f.handshake_cpu_us:>12.0f} µs{f.handshakes_per_s:>15,.0f}"
              f"{f.echo_mb_s:>15,.0f}{f.echo_cpu_ms_per_mb:>15.2f}{f.idle_kib:>15,.1f}")
    peer = results[PEER]
    print()
    print("targets (issue 11), against asyncio.start_server(ssl=...):")
    for label, f in results.items():
        if label == PEER or label.startswith("bare"):
            continue
        checks = [
            ("CPU per handshake <= 1.2x", f.handshake_cpu_us / peer.handshake_cpu_us, 1.2, "<="),
            ("echo MB/s >= 0.9x", f.echo_mb_s / peer.echo_mb_s, 0.9, ">="),
            ("memory per idle connection <= 0.5x", f.idle_kib / max(peer.idle_kib, 1e-9), 0.5,
             "<="),
        ]
        for text, ratio, goal, op in checks:
            ok = ratio <= goal if op == "<=" else ratio >= goal
            print(f"  {'PASS' if ok else 'MISS'}  {label:<22}{text:<38}{ratio:>8.2f}x")
        print(f"        {label:<22}{'(echo: server CPU per MB)':<38}"
              f"{f.echo_cpu_ms_per_mb / peer.echo_cpu_ms_per_mb:>8.2f}x")
    bare = results["bare anyio TLSStream (asyncio)"]
    ours = results["serve_tls (asyncio)"]
    floor = bare.handshake_cpu_us / peer.handshake_cpu_us
    print(f"  floor: bare anyio TLSStream on asyncio = {floor:.2f}x CPU per handshake,"
          f" {bare.echo_cpu_ms_per_mb / peer.echo_cpu_ms_per_mb:.2f}x CPU per"
          f" MB; serve_tls (asyncio) = {ours.handshake_cpu_us / bare.handshake_cpu_us:.2f}x and "
          f"{ours.echo_cpu_ms_per_mb / bare.echo_cpu_ms_per_mb:.2f}x the bare anyio server")


if __name__ == "__main__":
    main()
