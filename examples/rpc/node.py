"""One node of the JSON-RPC example, as its own OS process: ``python -m examples.rpc.node``.

Started by the story (``python -m examples.rpc``) with its id, its port, its peers' ports and
the directory of certificates. A node

* serves ``MathService.Add`` and ``Arith.Multiply`` (``/rpc``) and ``Admin.*`` (``/admin``)
  over JSON-RPC, HTTP/1.1 and mutual TLS (``resilience.tls.serve_tls`` with a
  ``server_context(..., client_ca=ca.pem)``), behind ``resilience.asgi.LoadShedding``:
  ``/rpc`` gets at most :data:`SHED_LIMIT` requests at once, the excess is shed (``503`` with
  ``Retry-After``) and a request running past :data:`SHED_TIMEOUT` is cut off (``504``);
  ``/admin`` is exempt, so the operator always gets through;
* once told to (``Admin.Start``), calls both methods of every peer :data:`CALL_EVERY` seconds
  through ONE ``httpx.AsyncClient`` whose transport is a
  ``resilience.httpx.AsyncCommandTransport``: each peer (host:port) gets its own command, so
  its own timeout, bulkhead, circuit breaker and retries. ``Arith.Multiply`` has a fallback
  (computed locally, and marked as such); ``MathService.Add`` has none;
* counts what it saw, per peer and method (:mod:`.tally`), for ``Admin.Stats``;
* reports its circuits' changes as JSON lines on stdout, which the story prints.

Methods are allowed by the caller's certificate name: nodes (``node-*``) may call the math
methods, only the operator may start the callers or slow a node down (``Admin.SetDelay``).
SIGTERM or SIGINT stops a node cleanly; it also stops when its parent goes away.
"""

from __future__ import annotations

import argparse
import json
import logging
import operator
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio.abc import TaskGroup
from prometheus_client import REGISTRY

from resilience import (
    CircuitOpenError,
    CommandTimeoutError,
    FailedResultError,
    MaxConcurrencyError,
    Retry,
    RetryScheduled,
    StateChange,
    get_circuit,
    subscribe,
    tls,
)
from resilience.asgi import LoadShedding
from resilience.httpx import AsyncCommandTransport

from .jsonrpc import JsonRpc, Method, Peer, RpcError, RpcUnavailable, call, serve
from .pki import cert_paths
from .tally import Tally

__all__ = ["ADD", "MULTIPLY", "Answer", "Node", "classify", "main", "peer_client"]

Json = dict[str, Any]

RPC_PATH = "/rpc"
ADMIN_PATH = "/admin"
ADD = "MathService.Add"
MULTIPLY = "Arith.Multiply"

#: Each node calls both methods of each peer this often, each call in its own task: callers
#: keep their pace when a peer slows down, as real clients do.
CALL_EVERY = 0.1
#: The command per peer (``AsyncCommandTransport`` makes one per host:port): no response
#: headers within this time is a timeout...
CALL_TIMEOUT = 0.3
#: ... one retry 20 ms later (after a connection refused or broken, a timeout, a 5xx); the
#: transport never retries its own refusals (open circuit, full bulkhead) ...
RETRY = Retry(attempts=2, backoff=0.02)
#: ... at most this many requests in flight to one peer ...
CALL_LIMIT = 8
#: ... and the circuit: open at >= 50 % errors over >= 5 calls in the last second; one
#: trial call 0.75 s after it opened (or after the last failed trial).
CIRCUIT_VOLUME = 5
CIRCUIT_ERROR_PERCENT = 50
CIRCUIT_WINDOW = 1.0
CIRCUIT_SLEEP = 0.75
#: The caller's own deadline for a whole call (both attempts): retries never run past it, so
#: a ``Retry-After: 1`` from a shedding peer stops the retries instead of waiting a second.
CALL_DEADLINE = 0.8

