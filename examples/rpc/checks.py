"""The verdict of the story: tables of what the callers saw, and OK/FAIL checks.

Everything here reads :class:`Measured`: the ``Admin.Stats`` window of every live node at the
end of each phase (see :mod:`.tally` for what a window holds) and the circuit events the
nodes printed. Each check says what it measured; a run whose story did not happen (nothing
measured) fails every check.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .node import ADD, CALL_TIMEOUT, MULTIPLY

__all__ = ["FAST", "Measured", "checks", "table"]

Json = dict[str, Any]

#: A circuit-open failure counts as fast under this (median over a phase), in seconds.
FAST = 0.05
#: In the steady phase at least this share of the calls must be answered by their peer (a
#: loaded machine may let a stray call time out; the circuits must stay closed anyway).
STEADY = 0.95


@dataclass
class Measured:
    nodes: tuple[str, ...] = ("A", "B", "C")
    killed: str = "C"
    slowed: str = "B"
    #: phase -> node -> its ``Admin.Stats`` window at the end of that phase
    windows: dict[str, dict[str, Json]] = field(default_factory=dict)
    #: the circuit events the nodes printed (``{"t", "node", "peer", "old", "new"}``)
    events: list[Json] = field(default_factory=list)
    #: (phase, start, end) in wall-clock seconds
    phases: list[tuple[str, float, float]] = field(default_factory=list)
    #: latencies (seconds) of the operator's probes of the slowed node's /admin; None: failed
    probes: list[float | None] = field(default_factory=list)
    #: seconds from the restore to every call succeeding and every circuit closed
    recovered_after: float | None = None

    @property
    def kill(self) -> str:
        """The name of the phase in which :attr:`killed` is down."""
        return f"kill-{self.killed}"

    @property
    def slow(self) -> str:
        """The name of the phase in which :attr:`slowed` is slow."""
        return f"slow-{self.slowed}"


def _seen(m: Measured, phase: str, caller: str, peer: str, method: str) -> Json:
    window = m.windows.get(phase, {}).get(caller, {})
    seen: Json = window.get("seen", {}).get(peer, {}).get(method, {})
    return seen


def _sum(rows: list[Json], key: str) -> int:
    return sum(int(r.get(key, 0)) for r in rows)


def _kinds(rows: list[Json]) -> Counter[str]:
    total: Counter[str] = Counter()
    for r in rows:
        total.update(r.get("kinds", {}))
    return total


def _retried(rows: list[Json]) -> Counter[str]:
    total: Counter[str] = Counter()
    for r in rows:
        total.update(r.get("retried", {}))
    return total


def _retry_after(rows: list[Json]) -> tuple[float, float] | None:
    spans = [r["retry_after"] for r in rows if r.get("retry_after")]
    if not spans:
        return None
    return min(s[0] for s in spans), max(s[1] for s in spans)


def table(window: dict[str, Json]) -> list[str]:
    """What each caller saw from each peer in one window (both methods together), and what
    each node's ``LoadShedding`` did."""
    lines = [f"{'caller -> peer':<15}{'calls':>5}{'ok':>5}{'fallback':>9}{'errors':>7}"
             f"{'open':>6}  {'retry_after':<13}{'timeout':>7}  {'other':<15}{'retried':<16}"
             "circuit"]
    for caller in sorted(window):
        stats = window[caller]
        for peer in sorted(stats.get("circuits", {})):
            rows = list(stats.get("seen", {}).get(peer, {}).values())
            kinds = _kinds(rows)
            span = _retry_after(rows)
            after = f"{span[0]:.2f}-{span[1]:.2f} s" if span else "-"
            other = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())
                              if k not in ("open", "timeout")) or "-"
            retried = ", ".join(f"{n} {k}" for k, n in sorted(_retried(rows).items())) or "-"
            lines.append(
                f"{caller + ' -> ' + peer:<15}{_sum(rows, 'calls'):>5}{_sum(rows, 'ok'):>5}"
                f"{_sum(rows, 'fallback'):>9}{_sum(rows, 'errors'):>7}{kinds['open']:>6}  "
                f"{after:<13}{kinds['timeout']:>7}  {other:<15}{retried:<16}"
                f"{stats['circuits'][peer]}"
            )
    served = []
    for node in sorted(window):
        s = window[node].get("served", {})
        part = f"{node} {int(s.get('success', 0))} ok"
        if s.get("rejected"):
            part += f", {int(s['rejected'])} shed (503)"
        if s.get("timeout"):
            part += f", {int(s['timeout'])} cut off (504)"
        served.append(part)
    lines.append("served by each node's LoadShedding: " + "; ".join(served))
    return lines


def _steady(m: Measured) -> tuple[bool, str]:
    rows = [_seen(m, "steady", c, p, meth) for c in m.nodes for p in m.nodes if p != c
            for meth in (ADD, MULTIPLY)]
    calls, ok = _sum(rows, "calls"), _sum(rows, "ok")
    every = all(r.get("calls", 0) > 0 for r in rows)
    window = m.windows.get("steady", {})
    circuits = [state for c in m.nodes for state in window.get(c, {}).get("circuits", {}).values()]
    closed = len(circuits) == len(m.nodes) * (len(m.nodes) - 1) and set(circuits) == {"closed"}
    opened = sum(1 for ev in m.events if ev.get("new") == "open"
                 and any(name == "steady" and s <= ev.get("t", 0) <= e
                         for name, s, e in m.phases))
    return (every and ok > 0 and ok >= STEADY * calls and closed and not opened,
            f"steady: every node called both methods of both peers, {ok} of {calls} calls "
            f"answered by the peer (at least {STEADY:.0%}), {len(circuits)} circuits closed "
            f"and {opened or 'none'} opened")


