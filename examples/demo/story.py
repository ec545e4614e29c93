"""What happened during the demo, and whether that is the story it promised.

Callers and a circuit watcher record into :class:`Story`; :meth:`Story.checks` turns it into
OK/FAIL lines (the demo exits 1 on any FAIL), so the demo doubles as an end-to-end test.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import TextIO

import httpx

from resilience import CircuitOpenError, CommandTimeoutError, MaxConcurrencyError

from .upstream import Schedule

__all__ = ["Reply", "Story", "reason"]


@dataclass(frozen=True, slots=True)
class Reply:
    """What a caller gets: a quote, live from the upstream or the cached last good one."""

    quote: int
    live: bool


def reason(exc: BaseException) -> str:
    """Why a fallback ran, in the words of the summary (and of the metric outcomes)."""
    if isinstance(exc, CircuitOpenError):
        return "short-circuited"
    if isinstance(exc, MaxConcurrencyError):
        return "rejected"
    if isinstance(exc, CommandTimeoutError):
        return "timeout"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__


class Story:
    """What happened, as the callers and a circuit watcher saw it; judged by :meth:`checks`."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.answers: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.fallback_reasons: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.retries: collections.Counter[str] = collections.Counter()  # by phase
        self.rescued: collections.Counter[str] = collections.Counter()  # live after a retry
        self.transitions: list[tuple[float, str, str]] = []  # (elapsed, new state, phase)
        self.open_seen: set[str] = set()  # phases during which the circuit was seen open
        self.final_state = "closed"
        self.jobs_done = 0
        self.job_failures: list[str] = []
        self.scrape: dict[str, float] = {}
        self.interrupted = False

    def answer(self, phase: str, reply: Reply, retried: bool = False) -> None:
        self.answers[phase]["live" if reply.live else "cache"] += 1
        if retried and reply.live:
            self.rescued[phase] += 1

    def _history(self) -> str:
        """The circuit's transitions in words; failed trials (half_open -> open) counted."""
        steps: list[str] = []
        failed_trials, prev = 0, "closed"
        for t, state, phase in self.transitions:
            if state == "open" and prev == "half_open":
                failed_trials += 1
            elif state in ("open", "closed"):
                if failed_trials:
                    steps.append(f"{failed_trials} failed trial(s) seen")
                    failed_trials = 0
                steps.append(f"{'opened' if state == 'open' else 'closed'} at {t:.1f}s ({phase})")
            prev = state
        if failed_trials:
            steps.append(f"{failed_trials} failed trial(s) seen")
        return ", ".join(steps) or "stayed closed"

    def checks(self) -> list[tuple[bool, str]]:
        s = self.schedule
        down_start, down_end = s.window("down")
        rec_start, _ = s.window("recovered")
        healthy_live = self.answers["healthy"]["live"]
        opened = [t for t, state, _ in self.transitions if state == "open"]
        closed_after = [
            t for t, state, _ in self.transitions if state == "closed" and t >= rec_start
        ]
        fallbacks = sum(self.fallback_reasons.values())
        errors = sum(self.errors.values())
        short = self.fallback_reasons["short-circuited"]
        rec_live = self.answers["recovered"]["live"]
        first_open = f"first at {opened[0]:.1f}s" if opened else "never"
        scrape_ok = self.scrape.get("short_circuited", 0) > 0 and self.scrape.get("closed") == 1
        return [
            (
                healthy_live > 0,
                f"the upstream answered live while healthy ({healthy_live} answers)",
            ),
            (
                "down" in self.open_seen and short > 0,
                f"the circuit opened during the outage ({down_start:.1f}s-{down_end:.1f}s): "
                f"opened {first_open}, {short} calls short-circuited",
            ),
            (
                fallbacks > 0 and errors == 0,
                f"callers got cached answers instead of errors ({fallbacks} fallbacks, "
                f"{errors} errors{': ' + ', '.join(self.errors) if errors else ''})",
            ),
            (
                self.rescued["degraded"] > 0,
                "retries absorbed errors while degraded "
                f"({self.retries['degraded']} retries, {self.rescued['degraded']} calls answered "
                "live after a retry instead of falling back)",
            ),
            (
                bool(closed_after) and self.final_state == "closed" and rec_live > 0,
                "the circuit closed again after recovery "
                + (f"(at {closed_after[0]:.1f}s; " if closed_after else "(never; ")
                + f"{rec_live} live answers while recovered, final state {self.final_state})",
            ),
            (
                self.jobs_done > 0 and not self.job_failures,
                f"the worker pool processed its jobs ({self.jobs_done} done, "
                f"{len(self.job_failures)} failed)",
            ),
            (
                scrape_ok,
                "/metrics told the same story (resilience_command_calls_total short_circuited="
                f"{self.scrape.get('short_circuited', 0):.0f}, circuit closed="
                f"{self.scrape.get('closed', 0):.0f})",
            ),
        ]

    def report(self, out: TextIO, *, judge: bool) -> bool:
        w = out.write
        w("\nsummary\n")
        for phase in self.schedule.phases:
            c = self.answers[phase.name]
            w(f"  {phase.name:<10} {c['live']:6d} live answers {c['cache']:6d} cached answers "
              f"{self.retries[phase.name]:6d} retries ({self.rescued[phase.name]} calls "
              "rescued)\n")
        reasons = ", ".join(f"{k} {v}" for k, v in self.fallback_reasons.most_common()) or "none"
        w(f"  fallbacks by cause: {reasons}\n")
        w(f"  circuit 'upstream': {self._history()}\n")
        w(f"  worker pool 'jobs': {self.jobs_done} jobs processed\n")
        if not judge:
            w("interrupted: no verdict\n")
            return False
        results = self.checks()
        w("checks\n")
        for ok, text in results:
            w(f"  {'OK  ' if ok else 'FAIL'}  {text}\n")
        passed = all(ok for ok, _ in results)
        w("all checks passed\n" if passed else "SOME CHECKS FAILED\n")
        return passed
