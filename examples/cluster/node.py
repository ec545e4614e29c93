"""One node of the cluster, as its own OS process: ``python -m examples.cluster.node``.

Started by the demo (``python -m examples.cluster``) with its id, role, the etcd members and
the directory of certificates. Every node:

* takes a lease and registers under it (``/cluster/nodes/<id>``: role, address, metrics URL),
  renewing it every 0.5 s, so it disappears from etcd within the TTL when it dies;
* serves JSON-RPC over mutual TLS (``resilience.tls.serve_tls``, certificates reloaded when
  the files change) and ``/metrics`` (``resilience.metrics.start_metrics_server``);
* talks to its peers with a ``resilience.tls.client_context`` carrying its own certificate
  (re-made when the files change, so new connections present the rotated certificate);
* reports what happens (ready, leadership, circuit changes) as JSON lines on stdout.

Masters campaign and the leader dispatches (:mod:`.master`); workers do tasks (:mod:`.worker`)
behind ``resilience.asgi.LoadShedding``. SIGTERM stops a node cleanly (the leader resigns, the
lease is revoked); SIGKILL is what the demo uses to kill one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio.abc import TaskGroup

from resilience import StateChange, get_circuit, subscribe, tls
from resilience.asgi import LoadShedding
from resilience.metrics import start_metrics_server

from ..rpc.jsonrpc import JsonRpc, Method, Peer, serve
from ..rpc.pki import cert_paths, serial_of
from .config import (
    ADMIN_PATH,
    NODES,
    RPC_PATH,
    WORKER_LIMIT,
    WORKER_MAX_WAIT,
    WORKER_SHED_TIMEOUT,
)
from .etcd import Etcd, EtcdError, EtcdUnavailable
from .master import Master
from .session import LeaseSession
from .worker import Worker

__all__ = ["Peers", "main", "parse_endpoints"]

Json = dict[str, Any]


class Emitter:
    """JSON lines on stdout: what the demo reads to tell the story."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    def __call__(self, event: str, **fields: Any) -> None:
        line = {"t": round(time.time(), 4), "node": self.node_id, "event": event, **fields}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