def _killed(m: Measured) -> tuple[bool, str]:
    callers = [c for c in m.nodes if c != m.killed]
    opened, spans, latencies = [], [], []
    for c in callers:
        rows = [_seen(m, m.kill, c, m.killed, meth) for meth in (ADD, MULTIPLY)]
        n = _kinds(rows)["open"]
        opened.append(n)
        span = _retry_after(rows)
        if span:
            spans.append(span)
        latencies += [x for r in rows for x in r.get("open_latency", [])]
    if not latencies or not spans or not all(opened):
        return False, (f"killed {m.killed}: {' and '.join(callers)} opened their circuit for "
                       f"{m.killed} and then failed fast: circuit-open failures per caller "
                       f"{opened}, retry_after seen {len(spans)} times")
    median = statistics.median(latencies)
    lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    return (median < FAST and hi > 0,
            f"killed {m.killed}: {' and '.join(callers)} opened their circuit for {m.killed} "
            f"and then failed fast: {sum(opened)} CircuitOpenError with retry_after "
            f"{lo:.2f}-{hi:.2f} s, median {median * 1000:.1f} ms each (under "
            f"{FAST * 1000:.0f} ms)")


def _slowed(m: Measured) -> tuple[bool, str]:
    callers = [c for c in m.nodes if c not in (m.killed, m.slowed)]
    timeouts, opens = [], []
    for c in callers:
        rows = [_seen(m, m.slow, c, m.slowed, meth) for meth in (ADD, MULTIPLY)]
        kinds = _kinds(rows)
        timeouts.append(kinds["timeout"] + _retried(rows)["timeout"])
        opens.append(kinds["open"])
    start, end = next(((s, e) for name, s, e in m.phases if name == m.slow), (0.0, 0.0))
    opened = {ev["node"] for ev in m.events
              if ev.get("peer") == m.slowed and ev.get("new") == "open"
              and ev.get("old") == "closed" and start <= ev.get("t", 0) <= end}
    ok = all(timeouts) and all(opens) and set(callers) <= opened and bool(callers)
    return ok, (f"slowed {m.slowed}: {' and '.join(callers)} timed out ({sum(timeouts)} "
                f"attempts with no answer within {CALL_TIMEOUT:g} s), then opened the circuit "
                f"for {m.slowed} ({sum(opens)} fast failures after)")


def _shed(m: Measured) -> tuple[bool, str]:
    served = m.windows.get(m.slow, {}).get(m.slowed, {}).get("served", {})
    shed, cut = int(served.get("rejected", 0)), int(served.get("timeout", 0))
    answered = [p for p in m.probes if p is not None]
    slowest = f"{max(answered) * 1000:.0f} ms" if answered else "-"
    ok = shed + cut > 0 and bool(m.probes) and len(answered) == len(m.probes)
    return ok, (f"slowed {m.slowed} protected itself: its LoadShedding shed {shed} requests "
                f"(503 + Retry-After) and cut off {cut} (504); its exempt /admin answered "
                f"{len(answered)} of {len(m.probes)} probes meanwhile (slowest {slowest})")


def _fallback(m: Measured) -> tuple[bool, str]:
    mult = [_seen(m, ph, c, p, MULTIPLY) for ph in (m.kill, m.slow) for c in m.nodes
            for p in m.nodes if p != c]
    add = [_seen(m, ph, c, p, ADD) for ph in (m.kill, m.slow) for c in m.nodes
           for p in m.nodes if p != c]
    calls, errors, local = _sum(mult, "calls"), _sum(mult, "errors"), _sum(mult, "fallback")
    ok = calls > 0 and errors == 0 and local > 0
    return ok, (f"no errors where a fallback exists: during the outage all {calls} "
                f"{MULTIPLY} calls were answered, {local} by the local fallback; {ADD}, which "
                f"has none, failed {_sum(add, 'errors')} times")


def _recovered(m: Measured) -> tuple[bool, str]:
    window = m.windows.get("restore", {})
    good, total, closed, circuits = 0, 0, 0, 0
    for c in m.nodes:
        stats = window.get(c, {})
        for p in m.nodes:
            if p == c:
                continue
            circuits += 1
            closed += stats.get("circuits", {}).get(p) == "closed"
            for meth in (ADD, MULTIPLY):
                total += 1
                seen = _seen(m, "restore", c, p, meth)
                good += seen.get("ok", 0) > 0 and seen.get("last") == "ok"
    after = m.recovered_after
    when = f"within {after:.1f} s" if after is not None else "not within the phase"
    ok = total == good > 0 and circuits == closed and after is not None
    return ok, (f"recovery: after {m.killed} restarted on its port and {m.slowed} sped up, "
                f"calls succeed again ({good} of {total} caller/peer/method ending with "
                f"success) and {closed} of {circuits} circuits are closed ({when})")


def checks(m: Measured) -> list[tuple[bool, str]]:
    return [f(m) for f in (_steady, _killed, _slowed, _shed, _fallback, _recovered)]
