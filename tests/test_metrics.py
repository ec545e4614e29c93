"""The exposition: names, types, labels, help, values, cardinality, speed."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

import resilience
from resilience import WorkerPool, metrics
from resilience._exporter import Hub
from resilience._metrics_records import observe_duration
from resilience._metrics_text import exposition

HELP = {
    "resilience_command_calls": "Calls to a command, by outcome.",
    "resilience_command_fallbacks": "Fallbacks run by a command, by outcome.",
    "resilience_command_retries": "Retries of a command's calls, by outcome.",
    "resilience_command_duration_seconds":
        "Duration of executed command calls (short-circuited and rejected calls excluded).",
    "resilience_command_in_flight": "Executions of a command holding a concurrency slot.",
    "resilience_circuit_state": "Circuit state: 1 for the current state, 0 for the others.",
    "resilience_circuit_error_ratio": "Error ratio (0..1) of a command over its rolling window.",
    "resilience_pool_jobs": "Jobs finished by a worker pool, by outcome.",
    "resilience_pool_queue_depth": "Jobs waiting in a worker pool's queue.",
    "resilience_pool_workers_busy": "Workers of a pool running a job.",
    "resilience_pool_job_duration_seconds": "Run time of a pool's jobs.",
    "resilience_pool_queue_wait_seconds":
        "Time a job waited in a pool's queue before a worker took it.",
    "resilience_tls_handshakes": "TLS handshakes of a server, by outcome.",
    "resilience_tls_connections_active": "TLS connections a server is serving.",
    "resilience_tls_certificate_expiry_timestamp_seconds":
        "Unix time at which the server's certificate expires.",
    "resilience_rate_limit_decisions": "Decisions of a rate limiter, by outcome.",
    "resilience_store_up": "1 while a shared store answers, 0 while it is down.",
    "resilience_store_errors": "Failed round trips to a shared store, by operation.",
}
# family -> (type, label names of its samples, without ``le``)
SHAPE = {
    "resilience_command_calls": ("counter", {"command", "outcome"}),
    "resilience_command_fallbacks": ("counter", {"command", "outcome"}),
    "resilience_command_retries": ("counter", {"command", "outcome"}),
    "resilience_command_duration_seconds": ("histogram", {"command"}),
    "resilience_command_in_flight": ("gauge", {"command"}),
    "resilience_circuit_state": ("gauge", {"command", "state"}),
    "resilience_circuit_error_ratio": ("gauge", {"command"}),
    "resilience_pool_jobs": ("counter", {"pool", "outcome"}),
    "resilience_pool_queue_depth": ("gauge", {"pool"}),
    "resilience_pool_workers_busy": ("gauge", {"pool"}),
    "resilience_pool_job_duration_seconds": ("histogram", {"pool"}),
    "resilience_pool_queue_wait_seconds": ("histogram", {"pool"}),
    "resilience_tls_handshakes": ("counter", {"server", "outcome"}),
    "resilience_tls_connections_active": ("gauge", {"server"}),
    "resilience_tls_certificate_expiry_timestamp_seconds": ("gauge", {"server"}),
    "resilience_rate_limit_decisions": ("counter", {"limiter", "outcome"}),
    "resilience_store_up": ("gauge", {"store"}),
    "resilience_store_errors": ("counter", {"store", "operation"}),
}
OUTCOMES = {
    "resilience_command_calls": {
        "success", "failure", "timeout", "rejected", "short_circuited", "ignored", "cancelled",
    },
    "resilience_command_fallbacks": {"success", "failure"},
    "resilience_command_retries": {"retried", "exhausted", "budget_exhausted", "deadline"},
    "resilience_pool_jobs": {"success", "failure", "cancelled"},
    "resilience_tls_handshakes": {"success", "failure", "timeout"},
    "resilience_rate_limit_decisions": {"allowed", "waited", "rejected"},
}


class FakeServer:
    """What serve_tls registers on its series: live gauges read at scrape time."""

    connections_active = 2
    certificate_expiry_timestamp: float | None = 1_900_000_000.0
    up = True  # and what a shared store (resilience.redis) registers on its own


async def ok() -> str:
    return "ok"


async def boom() -> None:
    raise RuntimeError("boom")


def value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    v = reg.get_sample_value(name, labels)
    assert v is not None, f"no sample {name}{labels}"
    return v


async def populate(reg: CollectorRegistry) -> FakeServer:
    r = resilience.Registry(metrics_registry=reg)
    await r.run("hello", ok)
    with pytest.raises(RuntimeError):
        await r.run("hello", boom)
    assert await r.run("hello", boom, fallback=lambda exc: "fb") == "fb"
    async with WorkerPool(workers=2, queue_size=4, name="jobs", metrics_registry=reg) as pool:
        assert await pool.run(ok) == "ok"
    server = FakeServer()
    hub = Hub.of(reg)
    hub.tls_server("https").servers.add(server)
    hub.command("hello").retries[1] += 2  # what the retry loop will record
    hub.limiter("github").decisions[2] += 3  # what the rate limiter will record
    hub.store("redis").stores.add(server)  # what a shared store records
    hub.store("redis").errors[0] += 1
    return server


async def test_every_family_has_its_name_type_labels_and_help(
    metrics_registry: CollectorRegistry,
) -> None:
    server = await populate(metrics_registry)
    text = generate_latest(metrics_registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == set(SHAPE)
    assert [n for n in metrics.METRIC_NAMES if n.removesuffix("_total") not in families] == []
    for name, (typ, labels) in SHAPE.items():
        fam = families[name]
        assert (fam.type, fam.documentation) == (typ, HELP[name]), name
        assert fam.samples, name
        for s in fam.samples:
            assert set(s.labels) - {"le"} == labels, s
            assert s.value >= 0, s  # no negative or sentinel values
        if name in OUTCOMES:
            assert {s.labels["outcome"] for s in fam.samples} == OUTCOMES[name]
    assert value(metrics_registry, "resilience_command_calls_total",
                 command="hello", outcome="success") == 1
    assert value(metrics_registry, "resilience_command_calls_total",
                 command="hello", outcome="failure") == 2
    assert value(metrics_registry, "resilience_command_fallbacks_total",
                 command="hello", outcome="success") == 1
    assert value(metrics_registry, "resilience_command_duration_seconds_count",
                 command="hello") == 3
    assert value(metrics_registry, "resilience_command_retries_total",
                 command="hello", outcome="exhausted") == 2
    assert value(metrics_registry, "resilience_command_retries_total",
                 command="hello", outcome="retried") == 0
    assert value(metrics_registry, "resilience_rate_limit_decisions_total",
                 limiter="github", outcome="rejected") == 3
    assert value(metrics_registry, "resilience_pool_jobs_total",
                 pool="jobs", outcome="success") == 1
    assert value(metrics_registry, "resilience_pool_queue_wait_seconds_count", pool="jobs") == 1
    assert value(metrics_registry, "resilience_tls_connections_active", server="https") == 2
    assert value(metrics_registry, "resilience_tls_certificate_expiry_timestamp_seconds",
                 server="https") == 1_900_000_000.0
    del server


async def test_no_expiry_sample_without_a_certificate(metrics_registry: CollectorRegistry) -> None:
    server = FakeServer()
    server.certificate_expiry_timestamp = None
    Hub.of(metrics_registry).tls_server("plain").servers.add(server)
    assert metrics_registry.get_sample_value(
        "resilience_tls_certificate_expiry_timestamp_seconds", {"server": "plain"}
    ) is None


def states(reg: CollectorRegistry, command: str) -> dict[str, float]:
    return {
        s: value(reg, "resilience_circuit_state", command=command, state=s)
        for s in ("closed", "open", "half_open")
    }


async def test_circuit_state_is_one_hot_through_closed_open_half_open(
    metrics_registry: CollectorRegistry,
) -> None:
    now = [0.0]
    r = resilience.Registry(metrics_registry=metrics_registry, clock=lambda: now[0])
    r.configure_command("dep", request_volume_threshold=1, sleep_window=5.0)
    assert states(metrics_registry, "dep") == {"closed": 1, "open": 0, "half_open": 0}
    with pytest.raises(RuntimeError):
        await r.run("dep", boom)
    assert states(metrics_registry, "dep") == {"closed": 0, "open": 1, "half_open": 0}
    assert value(metrics_registry, "resilience_circuit_error_ratio", command="dep") == 1.0
    now[0] = 6.0
    entered, release = anyio.Event(), anyio.Event()

    async def trial() -> str:
        entered.set()
        await release.wait()
        return "ok"

    async with anyio.create_task_group() as tg:
        tg.start_soon(r.run, "dep", trial)
        await entered.wait()
        assert states(metrics_registry, "dep") == {"closed": 0, "open": 0, "half_open": 1}
        assert value(metrics_registry, "resilience_command_in_flight", command="dep") == 1
        release.set()
    assert states(metrics_registry, "dep") == {"closed": 1, "open": 0, "half_open": 0}
    assert value(metrics_registry, "resilience_command_in_flight", command="dep") == 0
    assert value(metrics_registry, "resilience_command_calls_total",
                 command="dep", outcome="short_circuited") == 0


async def test_counters_never_go_backwards(metrics_registry: CollectorRegistry) -> None:
    r = resilience.Registry(metrics_registry=metrics_registry)
    for expected in (1, 2):
        async with WorkerPool(workers=1, name="batch", metrics_registry=metrics_registry) as p:
            await p.run(ok)
        # the pool is gone; its series stays, and the next pool of that name continues it
        assert value(metrics_registry, "resilience_pool_jobs_total",
                     pool="batch", outcome="success") == expected
    await r.run("c", ok)
    r.flush()  # resets circuit state, never counters
    assert value(metrics_registry, "resilience_command_calls_total",
                 command="c", outcome="success") == 1
    await r.run("c", ok)
    assert value(metrics_registry, "resilience_command_calls_total",
                 command="c", outcome="success") == 2


async def test_registries_on_one_collector_registry_add_up(
    metrics_registry: CollectorRegistry,
) -> None:
    a = resilience.Registry(metrics_registry=metrics_registry)
    b = resilience.Registry(metrics_registry=metrics_registry)
    other = CollectorRegistry()
    c = resilience.Registry(metrics_registry=other)
    for reg, n in ((a, 2), (b, 3), (c, 5)):
        for _ in range(n):
            await reg.run("shared", ok)
    assert value(metrics_registry, "resilience_command_calls_total",
                 command="shared", outcome="success") == 5
    assert value(other, "resilience_command_calls_total",
                 command="shared", outcome="success") == 5
    # one family per metric, one sample per label set: registering twice never duplicates
    text = generate_latest(metrics_registry).decode()
    assert text.count("# TYPE resilience_command_calls_total counter") == 1
    assert text.count('resilience_command_calls_total{command="shared",outcome="success"}') == 1


def test_cardinality_guard_refuses_new_names_beyond_the_limit(
    metrics_registry: CollectorRegistry,
) -> None:
    assert metrics.get_max_names(metrics_registry) == metrics.DEFAULT_MAX_NAMES == 1000
    metrics.set_max_names(3, metrics_registry)
    r = resilience.Registry(metrics_registry=metrics_registry)
    for i in range(3):
        r.configure_command(f"user-{i}", timeout=1.0)
    with pytest.raises(ValueError, match=r"'user-3'.*limit is 3.*set_max_names"):
        r.configure_command("user-3", timeout=1.0)
    r.configure_command("user-0", timeout=2.0)  # known names stay usable
    with pytest.raises(ValueError, match="'p3'"):  # each kind has its own budget
        for i in range(5):
            WorkerPool(name=f"p{i}", metrics_registry=metrics_registry)
    hub = Hub.of(metrics_registry)
    assert (len(hub.commands), len(hub.pools)) == (3, 3)
    metrics.set_max_names(4, metrics_registry)
    r.configure_command("user-3", timeout=1.0)
    assert metrics.get_max_names(CollectorRegistry()) == 1000  # per CollectorRegistry


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_cardinality_limit_is_validated(bad: Any, metrics_registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="max names"):
        metrics.set_max_names(bad, metrics_registry)


NAMES = ["plain", 'quo"te', "back\\slash", "new\nline", "ünï ☃"]


@pytest.mark.parametrize(
    ("accept", "encode"),
    [
        ("", generate_latest),
        ("application/openmetrics-text; version=1.0.0", generate_openmetrics),
    ],
    ids=["text-0.0.4", "openmetrics"],
)
def test_fast_exposition_is_byte_identical_to_prometheus_client(
    accept: str, encode: Callable[[CollectorRegistry], bytes],
    metrics_registry: CollectorRegistry,
) -> None:
    from prometheus_client import Counter

    hub = Hub.of(metrics_registry)  # registered first: the fast path puts the hub first
    Counter("app_requests", "Application requests.", registry=metrics_registry).inc(3)
    for i, name in enumerate(NAMES):
        c = hub.command(name)
        c.counts[i % 7] += 10 ** i
        observe_duration(c.counts, 0.003 * i)
        observe_duration(c.counts, 123.0)
        p = hub.pool(name)
        p.jobs[i % 3] += 1_234_567
        p.queue_wait.observe(0.5)
        t = hub.tls_server(name)
        t.handshakes[i % 3] += 1
        t.servers.add(server := FakeServer())
        c.retries[i % 4] += 7
        hub.limiter(name).decisions[i % 3] += 2
    expected = encode(metrics_registry)
    body, headers = exposition(metrics_registry, accept, "", None, hub)
    assert body == expected
    assert headers[0][1].startswith("application/openmetrics-text" if accept else "text/plain")
    del server


def test_scrape_of_1000_commands_and_100_pools_is_fast(
    metrics_registry: CollectorRegistry, capsys: pytest.CaptureFixture[str],
) -> None:
    r = resilience.Registry(metrics_registry=metrics_registry)

    async def load() -> None:
        for i in range(1000):
            await r.run(f"cmd-{i}", ok)
        for i in range(100):
            async with WorkerPool(workers=1, name=f"pool-{i}",
                                  metrics_registry=metrics_registry) as pool:
                await pool.run(ok)

    anyio.run(load)
    hub = Hub.of(metrics_registry)
    times = []
    for accept in ["", "application/openmetrics-text"] * 3:
        t0 = time.perf_counter()
        body, _ = exposition(metrics_registry, accept, "gzip", None, hub)
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1000
    with capsys.disabled():
        print(f"\nscrape of 1000 commands + 100 pools: median {ms:.1f} ms "
              f"(min {min(times) * 1000:.1f} ms)")
    # The target is 50 ms (measured ~30 ms); generous here since CI shares two cores.
    assert ms < 250
