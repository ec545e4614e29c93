"""A worker node's work: ``task.run`` over JSON-RPC, idempotent by task id.

A task id is its idempotency key: a task already done here is answered from the record of
results without being done again (a new leader re-sending what the old one had in flight, a
retry after a lost reply); a task still running here is waited for, not started twice.
``worker.slow`` (from the demo) makes every task take longer: the leader's timeouts and this
worker's load shedding (``LoadShedding`` in front of ``/rpc``) then do their job.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import Any

import anyio

from ..rpc.jsonrpc import Peer, RpcError

__all__ = ["Worker"]

Json = dict[str, Any]


class Worker:
    def __init__(self, node_id: str) -> None:
        self.id = node_id
        self.done: dict[str, Json] = {}
        self.running: dict[str, anyio.Event] = {}
        self.delay = 0.0
        self.counts: Counter[str] = Counter()
        self.clients: dict[str, int] = {}  # peer name -> serial of its last client certificate
        self._rng = random.Random(node_id)

    async def task_run(self, params: Json, peer: Peer) -> Json:
        try:
            task_id = str(params["id"])
            n = int(params["n"])
        except (KeyError, TypeError, ValueError):
            raise RpcError(-32602, "task.run needs id and n") from None
        self.clients[peer.name] = peer.serial
        if task_id in self.done:
            self.counts["replayed"] += 1
            return self.done[task_id]
        running = self.running.get(task_id)
        if running is not None:
            self.counts["joined"] += 1
            await running.wait()
            if task_id in self.done:
                return self.done[task_id]
            raise RpcError(-32002, f"task {task_id} was abandoned here, send it again")
        event = self.running[task_id] = anyio.Event()
        self.counts["started"] += 1
        try:
            await anyio.sleep(self._rng.uniform(0.01, 0.03) + self.delay)  # the work
            digest = hashlib.sha256(f"{task_id}:{n}".encode()).hexdigest()[:16]
            result = {"digest": digest, "worker": self.id}
            self.done[task_id] = result
            self.counts["executed"] += 1
            return result
        finally:
            if task_id not in self.done:
                self.counts["abandoned"] += 1  # cut off (504) or the caller went away
            del self.running[task_id]
            event.set()

    async def slow(self, params: Json, peer: Peer) -> Json:
        self.delay = float(params.get("delay", 0.0))
        return {"delay": self.delay}

    def stats(self) -> Json:
        return {"counts": dict(self.counts), "delay": self.delay, "clients": self.clients,
                "done": len(self.done)}