#: A node's own protection (``LoadShedding`` in front of ``/rpc``): requests inside the
#: application at once, how long one may wait for a slot (then 503), how long one may run
#: (then 504).
SHED_NAME = "rpc"
SHED_LIMIT = 8
SHED_MAX_WAIT = 0.02
SHED_TIMEOUT = 0.5

#: What each method computes; the callers check every answer.
EXPECTED: dict[str, Callable[[int, int], int]] = {ADD: operator.add, MULTIPLY: operator.mul}
#: Local answers, for the methods that have one: a product is cheap to compute here, so a
#: failed ``Arith.Multiply`` is answered locally (marked as such). ``MathService.Add`` has
#: none: its failures reach the caller.
FALLBACKS: dict[str, Callable[[int, int], int]] = {MULTIPLY: operator.mul}


def peer_client(certs: Path, node_id: str) -> httpx.AsyncClient:
    """The node's one client for all its peers: mutual TLS with its client certificate, and a
    command per peer (host:port) with timeout, bulkhead, circuit breaker and retries."""
    cert, key = cert_paths(certs, f"{node_id}.client")
    ctx = tls.client_context(certs / "ca.pem", certfile=cert, keyfile=key)
    transport = AsyncCommandTransport(
        httpx.AsyncHTTPTransport(verify=ctx),
        timeout=CALL_TIMEOUT,
        retry=RETRY,
        # POST is not retried by default (not idempotent in general). These JSON-RPC calls
        # are: Add and Multiply are pure functions of their params, so a request sent twice
        # (its answer lost, or slow) does no harm.
        retry_methods=("POST",),
        max_concurrent_requests=CALL_LIMIT,
        request_volume_threshold=CIRCUIT_VOLUME,
        error_percent_threshold=CIRCUIT_ERROR_PERCENT,
        rolling_window=CIRCUIT_WINDOW,
        sleep_window=CIRCUIT_SLEEP,
    )
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(2.0))


def command_of(url: str) -> str:
    """The command ``AsyncCommandTransport`` uses for ``url`` (by default ``http:`` + the
    host and its explicit port)."""
    return "http:" + httpx.URL(url).netloc.decode("ascii")


def classify(exc: BaseException) -> tuple[str, float | None]:
    """The kind of a failed call (see :mod:`.tally`) and its ``retry_after``, if any."""
    if isinstance(exc, CircuitOpenError):  # HTTPCircuitOpenError: also httpx.TransportError
        return "open", exc.retry_after
    if isinstance(exc, MaxConcurrencyError):
        return "busy", None
    if isinstance(exc, CommandTimeoutError):  # also httpx.TimeoutException
        return "timeout", None
    if isinstance(exc, RpcUnavailable):
        return str(exc.status), exc.retry_after
    if isinstance(exc, FailedResultError) and isinstance(exc.result, httpx.Response):
        return str(exc.result.status_code), None  # (a failed status, as a retry sees it)
    if isinstance(exc, httpx.ConnectError):
        return "refused", None
    if isinstance(exc, httpx.TransportError):
        return "broken", None
    if isinstance(exc, RpcError):
        return "rpc", None
    return type(exc).__name__, None


@dataclass(frozen=True, slots=True)
class Answer:
    """What a caller got for one call: the value and where it came from (a peer's id, or
    ``"local fallback"``)."""

    value: int
    source: str


#: (peer, method) of the call running in this task: the transport's retry loop runs in the
#: caller's task, so a ``RetryScheduled`` event can be counted against its call.
_CALL: ContextVar[tuple[str, str] | None] = ContextVar("_CALL", default=None)


def _served() -> dict[str, float]:
    """The node's ``LoadShedding`` outcomes so far (its command's metrics)."""
    out = {}
    for outcome in ("success", "rejected", "timeout", "failure"):
        value = REGISTRY.get_sample_value(
            "resilience_command_calls_total", {"command": SHED_NAME, "outcome": outcome}
        )
        out[outcome] = value or 0.0
    return out


