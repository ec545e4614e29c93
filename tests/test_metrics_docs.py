"""docs/metrics.md and docs/grafana-dashboard.json: every metric documented, PromQL valid."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from _tools import require_tool

from resilience.metrics import METRIC_NAMES

DOCS = Path(__file__).resolve().parent.parent / "docs"
HISTOGRAMS = [n for n in METRIC_NAMES if n.endswith("_seconds") and "expiry" not in n]
SAMPLES = set(METRIC_NAMES) | {h + s for h in HISTOGRAMS for s in ("_bucket", "_count", "_sum")}


def promtool_check_rules(rules: str, tmp_path: Path) -> None:
    promtool = require_tool("promtool")  # skipped without it (failed under CI=true)
    path = tmp_path / "rules.yml"
    path.write_text(rules)
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_metric_is_documented_and_only_real_ones_are_named() -> None:
    text = (DOCS / "metrics.md").read_text()
    for name in METRIC_NAMES:
        assert f"| `{name}` |" in text, name
    assert set(re.findall(r"resilience_[a-z_]+", text)) <= SAMPLES


def test_alert_rules_in_the_docs_pass_promtool(tmp_path: Path) -> None:
    text = (DOCS / "metrics.md").read_text()
    blocks = re.findall(r"```yaml\n(groups:.*?)```", text, re.S)
    assert len(blocks) == 1
    assert {"CircuitOpen", "CommandErrorRatioHigh", "PoolQueueSaturated",
            "CertificateExpiresSoon"} <= set(re.findall(r"alert: (\w+)", blocks[0]))
    promtool_check_rules(blocks[0], tmp_path)


def test_grafana_dashboard_queries_are_valid_promql_on_our_metrics(tmp_path: Path) -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    used = {m for e in exprs for m in re.findall(r"resilience_[a-z_]+", e)}
    assert used <= SAMPLES
    assert {n.removesuffix("_seconds") for n in METRIC_NAMES} <= {
        u.removesuffix("_bucket").removesuffix("_seconds") for u in used
    }  # every metric is on the dashboard
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(exprs):  # Grafana's variables, as Grafana would fill them in
        promql = expr.replace("$__rate_interval", "5m").replace("$command", ".*")
        promql = promql.replace("$pool", ".*").replace("$server", ".*")
        rules += [f"      - record: dashboard:panel_{i}", f"        expr: {json.dumps(promql)}"]
    promtool_check_rules("\n".join(rules) + "\n", tmp_path)
