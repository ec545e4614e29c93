"""A real Prometheus server scrapes a service's /metrics over HTTPS (our CA) on loopback.

Needs the ``prometheus`` binary (``make tools``): skipped without it, failed under CI=true.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _tools import require_tool
from test_tls_certs import make_ca

pytestmark = pytest.mark.slow

SERVICE = textwrap.dedent("""
    import sys
    import anyio
    import resilience
    from resilience import WorkerPool
    from resilience.metrics import start_metrics_server

    async def ok():
        return "ok"

    async def boom():
        raise RuntimeError("down")

    async def main():
        for _ in range(7):
            await resilience.run("work", ok)
        for _ in range(2):
            await resilience.run("work", boom, fallback=lambda exc: "cached")
        async with WorkerPool(workers=2, name="jobs") as pool:
            for i in range(5):
                await pool.run(ok)

    anyio.run(main)
    with start_metrics_server(certfile=sys.argv[1], keyfile=sys.argv[2]) as srv:
        print(srv.port, flush=True)
        sys.stdin.read()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        answer = json.load(resp)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def wait_for(port: int, promql: str, prom: subprocess.Popen[bytes],
             timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        assert prom.poll() is None, "prometheus exited early"
        try:
            result = query(port, promql)
            if result:
                return result
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise AssertionError(f"no result for {promql!r} within {timeout} s")
        time.sleep(0.2)


def test_real_prometheus_scrapes_our_https_endpoint(tmp_path: Path) -> None:
    binary = require_tool("prometheus")
    ca = make_ca(tmp_path)
    cert, key = ca.issue(tmp_path, "service")
    service = subprocess.Popen(
        [sys.executable, "-c", SERVICE, str(cert), str(key)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    prom: subprocess.Popen[bytes] | None = None
    try:
        assert service.stdout is not None
        target = int(service.stdout.readline())
        config = tmp_path / "prometheus.yml"
        config.write_text(textwrap.dedent(f"""
            global:
              scrape_interval: 1s
              scrape_timeout: 1s
            scrape_configs:
              - job_name: resilience
                scheme: https
                tls_config:
                  ca_file: {ca.path}
                static_configs:
                  - targets: ["127.0.0.1:{target}"]
        """))
        port = free_port()
        prom = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
        )
        up = wait_for(port, 'up{job="resilience"} == 1', prom)
        assert up[0]["value"][1] == "1"
        calls = wait_for(port, 'resilience_command_calls_total{outcome="success"}', prom)
        assert [(r["metric"]["command"], r["value"][1]) for r in calls] == [("work", "7")]
        fallbacks = query(port, 'resilience_command_fallbacks_total{outcome="success"}')
        assert [r["value"][1] for r in fallbacks] == ["2"]
        jobs = query(port, 'resilience_pool_jobs_total{pool="jobs",outcome="success"}')
        assert [r["value"][1] for r in jobs] == ["5"]
        state = query(port, 'resilience_circuit_state{command="work"} == 1')
        assert [r["metric"]["state"] for r in state] == ["closed"]
        # the exposition Prometheus ingested is clean: no series with a scrape-time error
        assert query(port, 'scrape_samples_scraped{job="resilience"} > 0')
    finally:
        if prom is not None:
            prom.terminate()
            assert prom.wait(timeout=30) == 0, (tmp_path / "prometheus.log").read_text()
        service.communicate(timeout=30)
    assert service.returncode == 0
