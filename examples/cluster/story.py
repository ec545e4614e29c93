"""``make cluster-demo``: start the cluster, break it on purpose, check it coped.

The demo process is the operator: it starts a 3-member etcd cluster and five nodes (two
masters, three workers: separate OS processes), produces tasks into etcd, then walks through
the phases of :data:`PHASES` (kill a worker, slow one, kill the leading master, kill the
etcd leader member, restore everything), watching the cluster through etcd, the nodes' admin
endpoint (mutual TLS) and their ``/metrics``. It ends with OK/FAIL checks computed from what
it measured (:mod:`.checks`) and exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import anyio
import httpx
from anyio.abc import TaskGroup
from anyio.streams.tls import TLSAttribute
from prometheus_client.parser import text_string_to_metric_families

from resilience import StateChange, configure_command, run, subscribe, tls

from ..rpc import jsonrpc as rpc
from ..rpc.children import Phase, run_in_workdir, stop_on_signals
from ..rpc.pki import PKI, cert_paths, serial_of
from .checks import Measured, checks, phase_table
from .config import ADMIN_PATH, ELECTION, FAILED, FENCE, LEASE_TTL, LOG, NODES, RESULTS, TASKS
from .etcd import Etcd, EtcdError, EtcdUnavailable
from .master import pad
from .procs import NodeProc, Procs, Prometheus

__all__ = ["ETCD_MISSING", "PHASES", "Phase", "main"]

Json = dict[str, Any]

ETCD_MISSING = (
    "etcd not found: this demo runs a real 3-member etcd cluster (etcd 3.4). Install the "
    "Debian packages etcd-server (the etcd binary) and etcd-client (etcdctl): "
    "apt-get install etcd-server etcd-client (or run `make tools`)"
)

MASTERS = ("m1", "m2")
WORKERS = ("w1", "w2", "w3")
KILLED_WORKER = "w3"
SLOW_WORKER = "w2"
SLOW_DELAY = 1.2  # seconds added to each task on the slowed worker
TASKS_PER_SECOND = 15.0


PHASES = (
    Phase("steady", 4.0, 2.0, "steady dispatch over three workers"),
    Phase("kill-worker", 4.0, 3.0, f"kill worker {KILLED_WORKER} (SIGKILL)"),
    Phase("slow-worker", 4.0, 3.0,
          f"slow worker {SLOW_WORKER} (+{SLOW_DELAY:g} s per task); rotate every certificate"),
    Phase("kill-leader", 5.5, 4.5, "kill the leading master (SIGKILL)"),
    Phase("kill-etcd-leader", 4.0, 3.0, "kill the etcd leader member (SIGKILL)"),
    Phase("restore", 4.0, 3.5,
          f"restart {KILLED_WORKER}, the master and the etcd member; "
          f"{SLOW_WORKER} back to normal"),
)


class Demo:
    def __init__(self, out: TextIO, tmp: Path, *, backend: str, quick: bool, verbose: bool):
        self.out = out
        self.tmp = tmp
        self.backend = backend
        self.quick = quick
        self.verbose = verbose
        self.t0 = time.time()
        self.m = Measured(ttl=LEASE_TTL, masters=MASTERS, workers=WORKERS,
                          killed_worker=KILLED_WORKER, slow_worker=SLOW_WORKER)
        self.pki = PKI(tmp / "certs")
        for name in (*MASTERS, *WORKERS, "orchestrator"):
            self.pki.issue(name)
        self.http_etcd = httpx.AsyncClient(timeout=5.0)
        self._admin_client = self._make_admin_client()
        self._probe_fn = self._probe_call
        self.prometheus: Prometheus | None = None
        self.producing = True
        self.interrupted = False
        self.quiet = False
        self.submitted = 0

    # -- output -----------------------------------------------------------------------------

    def at(self, t: float | None = None) -> str:
        return f"{(time.time() if t is None else t) - self.t0:5.1f}s"

    def say(self, text: str, t: float | None = None) -> None:
        self.out.write(f"  {self.at(t)}  {text}\n")
        self.out.flush()

    def on_event(self, node: NodeProc, ev: Json) -> None:
        self.m.events.append(ev)
        if self.quiet:
            return  # the story is over: shutting down
        kind = ev.get("event")
        t = float(ev.get("t", time.time()))
        if kind == "leader":
            self.say(f"{node.id} leads (term {ev['term']})", t)
        elif kind == "stepped_down":
            self.say(f"{node.id} stepped down (term {ev['term']}): {ev['reason']}", t)
        elif kind == "circuit":
            if (ev["old"], ev["new"]) in (("closed", "open"), ("half_open", "closed")):
                self.say(f"{node.id}: circuit {ev['command']} {ev['old']} -> {ev['new']}", t)
        elif kind == "lease_lost":
            self.say(f"{node.id}: {ev['reason']}", t)
        elif kind == "exited" and ev.get("code") not in (0, -signal.SIGKILL):
            self.say(f"{node.id} exited with status {ev.get('code')}", t)
        elif self.verbose and kind not in ("ready", "registered"):
            self.say(f"{node.id}: {json.dumps(ev)}", t)

    # -- talking to the nodes ---------------------------------------------------------------

    def _make_admin_client(self) -> httpx.AsyncClient:
        cert, key = cert_paths(self.pki.directory, "orchestrator")
        ctx = tls.client_context(self.pki.ca, certfile=cert, keyfile=key)
        return httpx.AsyncClient(verify=ctx, timeout=5.0)

    async def _probe_call(self, node: NodeProc, method: str, params: Json) -> Any:
        return await rpc.call(self._admin_client, node.info["address"] + ADMIN_PATH, method,
                              params)

    async def admin(self, node: NodeProc, method: str, params: Json | None = None) -> Any:
        return await run(f"probe:{node.id}", self._probe_fn, node, method, params or {})

    async def served_serial(self, node: NodeProc) -> int:
        """The serial of the certificate the node's server presents now (a new handshake)."""
        cert, key = cert_paths(self.pki.directory, "orchestrator")
        ctx = tls.client_context(self.pki.ca, certfile=cert, keyfile=key)
        with anyio.fail_after(2):
            stream = await anyio.connect_tcp("127.0.0.1", int(node.info["rpc"]), tls=True,
                                             ssl_context=ctx, tls_hostname="127.0.0.1")
            async with stream:
                der = stream.extra(TLSAttribute.peer_certificate_binary)
        return serial_of(der) if der else 0

    async def scrape(self, node: NodeProc) -> dict[tuple[str, str, str], float]:
        """(metric, command-or-server label, outcome) -> value, from the node's /metrics."""
        url = f"http://127.0.0.1:{node.info['metrics']}/metrics"
        text = (await self.http_etcd.get(url, timeout=2.0)).text
        found: dict[tuple[str, str, str], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                label = s.labels.get("command") or s.labels.get("server") or ""
                found[(s.name, label, s.labels.get("outcome", s.labels.get("state", "")))] = (
                    s.value
                )
        return found

    # -- background watchers ------------------------------------------------------------------

    async def produce(self, etcd: Etcd) -> None:
        """Tasks into etcd at a steady rate (a put is retried until it lands: none is lost
        between the producer and the queue)."""
        start = anyio.current_time()
        while self.producing:
            n = self.submitted + 1
            tid = f"t{n:05d}"
            record = json.dumps({"id": tid, "n": n, "t": time.time()})
            while True:
                try:
                    await etcd.put(TASKS + tid, record)
                    break
                except (EtcdUnavailable, EtcdError):
                    await anyio.sleep(0.05)
            self.submitted = n
            self.m.submitted = n
            delay = start + n / TASKS_PER_SECOND - anyio.current_time()
            if delay > 0:
                await anyio.sleep(delay)

    async def watch(self, etcd: Etcd, procs: Procs, tg: TaskGroup) -> None:
        """Four times a second: who is registered, who leads, and a probe of every node."""
        while True:
            t = time.time()
            for node in list(procs.nodes.values()):
                if node.alive and node.info:
                    tg.start_soon(self._probe, node, t)
            try:
                regs = await etcd.range_prefix(NODES, keys_only=True)
                self.m.registrations.append((t, {kv.key[len(NODES):] for kv in regs}))
            except (EtcdUnavailable, EtcdError):
                pass
            await anyio.sleep(0.25)

    async def _probe(self, node: NodeProc, t: float) -> None:
        start = time.perf_counter()
        try:
            stats = await self.admin(node, "node.stats")
        except Exception:
            self.m.probes.append((t, node.id, None))
            return
        self.m.probes.append((t, node.id, time.perf_counter() - start))
        self.m.stats[node.id] = stats

    # -- the phases ---------------------------------------------------------------------------

    async def current_leader(self, etcd: Etcd) -> tuple[str, int]:
        with anyio.fail_after(10):
            while True:
                try:
                    kv = await etcd.leader(ELECTION)
                except (EtcdUnavailable, EtcdError):
                    kv = None
                if kv is not None:
                    value = json.loads(kv.value)
                    if "term" in value:  # proclaimed: the leader is dispatching
                        return str(value["id"]), kv.create_revision
                await anyio.sleep(0.1)

    async def etcd_leader(self, procs: Procs, exclude: str = "") -> str:
        """The name of the member the running members agree leads ("" if none yet)."""
        names: dict[str, str] = {}
        leaders: set[str] = set()
        for m in procs.members.values():
            if m.name == exclude or m.process is None or m.process.returncode is not None:
                continue
            try:
                status = (await self.http_etcd.post(
                    f"{m.client_url}/v3/maintenance/status", json={}, timeout=0.3
                )).json()
            except (httpx.HTTPError, ValueError):
                return ""
            names[str(status["header"]["member_id"])] = m.name
            leaders.add(str(status.get("leader", "0")))
        if len(leaders) != 1:
            return ""
        (leader,) = leaders
        return names.get(leader, "")

    async def run_phase(self, phase: Phase, etcd: Etcd, procs: Procs, tg: TaskGroup) -> None:
        seconds = phase.quick if self.quick else phase.seconds
        start = time.time()
        self.out.write(f"\n{phase.name}: {phase.what}\n")
        self.m.phases.append((phase.name, start, start + seconds))
        if phase.name == "kill-worker":
            procs.kill_node(KILLED_WORKER)
            self.m.kills[KILLED_WORKER] = time.time()
            self.say(f"killed {KILLED_WORKER}")
        elif phase.name == "slow-worker":
            await self.admin(procs.nodes[SLOW_WORKER], "worker.slow", {"delay": SLOW_DELAY})
            self.say(f"{SLOW_WORKER} now takes +{SLOW_DELAY:g} s per task")
            for name in list(self.pki.serials):
                self.pki.issue(name, days=2)
            self.m.rotated_at = time.time()
            self.m.new_serials = dict(self.pki.serials)
            self.say("rotated every certificate (new keys, valid 2 days instead of 1)")
        elif phase.name == "kill-leader":
            leader, term = await self.current_leader(etcd)
            procs.kill_node(leader)
            self.m.kills[leader] = time.time()
            self.m.killed_leader = (leader, term)
            self.say(f"killed {leader}, the leader (term {term})")
        elif phase.name == "kill-etcd-leader":
            name = await self._kill_etcd_leader(procs)
            tg.start_soon(self._watch_etcd_election, procs, name)
        elif phase.name == "restore":
            await self._restore(procs, tg)
        await anyio.sleep(max(0.0, start + seconds - time.time()))
        if phase.name == "slow-worker":
            await self._after_slow(procs)

    async def _kill_etcd_leader(self, procs: Procs) -> str:
        with anyio.fail_after(5):
            while not (name := await self.etcd_leader(procs)):
                await anyio.sleep(0.1)
        await procs.kill_member(name)
        self.m.etcd_killed = (name, time.time())
        self.say(f"killed etcd member {name}, the raft leader")
        return name

    async def _watch_etcd_election(self, procs: Procs, killed: str) -> None:
        with anyio.move_on_after(10):
            while True:
                name = await self.etcd_leader(procs, exclude=killed)
                if name and name != killed:
                    self.m.etcd_elected = (name, time.time())
                    self.say(f"etcd elected {name}")
                    return
                await anyio.sleep(0.05)

    async def _after_slow(self, procs: Procs) -> None:
        """What the slowed worker did to protect itself, and which certificates the servers
        present now (rotation + reload)."""
        try:
            metrics = await self.scrape(procs.nodes[SLOW_WORKER])
        except (httpx.HTTPError, KeyError):
            metrics = {}
        calls = "resilience_command_calls_total"
        self.m.shed = {
            "rejected": metrics.get((calls, "rpc", "rejected"), 0.0),
            "timeout": metrics.get((calls, "rpc", "timeout"), 0.0),
        }
        for node in procs.nodes.values():
            if node.alive and node.info:
                try:
                    self.m.served_serials[node.id] = await self.served_serial(node)
                except (OSError, TimeoutError, ssl.SSLError, anyio.BrokenResourceError):
                    self.m.served_serials[node.id] = 0

    async def _restore(self, procs: Procs, tg: TaskGroup) -> None:
        certs = self.pki.directory
        if self.m.etcd_killed:
            await procs.start_member(self.m.etcd_killed[0])
            self.say(f"restarted etcd member {self.m.etcd_killed[0]}")
        await procs.start_node(KILLED_WORKER, "worker", certs)
        if self.m.killed_leader:
            await procs.start_node(self.m.killed_leader[0], "master", certs)
        await self.admin(procs.nodes[SLOW_WORKER], "worker.slow", {"delay": 0})
        self.m.restored_at = time.time()
        self.say(f"restarted {KILLED_WORKER}"
                 + (f" and {self.m.killed_leader[0]}" if self.m.killed_leader else "")
                 + f"; {SLOW_WORKER} back to normal")

    # -- the run ------------------------------------------------------------------------------

    async def start(self, procs: Procs, etcd: Etcd) -> None:
        self.out.write("start: a 3-member etcd cluster, 2 masters and 3 workers\n")
        for name in procs.members:
            await procs.start_member(name)
        await procs.wait_etcd()
        self.m.etcd_up = time.time()
        self.say(f"etcd cluster up: {', '.join(procs.endpoints.values())} "
                 f"(leader {await self.etcd_leader(procs)})")
        await etcd.put(FENCE, pad(0))
        certs = self.pki.directory
        for nid in MASTERS:
            await procs.start_node(nid, "master", certs)
        for nid in WORKERS:
            await procs.start_node(nid, "worker", certs)
        with anyio.fail_after(20):
            for node in procs.nodes.values():
                await node.ready.wait()
        self.m.nodes_up = time.time()
        self.say("nodes up: " + ", ".join(
            f"{n.id} ({n.role}, rpc :{n.info['rpc']}, metrics :{n.info['metrics']})"
            for n in procs.nodes.values()
        ))
        leader, term = await self.current_leader(etcd)
        self.say(f"leader: {leader} (term {term})")

    async def drain(self, etcd: Etcd) -> None:
        """Stop producing; wait until every task has a result or a failure record."""
        self.producing = False
        self.out.write("\ndrain: no new tasks; waiting for every task to be settled\n")
        with anyio.move_on_after(12):
            while True:
                try:
                    done = len(await etcd.range_all(RESULTS, keys_only=True))
                    done += len(await etcd.range_all(FAILED, keys_only=True))
                except (EtcdUnavailable, EtcdError):
                    done = -1
                if done >= self.submitted:
                    break
                await anyio.sleep(0.2)
        self.say(f"{self.submitted} tasks submitted, {max(done, 0)} settled")

    async def collect(self, etcd: Etcd, procs: Procs) -> None:
        self.m.tasks = [kv.key[len(TASKS):] for kv in await etcd.range_all(TASKS, keys_only=True)]
        self.m.results = [(kv.mod_revision, kv.json()) for kv in await etcd.range_all(RESULTS)]
        self.m.failed = [kv.json() for kv in await etcd.range_all(FAILED)]
        self.m.log = [(kv.mod_revision, kv.json()) for kv in await etcd.range_all(LOG)]
        for node in procs.nodes.values():
            if node.alive and node.info:
                try:
                    self.m.stats[node.id] = await self.admin(node, "node.stats")
                    metrics = await self.scrape(node)
                    self.m.scraped[node.id] = sum(
                        1 for k in metrics if k[0].startswith("resilience_")
                    )
                except Exception:
                    self.m.scraped[node.id] = 0

    async def ask_prometheus(self) -> None:
        prom = self.prometheus
        if prom is None:
            return
        await anyio.sleep(1.5)  # one more scrape after the end
        queries = {
            "targets up": "count by (role) (up == 1)",
            "worker circuits seen open": 'max by (command) (max_over_time('
            'resilience_circuit_state{command=~"worker:.*",state="open"}[10m]))',
            "leader calls to workers": 'sum by (outcome) (max_over_time('
            'resilience_command_calls_total{command=~"worker:.*"}[10m]))',
            "worker shedding": 'sum by (node, outcome) (max_over_time('
            'resilience_command_calls_total{command="rpc",outcome=~"rejected|timeout"}[10m]))',
            "certificate expiry moved (s)": "max by (node) "
            "(resilience_tls_certificate_expiry_timestamp_seconds) - min by (node) "
            "(min_over_time(resilience_tls_certificate_expiry_timestamp_seconds[10m]))",
            "dispatch jobs": 'sum by (outcome) (max_over_time('
            'resilience_pool_jobs_total{pool="dispatch"}[10m]))',
        }
        self.out.write(f"\nprometheus ({prom.url}, scraping every node each second)\n")
        for title, q in queries.items():
            try:
                rows = await prom.query(q)
            except (httpx.HTTPError, RuntimeError) as exc:
                self.out.write(f"  {title}: query failed: {exc}\n")
                continue
            answer = ", ".join(
                f"{','.join(v for k, v in sorted(r['metric'].items())) or 'all'}="
                f"{float(r['value'][1]):g}" for r in rows
            ) or "none"
            self.out.write(f"  {title:<30} {answer}\n")
            self.out.write(f"    {q}\n")
            self.m.promql[title] = {
                ",".join(v for _, v in sorted(r["metric"].items())): float(r["value"][1])
                for r in rows
            }

    async def _prometheus(self, prom: Prometheus, procs: Procs) -> None:
        """Start Prometheus at once: it takes a few seconds to begin scraping."""
        try:
            await prom.start(list(procs.nodes.values()))
        except (OSError, TimeoutError) as exc:
            self.say(f"prometheus did not start ({exc}): no PromQL answers")
            await prom.aclose()
            self.prometheus = None
            return
        self.say(f"prometheus at {prom.url} scrapes every node's /metrics each second")

    def on_own_event(self, event: object) -> None:
        """The demo's own circuits (its etcd client, its probes), narrated like the nodes'."""
        if isinstance(event, StateChange) and (event.old, event.new) in (
            ("closed", "open"), ("half_open", "closed")
        ):
            self.say(f"demo: circuit {event.command} {event.old} -> {event.new}")

    async def main(self) -> bool | None:
        """Tell the story; whether every check passed (None: interrupted, no verdict)."""
        # the story narrates circuit changes itself: no log lines in between
        logging.getLogger("resilience.circuit").setLevel(logging.ERROR)
        unsubscribe = subscribe(self.on_own_event)
        try:
            return await self._main()
        finally:
            unsubscribe()

    def _interrupted(self) -> None:
        self.interrupted = True

    async def _signals(self, scope: anyio.CancelScope) -> None:
        """Ctrl-C or SIGTERM: stop the story; every process is stopped on the way out."""
        await stop_on_signals(scope, self.out, "every process", self._interrupted)

    async def _main(self) -> bool | None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._signals, tg.cancel_scope)
            procs = Procs(self.tmp, tg, backend=self.backend, on_event=self.on_event)
            try:
                async with self.http_etcd, self._admin_client:
                    etcd = Etcd(procs.endpoints, self.http_etcd)
                    for nid in MASTERS:
                        procs.plan(nid, "master")
                    for nid in WORKERS:
                        procs.plan(nid, "worker")
                    configure_command_probes(procs)
                    binary = shutil.which("prometheus")
                    if binary:
                        self.prometheus = Prometheus(binary, self.tmp / "prometheus")
                        tg.start_soon(self._prometheus, self.prometheus, procs)
                    else:
                        self.say("prometheus not installed: skipping the PromQL answers "
                                 "(apt-get install --no-install-recommends prometheus)")
                    await self.start(procs, etcd)
                    async with anyio.create_task_group() as background:
                        background.start_soon(self.produce, etcd)
                        background.start_soon(self.watch, etcd, procs, background)
                        for phase in PHASES:
                            await self.run_phase(phase, etcd, procs, background)
                        await self.drain(etcd)
                        await self.collect(etcd, procs)
                        self.quiet = True
                        background.cancel_scope.cancel()
                    await self.ask_prometheus()
            finally:
                with anyio.CancelScope(shield=True):
                    if self.prometheus is not None:
                        await self.prometheus.aclose()
                    await procs.aclose()
                tg.cancel_scope.cancel()
        if self.interrupted:
            return None
        return self.report()

    def report(self) -> bool:
        w = self.out.write
        w("\nsummary: tasks committed per worker in each phase (from the results in etcd)\n")
        for line in phase_table(self.m):
            w(f"  {line}\n")
        results = checks(self.m)
        w("checks\n")
        for ok, text in results:
            w(f"  {'OK  ' if ok else 'FAIL'}  {text}\n")
        passed = all(ok for ok, _ in results)
        w(f"run time {time.time() - self.t0:.1f}s\n")
        w("all checks passed\n" if passed else "SOME CHECKS FAILED\n")
        self.out.flush()
        return passed


