"""The alert rules (templates/prometheus/rules/, copied verbatim into the bundle) with Debian's real
promtool: every file passes `promtool check rules`, every unit test in tests/host/prometheus_rules/
passes `promtool test rules`, and every alert has a test where it fires and one where it stays
silent, the labels and annotations a mail needs, and its section in docs/monitoring.md.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.harness.tools import require_tool

PROJECT_DIR = Path(__file__).resolve().parents[2]
RULES_DIR = PROJECT_DIR / "templates/prometheus/rules"
TESTS_DIR = Path(__file__).resolve().parent / "prometheus_rules"
MONITORING_DOC = PROJECT_DIR / "docs/monitoring.md"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted(TESTS_DIR.glob("*.test.yml"))
ANNOTATIONS = {"summary", "description", "action", "runbook"}
SEVERITIES = {"critical", "warning"}


def promtool() -> str:
    return require_tool("promtool", "prometheus")


def alerting_rules() -> list[dict]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


def alert_tests() -> list[dict]:
    """Every alert_rule_test case of every test file."""
    return [case for path in TEST_FILES for test in yaml.safe_load(path.read_text())["tests"]
            for case in test.get("alert_rule_test", [])]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading (what the runbook annotations point at)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_there_are_rules_and_tests():
    assert RULE_FILES and TEST_FILES
    assert not (RULES_DIR / ".keep").exists()


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda path: path.name)
def test_promtool_accepts_the_rule_file(path):
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda path: path.name)
def test_promtool_unit_tests_pass(path):
    # promtool resolves rule_files relative to the test file.
    result = subprocess.run([promtool(), "test", "rules", path.name], capture_output=True, text=True, cwd=TESTS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_file_has_unit_tests():
    tested = {(TESTS_DIR / name).resolve() for path in TEST_FILES
              for name in yaml.safe_load(path.read_text())["rule_files"]}
    assert tested == {path.resolve() for path in RULE_FILES}


def test_every_alert_fires_in_a_test_and_stays_silent_in_another():
    cases = alert_tests()
    firing = {(case["alertname"], expected["exp_labels"].get("severity")) for case in cases
              for expected in case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if case["exp_alerts"] == []}
    rules = {(rule["alert"], rule["labels"]["severity"]) for rule in alerting_rules()}
    # Each severity of an alert (a warning and a critical threshold) fires in a test of its own.
    assert rules - firing == set(), "alerts without a test where they fire"
    assert {name for name, _ in rules} - silent == set(), "alerts without a test where they stay silent"
    assert firing - rules == set(), "tests expecting alerts no rule defines"


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: f"{rule['alert']}-{rule['labels']['severity']}")
def test_every_alert_says_what_broke_and_what_to_do(rule):
    assert rule["labels"]["severity"] in SEVERITIES
    assert set(rule["annotations"]) == ANNOTATIONS
    assert all(rule["annotations"][name].strip() for name in ANNOTATIONS)
    assert rule["annotations"]["runbook"] == f"docs/monitoring.md#{rule['alert'].lower()}"


def test_every_runbook_anchor_is_a_heading_of_the_monitoring_doc():
    headings = {github_anchor(line.lstrip("#")) for line in MONITORING_DOC.read_text().splitlines()
                if line.startswith("#")}
    missing = {rule["annotations"]["runbook"] for rule in alerting_rules()
               if rule["annotations"]["runbook"].split("#", 1)[1] not in headings}
    assert not missing, f"runbook anchors without a heading in {MONITORING_DOC.name}: {sorted(missing)}"


def test_every_alert_has_its_own_section_in_the_monitoring_doc():
    sections = {line[4:].strip() for line in MONITORING_DOC.read_text().splitlines() if line.startswith("### ")}
    assert {rule["alert"] for rule in alerting_rules()} <= sections
