"""What the cluster demo measured, and the OK/FAIL checks it is judged by.

Everything here is computed after the run from :class:`Measured`: the nodes' events (JSON
lines with timestamps), the demo's samples of etcd and of the nodes, and what etcd holds at
the end (every task, result, failure record and last-dispatch record, with its revision).
Each check says what it measured, so a FAIL explains itself.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Measured", "checks", "leader_intervals", "phase_table"]

Json = dict[str, Any]


@dataclass
class Measured:
    ttl: float
    masters: tuple[str, ...]
    workers: tuple[str, ...]
    killed_worker: str
    slow_worker: str
    events: list[Json] = field(default_factory=list)
    phases: list[tuple[str, float, float]] = field(default_factory=list)
    kills: dict[str, float] = field(default_factory=dict)
    killed_leader: tuple[str, int] | None = None
    etcd_up: float = 0.0
    nodes_up: float = 0.0
    etcd_killed: tuple[str, float] | None = None
    etcd_elected: tuple[str, float] | None = None
    rotated_at: float = 0.0
    new_serials: dict[str, int] = field(default_factory=dict)
    served_serials: dict[str, int] = field(default_factory=dict)
    shed: dict[str, float] = field(default_factory=dict)
    restored_at: float = 0.0
    submitted: int = 0
    registrations: list[tuple[float, set[str]]] = field(default_factory=list)
    probes: list[tuple[float, str, float | None]] = field(default_factory=list)
    stats: dict[str, Json] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    results: list[tuple[int, Json]] = field(default_factory=list)  # (mod revision, record)
    failed: list[Json] = field(default_factory=list)
    log: list[tuple[int, Json]] = field(default_factory=list)  # last-dispatch records
    scraped: dict[str, int] = field(default_factory=dict)
    promql: dict[str, dict[str, float]] = field(default_factory=dict)

    def window(self, name: str) -> tuple[float, float]:
        for phase, start, end in self.phases:
            if phase == name:
                return start, end
        return 0.0, 0.0

    def committed(self, start: float, end: float) -> list[Json]:
        return [r for _, r in self.results if start <= float(r["t"]) < end]

    def events_of(self, kind: str) -> list[Json]:
        return [e for e in self.events if e.get("event") == kind]


def leader_intervals(m: Measured) -> list[tuple[float, float, str, int]]:
    """(start, end, node, term) of every leadership, from the masters' own events; a term
    that never reported its end ends when its process was killed or exited."""
    out = []
    ends: dict[tuple[str, int], float] = {}
    for e in m.events_of("stepped_down"):
        ends[(str(e["node"]), int(e["term"]))] = float(e["t"])
    exits = sorted((float(e["t"]), str(e["node"])) for e in m.events_of("exited"))
    for e in m.events_of("leader"):
        node, term, start = str(e["node"]), int(e["term"]), float(e["t"])
        end = ends.get((node, term))
        if end is None:
            later = [t for t, n in exits if n == node and t >= start]
            killed = m.kills.get(node)
            candidates = [*later[:1], *([killed] if killed and killed >= start else [])]
            end = min(candidates) if candidates else float("inf")
        out.append((start, end, node, term))
    return sorted(out)


def _first(events: list[Json], **match: Any) -> float | None:
    for e in events:
        if all(e.get(k) == v for k, v in match.items()):
            return float(e["t"])
    return None


def phase_table(m: Measured) -> list[str]:
    names = list(m.workers)
    lines = [f"{'phase':<18}" + "".join(f"{w:>6}" for w in names) + f"{'failed':>8}"
             + "  timeouts/refusals met on the way"]
    for phase, start, end in m.phases:
        done = m.committed(start, end)
        per = Counter(str(r["worker"]) for r in done)
        met = Counter(
            step.split(":", 1)[1] for r in done for step in r.get("route", [])
            if not step.endswith(":ok")
        )
        failed = sum(1 for f in m.failed if start <= float(f["t"]) < end)
        lines.append(f"{phase:<18}" + "".join(f"{per[w]:>6}" for w in names) + f"{failed:>8}"
                     + "  " + (", ".join(f"{k} {v}" for k, v in met.most_common()) or "-"))
    return lines


def _fmt(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f}s"


def checks(m: Measured) -> list[tuple[bool, str]]:
    out: list[tuple[bool, str]] = []
    circuits = m.events_of("circuit")
    all_nodes = {*m.masters, *m.workers}

    # 1. the cluster formed
    full = next((t for t, ids in m.registrations if all_nodes <= ids), None)
    out.append((
        m.etcd_up > 0 and full is not None,
        f"etcd formed a 3-member cluster and all {len(all_nodes)} nodes registered under "
        f"{m.ttl:g}s leases (all listed {_fmt(full - m.etcd_up if full else None)} after "
        "etcd was up)",
    ))

    # 2. steady dispatch
    start, end = m.window("steady")
    per = Counter(str(r["worker"]) for r in m.committed(start, end))
    out.append((
        all(per[w] > 0 for w in m.workers),
        "steady dispatch used every worker ("
        + ", ".join(f"{w} {per[w]}" for w in m.workers) + " tasks)",
    ))

    # 3. a worker dies
    dead = m.killed_worker
    kill = m.kills.get(dead, 0.0)
    gone = next((t for t, ids in m.registrations if t > kill and dead not in ids), None)
    opened = next((float(e["t"]) for e in circuits if e["node"] in m.masters
                   and e["command"] == f"worker:{dead}" and e["new"] == "open"
                   and float(e["t"]) >= kill), None)
    until = m.restored_at or float("inf")
    after_open = [r for _, r in m.results
                  if opened is not None and opened < float(r["t"]) < until]
    by_dead = sum(1 for r in after_open if r["worker"] == dead)
    moved = sum(1 for _, r in m.results if kill <= float(r["t"]) < until
                and r["worker"] != dead and any(s.startswith(f"{dead}:") for s in r["route"]))
    out.append((
        kill > 0 and gone is not None and gone - kill <= m.ttl + 1.0 and opened is not None
        and moved > 0 and by_dead == 0,
        f"killed worker {dead}: its registration vanished {_fmt(gone - kill if gone else None)}"
        f" after the kill (lease TTL {m.ttl:g}s), circuit worker:{dead} opened on the leader "
        f"after {_fmt(opened - kill if opened else None)}; {moved} tasks that met {dead} went "
        f"to other workers, {by_dead} were committed by {dead} while it was down",
    ))

    # 4. a worker is slow
    start, end = m.window("slow-worker")
    slow = m.slow_worker
    timeouts = sum(
        1 for r in [*m.committed(start, end), *m.failed] if start <= float(r["t"]) < end + 2
        for s in r.get("route", []) if s == f"{slow}:timeout"
    )
    slow_open = any(e["node"] in m.masters and e["command"] == f"worker:{slow}"
                    and e["new"] == "open" and start <= float(e["t"]) < end for e in circuits)
    shed = int(m.shed.get("rejected", 0))
    cut = int(m.shed.get("timeout", 0))
    admin = [lat for t, n, lat in m.probes if n == slow and start <= t < end]
    admin_ok = bool(admin) and all(lat is not None for lat in admin)
    worst = max((lat for lat in admin if lat is not None), default=0.0)
    out.append((
        timeouts > 0 and slow_open and shed + cut > 0 and admin_ok,
        f"slowed worker {slow}: the leader timed out {timeouts} task calls to it (500 ms) and "
        f"its circuit {'opened' if slow_open else 'did not open'}; {slow} shed {shed} requests "
        f"(503) and cut off {cut} (504) itself; its admin endpoint (exempt from shedding) "
        f"answered {sum(1 for x in admin if x is not None)}/{len(admin)} probes, slowest "
        f"{worst * 1000:.0f} ms",
    ))

    # 5. the leader dies
    bound = m.ttl + 1.5
    if m.killed_leader is not None:
        old, old_term = m.killed_leader
        kill = m.kills[old]
        new = next((e for e in m.events_of("leader")
                    if float(e["t"]) > kill and e["node"] != old), None)
        takeover = float(new["t"]) - kill if new else None
        resumed = min((float(r["t"]) for _, r in m.results
                       if new and int(r["term"]) == int(new["term"])), default=None)
        out.append((
            takeover is not None and takeover <= bound,
            f"killed the leader {old} (term {old_term}): "
            + (f"{new['node']} took over after {takeover:.1f}s (term {new['term']}; bound: "
               f"TTL + 1.5 s = {bound:g}s), first commit of its term "
               f"{_fmt(resumed - kill if resumed else None)} after the kill"
               if new and takeover is not None else "no standby took over"),
        ))
    else:
        out.append((False, "killed the leader: no leader was found to kill"))

    # 6. never two active leaders
    results = sorted(m.results, key=lambda x: x[0])
    highest, term_back = 0, 0
    for _, r in results:
        term = int(r["term"])
        if term < highest:
            term_back += 1
        highest = max(highest, term)
    log = sorted(m.log, key=lambda x: x[0])
    tokens = [int(r["token"]) for _, r in log]
    token_back = sum(1 for a, b in zip(tokens, tokens[1:], strict=False) if b <= a)
    log_terms = [int(r["term"]) for _, r in log]
    log_back = sum(1 for a, b in zip(log_terms, log_terms[1:], strict=False) if b < a)
    intervals = leader_intervals(m)
    overlaps = sum(1 for a, b in zip(intervals, intervals[1:], strict=False) if b[0] < a[1])
    owners = {term: node for _, _, node, term in intervals}
    wrong_owner = sum(1 for _, r in results if owners.get(int(r["term"])) != r["leader"])
    terms = sorted(owners)
    out.append((
        len(terms) >= 2 and term_back == 0 and token_back == 0 and log_back == 0
        and overlaps == 0 and wrong_owner == 0,
        f"never two active leaders: {len(terms)} terms ({', '.join(map(str, terms))}); in "
        f"etcd revision order the {len(results)} results never go back to an older term "
        f"({term_back} do), the {len(log)} lock-guarded last-dispatch writes carry strictly "
        f"increasing fencing tokens ({token_back} do not) and terms ({log_back} go back); the "
        f"masters' leadership intervals overlap {overlaps} times; {wrong_owner} results name "
        "a leader other than their term's",
    ))

    # 7. the etcd leader dies
    if m.etcd_killed is not None:
        name, kill = m.etcd_killed
        start, end = m.window("kill-etcd-leader")
        elected = m.etcd_elected[1] - kill if m.etcd_elected else None
        alive_all_phase = {
            n for n in all_nodes
            if not any(start - 1 <= t <= end for t in [m.kills.get(n, -1.0)])
            and any(pn == n and start <= t < end for t, pn, _ in m.probes)
        }
        lat = [x for t, n, x in m.probes if n in alive_all_phase and kill <= t < end]
        answered = sum(1 for x in lat if x is not None)
        worst = max((x for x in lat if x is not None), default=0.0)
        lost = [e for e in m.events_of("lease_lost") if kill <= float(e["t"]) < end]
        down = [e for e in m.events_of("stepped_down") if kill <= float(e["t"]) < end]
        after = sum(1 for _, r in m.results if kill + (elected or 0) <= float(r["t"]) < end)
        member_open = sorted({str(e["node"]) for e in circuits
                              if e["command"] == f"etcd:{name}" and e["new"] == "open"
                              and float(e["t"]) >= kill})
        refused = sum(int(s.get("etcd", {}).get(f"{name}:failed", 0)) for s in m.stats.values())
        skipped = sum(int(s.get("etcd", {}).get(f"{name}:open", 0)) for s in m.stats.values())
        out.append((
            elected is not None and elected < 5 and bool(lat) and answered == len(lat)
            and worst < 0.25 and not lost and not down and after > 0,
            f"killed etcd's leader member {name}: etcd elected "
            f"{m.etcd_elected[0] if m.etcd_elected else 'nobody'} after {_fmt(elected)}; "
            f"meanwhile the nodes answered {answered}/{len(lat)} probes (slowest "
            f"{worst * 1000:.0f} ms), {len(lost)} leases were lost, {len(down)} leaders "
            f"stepped down, {after} tasks were committed after the election; circuit "
            f"etcd:{name} opened on {len(member_open)} nodes ({', '.join(member_open) or '-'}): "
            f"{refused} calls failed on {name} and moved on, {skipped} skipped it at once",
        ))
    else:
        out.append((False, "killed etcd's leader member: none was found to kill"))

    # 8. certificate rotation
    live = [n for n, s in m.served_serials.items()]
    served_new = [n for n in live if m.served_serials[n] == m.new_serials.get(n)]
    leader_now = next((n for n, s in m.stats.items()
                       if s.get("role_stats", {}).get("leader")), None)
    seen_new = [w for w in m.workers if leader_now and m.stats.get(w, {}).get("role_stats", {})
                .get("clients", {}).get(leader_now) == m.new_serials.get(leader_now)]
    out.append((
        bool(live) and len(served_new) == len(live) and leader_now is not None
        and len(seen_new) == len(m.workers),
        f"certificate rotation (new files, no restart): {len(served_new)}/{len(live)} nodes "
        f"served their new certificate to new handshakes; {len(seen_new)}/{len(m.workers)} "
        f"workers saw the leader ({leader_now})'s new client certificate",
    ))

    # 9. exactly once
    task_ids = set(m.tasks)
    result_ids = Counter(str(r["task"]) for _, r in m.results)
    failed_ids = {str(f["task"]) for f in m.failed}
    twice = sum(1 for c in result_ids.values() if c > 1) + len(result_ids.keys() & failed_ids)
    lost_tasks = task_ids - result_ids.keys() - failed_ids
    counts: Counter[str] = Counter()
    for s in m.stats.values():
        counts.update(s.get("role_stats", {}).get("counts", {}))
    out.append((
        len(task_ids) == m.submitted > 0 and not lost_tasks and twice == 0,
        f"every task done exactly once or reported failed: {m.submitted} submitted, "
        f"{len(result_ids)} committed once, {len(failed_ids)} reported failed, "
        f"{len(lost_tasks)} lost, {twice} settled twice (commits: a txn, create-if-absent, "
        f"fenced by the term; {counts['duplicates_refused']} duplicates refused by it, "
        f"{counts['replayed']} re-sent tasks answered from a worker's record)",
    ))

    # 10. restore
    if m.restored_at:
        later = [r for _, r in m.results if float(r["t"]) >= m.restored_at]
        per = Counter(str(r["worker"]) for r in later)
        leader_stats = m.stats.get(leader_now or "", {})
        open_now = [c for c, state in leader_stats.get("circuits", {}).items()
                    if c.startswith("worker:") and state != "closed"]
        back = [n for n in all_nodes if m.registrations and n in m.registrations[-1][1]]
        out.append((
            per[dead] > 0 and per[slow] > 0 and not open_now and len(back) == len(all_nodes),
            f"after the restore every node is registered again ({len(back)}/{len(all_nodes)}),"
            f" {dead} and {slow} do tasks again ({dead} {per[dead]}, {slow} {per[slow]}) and "
            f"the leader's worker circuits are all closed ({', '.join(open_now) or 'none open'})",
        ))
    else:
        out.append((False, "restore: never reached"))

    # 11. metrics
    scraped_ok = [n for n, c in m.scraped.items() if c > 0]
    out.append((
        bool(m.scraped) and len(scraped_ok) == len(m.scraped),
        f"every running node serves /metrics ({len(scraped_ok)}/{len(m.scraped)} answered with "
        "resilience_* series)",
    ))
    if m.promql:
        up = sum(m.promql.get("targets up", {}).values())
        seen = m.promql.get("worker circuits seen open", {})
        saw_dead = seen.get(f"worker:{dead}", 0) == 1
        out.append((
            up >= len(m.scraped) and saw_dead,
            f"Prometheus scraped the nodes ({up:g} targets up at the end) and saw circuit "
            f"worker:{dead} open",
        ))
    return out