def configure_command_probes(procs: Procs) -> None:
    """The demo's own probes of the nodes: short timeout, never tripped (they measure)."""
    for node_id in procs.nodes:
        configure_command(f"probe:{node_id}", timeout=0.5, max_concurrent_requests=4,
                          force_closed=True)


async def _run(opts: argparse.Namespace, out: TextIO) -> int:
    async def story(tmp: Path) -> bool | None:
        demo = Demo(out, tmp, backend=opts.backend, quick=opts.quick, verbose=opts.verbose)
        return await demo.main()

    title = f"resilience cluster demo on {opts.backend}{' (quick)' if opts.quick else ''}"
    return await run_in_workdir(title, "resilience-cluster-", out, story, keep=opts.keep)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.cluster",
        description="A 3-member etcd cluster and five nodes on loopback, guarded by "
        "resilience; a scripted story of failures with OK/FAIL checks.",
    )
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio",
                        help="event loop of the demo and of every node (default asyncio)")
    parser.add_argument("--quick", action="store_true",
                        help="shorter phases (about 25-30 s in all instead of 35)")
    parser.add_argument("--verbose", action="store_true", help="print every node event")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (logs, etcd data, certificates)")
    opts = parser.parse_args(argv)
    if shutil.which("etcd") is None:
        sys.stderr.write(ETCD_MISSING + "\n")
        return 2
    try:
        return anyio.run(_run, opts, sys.stdout, backend=opts.backend)
    except KeyboardInterrupt:
        sys.stdout.write("\ninterrupted\n")
        return 130
