"""Alert rules pass `promtool check rules` and their unit tests; the dashboard is well formed.

Grafana cannot be installed here (platform notes §7), so the dashboard JSON is checked
structurally; tests/deploy/test_prometheus.py checks that every metric it names exists.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from meshssh_testkit.plugin import need_tool
from meshssh_testkit.process import RunResult, run_command_sync

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy/k8s/base/alerts.yaml"
DASHBOARD = ROOT / "deploy/k8s/base/dashboards/meshssh.json"


def rules_file(tmp_path: Path) -> Path:
    """The PrometheusRule's spec as a plain Prometheus rules file."""
    spec = yaml.safe_load(ALERTS.read_text())["spec"]
    path = tmp_path / "meshssh.rules.yml"
    path.write_text(yaml.safe_dump(spec))
    return path


def promtool(*args: str) -> RunResult:
    need_tool(shutil.which("promtool") is not None, "promtool (Debian package prometheus)")
    return run_command_sync("promtool", *args, timeout=60)


def test_the_alert_rules_pass_promtool_check(tmp_path: Path) -> None:
    result = promtool("check", "rules", str(rules_file(tmp_path))).check()
    assert "SUCCESS" in result.out


def test_the_alert_rules_pass_their_unit_tests(tmp_path: Path) -> None:
    rules = rules_file(tmp_path)
    spec: dict[str, Any] = yaml.safe_load((ROOT / "tests/deploy/alerts_test.yml").read_text())
    spec["rule_files"] = [str(rules)]
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(yaml.safe_dump(spec))
    promtool("test", "rules", str(test_file)).check()


def test_every_alert_has_a_severity_and_a_summary() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["spec"]["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 5
    for rule in alerts:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]


def test_the_dashboard_is_well_formed_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"]
    assert dash["title"]
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 15
    for panel in graphs:
        assert panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"]
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["datasource"]["uid"] == "${datasource}"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert "datasource" in variables
