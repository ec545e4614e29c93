"""A master node: campaigns through etcd's election API; the leader dispatches.

Election: the standby asks ``election/leader`` every 0.2 s and campaigns only when there is
none (a campaign given up after 0.3 s withdraws itself: etcd deletes the candidate key when
the gateway cancels it), so every etcd call stays short. The term is the create revision of
the leader key. The leader's work runs in a cancel scope bound to the node's lease
(:meth:`LeaseSession.bind`): a leader that cannot renew steps down before etcd could elect
someone else. It also steps down when the leader key is no longer its own.

Dispatch: the leader reads the task queue (``/cluster/tasks/``), skips what has a result or a
failure record, and feeds the rest through a :class:`~resilience.WorkerPool` (bounded queue:
reading the queue waits while the workers are busy). Each task goes to the workers in an order
fixed by its id (so a task re-sent after a failover meets the same worker first, which answers
from its record); each worker has its own command (``worker:<id>``: timeout, bulkhead,
circuit, retry); a worker whose circuit is open is skipped, a failed attempt moves on to the
next worker. A result is committed with a transaction that writes it only if the leader key is
still this term's and no result exists yet: exactly one result per task, and none from a
deposed leader.

Fencing: once a second the leader takes the lock ``/cluster/locks/last-dispatch`` and writes
the last-dispatch record with a transaction comparing the lock's revision (the fencing token)
against the highest token written so far: a holder that lost the lock (lease ended) can never
write after a newer one.
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import httpx

from resilience import (
    CircuitOpenError,
    CommandTimeoutError,
    MaxConcurrencyError,
    Retry,
    WorkerPool,
    configure_command,
    run,
)

from ..rpc import jsonrpc as rpc
from .config import (
    DISPATCH_POOL_QUEUE,
    DISPATCH_POOL_WORKERS,
    ELECTION,
    FAILED,
    FENCE,
    KEEPALIVE_EVERY,
    LAST,
    LEASE_MARGIN,
    LOCK,
    LOG,
    NODES,
    RESULTS,
    RPC_PATH,
    TASK_DEADLINE,
    TASKS,
    WORKER_CIRCUIT,
)
from .etcd import (
    Etcd,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    compare_create,
    compare_value_less,
    compare_version,
    put_op,
    range_op,
    unb64,
)
from .session import LeaseSession

__all__ = ["Master", "pad"]

Json = dict[str, Any]
Emit = Callable[..., None]


def pad(token: int) -> str:
    """A revision as a fixed-width string: etcd compares values as bytes."""
    return f"{token:020d}"


def _transient_rpc(error: Exception) -> bool:
    """Retried on the same worker: a kept-alive connection that broke under the request."""
    return isinstance(error, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError)


def _kvs(response: Json) -> list[KeyValue]:
    return [KeyValue.of(kv) for kv in response.get("response_range", {}).get("kvs", [])]


class _Term:
    """One leadership term: its revision, the leader key, why it ended."""

    def __init__(self, leader: Json) -> None:
        self.leader = leader
        self.rev = int(leader["rev"])
        self.key = unb64(leader["key"])
        self.scope = anyio.CancelScope()
        self.reason = ""

    def end(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason
        self.scope.cancel()


class Master:
    def __init__(
        self, node_id: str, etcd: Etcd, session: LeaseSession,
        peers: Callable[[], httpx.AsyncClient], emit: Emit, address: str,
    ) -> None:
        self.id = node_id
        self.etcd = etcd
        self.session = session
        self._peers = peers
        self.emit = emit
        self.address = address
        self.term: _Term | None = None
        self.terms: list[int] = []
        self.workers: dict[str, Json] = {}
        self.counts: Counter[str] = Counter()
        self.by_worker: dict[str, Counter[str]] = {}
        self._send_fn = self._send  # one object: run() finds its caller by identity
        self.dispatched = 0
        self.last_task = ""

    # -- election ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Campaign, lead, step down, campaign again: forever."""
        while True:
            if self.session.remaining() < LEASE_MARGIN + KEEPALIVE_EVERY:
                await anyio.sleep(0.1)  # not sure the lease lives: no campaign on it
                continue
            try:
                current = await self.etcd.leader(ELECTION)
            except (EtcdUnavailable, EtcdError):
                await anyio.sleep(0.2)
                continue
            if current is not None and current.lease != self.session.lease:
                await anyio.sleep(0.2)  # someone leads: stand by
                continue
            try:
                value = json.dumps({"id": self.id, "state": "campaigning"})
                leader = await self.etcd.campaign(
                    ELECTION, self.session.lease, value, wait=0.3
                )
            except (EtcdUnavailable, EtcdError):
                leader = None
            if leader is None:
                await anyio.sleep(0.2)
                continue
            await self._lead(_Term(leader))

    async def _lead(self, term: _Term) -> None:
        self.term = term
        self.terms.append(term.rev)
        started = time.time()
        self.emit("leader", term=term.rev, key=term.key)
        with term.scope:
            self.session.bind(term.scope)
            try:
                await self.etcd.proclaim(
                    term.leader, json.dumps({"id": self.id, "term": term.rev,
                                             "address": self.address})
                )
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watch_workers, term)
                    tg.start_soon(self._watch_leadership, term)
                    tg.start_soon(self._fence_loop, term)
                    await self._dispatch(term)
            except (EtcdUnavailable, EtcdError) as exc:
                term.end(f"etcd: {exc}")
            finally:
                self.session.unbind(term.scope)
        if not term.reason:
            term.reason = "lease could not be renewed in time"
        self.term = None
        self.emit("stepped_down", term=term.rev, reason=term.reason,
                  led=round(time.time() - started, 3))
        # Best effort: give the election up at once (if the lease still lives, the key would
        # otherwise keep the office until the lease ends).
        with anyio.move_on_after(0.5):
            try:
                await self.etcd.resign(term.leader)
            except (EtcdUnavailable, EtcdError):
                pass

    async def resign(self) -> None:
        """A clean exit: resign, so the standby takes over at once."""
        term = self.term
        if term is None:
            return
        term.end("resigned (shutting down)")
        with anyio.move_on_after(1.0):
            try:
                await self.etcd.resign(term.leader)
            except (EtcdUnavailable, EtcdError):
                pass

    async def _watch_leadership(self, term: _Term) -> None:
        """Step down as soon as etcd names another leader (or none)."""
        while True:
            await anyio.sleep(0.25)
            try:
                current = await self.etcd.leader(ELECTION)
            except (EtcdUnavailable, EtcdError):
                continue
            if current is None or current.create_revision != term.rev:
                term.end("etcd names another leader")
                return

    async def _watch_workers(self, term: _Term) -> None:
        """The registered workers (their leases keep them listed while they live)."""
        while True:
            try:
                regs = await self.etcd.range_prefix(NODES)
            except (EtcdUnavailable, EtcdError):
                regs = None
            if regs is not None:
                workers = {}
                for kv in regs:
                    reg = kv.json()
                    if reg.get("role") == "worker":
                        workers[str(reg["id"])] = reg
                for wid in workers.keys() - self.workers.keys():
                    configure_command(
                        f"worker:{wid}",
                        retry=Retry(attempts=2, backoff=0.02, max_backoff=0.1,
                                    on=_transient_rpc, budget=0.2),
                        **WORKER_CIRCUIT,
                    )
                self.workers = workers
            await anyio.sleep(0.3)

    # -- dispatch ----------------------------------------------------------------------------

    async def _dispatch(self, term: _Term) -> None:
        while True:  # what is settled already (asked again until etcd answers)
            try:
                done = {kv.key[len(RESULTS):]
                        for kv in await self.etcd.range_all(RESULTS, keys_only=True)}
                done |= {kv.key[len(FAILED):]
                         for kv in await self.etcd.range_all(FAILED, keys_only=True)}
                break
            except (EtcdUnavailable, EtcdError):
                await anyio.sleep(0.1)
        in_flight: set[str] = set()
        start: str | None = None
        while not self.workers:
            await anyio.sleep(0.05)

        async def place(task: Json) -> None:
            try:
                await self._place(term, task)
            finally:
                in_flight.discard(str(task["id"]))
                done.add(str(task["id"]))

        async with WorkerPool(
            workers=DISPATCH_POOL_WORKERS, queue_size=DISPATCH_POOL_QUEUE, name="dispatch"
        ) as pool:
            while True:
                try:
                    page = await self.etcd.range_prefix(TASKS, start=start, limit=100)
                except (EtcdUnavailable, EtcdError):
                    await anyio.sleep(0.1)
                    continue
                for kv in page:
                    task = kv.json()
                    tid = str(task["id"])
                    if tid in done or tid in in_flight:
                        continue
                    in_flight.add(tid)
                    await pool.submit(place, task)  # waits while the queue is full
                if page:
                    start = page[-1].key + "\0"
                if len(page) < 100:
                    await anyio.sleep(0.1)

    def _order(self, task_id: str) -> list[str]:
        ids = sorted(self.workers)
        if not ids:
            return []
        first = zlib.crc32(task_id.encode()) % len(ids)
        return ids[first:] + ids[:first]

    async def _send(self, wid: str, task: Json, term: int) -> Json:
        address = self.workers[wid]["address"]
        result: Json = await rpc.call(
            self._peers(), address + RPC_PATH, "task.run",
            {"id": task["id"], "n": task["n"], "term": term, "leader": self.id},
        )
        return result

    def _count(self, wid: str, outcome: str) -> None:
        self.by_worker.setdefault(wid, Counter())[outcome] += 1

    async def _place(self, term: _Term, task: Json) -> None:
        """Try the workers in the task's order until one does it; report it failed after
        :data:`TASK_DEADLINE`. ``route`` (kept in the result) says what each attempt met."""
        tid = str(task["id"])
        deadline = anyio.current_time() + TASK_DEADLINE
        route: list[str] = []
        while anyio.current_time() < deadline:
            for wid in self._order(tid):
                if wid not in self.workers:
                    continue
                outcome = "ok"
                try:
                    result = await run(f"worker:{wid}", self._send_fn, wid, task, term.rev)
                except CircuitOpenError:
                    outcome = "open"
                except CommandTimeoutError:
                    outcome = "timeout"
                except MaxConcurrencyError:
                    outcome = "busy"
                except rpc.RpcUnavailable as exc:
                    outcome = f"http{exc.status}"
                except rpc.RpcError as exc:
                    outcome = f"rpc{exc.code}"
                except Exception as exc:  # refused, reset: the worker is gone or going
                    outcome = type(exc).__name__
                route = [*route[-15:], f"{wid}:{outcome}"]
                self._count(wid, outcome)
                if outcome == "ok":
                    await self._commit(term, task, wid, result, route)
                    return
                self.counts["rerouted_open" if outcome == "open" else "rerouted_error"] += 1
            await anyio.sleep(0.2)  # every worker failed or is open: wait, then again
        await self._give_up(term, task, route)

    async def _txn_retrying(
        self, compare: list[Json], success: list[Json], failure: list[Json]
    ) -> tuple[bool, list[Json]]:
        """A txn, asked again while no member answers (the term's scope bounds it)."""
        while True:
            try:
                return await self.etcd.txn(compare, success, failure)
            except (EtcdUnavailable, EtcdError):
                await anyio.sleep(0.1)

    async def _commit(
        self, term: _Term, task: Json, wid: str, result: Json, route: list[str]
    ) -> None:
        tid = str(task["id"])
        write = uuid.uuid4().hex
        record = json.dumps({"task": tid, "worker": wid, "term": term.rev, "leader": self.id,
                             "t": time.time(), "route": route, "result": result,
                             "write": write})
        ok, responses = await self._txn_retrying(
            [compare_create(term.key, term.rev), compare_version(RESULTS + tid, 0),
             compare_version(FAILED + tid, 0)],
            [put_op(RESULTS + tid, record)],
            [range_op(term.key), range_op(RESULTS + tid), range_op(FAILED + tid)],
        )
        if ok:
            self.counts["committed"] += 1
            self.dispatched += 1
            self.last_task = tid
            return
        leader, existing, failed = (_kvs(r) for r in responses)
        if existing and existing[0].json().get("write") == write:
            self.counts["committed"] += 1  # an attempt that timed out had landed
            return
        if not leader or leader[0].create_revision != term.rev:
            self.counts["fenced_commits"] += 1
            term.end("a commit was fenced off: the leader key is no longer this term's")
            return
        self.counts["duplicates_refused"] += 1

    async def _give_up(self, term: _Term, task: Json, route: list[str]) -> None:
        tid = str(task["id"])
        record = json.dumps({"task": tid, "term": term.rev, "leader": self.id, "t": time.time(),
                             "route": route})
        ok, _ = await self._txn_retrying(
            [compare_create(term.key, term.rev), compare_version(RESULTS + tid, 0),
             compare_version(FAILED + tid, 0)],
            [put_op(FAILED + tid, record)],
            [],
        )
        self.counts["reported_failed" if ok else "failure_not_recorded"] += 1

    # -- the lock-guarded record --------------------------------------------------------------

    async def _fence_loop(self, term: _Term) -> None:
        while True:
            await anyio.sleep(1.0)
            try:
                await self._write_last_dispatch(term)
            except (EtcdUnavailable, EtcdError):
                self.counts["lock_unavailable"] += 1

    async def _write_last_dispatch(self, term: _Term) -> None:
        held = await self.etcd.lock(LOCK, self.session.lease, wait=0.3)
        if held is None:
            self.counts["lock_busy"] += 1
            return
        token = held.create_revision
        try:
            record = json.dumps({"leader": self.id, "term": term.rev, "token": token,
                                 "dispatched": self.dispatched, "last_task": self.last_task,
                                 "t": time.time()})
            ok, _ = await self.etcd.txn(
                [compare_create(held.key, token), compare_value_less(FENCE, pad(token + 1))],
                [put_op(FENCE, pad(token)), put_op(LOG + pad(token), record),
                 put_op(LAST, record)],
            )
            self.counts["fenced_writes" if ok else "fenced_refused"] += 1
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(0.5):
                try:
                    await self.etcd.unlock(held.key)
                except (EtcdUnavailable, EtcdError):
                    pass

    def stats(self) -> Json:
        term = self.term
        return {
            "leader": term is not None,
            "term": term.rev if term else None,
            "terms": self.terms,
            "counts": dict(self.counts),
            "by_worker": {w: dict(c) for w, c in self.by_worker.items()},
            "workers": sorted(self.workers),
        }
