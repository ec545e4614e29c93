"""``RateLimiter``: a GCRA rate limiter for async and sync code, with one budget per key.

GCRA (the generic cell rate algorithm) keeps one number per budget, the *theoretical arrival
time* ``tat``: the time at which the budget would be back to full if nobody asked again. With
``interval = per / rate`` and ``tolerance = (burst - 1) * interval``, a permit is due at
``max(tat, now) - tolerance``; it is granted at once when that is not in the future, and every
granted (or reserved) permit pushes ``tat`` by one interval. So a full budget grants ``burst``
permits at once, then one per interval, and ``retry_after`` is exact: the time until the next
permit is due (a caller that waits exactly that long gets it; one that comes back earlier does
not). Comparisons allow a millionth of an interval, so that float rounding never turns
"exactly on time" into a refusal with a ``retry_after`` of a few nanoseconds.

A waiter (``acquire``, ``acquire_sync``) *reserves* its turn: it pushes ``tat`` at once and
sleeps until its permit is due, so waiters are served in the order they came, each woken once
at its own time (no thundering herd, no polling). A caller whose turn is more than ``max_wait``
away is refused at once with ``RateLimitedError`` (it never sleeps for nothing).

Giving back: a waiter cancelled while it sleeps pulls ``tat`` back by one interval, so the
permit it reserved goes to the next caller. Waiters that reserved after it keep their times
(they are asleep; nobody moves them): when the cancelled waiter was the last in line this is
exactly as if it never asked; otherwise the next caller is served one interval earlier than it
would have been, at the same time as the last waiter already in line, never before it (a
``floor`` kept while anybody waits): order is kept, no caller gets ahead of the waiters, and
at any moment no more permits have been granted than if the cancelled waiter had never asked
(the permits given back come due together with the last waiter, woken at the same instant).

One lock (the metrics series' ``TokenLock``, shared by the limiters of one name) guards each
decision, a few float operations; it is never held while sleeping. ``_take`` is the one
place a decision is made: with a shared store (``store=``) the store makes it there instead
(``resilience._store_limiter``; ``acquire`` awaits the store's round trip in a thread).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import anyio
from prometheus_client import CollectorRegistry

from ._backend import checkpoint
from ._errors import RateLimitedError
from ._exporter import Hub
from ._names import check_name
from ._store import StoreCore
from ._validate import check_finite

__all__ = ["LimiterStatistics", "RateLimiter"]

ALLOWED, WAITED, REJECTED = 0, 1, 2  # indexes of DECISION_OUTCOMES
FAIL_MODES = ("local", "allow", "deny")
_NEVER = -1.0  # max_wait of try_acquire: never reserve
_INF = math.inf


@dataclass(frozen=True, kw_only=True)
class LimiterStatistics:
    """A snapshot of one :class:`RateLimiter` (``limiter.statistics()``).

    ``allowed`` permits were granted at once, ``waited`` after waiting for their turn,
    ``rejected`` calls were refused; ``waiting`` callers are asleep now, holding a reservation
    (a cancelled waiter is counted in none of the totals). ``keys`` is the number of key
    budgets kept (the default budget, ``key=None``, is not one of them).
    """

    name: str
    allowed: int
    waited: int
    rejected: int
    waiting: int
    keys: int


class _Budget:
    """One budget: ``tat``; ``floor``, the latest turn handed to a caller that still waits
    (``-inf`` once nobody waits); ``waiting``, how many callers wait on it."""

    __slots__ = ("floor", "tat", "waiting")

    def __init__(self) -> None:
        self.tat = -_INF
        self.floor = -_INF
        self.waiting = 0


class _Shared(Protocol):
    """A store's side of a limiter (``resilience._store_limiter.SharedBudget``)."""

    def take(self, key: Hashable, max_wait: float) -> float | tuple[_Budget, float]: ...

    async def acquire(self, key: Hashable) -> None: ...

    def refund(self, budget: _Budget) -> None: ...


def _number(field: str, value: object, *, minimum: float, inclusive: bool) -> float:
    return check_finite(f"RateLimiter {field}", value, minimum=minimum, inclusive=inclusive)


