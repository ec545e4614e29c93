"""``python -m examples.rpc``: three nodes calling each other over JSON-RPC, broken on purpose.

The story process is the operator: it makes the certificates (a CA, a server and a client
certificate per node, one for itself), starts nodes A, B and C (separate OS processes on
loopback ports chosen up front, so each knows where its peers are), tells them to start
calling each other, then walks through :data:`PHASES`: steady; kill C; slow B past the
callers' timeout; restore (C restarted on the same port, B back to normal). After each phase
it asks every live node for ``Admin.Stats`` (what it saw as a caller since the previous
phase, and what its own ``LoadShedding`` did) and prints a table; it ends with OK/FAIL checks
(:mod:`.checks`) and exits 1 if any fails. Ctrl-C (or SIGTERM) stops every node on the way
out.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
import httpx
from anyio.abc import Process, TaskGroup

from resilience import Retry, tls
from resilience.httpx import AsyncCommandTransport

from .checks import Measured, checks, table
from .children import Phase, free_port, read_events, run_in_workdir, stop, stop_on_signals
from .jsonrpc import RpcError, RpcUnavailable, call
from .node import ADMIN_PATH, CALL_EVERY, CALL_TIMEOUT, SHED_LIMIT, SHED_TIMEOUT
from .pki import PKI, cert_paths

__all__ = ["PHASES", "Phase", "main"]

Json = dict[str, Any]

#: The repository's root: nodes run as ``python -m examples.rpc.node`` from there.
ROOT = Path(__file__).resolve().parents[2]
NODES = ("A", "B", "C")
KILLED = "C"
SLOWED = "B"
#: Seconds the slowed node adds to every call: past the callers' timeout, and past its own
#: LoadShedding timeout (so it cuts off what it cannot do in time).
SLOW_DELAY = 1.0
#: The restore phase lasts until every call succeeds and every circuit is closed, at least
#: its duration and at most this much longer.
RESTORE_GRACE = 4.0


PHASES = (
    Phase("steady", 2.0, 1.0, f"every node calls both methods of both peers every "
          f"{CALL_EVERY:g} s"),
    Phase(f"kill-{KILLED}", 3.0, 2.0, f"kill node {KILLED} (SIGKILL)"),
    Phase(f"slow-{SLOWED}", 3.0, 2.0, f"slow node {SLOWED} down: +{SLOW_DELAY:g} s per call, "
          f"past the callers' {CALL_TIMEOUT:g} s timeout"),
    Phase("restore", 2.0, 1.0, f"restart {KILLED} on the same port; {SLOWED} back to normal"),
)


@dataclass
class NodeProc:
    id: str
    port: int
    log: Path
    process: Process | None = None
    ready: anyio.Event = field(default_factory=anyio.Event)
    pid: int = 0


class Story:
    def __init__(self, out: TextIO, tmp: Path, *, backend: str, quick: bool) -> None:
        self.out = out
        self.tmp = tmp
        self.backend = backend
        self.quick = quick
        self.t0 = time.time()
        self.m = Measured(nodes=NODES, killed=KILLED, slowed=SLOWED)
        self.pki = PKI(tmp / "certs", ca_name="rpc example CA")
        for node in NODES:  # separate server and client certificates, same common name
            self.pki.issue(f"node-{node}", server=True, client=False, stem=f"{node}.server")
            self.pki.issue(f"node-{node}", server=False, client=True, stem=f"{node}.client")
        self.pki.issue("operator", server=False, client=True)
        (tmp / "logs").mkdir()
        self.nodes = {n: NodeProc(n, free_port(), tmp / "logs" / f"{n}.log") for n in NODES}
        cert, key = cert_paths(self.pki.directory, "operator")
        ctx = tls.client_context(self.pki.ca, certfile=cert, keyfile=key)
        self.admin_http = httpx.AsyncClient(transport=AsyncCommandTransport(
            httpx.AsyncHTTPTransport(verify=ctx),
            timeout=2.0,
            force_closed=True,  # the operator observes: its calls never trip a circuit
            # a request that could not even connect never reached the node: safe to resend
            retry=Retry(attempts=3, backoff=0.1, on=(httpx.ConnectError,)),
            retry_methods=("POST",),
        ))
        self.interrupted = False
        self.quiet = False

    # -- output ---------------------------------------------------------------------------------

    def say(self, text: str, t: float | None = None) -> None:
        self.out.write(f"  {(time.time() if t is None else t) - self.t0:5.2f}s  {text}\n")
        self.out.flush()

    def on_event(self, node: NodeProc, ev: Json) -> None:
        if ev.get("event") == "circuit":
            self.m.events.append(ev)
            if not self.quiet and (ev["old"], ev["new"]) in (("closed", "open"),
                                                             ("half_open", "closed")):
                self.say(f"{node.id}: circuit for {ev['peer']} {ev['old']} -> {ev['new']}",
                         float(ev["t"]))

    # -- the nodes ------------------------------------------------------------------------------

    async def start_node(self, tg: TaskGroup, node: NodeProc) -> None:
        node.ready = anyio.Event()
        peers = ",".join(f"{p.id}={p.port}" for p in self.nodes.values() if p is not node)
        with node.log.open("ab") as log:
            node.process = await anyio.open_process(
                [sys.executable, "-m", "examples.rpc.node", "--id", node.id,
                 "--port", str(node.port), "--peers", peers, "--certs", str(self.pki.directory),
                 "--backend", self.backend],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            )
        tg.start_soon(self._read, node, node.process)
        with anyio.fail_after(20):
            await node.ready.wait()
        if node.process.returncode is not None:
            raise RuntimeError(f"node {node.id} exited with status {node.process.returncode} "
                               f"before it was ready (log: {node.log})")

    async def _read(self, node: NodeProc, process: Process) -> None:
        def on_event(event: Json) -> None:
            if event.get("event") == "ready":
                node.pid = int(event["pid"])
                node.ready.set()
            self.on_event(node, event)

        await read_events(process, on_event)
        code = await process.wait()
        node.ready.set()  # (a node that died before it was ready: do not wait for it)
        if not self.quiet and code not in (0, -signal.SIGKILL):
            self.say(f"{node.id} exited with status {code}; the end of its log:")
            tail = node.log.read_text(errors="replace").splitlines()[-40:]
            self.out.write("".join(f"      {line}\n" for line in tail))

    def alive(self) -> list[NodeProc]:
        return [n for n in self.nodes.values()
                if n.process is not None and n.process.returncode is None]

    async def admin(self, node: NodeProc, method: str, params: Json | None = None) -> Any:
        url = f"https://127.0.0.1:{node.port}{ADMIN_PATH}"
        return await call(self.admin_http, url, method, params or {})

    async def stats(self, *, reset: bool, quiet: bool = False) -> dict[str, Json]:
        """``Admin.Stats`` of every live node, asked at once (one that does not answer is
        left out: the checks then say what is missing)."""
        found: dict[str, Json] = {}

        async def one(node: NodeProc) -> None:
            try:
                found[node.id] = await self.admin(node, "Admin.Stats", {"reset": reset})
            except (httpx.HTTPError, RpcError, RpcUnavailable) as exc:
                if not quiet:
                    self.say(f"{node.id} did not answer Admin.Stats: {type(exc).__name__}: "
                             f"{exc}")

        async with anyio.create_task_group() as tg:
            for node in self.alive():
                tg.start_soon(one, node)
        return dict(sorted(found.items()))

    async def stop_all(self) -> None:
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for node in self.nodes.values():
                    if node.process is not None:
                        tg.start_soon(stop, node.process)

    # -- the phases ---------------------------------------------------------------------------

    async def run_phase(self, phase: Phase, tg: TaskGroup) -> None:
        seconds = phase.quick if self.quick else phase.seconds
        self.out.write(f"\n{phase.name}: {phase.what}\n")
        start = time.time()
        if phase.name == f"kill-{KILLED}":
            node = self.nodes[KILLED]
            assert node.process is not None
            node.process.kill()
            await node.process.wait()
            self.say(f"killed {KILLED} (pid {node.pid})")
        elif phase.name == f"slow-{SLOWED}":
            await self.admin(self.nodes[SLOWED], "Admin.SetDelay", {"delay": SLOW_DELAY})
            self.say(f"{SLOWED} now takes +{SLOW_DELAY:g} s per call (its LoadShedding: "
                     f"{SHED_LIMIT} at once, cut off at {SHED_TIMEOUT:g} s)")
        elif phase.name == "restore":
            await self.start_node(tg, self.nodes[KILLED])
            await self.admin(self.nodes[KILLED], "Admin.Start")
            await self.admin(self.nodes[SLOWED], "Admin.SetDelay", {"delay": 0})
            self.say(f"restarted {KILLED} on port {self.nodes[KILLED].port} "
                     f"(pid {self.nodes[KILLED].pid}); {SLOWED} back to normal")
        if phase.name == f"slow-{SLOWED}":
            with anyio.move_on_after(max(0.0, start + seconds - time.time())):
                await self._probe(self.nodes[SLOWED])
        elif phase.name == "restore":
            await self._until_recovered(start, start + seconds, start + seconds + RESTORE_GRACE)
        else:
            await anyio.sleep(max(0.0, start + seconds - time.time()))
        self.m.phases.append((phase.name, start, time.time()))
        window = self.m.windows[phase.name] = await self.stats(reset=True)
        self.out.write("  what the callers saw (fallback: answered locally; errors: reached "
                       "the caller)\n")
        for line in table(window):
            self.out.write(f"    {line}\n")

    async def _probe(self, node: NodeProc) -> None:
        """The operator's view of the slowed node: its exempt /admin keeps answering."""
        while True:
            began = time.perf_counter()
            try:
                await self.admin(node, "Admin.Stats")
                self.m.probes.append(time.perf_counter() - began)
            except (httpx.HTTPError, ValueError, RpcError, RpcUnavailable):
                self.m.probes.append(None)
            await anyio.sleep(0.2)

    async def _until_recovered(self, start: float, at_least: float, at_most: float) -> None:
        while time.time() < at_most:
            await anyio.sleep(0.2)
            window = await self.stats(reset=False, quiet=True)
            if self.m.recovered_after is None and _recovered(window):
                self.m.recovered_after = time.time() - start
                self.say(f"recovered: every call succeeds, every circuit closed "
                         f"({self.m.recovered_after:.1f} s after the restore began)")
            if self.m.recovered_after is not None and time.time() >= at_least:
                return

    # -- the run --------------------------------------------------------------------------------

    def _interrupted(self) -> None:
        self.interrupted = True

    async def _signals(self, scope: anyio.CancelScope) -> None:
        await stop_on_signals(scope, self.out, "the nodes", self._interrupted)

    async def main(self) -> bool | None:
        """Tell the story; whether every check passed (None: interrupted)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._signals, tg.cancel_scope)
            try:
                async with self.admin_http:
                    self.out.write("start: nodes A, B and C, JSON-RPC over mutual TLS\n")
                    async with anyio.create_task_group() as starting:
                        for node in self.nodes.values():
                            starting.start_soon(self.start_node, tg, node)
                    self.say("up: " + ", ".join(
                        f"{n.id} :{n.port} (pid {n.pid})" for n in self.nodes.values()))
                    for node in self.nodes.values():
                        await self.admin(node, "Admin.Start")
                    for phase in PHASES:
                        await self.run_phase(phase, tg)
                    self.quiet = True
            finally:
                self.quiet = True
                await self.stop_all()
                tg.cancel_scope.cancel()
        if self.interrupted:
            return None
        return self.report()

    def report(self) -> bool:
        results = checks(self.m)
        self.out.write("\nchecks\n")
        for ok, text in results:
            self.out.write(f"  {'OK  ' if ok else 'FAIL'}  {text}\n")
        passed = all(ok for ok, _ in results)
        self.out.write(f"run time {time.time() - self.t0:.1f}s\n")
        self.out.write("all checks passed\n" if passed else "SOME CHECKS FAILED\n")
        self.out.flush()
        return passed


def _recovered(window: dict[str, Json]) -> bool:
    """Every node up and calling, every circuit closed, every call's last outcome ok."""
    if set(window) != set(NODES):
        return False
    for stats in window.values():
        if not stats.get("calling") or set(stats["circuits"].values()) != {"closed"}:
            return False
        for peer in stats["circuits"]:
            methods = stats["seen"].get(peer, {})
            if len(methods) < 2 or any(s["last"] != "ok" for s in methods.values()):
                return False
    return True


async def _run(opts: argparse.Namespace, out: TextIO) -> int:
    async def story(tmp: Path) -> bool | None:
        return await Story(out, tmp, backend=opts.backend, quick=opts.quick).main()

    title = f"resilience JSON-RPC example on {opts.backend}{' (quick)' if opts.quick else ''}"
    return await run_in_workdir(title, "resilience-rpc-", out, story, keep=opts.keep,
                                log_lines=40)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.rpc",
        description="Three nodes on loopback serving JSON-RPC over mutual TLS and calling "
        "each other through resilience; one is killed, one slowed, both restored; OK/FAIL "
        "checks of what the callers saw.",
    )
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio",
                        help="event loop of the story and of every node (default asyncio)")
    parser.add_argument("--quick", action="store_true",
                        help="shorter phases (about 10 s in all instead of 15)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (certificates, node logs)")
    opts = parser.parse_args(argv)
    try:
        return anyio.run(_run, opts, sys.stdout, backend=opts.backend)
    except KeyboardInterrupt:
        sys.stdout.write("\ninterrupted\n")
        return 130
