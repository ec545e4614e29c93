"""What every shared store has, whatever server it talks to: the background thread, up/down
tracking with its metrics and log, key names, and the per-circuit round trip.

A store (``resilience.redis.RedisStore`` is the one there is) keeps circuits' shared view
fresh from one daemon thread of its own: every ``poll_interval`` it makes **one** round trip
for all the circuits attached to it (their publications and their reads in one server-side
script, :data:`~resilience._store_scripts.SYNC`) and applies the answer to each circuit under
that circuit's lock. Calls never wait for that thread: they read the circuit's local state.

Round trips made elsewhere (a half-open trial's lease, a shared rate limiter's decision) go
through :meth:`StoreCore.attempt`, which turns any failure into "the store is down": the
``resilience_store_up`` gauge drops to 0, ``resilience_store_errors_total`` counts the failed
operation, one WARNING is logged on ``resilience.store`` per outage (INFO when the store
answers again), and callers skip the store (they decide locally) until the thread's next
round trip gets an answer. Nothing here ever fails a call.
"""

from __future__ import annotations

import abc
import logging
import os
import secrets
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar

from ._exporter import Hub
from ._metrics_schema import STORE_OPERATIONS

__all__ = ["FAILED", "LEASE", "LIMIT", "REFUND", "SYNC", "CircuitHook", "StoreCore", "escape"]

_log = logging.getLogger("resilience.store")

SYNC, LEASE, LIMIT, REFUND = range(len(STORE_OPERATIONS))  # indexes of STORE_OPERATIONS
UNKNOWN, UP, DOWN = 0, 1, 2
T = TypeVar("T")
_S = TypeVar("_S", bound="StoreCore")


class _Failed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "FAILED"


#: What :meth:`StoreCore.attempt` returns when the round trip failed.
FAILED: Any = _Failed()


def escape(part: str) -> str:
    """A name as one part of a key: ``%`` and ``:`` percent-encoded, so that no two names
    (or a name and a name plus a key) ever make the same key."""
    return part.replace("%", "%25").replace(":", "%3A")


class CircuitHook(Protocol):
    """A circuit attached to a store (``resilience._shared_circuit.SharedCircuit``)."""

    key: str

    def op(self) -> tuple[Any, ...]:
        """Its operation of this round: five script arguments (op, seen version, owner, a,
        b), then whatever :meth:`apply` needs back (takes the circuit's lock itself)."""
        ...

    def apply(self, op: tuple[Any, ...], view: Sequence[Any], now_us: int, mono: float) -> None:
        """Apply its shared view, read at server time ``now_us`` (microseconds) and local
        ``time.monotonic()`` ``mono`` (takes the circuit's lock itself)."""
        ...

    def detach(self) -> None:
        """The store closed: the circuit goes on locally."""
        ...


