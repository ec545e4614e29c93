"""A small etcd v3 client over the JSON gRPC gateway (etcd 3.4: ``/v3/...``), every call
through a command.

One command per member endpoint (``etcd:e1``, ``etcd:e2``, ...): timeout
:data:`~examples.cluster.config.ETCD_TIMEOUT`, a circuit per member, and a small retry for
the answers that say "the cluster is busy electing" (any member would say the same, so the
same member is asked again after a short backoff). A member that does not answer in time,
refuses the connection or has its circuit open is left for the next one: :meth:`Etcd.call`
walks the members, always starting with the node's preferred member (nodes spread over the
members, as clients of a "local" etcd would). The circuit is the memory of a member's health:
once it opens, calls skip that member at once (no connection attempt, no timeout to wait out),
and a trial call every second brings the traffic back as soon as the member answers again.

Answers that are etcd's verdict on the request ("election: no leader", "lease not found")
are raised as :class:`EtcdError` and ignored by the circuits: the member is healthy.

Gateway quirks handled here: keys and values are base64; int64 fields arrive as strings;
fields at their zero value are left out (``succeeded`` of a failed txn, ``TTL`` of an expired
lease, ``value`` of an empty key); errors come back as HTTP 500/503 with a JSON body.
"""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from resilience import CircuitOpenError, Retry, configure_command, run

from .config import ETCD_TIMEOUT

__all__ = [
    "Etcd",
    "EtcdError",
    "EtcdUnavailable",
    "KeyValue",
    "b64",
    "compare_create",
    "compare_value_less",
    "compare_version",
    "prefix_end",
    "put_op",
    "range_op",
    "unb64",
]

Json = dict[str, Any]

#: Messages of etcd answers that mean "ask again shortly" (the cluster is electing a leader,
#: or a proposal did not commit in time): retried on the same member.
_TRANSIENT = (
    "etcdserver: leader changed",
    "etcdserver: no leader",
    "etcdserver: request timed out",
    "etcdserver: too many requests",
    "etcdserver: server stopped",
)


