"""A node's lease: granted at start, renewed every :data:`KEEPALIVE_EVERY` seconds, and the
cancel scopes bound to it.

Everything a node owns in etcd (its registration, its candidacy, the lock it holds) lives
under this lease, so it disappears when the node dies. Work that is only valid while the lease
lives (a leader's term) runs in a cancel scope :meth:`bind`-ed here: its deadline is the
lease's expiry as the node last learnt it, minus a margin, and every renewal pushes it on. A
node that cannot renew (etcd unreachable, the process frozen) is cancelled out of that work
before etcd could give it to someone else; a lease that turns out to be gone cancels it at
once, and a new lease is granted (``on_new_lease`` re-registers).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import anyio

from .config import KEEPALIVE_EVERY, LEASE_MARGIN, LEASE_TTL
from .etcd import Etcd, EtcdError, EtcdUnavailable

__all__ = ["LeaseSession"]


class LeaseSession:
    def __init__(self, etcd: Etcd, *, ttl: int = LEASE_TTL) -> None:
        self.etcd = etcd
        self.ttl = ttl
        self.lease = 0
        self.expires_at = -math.inf  # anyio.current_time() of the expiry, as last renewed
        self.renewals = 0
        self.renewal_failures = 0
        self.leases_lost = 0
        self._scopes: set[anyio.CancelScope] = set()
        self.on_new_lease: Callable[[], Awaitable[None]] | None = None
        self.on_lost: Callable[[str], None] | None = None

    async def grant(self, within: float = 15.0) -> None:
        """Grant a new lease, asking again until etcd answers (at most ``within`` seconds)."""
        with anyio.fail_after(within):
            while True:
                sent = anyio.current_time()
                try:
                    self.lease, ttl = await self.etcd.grant(self.ttl)
                except (EtcdUnavailable, EtcdError):
                    await anyio.sleep(0.2)
                    continue
                self.expires_at = sent + ttl
                return

    def bind(self, scope: anyio.CancelScope) -> None:
        """Cancel ``scope`` when the lease may have ended (deadline follows renewals)."""
        self._scopes.add(scope)
        scope.deadline = self.expires_at - LEASE_MARGIN

    def unbind(self, scope: anyio.CancelScope) -> None:
        self._scopes.discard(scope)

    def _push(self) -> None:
        for scope in self._scopes:
            scope.deadline = self.expires_at - LEASE_MARGIN

    def remaining(self) -> float:
        """Seconds the lease surely still lives (as of the last renewal)."""
        return self.expires_at - anyio.current_time()

    async def keepalive(self) -> None:
        """Renew forever (a failed renewal is asked again at once: every member is tried in
        each, so a retry soon finds the one that answers); on a lost lease cancel the bound
        work and start a new lease."""
        failed = False
        while True:
            await anyio.sleep(0.05 if failed else KEEPALIVE_EVERY)
            sent = anyio.current_time()
            try:
                ttl = await self.etcd.keepalive(self.lease)
            except (EtcdUnavailable, EtcdError):
                self.renewal_failures += 1
                failed = True
                continue
            failed = False
            if ttl > 0:
                self.renewals += 1
                self.expires_at = sent + ttl
                self._push()
                continue
            # etcd no longer knows the lease: whatever was bound to it is gone
            self.leases_lost += 1
            self.expires_at = -math.inf
            for scope in self._scopes:
                scope.cancel()
            if self.on_lost is not None:
                self.on_lost(f"lease {self.lease:x} expired")
            await self.grant()
            if self.on_new_lease is not None:
                await self.on_new_lease()

    async def revoke(self) -> None:
        """Give the lease back (a clean exit: registration and candidacy go at once)."""
        with anyio.move_on_after(1.0):
            try:
                await self.etcd.revoke(self.lease)
            except (EtcdUnavailable, EtcdError):
                pass