def _operands(params: Json) -> tuple[int, int]:
    try:
        a, b = params["a"], params["b"]
    except (KeyError, TypeError):
        raise RpcError(-32602, "expected params {a, b}") from None
    if type(a) is not int or type(b) is not int:
        raise RpcError(-32602, "a and b must be integers")
    return a, b


class Node:
    def __init__(self, node_id: str, peers: dict[str, str], http: httpx.AsyncClient,
                 emit: Callable[..., None]) -> None:
        self.id = node_id
        self.peers = peers  # peer id -> base URL
        self.http = http
        self.emit = emit
        self.delay = 0.0
        self.tally = Tally()
        self.tg: TaskGroup | None = None
        self.calling = False
        self._rng = random.Random(node_id)
        self._commands = {command_of(url): peer for peer, url in peers.items()}
        self._served = _served()
        self._since = time.time()

    # -- served: the methods --------------------------------------------------------------------

    def methods(self) -> dict[str, dict[str, tuple[Method, tuple[str, ...]]]]:
        nodes, operator_only, anyone = ("node-",), ("operator",), ("",)
        return {
            RPC_PATH: {ADD: (self.add, nodes), MULTIPLY: (self.multiply, nodes)},
            ADMIN_PATH: {"Admin.Stats": (self.stats, anyone),
                         "Admin.Start": (self.start, operator_only),
                         "Admin.SetDelay": (self.set_delay, operator_only)},
        }

    async def add(self, params: Json, peer: Peer) -> int:
        a, b = _operands(params)
        await anyio.sleep(self.delay)
        return a + b

    async def multiply(self, params: Json, peer: Peer) -> int:
        a, b = _operands(params)
        await anyio.sleep(self.delay)
        return a * b

    async def stats(self, params: Json, peer: Peer) -> Json:
        """What this node saw as a caller, and what its ``LoadShedding`` did, since the last
        ``Admin.Stats`` with ``reset`` (then a new window starts)."""
        reset = bool(params.get("reset", False))
        now, served = time.time(), _served()
        out = {
            "id": self.id, "pid": os.getpid(), "delay": self.delay, "calling": self.calling,
            "seconds": round(now - self._since, 3),
            "seen": self.tally.window(reset=reset),
            "circuits": {peer_id: get_circuit(command_of(url)).state.value
                         for peer_id, url in self.peers.items()},
            "served": {k: v - self._served[k] for k, v in served.items()},
        }
        if reset:
            self._served, self._since = served, now
        return out

    async def start(self, params: Json, peer: Peer) -> Json:
        if not self.calling:
            assert self.tg is not None
            self.calling = True
            self.tg.start_soon(self.call_peers)
        return {"calling": True}

    async def set_delay(self, params: Json, peer: Peer) -> Json:
        try:
            self.delay = max(0.0, float(params["delay"]))
        except (KeyError, TypeError, ValueError):
            raise RpcError(-32602, "expected params {delay: seconds}") from None
        return {"delay": self.delay}

    # -- calling the peers ------------------------------------------------------------------------

    async def call_peers(self) -> None:
        async with anyio.create_task_group() as tg:
            tick = anyio.current_time()
            while True:
                for peer in self.peers:
                    for method in (ADD, MULTIPLY):
                        a, b = self._rng.randint(1, 999), self._rng.randint(1, 999)
                        tg.start_soon(self.call_once, peer, method, a, b)
                now = anyio.current_time()
                tick = max(tick + CALL_EVERY, now)  # late (a busy loop): no burst to catch up
                await anyio.sleep(tick - now)

    async def call_once(self, peer: str, method: str, a: int, b: int) -> Answer | None:
        """One call; the answer (the peer's, or the fallback's), or None (an error)."""
        start = anyio.current_time()
        kind, retry_after, value = "ok", None, None
        token = _CALL.set((peer, method))
        with anyio.move_on_after(CALL_DEADLINE) as scope:
            try:
                value = await call(self.http, self.peers[peer] + RPC_PATH, method,
                                   {"a": a, "b": b})
            except Exception as exc:  # what the caller saw: counted by kind
                kind, retry_after = classify(exc)
            finally:
                _CALL.reset(token)
        if scope.cancelled_caught:
            kind = "deadline"
        elif kind == "ok" and value != EXPECTED[method](a, b):
            kind = "wrong"
        answer: Answer | None = None
        local = FALLBACKS.get(method)
        if kind == "ok":
            assert isinstance(value, int)
            answer = Answer(value, peer)
        elif local is not None:
            answer = Answer(local(a, b), "local fallback")
        self.tally.record(peer, method, kind, fell_back=kind != "ok" and answer is not None,
                          seconds=anyio.current_time() - start, retry_after=retry_after)
        return answer

    def on_event(self, event: object) -> None:
        """Circuit changes go to stdout (the story prints them); retries are counted."""
        if isinstance(event, StateChange) and event.command in self._commands:
            self.emit("circuit", peer=self._commands[event.command], old=event.old,
                      new=event.new, reason=event.reason)
        elif isinstance(event, RetryScheduled) and event.command in self._commands:
            current = _CALL.get()
            if current is not None:
                self.tally.retried(*current, classify(event.error)[0])


