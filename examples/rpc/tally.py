"""What a caller saw, per peer and method: the node keeps it, the story prints and judges it.

Every call ends in exactly one way: ``ok`` (the peer's answer), ``fallback`` (it failed, and
the caller answered it locally) or ``error`` (it failed and there is no fallback). A failed
call also has a *kind*, the failure the caller met (for the last attempt, when it was retried):

=========  ====================================================================================
open       the peer's circuit is open: refused at once, with a ``retry_after``
timeout    no response headers within the command's timeout
busy       the caller's own bulkhead for that peer was full
503, 504   the peer answered with that status: shed by its ``LoadShedding``, or cut off
refused    connection refused (nobody listens on the port)
broken     the connection broke (reset, closed) under the request
deadline   the caller's own deadline for the whole call (every attempt) passed
rpc        a JSON-RPC error answer (the peer is up and said no)
wrong      an answer with a wrong result
=========  ====================================================================================

A failed attempt that the command retried is counted apart (``retried``, by kind): the
caller only sees how the last attempt ended.

The node hands out a *window*: everything since the previous window (see ``Admin.Stats``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KINDS", "Seen", "Tally"]

Json = dict[str, Any]

KINDS = ("open", "timeout", "busy", "503", "504", "refused", "broken", "deadline", "rpc",
         "wrong")


@dataclass
class Seen:
    """The calls of one caller to one peer's method, in one window."""

    calls: int = 0
    ok: int = 0
    fallback: int = 0
    errors: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    #: smallest and largest ``retry_after`` of the circuit-open failures
    retry_after: list[float] | None = None
    #: how long each circuit-open failure took (seconds): fast failures are the point
    open_latency: list[float] = field(default_factory=list)
    #: the failed attempts that were retried, by kind (the caller saw only the last attempt)
    retried: Counter[str] = field(default_factory=Counter)
    last: str = ""

    def record(self, kind: str, *, fell_back: bool, seconds: float,
               retry_after: float | None = None) -> None:
        self.calls += 1
        self.last = kind
        if kind == "ok":
            self.ok += 1
            return
        self.kinds[kind] += 1
        if fell_back:
            self.fallback += 1
        else:
            self.errors += 1
        if kind == "open":
            self.open_latency.append(round(seconds, 5))
            if retry_after is not None:
                if self.retry_after is None:
                    self.retry_after = [retry_after, retry_after]
                else:
                    self.retry_after = [min(self.retry_after[0], retry_after),
                                        max(self.retry_after[1], retry_after)]

    def as_json(self) -> Json:
        return {"calls": self.calls, "ok": self.ok, "fallback": self.fallback,
                "errors": self.errors, "kinds": dict(self.kinds),
                "retry_after": self.retry_after, "open_latency": self.open_latency,
                "retried": dict(self.retried), "last": self.last}


class Tally:
    """:class:`Seen` per (peer, method) since the last :meth:`window`."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], Seen] = {}

    def _of(self, peer: str, method: str) -> Seen:
        seen = self._seen.get((peer, method))
        if seen is None:
            seen = self._seen[(peer, method)] = Seen()
        return seen

    def record(self, peer: str, method: str, kind: str, *, fell_back: bool, seconds: float,
               retry_after: float | None = None) -> None:
        """One call ended: ``kind`` is ``"ok"`` or the kind of its (last) failure."""
        self._of(peer, method).record(kind, fell_back=fell_back, seconds=seconds,
                                      retry_after=retry_after)

    def retried(self, peer: str, method: str, kind: str) -> None:
        """An attempt of a call failed (``kind``) and is about to be retried."""
        self._of(peer, method).retried[kind] += 1

    def window(self, *, reset: bool) -> dict[str, dict[str, Json]]:
        """``{peer: {method: Seen as JSON}}``; with ``reset`` the next window starts now."""
        out: dict[str, dict[str, Json]] = {}
        for (peer, method), seen in sorted(self._seen.items()):
            out.setdefault(peer, {})[method] = seen.as_json()
        if reset:
            self._seen = {}
        return out
