"""docs/alerts.yml is valid Prometheus alerting rules (`promtool check rules`) and every alert
fires on a synthetic series as tests/fixtures/alerts_test.yml says, each only past its
threshold (`promtool test rules`). promtool comes with Debian's prometheus
package, which .ci/run installs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "alerts.yml"
RULE_TESTS = ROOT / "tests" / "fixtures" / "alerts_test.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

needs_promtool = pytest.mark.skipif(
    not Path(PROMTOOL).exists(),
    reason="promtool is absent (Debian package prometheus; .ci/run installs it)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, check=False)


@needs_promtool
def test_the_alert_rules_are_valid() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 16 rules found" in done.stdout


@needs_promtool
def test_each_alert_fires_on_its_synthetic_series() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_rule_test_and_names_only_exposed_metrics() -> None:
    rules, tests = RULES.read_text(), RULE_TESTS.read_text()
    alerts = re.findall(r"- alert: (\w+)", rules)
    assert alerts == ["EdgeSyncQueueDepthHigh", "EdgeSyncOfflineWithQueue",
                      "EdgeSyncDeadLettersGrowing", "EdgeSyncStorageNearCap",
                      "EdgeSyncStorageAlmostFull", "EdgeSyncLocalDataDisplaced",
                      "EdgeSyncLinkDownLong",
                      "EdgeSyncConnectionFlapping", "EdgeSyncClockSkew", "EdgeSyncLatencyHigh",
                      "EdgeSyncNetworkSlow", "EdgeSyncRuleChainRefused",
                      "EdgeSyncNoRuleChainInForce", "EdgeSyncRuleNodeFailing",
                      "EdgeSyncRuleScriptBlocked", "EdgeSyncStorageRefusing"]
    assert {a for a in alerts if f"alertname: {a}" not in tests} == set()
    # the metric names the rules use are the agent's (docs/metrics.md lists them; a histogram's
    # buckets by its own name)
    metrics_doc = (ROOT / "docs" / "metrics.md").read_text()
    used = {re.sub(r"_bucket$", "", m) for m in re.findall(r"\bedge_sync_\w+", rules)}
    assert used and {m for m in used if f"`{m}`" not in metrics_doc} == set()
