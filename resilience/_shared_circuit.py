"""A circuit shared across processes through a store: its local view, publications and lease.

Each process keeps its own rolling window and trips on its own; nothing on the call path
waits for the store. What is shared is the circuit's *state*, as a hash in the store (see
:mod:`resilience._store_scripts`):

* **Publications.** A local transition (a trip, a trial's verdict) is queued here under the
  circuit's lock (:meth:`SharedCircuit.changed`) and published by the store's thread at once
  (the thread is woken; nothing waits for it), with the version of the shared view it was
  based on: a stale writer loses, and adopts the shared view instead. An open circuit is
  never re-stamped. So a trip reaches the other processes within their poll interval (plus
  a round trip).
* **The local view.** The same round trip brings back every attached circuit's shared state;
  :meth:`SharedCircuit.apply` makes the local circuit follow it under its lock: open
  elsewhere -> open here until the shared ``opened + sleep_window`` (server time converted
  to this process's clock), which also routes calls off the hot path's shortcut; closed after
  a trial elsewhere -> closed here, window reset. Events are emitted for these transitions
  too (reasons ``"shared_open"`` and ``"shared_closed"``).
* **One trial.** When the local admission would admit a trial, :meth:`SharedCircuit.lease`
  first takes the trial lease from the store: the one path that waits for the store (one
  round trip, bounded by its timeout, with the circuit's lock let go meanwhile). Refused, the
  call is short-circuited at once, until the lease's expiry; with the store down, the
  process runs a local trial.
* **Data loss.** A process whose circuit is open re-publishes it on every round (``p``: the
  script writes only when the key does not exist), so a store that lost its data gets the
  open circuits back within one poll interval.

Configuration, ``flush()`` and ``force_open``/``force_closed`` stay local.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ._circuit import (
    CLOSED,
    HALF_OPEN,
    LEASE_AGAIN,
    LEASE_REFUSED,
    LEASED,
    CircuitCore,
    publish,
)
from ._events import StateChange
from ._store import FAILED, LEASE, StoreCore

__all__ = ["NO_WINDOW_LEASE", "SharedCircuit", "attach_circuit"]

#: How long a trial lease lasts when ``sleep_window`` is 0 (there is no re-arm by time then,
#: but a process that died holding the lease must not wedge the circuit everywhere).
NO_WINDOW_LEASE = 1.0


def _us(seconds: float) -> int:
    return int(round(seconds * 1e6))


def attach_circuit(store: StoreCore, core: CircuitCore) -> None:
    """Share ``core`` through ``store`` (a new circuit of a ``Registry(store=...)``)."""
    if store.closed:
        return
    hook = SharedCircuit(store, core)
    core.lock.run(setattr, core, "shared", hook)
    store.attach(hook)


class SharedCircuit:
    """The store's side of one circuit (``core.shared``). Fields change under the circuit's
    lock; ``seen`` is the version of the shared view this process last knew."""

    __slots__ = (
        "__weakref__", "asking", "changes", "core", "key", "lease_until", "lease_version",
        "owner", "pending", "seen", "store",
    )

    def __init__(self, store: StoreCore, core: CircuitCore) -> None:
        self.store = store
        self.core = core
        self.key = store.key("circuit", core.name)
        self.owner = store.new_owner()  # of this circuit's leases (one per circuit object)
        self.seen = "0"  # a missing key's version
        self.pending: tuple[str, str, int] | None = None  # (op, version it is based on, us)
        self.changes = 0  # local transitions so far (a round's answer is older than a newer one)
        self.lease_version: str | None = None  # the lease we hold: its version, and
        self.lease_until = 0.0  # its expiry on the circuit's clock
        self.asking = False  # a thread of ours is taking the lease now

    # -- called by CircuitCore, lock held ----------------------------------------------------

    def changed(self, reason: str | None) -> None:
        self.changes += 1
        window = _us(self.core.config.sleep_window)
        lease = self.lease_version
        if reason == "tripped":
            self.pending = ("o", self.seen, window)
        elif reason == "trial_failed":
            self.pending = ("f", lease, window) if lease else ("o", self.seen, window)
        elif reason == "trial_succeeded":
            # without a lease (the store was down) there is nothing to publish: the trip
            # that was not published either is forgotten, like the local state
            self.pending = ("s", lease, 0) if lease else None
        elif reason in (None, "forced_closed"):  # flush, the operator: local only
            self.pending = None
        self.lease_version = None
        if self.pending is not None:
            self.store.refresh()  # publish now, not at the next poll (never blocks)

    def lease(self, core: CircuitCore, now: float) -> int:
        if self.lease_version is not None and now < self.lease_until:
            return LEASED  # ours already (a trial that ended without a verdict)
        store = self.store
        if not store.usable:
            return LEASED  # the store is down: a local trial, as without a store
        if self.asking:
            return LEASE_REFUSED  # another thread of ours is asking right now
        state, gen, seen = core.state, core.gen, self.seen
        window = core.config.sleep_window
        ttl = window if window > 0 else NO_WINDOW_LEASE
        lock = core.lock
        self.asking = True
        held: bool | None = True
        try:
            held = lock.give(True)  # let go for the round trip: no call waits for it
            reply = store.attempt(
                LEASE, store._lease, self.key, self.owner, seen, _us(ttl), _us(window)
            )
            mono = time.monotonic()
        finally:
            if not held:
                held = lock.acquire()
            self.asking = False
        changed = core.state != state or core.gen != gen
        if reply is FAILED:
            return LEASE_AGAIN if changed else LEASED
        now_us = int(reply[0]) * 1_000_000 + int(reply[1])
        granted = int(reply[2])
        _, opened, version, owner, until = reply[3:8]
        base = core.clock() - (time.monotonic() - mono)  # this clock at the server's now
        if granted == 1:
            self.seen = self.lease_version = version
            self.lease_until = base - (now_us - int(until)) / 1e6
            return LEASE_AGAIN if changed else LEASED
        if granted == 2:  # closed in the store
            if version == seen:  # our own open never reached it (the store was down)
                return LEASE_AGAIN if changed else LEASED
            self.seen = version
            core.shared_close()  # a trial elsewhere succeeded
            return LEASE_AGAIN
        self.seen = version
        if changed:
            return LEASE_AGAIN
        core.shared_open(self._until(core, base, now_us, opened, owner, until))
        return LEASE_REFUSED

    def _until(
        self, core: CircuitCore, base: float, now_us: int, opened: str, owner: str, until: str
    ) -> float:
        """When this process may try for the trial: the shared sleep window's end, or the
        expiry of another process's lease, on this circuit's clock."""
        local = base - (now_us - int(opened)) / 1e6 + core.config.sleep_window
        if owner and owner != self.owner and int(until) > now_us:
            local = max(local, base - (now_us - int(until)) / 1e6)
        return max(local, base + 1e-3)  # never a tight loop of refused round trips

    # -- called by the store's thread ---------------------------------------------------------

    def op(self) -> tuple[Any, ...]:
        return self.core.lock.run(self._op)

    def _op(self) -> tuple[Any, ...]:
        core = self.core
        pending = self.pending
        if pending is not None:
            kind, seen, window = pending
            return (kind, seen, self.owner, window, 0, pending, self.changes)
        if core.state != CLOSED:  # re-published only if the store lost the key
            age = max(core.clock() - core.opened_at, 0.0)
            window = _us(core.config.sleep_window)
            return ("p", self.seen, self.owner, window, _us(age), None, self.changes)
        return ("r", self.seen, self.owner, 0, 0, None, self.changes)

    def apply(self, op: tuple[Any, ...], view: Sequence[Any], now_us: int, mono: float) -> None:
        core = self.core
        events = core.lock.run(self._apply, op, view, now_us, mono)
        if events:
            publish(core, events)

    def _apply(
        self, op: tuple[Any, ...], view: Sequence[Any], now_us: int, mono: float
    ) -> list[StateChange] | None:
        core = self.core
        state, opened, version, owner, until, won = view
        sent, changes = op[5], op[6]
        if sent is not None and self.pending is sent:
            self.pending = None  # published, or lost to a newer shared state: either way done
        if changes != self.changes:
            return None  # a local transition meanwhile: it goes out on the next round
        if int(won):
            self.seen = version  # our write is the shared state now
            return None
        if version == self.seen:
            return None  # nothing new
        self.seen = version
        if state == "open":
            if core.state == HALF_OPEN and owner == self.owner and int(until) > now_us:
                return None  # our own trial runs
            if owner != self.owner:
                self.lease_version = None
            base = core.clock() - (time.monotonic() - mono)
            core.shared_open(self._until(core, base, now_us, opened, owner, until))
        elif version != "0":  # closed by a trial elsewhere ("0": the key is gone, see _op)
            self.lease_version = None
            core.shared_close()
        return core.take_events()

    def detach(self) -> None:
        core = self.core
        core.lock.run(self._detach)

    def _detach(self) -> None:
        if self.core.shared is self:
            self.core.shared = None
