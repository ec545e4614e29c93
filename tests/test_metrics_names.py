"""Names that reach the exposition: refused when they could break it, escaped otherwise."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from _tools import require_tool
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from resilience._exporter import Hub
from resilience._metrics_records import observe_duration
from resilience._metrics_text import exposition

KINDS = ["command", "pool", "tls_server", "limiter"]
#: Label values that need escaping, and text that needs none but is not ASCII.
AWKWARD = ['quo"te', "back\\slash", "new\nline", 'all\\"\n\\n', "ünï ☃", "trailing\\"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("bad", "error"),
    [("a\udcff", ValueError), ("\ud800", ValueError), ("", ValueError),
     (None, TypeError), (b"bytes", TypeError), (42, TypeError)],
)
def test_a_name_that_could_break_the_exposition_is_refused(
    kind: str, bad: Any, error: type[Exception], metrics_registry: CollectorRegistry,
) -> None:
    hub = Hub.of(metrics_registry)
    with pytest.raises(error, match="name"):
        getattr(hub, kind)(bad)
    assert all(not table for table in hub.by_kind.values())  # nothing was created
    generate_latest(metrics_registry)  # and every scrape still works
    exposition(metrics_registry, "", "", None, hub)


def test_the_error_names_the_kind_and_the_problem(metrics_registry: CollectorRegistry) -> None:
    hub = Hub.of(metrics_registry)
    with pytest.raises(ValueError, match=r"TLS server name 'a\\udcff' cannot be encoded as UTF-8"):
        hub.tls_server("a\udcff")
    with pytest.raises(TypeError, match="pool name must be a non-empty str, got None"):
        hub.pool(None)  # type: ignore[arg-type]


def test_a_str_subclass_is_kept_as_a_plain_str(metrics_registry: CollectorRegistry) -> None:
    class Name(str):
        pass

    series = Hub.of(metrics_registry).command(Name("svc"))
    assert type(series.name) is str
    assert list(Hub.of(metrics_registry).commands) == ["svc"]
    assert all(type(k) is str for k in Hub.of(metrics_registry).commands)


def populate(hub: Hub) -> None:
    for i, name in enumerate(AWKWARD):
        c = hub.command(name)
        c.counts[i % 7] += i + 1
        c.retries[i % 4] += 1
        observe_duration(c.counts, 0.01 * i)
        hub.pool(name).queue_wait.observe(0.2)
        hub.tls_server(name).handshakes[0] += 1
        hub.limiter(name).decisions[1] += 1


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"])
def test_awkward_names_are_escaped_and_read_back_exactly(
    accept: str, metrics_registry: CollectorRegistry,
) -> None:
    hub = Hub.of(metrics_registry)
    populate(hub)
    body, _ = exposition(metrics_registry, accept, "", None, hub)
    text = body.decode()
    if accept:
        from prometheus_client.openmetrics.parser import (
            text_string_to_metric_families as parse_openmetrics,
        )

        families = list(parse_openmetrics(text))  # type: ignore[no-untyped-call]
    else:
        families = list(text_string_to_metric_families(text))
    for label in ("command", "pool", "server", "limiter"):
        seen = {s.labels[label] for f in families for s in f.samples if label in s.labels}
        assert seen == set(AWKWARD), label
    assert "\nline" not in text.replace("\\nline", "")  # no raw newline inside a label


def test_awkward_names_pass_promtool_check_metrics_with_no_warnings(
    metrics_registry: CollectorRegistry,
) -> None:
    promtool = require_tool("promtool")
    hub = Hub.of(metrics_registry)
    populate(hub)
    body, _ = exposition(metrics_registry, "", "", None, hub)
    assert body == generate_latest(metrics_registry)  # the fast text is prometheus-client's
    done = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