def _integer(field: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"RateLimiter {field} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"RateLimiter {field} must be >= {minimum}, got {value!r}")
    return value


class RateLimiter:
    """At most ``rate`` permits per ``per`` seconds, in bursts of at most ``burst``.

    ``burst`` defaults to ``rate`` rounded up. ``acquire`` waits up to ``max_wait`` seconds
    for its turn, else raises :class:`~resilience.RateLimitedError` at once; ``try_acquire``
    never waits. Every method takes ``key=``: one budget per key (at most ``max_keys`` of them,
    the least recently used is forgotten first); ``key=None`` is the limiter's own budget.
    ``clock`` (zero-argument, monotonic seconds; default ``time.monotonic``) makes the
    decisions; waits sleep for the delay it gives (``anyio.sleep``, ``time.sleep``).
    ``fail_mode`` and ``store`` are for shared budgets; ``metrics_registry`` is the
    prometheus-client registry to export to (its default one when ``None``). Thread-safe.
    """

    __slots__ = (
        "__weakref__", "_burst", "_clock", "_counts", "_decisions", "_default", "_eps",
        "_fail_mode", "_interval", "_keys", "_lock", "_max_keys", "_max_wait", "_name", "_per",
        "_rate", "_shared", "_tau", "_waiting",
    )

    def __init__(
        self,
        name: str,
        rate: float,
        per: float = 1.0,
        *,
        burst: int | None = None,
        max_wait: float = 0.0,
        max_keys: int = 10_000,
        fail_mode: str = "local",
        store: object | None = None,
        clock: Callable[[], float] | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self._name = check_name(name, "limiter")
        self._rate = _number("rate", rate, minimum=0.0, inclusive=False)
        self._per = _number("per", per, minimum=0.0, inclusive=False)
        self._burst = math.ceil(self._rate) if burst is None else _integer("burst", burst, 1)
        self._max_wait = _number("max_wait", max_wait, minimum=0.0, inclusive=True)
        self._max_keys = _integer("max_keys", max_keys, 1)
        if not isinstance(fail_mode, str):
            raise TypeError(f"RateLimiter fail_mode must be a str, got {fail_mode!r}")
        if fail_mode not in FAIL_MODES:
            raise ValueError(
                f"RateLimiter fail_mode must be one of {', '.join(map(repr, FAIL_MODES))}, "
                f"got {fail_mode!r}"
            )
        self._fail_mode = fail_mode
        if store is not None and not isinstance(store, StoreCore):
            raise TypeError(
                f"RateLimiter store= needs a resilience.redis.RedisStore (or None), got {store!r}"
            )
        if clock is not None and not callable(clock):
            raise TypeError(f"RateLimiter clock must be a zero-argument callable, got {clock!r}")
        if metrics_registry is not None and not isinstance(metrics_registry, CollectorRegistry):
            raise TypeError(
                f"metrics_registry must be a prometheus_client CollectorRegistry or None, "
                f"got {metrics_registry!r}"
            )
        interval = self._per / self._rate
        if not 0.0 < interval < _INF:
            raise ValueError(
                f"RateLimiter rate={rate!r} per={per!r}: the interval between permits "
                f"({interval!r} s) must be a positive finite number"
            )
        self._interval = interval
        self._tau = (self._burst - 1) * interval
        self._eps = interval * 1e-6
        self._clock: Callable[[], float] = clock or time.monotonic
        series = Hub.of(metrics_registry).limiter(self._name)  # the name cap applies here
        self._lock = series.lock
        self._decisions = series.decisions
        self._counts = [0, 0, 0]
        self._waiting = 0
        self._default = _Budget()
        self._keys: OrderedDict[Hashable, _Budget] = OrderedDict()
        # the seam: with a store, the store decides in _take (and acquire awaits it)
        self._shared: _Shared | None = None if store is None else store.share_limiter(self)

    # -- configuration (read-only) -------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def per(self) -> float:
        return self._per

    @property
    def burst(self) -> int:
        return self._burst

    @property
    def max_wait(self) -> float:
        return self._max_wait

    @property
    def max_keys(self) -> int:
        return self._max_keys

    @property
    def fail_mode(self) -> str:
        return self._fail_mode

    @property
    def interval(self) -> float:
        """Seconds between two permits at the steady rate (``per / rate``)."""
        return self._interval

    def __repr__(self) -> str:
        return (
            f"<RateLimiter {self._name!r}: rate={self._rate:g} per={self._per:g}s "
            f"burst={self._burst} max_wait={self._max_wait:g}s keys={len(self._keys)} "
            f"waiting={self._waiting}>"
        )

    def statistics(self) -> LimiterStatistics:
        """A frozen snapshot of this limiter's totals."""
        with self._lock:
            allowed, waited, rejected = self._counts
            return LimiterStatistics(
                name=self._name, allowed=allowed, waited=waited, rejected=rejected,
                waiting=self._waiting, keys=len(self._keys),
            )

    # -- the decision --------------------------------------------------------------------------

    def _budget(self, key: Hashable) -> _Budget:
        """The budget of ``key`` (created full), now the most recently used. Lock held."""
        keys = self._keys
        try:
            budget = keys[key]
        except KeyError:
            budget = keys[key] = _Budget()
            if len(keys) > self._max_keys:
                keys.popitem(last=False)
            return budget
        except TypeError:
            raise TypeError(f"RateLimiter key must be hashable, got {key!r}") from None
        keys.move_to_end(key)
        return budget

    def _take(
        self, key: Hashable, max_wait: float, local: bool = False
    ) -> float | tuple[_Budget, float]:
        """Decide one request: ``0.0`` granted now; ``-retry_after`` (< 0) refused, its turn
        being more than ``max_wait`` away; ``(budget, delay)`` reserved, due in ``delay``
        seconds (the caller then calls :meth:`_served` or :meth:`_give_back`). With a store,
        the store decides (``local``: this limiter's own budget, the store's fail mode)."""
        if self._shared is not None and not local:
            return self._shared.take(key, max_wait)
        lock = self._lock
        held: bool | None = False
        try:
            try:
                held = lock.take()
            except IndexError:
                held = lock.acquire()  # contended: another thread is deciding
            now = self._clock()
            budget = self._default if key is None else self._budget(key)
            tat = budget.tat
            if tat < now:
                tat = now
            due = tat - self._tau
            if due < budget.floor:
                due = budget.floor  # never ahead of a caller already waiting
            wait = due - now
            eps = self._eps
            if wait <= eps:
                budget.tat = tat + self._interval
                self._decisions[ALLOWED] += 1
                self._counts[ALLOWED] += 1
                return 0.0
            if wait - max_wait > eps:
                self._decisions[REJECTED] += 1
                self._counts[REJECTED] += 1
                return -wait
            budget.tat = tat + self._interval
            budget.floor = due
            budget.waiting += 1
            self._waiting += 1
            return budget, wait
        finally:
            if held:
                lock.give(True)

    def _served(self, budget: _Budget) -> None:
        """A waiter's turn came: it has its permit."""
        with self._lock:
            budget.waiting -= 1
            if not budget.waiting:
                budget.floor = -_INF
            self._waiting -= 1
            self._decisions[WAITED] += 1
            self._counts[WAITED] += 1

    def _give_back(self, budget: _Budget) -> None:
        """A waiter was cancelled (or interrupted) before its turn: its permit goes to the
        next caller (see the module docstring)."""
        if self._shared is not None and budget.__class__ is not _Budget:
            self._shared.refund(budget)  # reserved in the store: given back there
        with self._lock:
            budget.tat -= self._interval
            budget.waiting -= 1
            if not budget.waiting:
                budget.floor = -_INF
            self._waiting -= 1

    # -- the API -------------------------------------------------------------------------------

    def try_acquire(self, key: Hashable = None) -> bool:
        """Take a permit if one is free now; never waits. ``False`` counts as rejected."""
        return not self._take(key, _NEVER)

    async def acquire(self, key: Hashable = None) -> None:
        """Take a permit, waiting for its turn up to ``max_wait`` seconds.

        Raises :class:`~resilience.RateLimitedError` at once (after one checkpoint, like
        every refusal) when its turn is further away; ``retry_after`` says when a permit is
        free. Cancelled while waiting, it gives its turn back.
        """
        if self._shared is not None:
            return await self._shared.acquire(key)
        taken = self._take(key, self._max_wait)
        if isinstance(taken, float):
            if taken == 0.0:
                return
            await checkpoint()
            raise RateLimitedError(self._name, retry_after=-taken)
        budget, delay = taken
        try:
            await anyio.sleep(delay)
        except BaseException:
            self._give_back(budget)
            raise
        self._served(budget)

    def acquire_sync(self, key: Hashable = None) -> None:
        """:meth:`acquire` for sync code: waits with ``time.sleep`` (never call it from a
        coroutine: it would block the event loop)."""
        taken = self._take(key, self._max_wait)
        if isinstance(taken, float):
            if taken == 0.0:
                return
            raise RateLimitedError(self._name, retry_after=-taken)
        budget, delay = taken
        try:
            time.sleep(delay)
        except BaseException:
            self._give_back(budget)
            raise
        self._served(budget)

    def __call__(self, key: Hashable = None) -> Permit:
        """``async with limiter(key=client_ip):``: acquire ``key``'s permit on entry."""
        return Permit(self, key)

    #: ``async with limiter:`` acquires the limiter's own budget on entry.
    __aenter__ = acquire

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class Permit:
    """What ``limiter(key=...)`` returns: an async context manager that acquires on entry."""

    __slots__ = ("key", "limiter")

    def __init__(self, limiter: RateLimiter, key: Hashable) -> None:
        self.limiter = limiter
        self.key = key

    async def __aenter__(self) -> None:
        await self.limiter.acquire(self.key)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
