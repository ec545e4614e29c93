"""The processes the demo starts, kills and restarts: etcd members, nodes, Prometheus.

Everything listens on loopback on free ports and keeps its data in the demo's temporary
directory; :meth:`Procs.aclose` stops whatever is still running (also on Ctrl-C or a crash).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio.abc import Process, TaskGroup

from ..rpc.children import free_port, read_events, stop

__all__ = ["ROOT", "EtcdMember", "NodeProc", "Procs", "Prometheus", "free_port"]

#: The repository's root: nodes run as ``python -m examples.cluster.node`` from there.
ROOT = Path(__file__).resolve().parents[2]

Json = dict[str, Any]


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    process: Process | None = None
    starts: int = 0

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class NodeProc:
    """A node process and what it said on stdout (JSON lines)."""

    id: str
    role: str
    process: Process | None = None
    metrics_port: int = 0  # kept across restarts
    info: Json = field(default_factory=dict)  # the last "ready" event: ports, pid, address
    ready: anyio.Event = field(default_factory=anyio.Event)
    starts: int = 0
    alive: bool = False


class Prometheus:
    """A Prometheus server scraping every node's ``/metrics``. Each node keeps its metrics
    port across restarts, so the targets are static (Prometheus hands new targets to its
    scrapers only every 5 seconds: a restarted node on a new port would be missed)."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: Process | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self, nodes: list[NodeProc]) -> None:
        """Start the server and wait until it is ready (the nodes need not be up yet)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "prometheus.yml"
        targets = "".join(
            f"      - targets: ['127.0.0.1:{n.metrics_port}']\n"
            f"        labels: {{node: {n.id}, role: {n.role}}}\n"
            for n in nodes
        )
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
            "scrape_configs:\n  - job_name: cluster\n    static_configs:\n" + targets
        )
        log = (self.directory / "prometheus.log").open("wb")
        self.process = await anyio.open_process(
            [self.binary, f"--config.file={config}",
             f"--storage.tsdb.path={self.directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
        log.close()
        async with httpx.AsyncClient(timeout=1.0) as client:
            with anyio.fail_after(15):
                while True:
                    try:
                        if (await client.get(f"{self.url}/-/ready")).status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                    await anyio.sleep(0.2)

    async def query(self, promql: str) -> list[Json]:
        async with httpx.AsyncClient(timeout=5.0) as client:
            r = await client.get(f"{self.url}/api/v1/query", params={"query": promql})
        data = r.json()
        if data.get("status") != "success":
            raise RuntimeError(f"PromQL {promql!r}: {data.get('error')}")
        result: list[Json] = data["data"]["result"]
        return result

    async def aclose(self) -> None:
        if self.process is not None:
            await stop(self.process, 3.0)


class Procs:
    """The etcd members and the nodes of one run."""

    def __init__(
        self, directory: Path, tg: TaskGroup, *, backend: str,
        on_event: Callable[[NodeProc, Json], None],
    ) -> None:
        self.directory = directory
        self.tg = tg
        self.backend = backend
        self.on_event = on_event
        self.etcd_binary = shutil.which("etcd") or "etcd"
        self.members: dict[str, EtcdMember] = {}
        for i in range(1, 4):
            name = f"e{i}"
            self.members[name] = EtcdMember(
                name, free_port(), free_port(), directory / "etcd" / name,
                directory / "logs" / f"etcd-{name}.log",
            )
        self.nodes: dict[str, NodeProc] = {}
        (directory / "logs").mkdir(parents=True, exist_ok=True)

    # -- etcd ------------------------------------------------------------------------------

    @property
    def endpoints(self) -> dict[str, str]:
        return {m.name: m.client_url for m in self.members.values()}

    async def start_member(self, name: str) -> None:
        m = self.members[name]
        cluster = ",".join(f"{x.name}={x.peer_url}" for x in self.members.values())
        log = m.log.open("ab")
        m.process = await anyio.open_process(
            [self.etcd_binary, "--name", m.name, "--data-dir", str(m.data_dir),
             "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
             "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
             "--initial-cluster", cluster, "--initial-cluster-state", "new",
             "--initial-cluster-token", "resilience-cluster-demo",
             "--heartbeat-interval", "50", "--election-timeout", "500",
             "--logger", "zap", "--log-level", "error"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
        log.close()
        m.starts += 1

    async def kill_member(self, name: str) -> None:
        m = self.members[name]
        if m.process is not None and m.process.returncode is None:
            m.process.kill()
            await m.process.wait()

    async def wait_etcd(self, within: float = 20.0) -> None:
        """Until every running member answers and agrees on a leader."""
        async with httpx.AsyncClient(timeout=1.0) as client:
            with anyio.fail_after(within):
                while True:
                    leaders = set()
                    try:
                        for m in self.members.values():
                            if m.process is None or m.process.returncode is not None:
                                continue
                            r = await client.post(f"{m.client_url}/v3/maintenance/status",
                                                  json={})
                            leaders.add(r.json().get("leader"))
                    except (httpx.HTTPError, ValueError):
                        leaders = {None}
                    if len(leaders) == 1 and None not in leaders and "0" not in leaders:
                        return
                    await anyio.sleep(0.1)

    # -- nodes -----------------------------------------------------------------------------

    def plan(self, node_id: str, role: str) -> NodeProc:
        """The node ``node_id`` (not started), with the metrics port it will always use."""
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = NodeProc(node_id, role, metrics_port=free_port())
        return node

    async def start_node(self, node_id: str, role: str, certs: Path) -> NodeProc:
        node = self.plan(node_id, role)
        node.ready = anyio.Event()
        endpoints = ",".join(f"{k}={v}" for k, v in self.endpoints.items())
        members = list(self.members)
        prefer = members[list(self.nodes).index(node_id) % len(members)]  # spread the nodes
        log = (self.directory / "logs" / f"{node_id}.log").open("ab")
        node.process = await anyio.open_process(
            [sys.executable, "-m", "examples.cluster.node", "--id", node_id, "--role", role,
             "--etcd", endpoints, "--prefer", prefer, "--certs", str(certs),
             "--metrics-port", str(node.metrics_port), "--backend", self.backend],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
        )
        log.close()
        node.starts += 1
        node.alive = True
        self.tg.start_soon(self._read, node, node.process)
        return node

    async def _read(self, node: NodeProc, process: Process) -> None:
        def on_event(event: Json) -> None:
            if event.get("event") == "ready":
                node.info = event
                node.ready.set()
            self.on_event(node, event)

        await read_events(process, on_event)
        await process.wait()
        if node.process is process:
            node.alive = False
            self.on_event(node, {"t": time.time(), "node": node.id, "event": "exited",
                                 "code": process.returncode})

    def kill_node(self, node_id: str, sig: signal.Signals = signal.SIGKILL) -> None:
        node = self.nodes[node_id]
        if node.process is not None and node.process.returncode is None:
            node.process.send_signal(sig)

    async def stop_node(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.process is not None:
            await stop(node.process, 3.0)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for n in self.nodes.values():
                    if n.process is not None:
                        tg.start_soon(stop, n.process, 3.0)
            async with anyio.create_task_group() as tg:
                for m in self.members.values():
                    if m.process is not None:
                        tg.start_soon(stop, m.process, 3.0)



