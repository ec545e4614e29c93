"""A rate limiter's budgets kept in a shared store: N processes together admit what one
limiter would.

Each decision is one round trip: the GCRA script (:data:`~resilience._store_scripts.GCRA`)
runs on the server, on the server's clock, and answers granted, reserved (due in so long) or
refused. ``try_acquire`` and ``acquire_sync`` make it in the caller's thread; ``acquire``
awaits it in a worker thread (``anyio.to_thread``), so the event loop never blocks on it.
Waiting works as locally: a reservation is made at once and the caller sleeps until its turn;
one whose turn is past ``max_wait`` is refused at once. A waiter cancelled before its turn
gives its reservation back with a compensating script (:data:`~resilience._store_scripts.
REFUND`), sent from the store's thread (a cancelled task never waits for the store): best
effort, the budget's theoretical arrival time moves back one interval.

When the store is down (or does not answer within its ``timeout``) the limiter's
``fail_mode`` decides: ``"local"`` (its own, local GCRA budget), ``"allow"`` or ``"deny"``
(refused with ``retry_after`` = the store's ``poll_interval``, when it is tried again).
Decisions are counted in the limiter's metrics and statistics as local ones are.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ._backend import checkpoint
from ._errors import RateLimitedError
from ._limiter import ALLOWED, REJECTED, _Budget
from ._store import FAILED, LIMIT, StoreCore

if TYPE_CHECKING:
    from ._limiter import RateLimiter

__all__ = ["Reservation", "SharedBudget"]


class Reservation(_Budget):
    """A permit reserved in the store: the limiter's waiting bookkeeping, plus its key."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.waiting = 1


class SharedBudget:
    """The store's side of one :class:`~resilience.RateLimiter` (``limiter._shared``)."""

    __slots__ = ("default_key", "interval_us", "limiter", "store", "tau_us")

    def __init__(self, store: StoreCore, limiter: RateLimiter) -> None:
        self.store = store
        self.limiter = limiter
        self.interval_us = limiter.interval * 1e6
        self.tau_us = (limiter.burst - 1) * self.interval_us
        self.default_key = store.key("limiter", limiter.name)

    def key_of(self, key: Hashable) -> str:
        """The store key of ``key``'s budget: a ``str`` as is, anything else by its ``repr``
        (so ``1`` and ``"1"`` share a budget across processes)."""
        if key is None:
            return self.default_key
        if type(key) is str:
            return self.store.key("limiter", self.limiter.name, key)
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"RateLimiter key must be hashable, got {key!r}") from None
        return self.store.key("limiter", self.limiter.name, repr(key))

    def take(self, key: Hashable, max_wait: float) -> float | tuple[_Budget, float]:
        """``RateLimiter._take`` with the store deciding (one round trip, this thread)."""
        store = self.store
        rkey = self.key_of(key)
        if not store.usable:
            return self.fallback(key, max_wait)
        wait_us = -1 if max_wait < 0 else int(max_wait * 1e6)
        reply = store.attempt(LIMIT, store._gcra, rkey, self.interval_us, self.tau_us, wait_us)
        if reply is FAILED:
            return self.fallback(key, max_wait)
        code = int(reply[0])
        lim = self.limiter
        with lim._lock:
            if code == 0:
                lim._decisions[ALLOWED] += 1
                lim._counts[ALLOWED] += 1
                return 0.0
            wait = int(reply[1]) / 1e6
            if code == 2:
                lim._decisions[REJECTED] += 1
                lim._counts[REJECTED] += 1
                return -max(wait, 1e-6)
            lim._waiting += 1
        return Reservation(rkey), wait

    def fallback(self, key: Hashable, max_wait: float) -> float | tuple[_Budget, float]:
        """The decision without the store, as ``fail_mode`` says."""
        lim = self.limiter
        mode = lim.fail_mode
        if mode == "local":
            return lim._take(key, max_wait, True)
        with lim._lock:
            if mode == "allow":
                lim._decisions[ALLOWED] += 1
                lim._counts[ALLOWED] += 1
                return 0.0
            lim._decisions[REJECTED] += 1
            lim._counts[REJECTED] += 1
            return -self.store.poll_interval

    async def acquire(self, key: Hashable) -> None:
        """``RateLimiter.acquire`` with the store deciding: the round trip in a worker thread
        (never cancelled half-way: a reservation made is always known, and given back)."""
        lim = self.limiter
        usable = self.store.usable
        if usable:
            taken = await anyio.to_thread.run_sync(self.take, key, lim.max_wait)
        else:
            taken = self.fallback(key, lim.max_wait)
        if isinstance(taken, float):
            if taken == 0.0:
                return
            if not usable:
                await checkpoint()  # every refusal is a checkpoint (the thread hop was one)
            raise RateLimitedError(lim.name, retry_after=-taken)
        budget, delay = taken
        try:
            await anyio.sleep(delay)
        except BaseException:
            lim._give_back(budget)
            raise
        lim._served(budget)

    def refund(self, budget: Any) -> None:
        """A waiter gave up its reservation: give it back in the store, from its thread."""
        store = self.store
        store.refund_later(store._refund, budget.key, self.interval_us)