class StoreCore(abc.ABC):
    """The server-independent part of a shared store.

    Subclasses make the round trips: :meth:`_sync` (the circuits' script, or a ping when no
    circuit is attached) and whatever their circuits and limiters call through
    :meth:`attempt`.
    """

    def __init__(
        self, *, label: str, prefix: str, poll_interval: float, timeout: float,
        metrics_registry: Any = None,
    ) -> None:
        self.label = label
        self.prefix = prefix
        self.poll_interval = poll_interval
        self.timeout = timeout
        #: This store in this process: the owner of the trial leases it takes (one per
        #: circuit: ``owner:n``), unique across hosts and restarts.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._owners = 0
        self._state = UNKNOWN
        self._state_lock = threading.Lock()
        self._closed = False
        self._hooks: weakref.WeakSet[CircuitHook] = weakref.WeakSet()
        self._refunds: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._wake = threading.Event()
        self._sync_soon = False  # refresh() asked for a round trip now
        self._stop = threading.Event()
        self._series = Hub.of(metrics_registry).store(label)  # the name cap applies here
        self._series.stores.add(self)
        self._thread = threading.Thread(
            target=self._run, name=f"resilience-store {label}", daemon=True
        )

    def _start(self) -> None:
        self._thread.start()

    # -- state ---------------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """Whether the store answered its last round trip (read by ``resilience_store_up``)."""
        return self._state == UP

    @property
    def usable(self) -> bool:
        """Whether callers should try the store now: open and not known to be down."""
        return self._state != DOWN and not self._closed

    @property
    def closed(self) -> bool:
        return self._closed

    def key(self, kind: str, name: str, sub: str | None = None) -> str:
        """``{prefix}:{kind}:{name}`` or ``{prefix}:{kind}:{name}:{sub}`` (parts escaped)."""
        key = f"{self.prefix}:{kind}:{escape(name)}"
        return key if sub is None else f"{key}:{escape(sub)}"

    def new_owner(self) -> str:
        with self._state_lock:
            self._owners += 1
            return f"{self.owner}:{self._owners}"

    def attempt(self, operation: int, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (one round trip), or :data:`FAILED` if it raised: the store counts
        as down from then on until a round trip succeeds."""
        try:
            result = fn(*args)
        except Exception as exc:
            self._failed(operation, exc)
            result = FAILED
        else:
            if self._state != UP:
                self._answered()
        return result

    def _failed(self, operation: int, exc: Exception) -> None:
        series = self._series
        with series.lock:
            series.errors[operation] += 1
        with self._state_lock:
            was = self._state
            self._state = DOWN
        if was != DOWN:
            _log.warning(
                "resilience store %r is down (%s failed: %s: %s); circuits and rate limiters "
                "work locally until it answers again", self.label, STORE_OPERATIONS[operation],
                type(exc).__name__, exc,
            )

    def _answered(self) -> None:
        with self._state_lock:
            was = self._state
            self._state = UP
        if was == DOWN:
            _log.info("resilience store %r answers again: sharing state resumes", self.label)

    # -- what is attached ---------------------------------------------------------------------

    def attach(self, hook: CircuitHook) -> None:
        """Keep ``hook``'s circuit in the shared view (held weakly: a circuit nobody uses any
        more leaves by itself)."""
        with self._state_lock:  # (never iterated while another thread adds)
            self._hooks.add(hook)
        self.refresh()  # publish and read it soon, not a poll interval later

    def refresh(self) -> None:
        """Make the thread's next round trip now rather than at its poll interval."""
        self._sync_soon = True
        self._wake.set()

    def refund_later(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run the round trip ``fn(*args)`` from the store's thread, soon (never blocks)."""
        self._refunds.append((fn, args))
        self._wake.set()

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.poll_interval
        next_sync = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_sync:
                next_sync = now + interval
                self._guarded(self._tick)
            self._guarded(self._drain)
            if self._wake.wait(max(next_sync - time.monotonic(), 0.0)):
                self._wake.clear()
                if self._sync_soon:  # a new circuit, a publication: now
                    self._sync_soon = False
                    next_sync = time.monotonic()
        if self._hooks and self._state != DOWN:
            self._guarded(self._tick)  # closing: publish what is still queued (one round trip)

    def _guarded(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # a bug of ours: keep the thread alive, calls keep working
            _log.exception("resilience store %r: background round failed", self.label)

    def _drain(self) -> None:
        refunds = self._refunds
        while refunds and not self._stop.is_set():
            fn, args = refunds.popleft()
            if self.usable:
                self.attempt(REFUND, fn, *args)

    def _attached(self) -> list[CircuitHook]:
        with self._state_lock:
            return list(self._hooks)

    def _tick(self) -> None:
        hooks = self._attached()
        if not hooks:
            self.attempt(SYNC, self._ping)
            return
        keys: list[str] = []
        args: list[Any] = []
        ops: list[tuple[Any, ...]] = []
        for hook in hooks:
            op = hook.op()
            ops.append(op)
            keys.append(hook.key)
            args.extend(op[:5])
        reply = self.attempt(SYNC, self._sync, keys, args)
        mono = time.monotonic()
        if reply is FAILED:
            return
        now_us = int(reply[0]) * 1_000_000 + int(reply[1])
        for hook, op, view in zip(hooks, ops, reply[2:], strict=True):
            hook.apply(op, view, now_us, mono)

    # -- round trips (the subclass's) -----------------------------------------------------------

    @abc.abstractmethod
    def _sync(self, keys: list[str], args: list[Any]) -> Any:
        ...

    @abc.abstractmethod
    def _ping(self) -> Any:
        ...

    @abc.abstractmethod
    def _lease(self, key: str, owner: str, seen: str, ttl_us: int, window_us: int) -> Any:
        ...

    @abc.abstractmethod
    def _gcra(self, key: str, interval_us: float, tau_us: float, max_wait_us: int) -> Any:
        ...

    @abc.abstractmethod
    def _refund(self, key: str, interval_us: float) -> Any:
        ...

    @abc.abstractmethod
    def share_limiter(self, limiter: Any) -> Any:
        """The store's side of a ``RateLimiter(store=self)``."""
        ...

    def _disconnect(self) -> None:  # noqa: B027  (optional: a client with no pool has none)
        """Drop the client's connections (after the thread stopped)."""

    # -- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the background thread (waits for it, a bounded time) and stop sharing: the
        circuits and limiters that use this store go on locally. Calling it again is harmless."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * self.timeout + 1.0)
        for hook in self._attached():
            hook.detach()
        with self._state_lock:
            self._hooks.clear()
        self._series.stores.discard(self)
        self._disconnect()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self: _S) -> _S:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import anyio
        import anyio.to_thread

        with anyio.CancelScope(shield=True):  # a cancelled caller still stops the thread
            await anyio.to_thread.run_sync(self.close)
