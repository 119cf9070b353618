"""The alert rules load and behave: Prometheus's promtool checks them and runs their unit tests."""

import subprocess

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.integration  # an external tool: promtool

RULES = REPO / "deploy" / "prometheus"


def test_rules_load_and_follow_the_conventions(promtool):
    checked = subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=RULES, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for group in yaml.safe_load((RULES / "rules.yaml").read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["alert"][0].isupper() and "_" not in rule["alert"]  # CamelCase
            assert rule["labels"]["severity"] in ("critical", "warning")
            assert {"summary", "description"} <= rule["annotations"].keys()


def test_every_alert_fires_on_its_failure_and_not_on_health(promtool):
    tested = subprocess.run([promtool, "test", "rules", "rules.test.yaml"], cwd=RULES, capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {rule["alert"] for group in yaml.safe_load((RULES / "rules.yaml").read_text())["groups"]
              for rule in group["rules"]}  # fmt: skip
    covered = {case["alertname"] for test in yaml.safe_load((RULES / "rules.test.yaml").read_text())["tests"]
               for case in test["alert_rule_test"]}  # fmt: skip
    assert alerts == covered


def test_the_dashboard_json_is_what_its_generator_writes():
    import json
    import sys

    sys.path.insert(0, str(REPO / "deploy" / "grafana"))
    from build_dashboard import dashboard

    committed = json.loads((REPO / "deploy" / "grafana" / "gand.json").read_text())
    assert committed == dashboard(), "run: python deploy/grafana/build_dashboard.py"
