"""The alert rules of compose/prometheus/alerts.yaml: promtool's checks, and what holds without it.

With the promtool ``make services`` builds (compose/prometheus/build.sh, from the Go module
proxy): ``promtool check rules`` (syntax, PromQL, templates) and ``promtool test rules`` on
alerts_test.yaml, whose cases show every alert firing for one series and silent for others.
Without promtool those two are skipped (failed under CI=true) and the rest still runs on the
YAML itself: every rule well formed, every alert with a firing and a silent case in the tests,
and every metric an expression reads exported by the process it is about, with the type the
expression assumes (the live process's /metrics is checked the same way by
tests/integration/test_metrics_endpoint.py).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import parser

from service import allocator, metrics
from service.domain import allocation, state
from tests import deployment

RULES_DIR = deployment.ROOT / "compose" / "prometheus"
RULES = RULES_DIR / "alerts.yaml"
RULE_TESTS = RULES_DIR / "alerts_test.yaml"
SEVERITIES = {"warning", "critical"}
METRIC = re.compile(r"\bipledger_[a-z0-9_]+\b")


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alert_metrics(expr: str) -> set[str]:
    """The ipledger metric names a PromQL expression reads (labels and strings excluded)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(METRIC.findall(without_strings))


def exported_by_the_allocator() -> dict[str, str]:
    """Every family ``ipledger run`` exports, with its type, from counters and a state that
    give each of them samples."""
    current = state.State()
    for record in (
        b'{"type":"pool.configured","id":"p","clusterPoolIPv4PodCIDRList":["10.0.0.0/30"],'
        b'"clusterPoolIPv4MaskSize":30}',
        b'{"type":"node.added","id":"a","node":"a"}',
    ):
        allocation.apply_record(current, record)
    counters = allocator.Metrics(next_offset={0: 2}, leader={0: True}, log_end={0: 2})
    text = metrics.render(metrics.allocator_registry(counters, lambda: [current]))
    return {family.name: family.type for family in parser.text_string_to_metric_families(text)}


def promtool() -> Path:
    return deployment.cached_tool(
        "prometheus", "bin", "promtool", build="compose/prometheus/build.sh"
    )


def run(*args: str) -> str:
    done = subprocess.run(
        [str(promtool()), *args],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_promtool_checks_the_rules() -> None:
    output = run("check", "rules", RULES.name)
    assert f"SUCCESS: {len(rules())} rules found" in output


def test_promtool_runs_the_unit_tests_of_every_alert() -> None:
    assert "SUCCESS" in run("test", "rules", RULE_TESTS.name)


def test_every_rule_is_an_alert_with_a_severity_a_summary_and_a_description() -> None:
    found = rules()
    assert [rule["alert"] for rule in found] == [
        "IpledgerPoolAlmostFull",
        "IpledgerNodesWaiting",
        "IpledgerPoolExhaustionForecast",
        "IpledgerLogLag",
        "IpledgerAllocatorStalled",
        "IpledgerNoWriter",
        "IpledgerNoAllocator",
    ]
    for rule in found:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
        assert alert_metrics(rule["expr"]), rule["alert"]


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases = yaml.safe_load(RULE_TESTS.read_text())
    assert cases["rule_files"] == [RULES.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for group in cases["tests"]:
        for case in group["alert_rule_test"]:
            (firing if case["exp_alerts"] else silent).add(case["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert firing == names
    assert silent == names


def test_every_metric_an_alert_reads_is_exported_with_the_type_it_assumes() -> None:
    exported = exported_by_the_allocator()
    for rule in rules():
        for name in alert_metrics(rule["expr"]):
            assert name in exported, f"{rule['alert']} reads {name}, which nothing exports"
            # Alerts compare levels: each metric they read is a gauge (a counter would need
            # rate()).
            assert exported[name] == "gauge", (rule["alert"], name, exported[name])


def test_the_metric_names_are_read_from_the_expression_only() -> None:
    assert alert_metrics('sum(ipledger_ipam_node_cidrs{state="ipledger_fake"}) / x') == {
        "ipledger_ipam_node_cidrs"
    }