class EtcdError(Exception):
    """etcd answered, and the answer is "no" (a verdict on the request, not a fault)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdBusy(Exception):
    """etcd answered "try again" (electing a leader, timed-out proposal): transient."""


class EtcdUnavailable(Exception):
    """No member could answer (each one failed, timed out or had its circuit open)."""


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(data: str | None) -> str:
    return base64.b64decode(data or "").decode()


def prefix_end(prefix: str) -> str:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return raw.decode()


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def of(cls, kv: Mapping[str, Any]) -> KeyValue:
        return cls(
            key=unb64(kv.get("key")),
            value=unb64(kv.get("value")),
            create_revision=int(kv.get("create_revision", 0)),
            mod_revision=int(kv.get("mod_revision", 0)),
            version=int(kv.get("version", 0)),
            lease=int(kv.get("lease", 0)),
        )

    def json(self) -> Json:
        value: Json = json.loads(self.value)
        return value


# -- txn building blocks ---------------------------------------------------------------------


def compare_create(key: str, revision: int) -> Json:
    """True while ``key`` exists with this create revision (0: while it does not exist)."""
    return {"target": "CREATE", "key": b64(key), "create_revision": str(revision),
            "result": "EQUAL"}


def compare_version(key: str, version: int) -> Json:
    return {"target": "VERSION", "key": b64(key), "version": str(version), "result": "EQUAL"}


def compare_value_less(key: str, value: str) -> Json:
    return {"target": "VALUE", "key": b64(key), "value": b64(value), "result": "LESS"}


def put_op(key: str, value: str, lease: int = 0) -> Json:
    put: Json = {"key": b64(key), "value": b64(value)}
    if lease:
        put["lease"] = str(lease)
    return {"request_put": put}


def range_op(key: str) -> Json:
    return {"request_range": {"key": b64(key)}}


# -- the client ------------------------------------------------------------------------------


def _retry_busy(error: Exception) -> bool:
    return isinstance(error, EtcdBusy)


class Etcd:
    """Calls to an etcd cluster, each through the command of the member it goes to.

    ``endpoints`` maps member names to client URLs (``{"e1": "http://127.0.0.1:2379"}``);
    ``prefer`` names the member asked first (default: the first). ``stats`` counts calls per
    member and outcome (``ok``, ``failed``, ``open``) and the calls that moved to another
    member (``failover``).
    """

    def __init__(
        self,
        endpoints: Mapping[str, str],
        http: httpx.AsyncClient,
        *,
        prefer: str | None = None,
        timeout: float = ETCD_TIMEOUT,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd: no endpoints")
        self.endpoints = dict(endpoints)
        self.members: Sequence[str] = list(endpoints)
        self._http = http
        self._preferred = self.members.index(prefer) if prefer else 0
        self._post_fn = self._post  # one object: run() finds its caller by identity
        self.stats: Counter[str] = Counter()
        for member in self.members:
            configure_command(
                self.command(member),
                timeout=timeout,
                max_concurrent_requests=64,
                request_volume_threshold=4,
                error_percent_threshold=50,
                rolling_window=2.0,
                sleep_window=1.0,
                ignore_exceptions=(EtcdError,),
                retry=Retry(attempts=2, backoff=0.1, max_backoff=0.3, on=_retry_busy,
                            budget=0.2, min_retries_per_second=5),
            )

    @staticmethod
    def command(member: str) -> str:
        return f"etcd:{member}"

    @property
    def preferred(self) -> str:
        return self.members[self._preferred]

    async def _post(self, member: str, path: str, body: Json, wait: float | None) -> Json:
        """One POST to one member. ``wait``: a long-poll (campaign, lock) given up after that
        many seconds, answering ``{}`` (the gateway then withdraws the request's key)."""
        url = f"{self.endpoints[member]}/v3/{path}"
        response: httpx.Response | None = None
        with anyio.move_on_after(math.inf if wait is None else wait):
            response = await self._http.post(url, json=body)
        if response is None:
            return {}
        try:
            data: Json = response.json()
        except ValueError:
            raise EtcdBusy(f"{member}: HTTP {response.status_code}, not JSON") from None
        if response.status_code == 200:
            return data
        message = str(data.get("message") or data.get("error") or response.text)
        if response.status_code in (503, 504) or message.startswith(_TRANSIENT):
            raise EtcdBusy(f"{member}: {message}")
        raise EtcdError(message, data.get("code"))

    async def call(self, path: str, body: Json, *, wait: float | None = None) -> Json:
        """POST ``/v3/<path>`` to the first member that answers; :class:`EtcdError` when etcd
        says no, :class:`EtcdUnavailable` when no member answered."""
        n = len(self.members)
        start = self._preferred
        errors: list[str] = []
        for i in range(n):
            index = (start + i) % n
            member = self.members[index]
            if i:
                self.stats["failover"] += 1
            try:
                result = await run(
                    self.command(member), self._post_fn, member, path, body, wait
                )
            except EtcdError:
                self.stats[f"{member}:ok"] += 1
                raise
            except CircuitOpenError:
                self.stats[f"{member}:open"] += 1
                errors.append(f"{member}: circuit open")
            except Exception as exc:  # timeout, refused, reset, busy: try the next member
                self.stats[f"{member}:failed"] += 1
                errors.append(f"{member}: {type(exc).__name__} {exc}".strip())
            else:
                self.stats[f"{member}:ok"] += 1
                return result
        raise EtcdUnavailable("; ".join(errors))

    # -- KV --------------------------------------------------------------------------------

    async def put(self, key: str, value: str, lease: int = 0) -> None:
        await self.call("kv/put", put_op(key, value, lease)["request_put"])

    async def get(self, key: str) -> KeyValue | None:
        kvs = (await self.call("kv/range", {"key": b64(key)})).get("kvs", [])
        return KeyValue.of(kvs[0]) if kvs else None

    async def range_prefix(
        self, prefix: str, *, start: str | None = None, limit: int = 0, keys_only: bool = False
    ) -> list[KeyValue]:
        """Keys under ``prefix`` in key order, from ``start`` (inclusive) on."""
        body: Json = {"key": b64(start or prefix), "range_end": b64(prefix_end(prefix))}
        if limit:
            body["limit"] = str(limit)
        if keys_only:
            body["keys_only"] = True
        return [KeyValue.of(kv) for kv in (await self.call("kv/range", body)).get("kvs", [])]

    async def range_all(self, prefix: str, *, keys_only: bool = False) -> list[KeyValue]:
        """Every key under ``prefix``, read in pages of 500."""
        out: list[KeyValue] = []
        start: str | None = None
        while True:
            page = await self.range_prefix(prefix, start=start, limit=500, keys_only=keys_only)
            out += page
            if len(page) < 500:
                return out
            start = page[-1].key + "\0"

    async def txn(
        self, compare: list[Json], success: list[Json], failure: list[Json] | None = None
    ) -> tuple[bool, list[Json]]:
        """A transaction: (succeeded, responses of the branch that ran)."""
        body: Json = {"compare": compare, "success": success, "failure": failure or []}
        data = await self.call("kv/txn", body)
        return bool(data.get("succeeded", False)), list(data.get("responses", []))

    # -- leases ----------------------------------------------------------------------------

    async def grant(self, ttl: int) -> tuple[int, int]:
        data = await self.call("lease/grant", {"TTL": str(ttl)})
        return int(data["ID"]), int(data.get("TTL", 0))

    async def keepalive(self, lease: int) -> int:
        """Renew ``lease``; its remaining TTL (0: the lease is gone, it expired or was
        revoked). The gateway's stream endpoint answers one renewal per request body."""
        data = await self.call("lease/keepalive", {"ID": str(lease)})
        return int(data.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        await self.call("lease/revoke", {"ID": str(lease)})

    # -- election --------------------------------------------------------------------------

    async def leader(self, election: str) -> KeyValue | None:
        """The current leader's key (its value is what the leader proclaimed), or None."""
        try:
            data = await self.call("election/leader", {"name": b64(election)})
        except EtcdError as exc:
            if "no leader" in str(exc):
                return None
            raise
        kv = data.get("kv")
        return KeyValue.of(kv) if kv else None

    async def campaign(
        self, election: str, lease: int, value: str, *, wait: float
    ) -> Json | None:
        """Campaign for ``wait`` seconds at most: the leader key (``name``, ``key``, ``rev``,
        ``lease``) when elected, None when someone else still leads (etcd then withdraws our
        candidacy: the gateway cancels the campaign and deletes our key)."""
        data = await self.call(
            "election/campaign",
            {"name": b64(election), "lease": str(lease), "value": b64(value)},
            wait=wait,
        )
        leader: Json | None = data.get("leader")
        return leader

    async def proclaim(self, leader: Json, value: str) -> None:
        await self.call("election/proclaim", {"leader": leader, "value": b64(value)})

    async def resign(self, leader: Json) -> None:
        await self.call("election/resign", {"leader": leader})

    # -- locks -----------------------------------------------------------------------------

    async def lock(self, name: str, lease: int, *, wait: float) -> KeyValue | None:
        """Take the lock ``name`` (held until unlocked or ``lease`` ends) within ``wait``
        seconds: the lock's key, whose create revision is the fencing token; None if busy."""
        data = await self.call(
            "lock/lock", {"name": b64(name), "lease": str(lease)}, wait=wait
        )
        if "key" not in data:
            return None
        return await self.get(unb64(data["key"]))

    async def unlock(self, key: str) -> None:
        await self.call("lock/unlock", {"key": b64(key)})

    # -- cluster ---------------------------------------------------------------------------

    async def status(self, member: str) -> Json:
        """``maintenance/status`` of one member (its id, the leader's id), asked directly."""
        return await run(
            self.command(member), self._post_fn, member, "maintenance/status", {}, None
        )

    async def member_names(self) -> dict[int, str]:
        """Member id -> name."""
        data = await self.call("cluster/member/list", {})
        return {int(m["ID"]): str(m.get("name", "")) for m in data.get("members", [])}
