"""Unit tests of the demo's parts: the schedule, the upstream, the metric reading, the verdict.

The demo lives in ``examples/demo/`` (not in the package). ``test_examples.py`` runs the
whole demo; these pin down the pieces it is judged by, so that a demo whose story did not
happen cannot pass its own checks.
"""

from __future__ import annotations

import io
import math
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from resilience import CircuitOpenError, Registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's examples/

from examples.demo.app import Options
from examples.demo.certs import write_certificates
from examples.demo.story import Reply, Story
from examples.demo.upstream import PHASES, Phase, Schedule, Upstream
from examples.demo.view import LiveView, Tick, quantile, read_sample


def test_phases_scale_with_the_duration() -> None:
    s = Schedule(20.0)
    assert [p.name for p in s.phases] == ["healthy", "degraded", "down", "recovered"]
    assert s.bounds[0][0] == 0 and math.isclose(s.bounds[-1][1], 20.0)
    assert s.window("down") == pytest.approx((9.0, 14.0))
    assert s.phase_at(9.5).name == "down" and s.phase_at(99).name == "recovered"
    with pytest.raises(KeyError, match="'nope'"):
        s.window("nope")
    with pytest.raises(ValueError, match="duration must be > 0"):
        Schedule(0)
    assert PHASES[2].name == "down" and PHASES[2].error_rate == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"share": 0}, "share"),
        ({"error_rate": 1.5}, "error_rate"),
        ({"slow_rate": -0.1}, "slow_rate"),
    ],
)
def test_bad_phases_are_refused(kwargs: dict[str, float], message: str) -> None:
    fields = {"share": 0.5, "error_rate": 0.0, "slow_rate": 0.0} | kwargs
    with pytest.raises(ValueError, match=message):
        Phase("p", description="d", **fields)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration": 3.9}, "--duration"),
        ({"duration": math.nan}, "--duration"),
        ({"duration": math.inf}, "--duration"),
        ({"backend": "curio"}, "--backend"),
        ({"callers": 0}, "--callers"),
        ({"metrics_port": 70000}, "--metrics-port"),
    ],
)
def test_bad_options_name_the_option(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Options(**kwargs)  # type: ignore[arg-type]


def test_quantile_interpolates_like_prometheus() -> None:
    buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (math.inf, 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.7, buckets) == pytest.approx(0.3)
    assert quantile(0.99, buckets) == pytest.approx(0.95)
    assert quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert quantile(0.99, [(0.1, 1.0), (math.inf, 10.0)]) == 0.1  # beyond the last bound


async def test_upstream_misbehaves_by_phase() -> None:
    import random

    always = (Phase("down", 1.0, 1.0, 0.0, "all fail"),)
    up = (Phase("healthy", 1.0, 0.0, 0.0, "fine"),)
    down = Upstream(Schedule(10, always), slow_delay=0.01, rng=random.Random(1))
    fine = Upstream(Schedule(10, up), slow_delay=0.01, rng=random.Random(1))
    assert (await down._reply(b"GET /quote HTTP/1.1")).startswith(b"HTTP/1.1 503 ")
    reply = await fine._reply(b"GET /quote HTTP/1.1\r\nHost: x")
    assert reply.startswith(b"HTTP/1.1 200 ") and b'"quote": ' in reply
    assert (await fine._reply(b"GET /other HTTP/1.1")).startswith(b"HTTP/1.1 404 ")


def test_certificates_verify_for_server_and_client(tmp_path: Path) -> None:
    from resilience.tls import client_context, server_context

    certs = write_certificates(tmp_path)
    server_context(certs.server_cert, certs.server_key, client_ca=certs.ca)
    client_context(certs.ca, certfile=certs.client_cert, keyfile=certs.client_key)
    assert certs.server_key.stat().st_mode & 0o077 == 0


def test_tick_reads_the_public_metrics() -> None:
    metrics = CollectorRegistry()
    now = [0.0]
    reg = Registry(metrics_registry=metrics, clock=lambda: now[0])
    reg.configure_command("dep", request_volume_threshold=2, error_percent_threshold=50)
    before = read_sample(metrics, 0.0)
    assert reg.run_sync("dep", int, "1") == 1
    with pytest.raises(ZeroDivisionError):
        reg.run_sync("dep", divmod, 1, 0)
    with pytest.raises(CircuitOpenError):
        reg.run_sync("dep", int, "2")
    assert reg.run_sync("dep", int, "3", fallback=lambda exc: -1) == -1
    tick = Tick.between(before, read_sample(metrics, 2.0))
    (row,) = tick.commands
    assert row.name == "dep" and row.state == "open"
    assert row.calls == 2.0  # 4 calls in 2 s
    assert row.short_circuited == 1.0 and row.fallbacks == 0.5 and row.rejected == 0
    assert row.error_percent == 50
    assert row.p50 is not None and row.p50 < 0.5


def test_the_verdict_fails_when_the_story_did_not_happen() -> None:
    story = Story(Schedule(20))
    story.answer("healthy", Reply(1, live=True))
    out = io.StringIO()
    assert story.report(out, judge=True) is False
    text = out.getvalue()
    assert "FAIL  the circuit opened during the outage" in text
    assert "FAIL  the circuit closed again after recovery" in text
    assert "OK    the upstream answered live while healthy" in text
    assert text.rstrip().endswith("SOME CHECKS FAILED")


def test_the_verdict_passes_on_the_full_story() -> None:
    s = Schedule(20)
    story = Story(s)
    for phase in ("healthy", "recovered"):
        story.answer(phase, Reply(1, live=True))
    story.retries["degraded"] = 2
    story.answer("degraded", Reply(1, live=True), retried=True)
    story.fallback_reasons["short-circuited"] = 5
    story.open_seen.add("down")
    story.transitions += [(9.5, "open", "down"), (14.5, "half_open", "recovered"),
                          (14.5, "closed", "recovered")]
    story.jobs_done = 3
    story.scrape = {"short_circuited": 5, "closed": 1}
    out = io.StringIO()
    assert story.report(out, judge=True) is True, out.getvalue()
    assert "opened at 9.5s (down), closed at 14.5s (recovered)" in out.getvalue()
    assert "2 retries (1 calls rescued)" in out.getvalue()
    story.rescued.clear()  # retries rescued nothing while degraded: a failed check
    assert story.report(io.StringIO(), judge=True) is False
    story.rescued["degraded"] = 1
    story.errors["HTTP 503"] = 1  # a caller saw an error: no longer the promised story
    assert story.report(io.StringIO(), judge=True) is False


def test_plain_view_has_no_escapes_and_live_view_redraws_in_place() -> None:
    metrics = CollectorRegistry()
    reg = Registry(metrics_registry=metrics)
    reg.run_sync("dep", int, "1")
    tick = Tick.between(read_sample(metrics, 0.0), read_sample(metrics, time.monotonic()))
    plain = io.StringIO()
    view = LiveView(plain, live=False, color=True, workers=4)
    view.event("something happened")
    view.show(1.0, 10.0, "healthy", tick)
    assert "\x1b" not in plain.getvalue()
    assert "dep: closed" in plain.getvalue() and "* something happened" in plain.getvalue()
    live = io.StringIO()
    view = LiveView(live, live=True, color=False, workers=4)
    view.start()
    view.show(1.0, 10.0, "healthy", tick)
    first = live.getvalue()
    view.show(2.0, 10.0, "healthy", tick)
    view.stop()
    view.stop()
    second = live.getvalue()[len(first):]
    assert first.startswith("\x1b[?25l") and "\x1b[32m" not in first  # no color asked
    assert second.startswith(f"\x1b[{first.count(chr(10))}F")  # back up over the last frame
    assert second.count("\x1b[?25h") == 1
