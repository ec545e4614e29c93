"""Circuits and rate limits shared across processes and hosts, on Redis (extra ``[redis]``).

```python
from resilience.redis import RedisStore

store = RedisStore("redis://127.0.0.1:6379/0", prefix="resilience")
registry = resilience.Registry(store=store)            # circuits shared by every process
limiter = RateLimiter("github", rate=10, store=store)    # one budget across the fleet
```

Works on asyncio, trio and from sync code: the client is redis-py's *sync* client, used from
the store's own background thread (the shared view of circuits), from the caller's thread
(``try_acquire``, ``acquire_sync``, a half-open trial's lease) or from a worker thread
(``await limiter.acquire()``). Anything that speaks the Redis protocol with Lua scripting
(Redis >= 5, Valkey, KeyDB, Dragonfly) will do. See docs/shared-state.md.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

try:
    import redis as _redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "resilience.redis needs redis-py: pip install 'anyio-resilience[redis]' (or redis)"
    ) from exc

from prometheus_client import CollectorRegistry

from ._names import check_name
from ._store import StoreCore
from ._store_limiter import SharedBudget
from ._store_scripts import GCRA, LEASE, PING, REFUND, SYNC
from ._validate import MAX_SECONDS, check_finite

__all__ = ["RedisStore"]

_SCHEMES = ("redis", "rediss", "unix")


def _seconds(field: str, value: object) -> float:
    return check_finite(f"RedisStore {field}", value, minimum=0.0, inclusive=False,
                        maximum=MAX_SECONDS)


def _label(url: str, prefix: str) -> str:
    """``prefix@host:port/db`` (never the credentials): the ``store`` label of the metrics."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"{prefix}@unix:{parts.path}"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    db = parts.path.lstrip("/") or "0"
    return f"{prefix}@{host}:{parts.port or 6379}/{db}"


class RedisStore(StoreCore):
    """A shared store on a Redis server at ``url`` (``redis://``, ``rediss://``, ``unix://``).

    ``prefix`` starts every key (stores with different prefixes are independent; write it as
    ``"{name}"`` to put every key in one Redis Cluster hash slot). Every ``poll_interval``
    seconds the store's background thread refreshes the shared state of the circuits using
    it (one round trip for all of them); a server that does not answer within ``timeout``
    seconds counts as down, and everything goes on locally until it answers again.
    ``name`` is the ``store`` label of its metrics (default ``prefix@host:port/db``);
    ``metrics_registry`` the prometheus-client registry they go to (its default one when
    ``None``). ``close()``, ``with`` and ``async with`` stop the thread.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "resilience",
        poll_interval: float = 1.0,
        timeout: float = 0.25,
        name: str | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"RedisStore url must be a str, got {url!r}")
        if urlsplit(url).scheme not in _SCHEMES:
            raise ValueError(
                f"RedisStore url must start with redis://, rediss:// or unix://, got {url!r}"
            )
        if not isinstance(prefix, str):
            raise TypeError(f"RedisStore prefix must be a non-empty str, got {prefix!r}")
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError(
                f"RedisStore prefix must be a non-empty str without whitespace, got {prefix!r}"
            )
        poll = _seconds("poll_interval", poll_interval)
        wait = _seconds("timeout", timeout)
        label = _label(url, prefix) if name is None else check_name(name, "store")
        if metrics_registry is not None and not isinstance(metrics_registry, CollectorRegistry):
            raise TypeError(
                f"metrics_registry must be a prometheus_client CollectorRegistry or None, "
                f"got {metrics_registry!r}"
            )
        self._client = _redis.Redis.from_url(
            url,
            socket_timeout=wait,
            socket_connect_timeout=wait,
            # A connection that broke (a restarted server) is tried once more on a new one;
            # a server that does not answer within the timeout is not: it is down.
            retry=Retry(NoBackoff(), 1, supported_errors=(_redis.ConnectionError,)),
            decode_responses=True,
            health_check_interval=0,
        )
        # register_script: EVALSHA, and SCRIPT LOAD again on NOSCRIPT (a restarted server)
        self._sync_script = self._client.register_script(SYNC)
        self._lease_script = self._client.register_script(LEASE)
        self._gcra_script = self._client.register_script(GCRA)
        self._refund_script = self._client.register_script(REFUND)
        self._ping_script = self._client.register_script(PING)
        super().__init__(
            label=label, prefix=prefix, poll_interval=poll, timeout=wait,
            metrics_registry=metrics_registry,
        )
        self._url = url
        self._start()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "up" if self.up else "down"
        return f"<RedisStore {self.label!r} {state} poll_interval={self.poll_interval:g}s>"

    # -- round trips ------------------------------------------------------------------------------

    def _sync(self, keys: list[str], args: list[Any]) -> Any:
        return self._sync_script(keys=keys, args=args)

    def _ping(self) -> Any:
        return self._ping_script()

    def _lease(self, key: str, owner: str, seen: str, ttl_us: int, window_us: int) -> Any:
        return self._lease_script(keys=(key,), args=(owner, seen, ttl_us, window_us))

    def _gcra(self, key: str, interval_us: float, tau_us: float, max_wait_us: int) -> Any:
        return self._gcra_script(keys=(key,), args=(interval_us, tau_us, max_wait_us))

    def _refund(self, key: str, interval_us: float) -> Any:
        return self._refund_script(keys=(key,), args=(interval_us,))

    def share_limiter(self, limiter: Any) -> SharedBudget:
        return SharedBudget(self, limiter)

    def _disconnect(self) -> None:
        try:
            self._client.close()
        except Exception:  # closing never fails the caller
            pass
