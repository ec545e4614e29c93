"""The metrics stack's layers point one way, and one schema table drives every exporter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from resilience import _metrics_multiproc, metrics
from resilience._exporter import Hub
from resilience._metrics_records import observe_duration, snapshot
from resilience._metrics_schema import GAUGE_MODES, KINDS, SCHEMA, exposed_name
from resilience._metrics_text import render

PACKAGE = Path(metrics.__file__).parent
#: Bottom first: a module may import (at any depth, lazily too) only from layers below its own.
LAYERS = [
    {"_lock", "_names"},
    {"_metrics_schema"},
    {"_metrics_records"},
    {"_metrics_prom"},
    {"_metrics_multiproc"},
    {"_exporter"},
    {"_metrics_text"},
    {"_metrics_apps", "_metrics_server"},
    {"metrics"},
]
OUTSIDE = {"tls"}  # the TLS helpers, used by the server for HTTPS only
NO_PROMETHEUS = {"_lock", "_names", "_metrics_schema", "_metrics_records", "_metrics_multiproc"}


def imports(module: str) -> tuple[set[str], set[str]]:
    """(package modules, other top-level modules) that ``module`` imports anywhere."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    ours: set[str] = set()
    others: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.module:
                ours.add(node.module.split(".")[0])
            else:
                ours.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            others.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            others.update(alias.name for alias in node.names)
    return ours, others


@pytest.mark.parametrize("module", sorted(set().union(*LAYERS)))
def test_each_module_imports_only_from_below(module: str) -> None:
    level = next(i for i, layer in enumerate(LAYERS) if module in layer)
    below = set().union(*LAYERS[:level]) | OUTSIDE
    ours, others = imports(module)
    assert ours <= below, f"{module} imports {sorted(ours - below)} (not below it)"
    prometheus = {m for m in others if m.split(".")[0] == "prometheus_client"}
    if module in NO_PROMETHEUS:
        assert not prometheus, f"{module} imports {prometheus}"
    private = {m for m in prometheus if m.split(".")[1] in ("values", "mmap_dict", "multiprocess")}
    if module != "_metrics_prom":  # prometheus-client's multi-process internals: one adapter
        assert not private, f"{module} imports {private}"


def test_the_schema_is_the_one_table() -> None:
    assert tuple(exposed_name(r) for r in SCHEMA) == metrics.METRIC_NAMES
    assert len({r.family for r in SCHEMA}) == len(SCHEMA)
    assert {r.kind for r in SCHEMA} == set(KINDS)
    assert metrics.GAUGE_MODES == GAUGE_MODES
    assert set(GAUGE_MODES.values()) <= {"livesum", "livemax", "livemin"}
    for row in SCHEMA:
        assert row.type in ("counter", "gauge", "histogram")
        assert (row.mode != "") == (row.type == "gauge"), row
        assert len(row.labels) == 1 + bool(row.values), row
    assert [m.name for m in Hub().describe()] == [r.family for r in SCHEMA]
    retries = next(r for r in SCHEMA if r.family == "resilience_command_retries")
    assert (retries.type, retries.labels, retries.values) == (
        "counter", ("command", "outcome"),
        ("retried", "exhausted", "budget_exhausted", "deadline"),
    )


class Circuit:
    state_index, in_flight = 2, 1

    def error_ratio(self) -> float:
        return 0.5


class Pool:
    queue_depth, workers_busy = 3, 1


class Server:
    connections_active, certificate_expiry_timestamp = 2, 1_900_000_000.0


class Store:
    up = True


def populated(reg: CollectorRegistry) -> tuple[Hub, list[object]]:
    hub = Hub.of(reg)
    live: list[object] = []
    for i, name in enumerate(("a", "b")):
        c = hub.command(name)
        c.counts[:7] = [i + 1, 2, 0, 3, 0, 1, 0]
        c.fallbacks[1] += 1
        c.retries[:] = [4, i, 0, 1]
        observe_duration(c.counts, 0.03)
        observe_duration(c.counts, 20.0)
        c.circuits.add(circ := Circuit())
        p = hub.pool(name)
        p.jobs[1] += 1
        p.job_duration.pending.extend([0.2, 0.4])
        p.queue_wait.observe(0.001)
        p.pools.add(pool := Pool())
        hub.tls_server(name).servers.add(server := Server())
        hub.limiter(name).decisions[:] = [5, 1, i]
        hub.store(name).stores.add(store := Store())
        hub.store(name).errors[:] = [i, 2, 0, 1]
        live += [circ, pool, server, store]
    return hub, live


def as_set(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for f in text_string_to_metric_families(text) for s in f.samples
    }


def test_collector_renderer_and_flusher_show_the_same_samples(
    metrics_registry: CollectorRegistry,
) -> None:
    hub, live = populated(metrics_registry)
    collected = as_set(generate_latest(metrics_registry).decode())
    assert as_set(render(hub, False)) == collected
    # the flusher's file values, cumulated as MultiProcessCollector does
    flushed: set[tuple[str, tuple[tuple[str, str], ...], float]] = set()
    for kind in KINDS:
        for series in hub.series(kind):
            values = _metrics_multiproc.values_of(kind, [snapshot(series)])
            acc: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            for (_typ, fam, name, labels, names), value in values.items():
                pairs = dict(zip(labels, names, strict=True))
                if name.endswith("_bucket"):
                    key = tuple(sorted((k, v) for k, v in pairs.items() if k != "le"))
                    acc[fam, key] = value = acc.get((fam, key), 0) + value
                    if pairs["le"] == "+Inf":
                        flushed.add((fam + "_count", key, value))
                flushed.add((name, tuple(sorted(pairs.items())), value))
    assert flushed == collected
    families = {name.rsplit("_", 1)[0] for name, _, _ in collected} | {
        name for name, _, _ in collected
    }
    for row in SCHEMA:  # every row has samples here
        assert row.family in families or exposed_name(row) in families, row
    del live


def test_successes_of_commands_are_read_as_counted_those_of_pools_derived(
    metrics_registry: CollectorRegistry,
) -> None:
    hub = Hub.of(metrics_registry)
    hub.command("c").counts[0] = 5  # counted by the hot path, whatever the histogram says
    p = hub.pool("p")
    p.job_duration.pending.extend([0.1, 0.2, 0.3])
    p.jobs[1] = 1  # one of the three failed
    for text in (generate_latest(metrics_registry).decode(), render(hub, False)):
        samples = {(n, labels): v for n, labels, v in as_set(text)}
        assert samples[("resilience_command_calls_total",
                        (("command", "c"), ("outcome", "success")))] == 5
        assert samples[("resilience_command_duration_seconds_count", (("command", "c"),))] == 0
        assert samples[("resilience_pool_jobs_total",
                        (("outcome", "success"), ("pool", "p")))] == 2
