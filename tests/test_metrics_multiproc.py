"""Multi-process mode (PROMETHEUS_MULTIPROC_DIR) with real processes: values add up."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

WORKER = textwrap.dedent("""
    import sys, threading
    import anyio
    import resilience
    from resilience import WorkerPool
    from resilience import metrics

    mode, calls, jobs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    async def ok():
        return 1

    async def boom():
        raise RuntimeError("boom")

    async def main():
        for _ in range(calls):
            await resilience.run("work", ok)
        try:
            await resilience.run("work", boom)
        except RuntimeError:
            pass
        async with WorkerPool(workers=2, name="jobs") as pool:
            for _ in range(jobs):
                await pool.run(ok)

    anyio.run(main)
    if mode == "serve":  # serve every process's metrics until stdin closes
        with metrics.start_metrics_server() as srv:
            print(srv.url, flush=True)
            sys.stdin.read()
    elif mode == "hold":  # keep one call of "slow" in flight until stdin closes
        release, entered = threading.Event(), threading.Event()

        def slow():
            entered.set()
            release.wait()

        t = threading.Thread(target=resilience.run_sync, args=("slow", slow))
        t.start()
        entered.wait()
        metrics.flush_multiprocess()
        print("holding", flush=True)
        sys.stdin.read()
        release.set()
        t.join()
    elif mode == "fork":  # a forked child must not count what it inherited
        import os
        pid = os.fork()
        if pid == 0:
            anyio.run(main)
            metrics.flush_multiprocess()
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        print(pid, flush=True)
    # "exit": nothing more; totals reach the files at exit
""")


def env(directory: Path) -> dict[str, str]:
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}


def spawn(directory: Path, mode: str, calls: int, jobs: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, mode, str(calls), str(jobs)],
        env=env(directory), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )


def aggregated(directory: Path) -> CollectorRegistry:
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=str(directory))  # type: ignore[no-untyped-call]
    return reg


def sample(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_counters_and_histograms_add_up_across_processes(tmp_path: Path) -> None:
    procs = [spawn(tmp_path, "exit", calls, jobs) for calls, jobs in ((3, 1), (5, 2), (7, 4))]
    for p in procs:
        p.communicate(timeout=60)
        assert p.returncode == 0
    reg = aggregated(tmp_path)
    calls = "resilience_command_calls_total"
    assert sample(reg, calls, command="work", outcome="success") == 15
    assert sample(reg, calls, command="work", outcome="failure") == 3
    assert sample(reg, calls, command="work", outcome="timeout") == 0
    assert sample(reg, "resilience_command_duration_seconds_count", command="work") == 18
    assert sample(reg, "resilience_command_duration_seconds_bucket",
                  command="work", le="+Inf") == 18
    assert sample(reg, "resilience_pool_jobs_total", pool="jobs", outcome="success") == 7
    assert sample(reg, "resilience_pool_queue_wait_seconds_count", pool="jobs") == 7
    # gauges are live: their files stay until mark_process_dead, counters' files stay for good
    assert sample(reg, "resilience_circuit_state", command="work", state="closed") == 1
    for p in procs:
        mark_process_dead(p.pid, str(tmp_path))  # type: ignore[no-untyped-call]
    reg = aggregated(tmp_path)
    assert sample(reg, "resilience_circuit_state", command="work", state="closed") is None
    assert sample(reg, calls, command="work", outcome="success") == 15  # counters stay


def test_metrics_server_serves_every_process_and_live_gauges(tmp_path: Path) -> None:
    holder = spawn(tmp_path, "hold", 2, 1)
    server = spawn(tmp_path, "serve", 4, 3)
    try:
        assert holder.stdout is not None and server.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
    finally:
        for p in (holder, server):
            p.communicate(timeout=60)
    assert holder.returncode == server.returncode == 0
    lines = set(text.splitlines())
    assert 'resilience_command_calls_total{command="work",outcome="success"} 6.0' in lines
    assert 'resilience_pool_jobs_total{outcome="success",pool="jobs"} 4.0' in lines
    assert 'resilience_command_in_flight{command="slow"} 1.0' in lines  # from the holder
    assert 'resilience_circuit_state{command="slow",state="closed"} 1.0' in lines
    assert sum(line.startswith("# TYPE resilience_command_calls_total ") for line in lines) == 1


def test_a_forked_child_does_not_count_its_parents_totals(tmp_path: Path) -> None:
    parent = spawn(tmp_path, "fork", 5, 2)
    out, _ = parent.communicate(timeout=60)
    assert parent.returncode == 0, out
    child = int(out.strip())
    files = sorted(f.name for f in tmp_path.iterdir())
    assert f"counter_{child}.db" in files and f"counter_{parent.pid}.db" in files
    reg = aggregated(tmp_path)
    # the parent ran 5 ok + 1 failing call, the child 5 + 1 more on top of what it inherited:
    # 10 and 2 in all (15 and 3 if the child counted its inheritance again)
    calls = "resilience_command_calls_total"
    assert sample(reg, calls, command="work", outcome="success") == 10
    assert sample(reg, calls, command="work", outcome="failure") == 2
    assert sample(reg, "resilience_pool_jobs_total", pool="jobs", outcome="success") == 4
    assert sample(reg, "resilience_command_duration_seconds_count", command="work") == 12


EVERY_KIND = textwrap.dedent("""
    import sys
    from resilience._exporter import Hub
    from resilience._metrics_records import observe_duration
    from resilience import metrics

    class Circuit:  # what a live circuit shows the series
        state_index, in_flight = 1, 2
        def error_ratio(self):
            return 0.25

    class Server:
        connections_active, certificate_expiry_timestamp = 3, 1_900_000_000.0 + int(sys.argv[1])

    class Store:  # what a live shared store shows its series (up in one process only)
        up = sys.argv[1] == "0"

    hub = Hub.of()
    c = hub.command("work")
    c.counts[0] += 4  # successes are counted as they are
    c.counts[1] += 1
    c.retries[:] = [5, 1, 2, 3]
    c.fallbacks[0] += 1
    observe_duration(c.counts, 0.02)
    c.circuits.add(circuit := Circuit())
    p = hub.pool("jobs")
    p.job_duration.pending.append(0.3)  # a success, as workers record it
    p.queue_wait.pending.append(0.001)
    hub.tls_server("api").servers.add(server := Server())
    hub.limiter("github").decisions[:] = [7, 1, 2]
    hub.store("redis").stores.add(store := Store())
    hub.store("redis").errors[1] += 3
    metrics.flush_multiprocess()
    print("flushed", flush=True)
    sys.stdin.read()