def _signature(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            out.append((0, 0, 0))
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class Peers:
    """The HTTPS client for the other nodes; a new one (new connections, new client
    certificate) when the certificate files change; the old one is closed a bit later."""

    def __init__(self, certs: Path, name: str) -> None:
        self.ca = certs / "ca.pem"
        self.cert, self.key = cert_paths(certs, name)
        self._sig = _signature(self.cert, self.key)
        self.client = self._build()
        self.serial = serial_of(self.cert.read_bytes())
        self.rotations = 0

    def _build(self) -> httpx.AsyncClient:
        ctx = tls.client_context(self.ca, certfile=self.cert, keyfile=self.key)
        return httpx.AsyncClient(
            verify=ctx, timeout=httpx.Timeout(5.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    def current(self) -> httpx.AsyncClient:
        return self.client

    async def watch(self, tg: TaskGroup, emit: Emitter) -> None:
        while True:
            await anyio.sleep(0.5)
            sig = _signature(self.cert, self.key)
            if sig == self._sig:
                continue
            try:
                new = self._build()
                serial = serial_of(self.cert.read_bytes())
            except (OSError, ValueError):
                continue  # half-written pair: next time
            old, self.client, self._sig, self.serial = self.client, new, sig, serial
            self.rotations += 1
            emit("client_certificate", serial=serial)
            tg.start_soon(_close_later, old)

    async def aclose(self) -> None:
        await self.client.aclose()


async def _close_later(client: httpx.AsyncClient) -> None:
    await anyio.sleep(3.0)  # longer than any request still using it
    await client.aclose()


def parse_endpoints(text: str) -> dict[str, str]:
    """``e1=http://127.0.0.1:2379,e2=...`` -> ``{"e1": "http://127.0.0.1:2379", ...}``."""
    out = {}
    for part in text.split(","):
        name, _, url = part.partition("=")
        if not name or not url:
            raise ValueError(f"--etcd: expected name=url pairs, got {part!r}")
        out[name] = url.rstrip("/")
    return out


async def _node(args: argparse.Namespace) -> None:
    emit = Emitter(args.id)
    certs = Path(args.certs)
    cert, key = cert_paths(certs, args.id)
    watched = ("etcd:", "worker:")

    def on_event(event: object) -> None:
        if isinstance(event, StateChange) and event.command.startswith(watched):
            emit("circuit", command=event.command, old=event.old, new=event.new,
                 reason=event.reason)

    subscribe(on_event)
    metrics = start_metrics_server(port=args.metrics_port)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(5.0),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
    ) as etcd_http:
        etcd = Etcd(parse_endpoints(args.etcd), etcd_http, prefer=args.prefer)
        session = LeaseSession(etcd)
        await session.grant()
        peers = Peers(certs, args.id)
        address = ""
        role: Master | Worker
        worker: Worker | None = None
        master: Master | None = None
        if args.role == "worker":
            worker = role = Worker(args.id)
        else:
            master = role = Master(args.id, etcd, session, peers.current, emit, "")

        async def stats(params: Json, peer: Peer) -> Json:
            names = [etcd.command(m) for m in etcd.members]
            if master is not None:
                names += [f"worker:{w}" for w in sorted(master.workers)]
            return {
                "id": args.id, "role": args.role, "pid": os.getpid(), "lease": session.lease,
                "session": {"renewals": session.renewals, "failures": session.renewal_failures,
                            "lost": session.leases_lost},
                "etcd": dict(etcd.stats),
                "circuits": {n: get_circuit(n).state.value for n in names},
                "client_serial": peers.serial,
                "role_stats": role.stats(),
            }

        async def slow(params: Json, peer: Peer) -> Json:
            assert worker is not None
            return await worker.slow(params, peer)

        admin: dict[str, tuple[Method, tuple[str, ...]]] = {"node.stats": (stats, ("",))}
        methods: dict[str, dict[str, tuple[Method, tuple[str, ...]]]] = {ADMIN_PATH: admin}
        app: Any = None
        if worker is not None:
            admin["worker.slow"] = (slow, ("orchestrator",))
            methods[RPC_PATH] = {"task.run": (worker.task_run, ("m",))}
            app = LoadShedding(JsonRpc(methods), name="rpc",
                               max_concurrent_requests=WORKER_LIMIT, max_wait=WORKER_MAX_WAIT,
                               timeout=WORKER_SHED_TIMEOUT, exempt=(ADMIN_PATH,))
        else:
            app = JsonRpc(methods)

        async def register() -> None:
            record = json.dumps({"id": args.id, "role": args.role, "address": address,
                                 "metrics": metrics.url, "pid": os.getpid(),
                                 "lease": session.lease})
            while True:
                try:
                    await etcd.put(NODES + args.id, record, session.lease)
                except EtcdUnavailable:
                    await anyio.sleep(0.1)
                    continue
                except EtcdError as exc:  # the lease went meanwhile: keepalive starts anew
                    emit("register_failed", error=str(exc))
                emit("registered", lease=session.lease)
                return

        def lost(reason: str) -> None:
            emit("lease_lost", reason=reason)

        session.on_new_lease = register
        session.on_lost = lost
        try:
            async with anyio.create_task_group() as tg:
                ctx = tls.server_context(cert, key, client_ca=certs / "ca.pem")
                port = await tg.start(partial(
                    serve, app, port=0, ssl_context=ctx, reload_interval=0.5,
                    handshake_timeout=2.0, max_connections=256, name="rpc",
                ))
                address = f"https://127.0.0.1:{port}"
                if master is not None:
                    master.address = address
                await register()
                tg.start_soon(session.keepalive)
                tg.start_soon(peers.watch, tg, emit)
                if master is not None:
                    tg.start_soon(master.run)
                emit("ready", role=args.role, rpc=port, metrics=metrics.port, pid=os.getpid(),
                     lease=session.lease, address=address)
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        break
                if master is not None:
                    await master.resign()
                await session.revoke()
                emit("stopped")
                tg.cancel_scope.cancel()
        finally:
            metrics.close()
            with anyio.CancelScope(shield=True):
                await peers.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.cluster.node")
    parser.add_argument("--id", required=True)
    parser.add_argument("--role", choices=("master", "worker"), required=True)
    parser.add_argument("--etcd", required=True, help="name=url,name=url,... of the members")
    parser.add_argument("--prefer", help="the etcd member to ask first (default: the first)")
    parser.add_argument("--certs", required=True, help="directory with ca.pem, <id>.pem/.key")
    parser.add_argument("--metrics-port", type=int, default=0, help="default: any free port")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s {args.id} %(name)s %(levelname)s %(message)s")
    try:
        anyio.run(_node, args, backend=args.backend)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