def _emitter(node_id: str) -> Callable[..., None]:
    def emit(event: str, **fields: Any) -> None:
        line = {"t": round(time.time(), 4), "node": node_id, "event": event, **fields}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
    return emit


def parse_peers(text: str) -> dict[str, str]:
    """``b=41001,c=41002`` -> ``{"b": "https://127.0.0.1:41001", ...}``."""
    out = {}
    for part in text.split(","):
        name, _, port = part.partition("=")
        if not name or not port.isdigit():
            raise ValueError(f"--peers: expected id=port pairs, got {part!r}")
        out[name] = f"https://127.0.0.1:{int(port)}"
    return out


async def _orphaned(parent: int, scope: anyio.CancelScope) -> None:
    """Stop when the story that started us is gone (killed without a chance to stop us)."""
    while os.getppid() == parent:
        await anyio.sleep(0.5)
    scope.cancel()


async def _node(args: argparse.Namespace) -> None:
    certs = Path(args.certs)
    emit = _emitter(args.id)
    async with peer_client(certs, args.id) as http:
        node = Node(args.id, parse_peers(args.peers), http, emit)
        unsubscribe = subscribe(node.on_event)
        app = LoadShedding(JsonRpc(node.methods()), name=SHED_NAME,
                           max_concurrent_requests=SHED_LIMIT, max_wait=SHED_MAX_WAIT,
                           timeout=SHED_TIMEOUT, exempt=(ADMIN_PATH,))
        cert, key = cert_paths(certs, f"{args.id}.server")
        ctx = tls.server_context(cert, key, client_ca=certs / "ca.pem")
        try:
            async with anyio.create_task_group() as tg:
                node.tg = tg
                port = await tg.start(partial(
                    serve, app, ssl_context=ctx, port=args.port, name="rpc",
                    handshake_timeout=2.0, max_connections=256, reload_interval=None,
                ))
                tg.start_soon(_orphaned, os.getppid(), tg.cancel_scope)
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    emit("ready", port=port, pid=os.getpid())
                    async for _ in signals:
                        break
                emit("stopped")
                tg.cancel_scope.cancel()
        finally:
            unsubscribe()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.rpc.node")
    parser.add_argument("--id", required=True)
    parser.add_argument("--port", type=int, required=True, help="0: any free port")
    parser.add_argument("--peers", required=True, help="id=port,id=port of the other nodes")
    parser.add_argument("--certs", required=True,
                        help="directory with ca.pem, <id>.server.pem/.key, <id>.client.pem/.key")
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