""")


def test_every_schema_row_reaches_the_files_with_its_mode(tmp_path: Path) -> None:
    """Straight on the series (no command core involved): each row, each gauge mode."""
    procs = [
        subprocess.Popen([sys.executable, "-c", EVERY_KIND, str(i)], env=env(tmp_path),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "flushed"
        reg = aggregated(tmp_path)
    finally:
        for p in procs:
            p.communicate(timeout=60)
    assert all(p.returncode == 0 for p in procs)
    calls = "resilience_command_calls_total"
    assert sample(reg, calls, command="work", outcome="success") == 8
    assert sample(reg, calls, command="work", outcome="failure") == 2
    retries = "resilience_command_retries_total"
    assert {o: sample(reg, retries, command="work", outcome=o)
            for o in ("retried", "exhausted", "budget_exhausted", "deadline")} == {
        "retried": 10, "exhausted": 2, "budget_exhausted": 4, "deadline": 6}
    decisions = "resilience_rate_limit_decisions_total"
    assert sample(reg, decisions, limiter="github", outcome="allowed") == 14
    assert sample(reg, "resilience_command_duration_seconds_count", command="work") == 2
    assert sample(reg, "resilience_command_duration_seconds_bucket",
                  command="work", le="0.025") == 2
    assert sample(reg, "resilience_pool_jobs_total", pool="jobs", outcome="success") == 2
    assert sample(reg, "resilience_pool_queue_wait_seconds_bucket", pool="jobs", le="0.005") == 2
    # gauges by their schema mode: livesum, livemax, livemin
    assert sample(reg, "resilience_command_in_flight", command="work") == 4
    assert sample(reg, "resilience_tls_connections_active", server="api") == 6
    assert sample(reg, "resilience_circuit_state", command="work", state="open") == 1
    assert sample(reg, "resilience_circuit_state", command="work", state="closed") == 0
    assert sample(reg, "resilience_circuit_error_ratio", command="work") == 0.25
    assert sample(reg, "resilience_tls_certificate_expiry_timestamp_seconds",
                  server="api") == 1_900_000_000.0
    assert sample(reg, "resilience_store_up", store="redis") == 0  # livemin: one is down
    assert sample(reg, "resilience_store_errors_total", store="redis", operation="lease") == 6
    families = {m.name for m in reg.collect()}
    from resilience._metrics_schema import SCHEMA

    assert families == {row.family for row in SCHEMA}
