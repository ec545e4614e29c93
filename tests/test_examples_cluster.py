"""``make cluster-demo`` (``examples/cluster/``): the whole story, run as a user would run it.

The smoke test runs ``python -m examples.cluster --quick`` (a real 3-member etcd cluster and
five node processes on loopback, about 30 s) on each backend and checks the exit status and
the OK lines. It needs the ``etcd`` binary (Debian package ``etcd-server``): skipped without
it, a failure under ``CI=true``. The other tests pin down the parts the verdict rests on, so a
run whose story did not happen cannot pass its own checks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _tools import require_tool, run_story

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's examples/

from examples.cluster.checks import Measured, checks, leader_intervals
from examples.cluster.etcd import b64, prefix_end, unb64
from examples.cluster.master import pad
from examples.cluster.story import ETCD_MISSING

ROOT = Path(__file__).resolve().parent.parent
ETCD_HOW = (
    "apt-get install etcd-server etcd-client (Debian/Ubuntu, etcd 3.4); or run `make tools`"
)
TIMEOUT = 180.0

#: The lines the story must print (each check says what it measured).
EXPECTED_OK = (
    "OK    etcd formed a 3-member cluster and all 5 nodes registered",
    "OK    steady dispatch used every worker",
    "OK    killed worker w3: its registration vanished",
    "OK    slowed worker w2: the leader timed out",
    "OK    killed the leader ",
    "OK    never two active leaders",
    "OK    killed etcd's leader member",
    "OK    certificate rotation",
    "OK    every task done exactly once or reported failed",
    "OK    after the restore every node is registered again",
    "OK    every running node serves /metrics",
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_cluster_demo_tells_its_story(backend: str) -> None:
    require_tool("etcd", ETCD_HOW)
    out = run_story("examples.cluster", backend, EXPECTED_OK, TIMEOUT)
    if "prometheus not installed" not in out:
        assert "OK    Prometheus scraped the nodes" in out, out


def test_without_etcd_it_says_what_to_install(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # no etcd anywhere on PATH
    proc = subprocess.run(
        [sys.executable, "-m", "examples.cluster", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=env,
    )
    assert proc.returncode == 2
    assert ETCD_MISSING in proc.stderr
    assert "apt-get install etcd-server" in proc.stderr


def test_nothing_measured_fails_every_check() -> None:
    m = Measured(ttl=3, masters=("m1", "m2"), workers=("w1", "w2", "w3"),
                 killed_worker="w3", slow_worker="w2")
    results = checks(m)
    assert len(results) == 11  # no PromQL answers: no Prometheus check
    assert not any(ok for ok, _ in results), results


def test_two_overlapping_leaders_fail_the_check() -> None:
    m = Measured(ttl=3, masters=("m1", "m2"), workers=("w1",), killed_worker="w1",
                 slow_worker="w1")
    m.events = [
        {"t": 1.0, "node": "m1", "event": "leader", "term": 5},
        {"t": 2.0, "node": "m2", "event": "leader", "term": 9},
        {"t": 3.0, "node": "m1", "event": "stepped_down", "term": 5},
    ]
    assert leader_intervals(m) == [(1.0, 3.0, "m1", 5), (2.0, float("inf"), "m2", 9)]
    m.results = [(10, {"task": "t1", "term": 9, "leader": "m2", "t": 2.5, "worker": "w1",
                       "route": ["w1:ok"]}),
                 (11, {"task": "t2", "term": 5, "leader": "m1", "t": 2.6, "worker": "w1",
                       "route": ["w1:ok"]})]
    verdict = dict((text.split(":")[0], ok) for ok, text in checks(m))
    assert verdict["never two active leaders"] is False
    text = next(t for _, t in checks(m) if t.startswith("never two active leaders"))
    assert "(1 do)" in text and "overlap 1 times" in text


def test_etcd_gateway_encoding() -> None:
    assert unb64(b64("/cluster/tasks/t00001")) == "/cluster/tasks/t00001"
    assert unb64(None) == ""
    assert prefix_end("/cluster/tasks/") == "/cluster/tasks0"
    assert pad(7) < pad(10) < pad(123456789)  # etcd compares values as bytes
