"""The status's health judgement (status.judge_health) at the configured thresholds: healthy
under the healthy threshold, warning over the warning one, degraded between; the overall level
is the worst of queue depth, sync latency and the link. The link is degraded while it
reconnects and a warning once it has been down longer than health.link_down_warning_s; the
link's status board counts how long it has been down at each read (link/state.py StatusBoard)."""

from __future__ import annotations

from typing import Any

import pytest

from edge_sync.config import HealthConfig
from edge_sync.link.state import StatusBoard
from edge_sync.status import judge_health, level

CFG = HealthConfig(queue_depth_healthy=5, queue_depth_warning=20, sync_latency_healthy_s=5.0,
                   sync_latency_warning_s=30.0, link_down_warning_s=300.0)
UP = {"state": "CONNECTED", "breaker": "CLOSED", "clock_skew_ms": 40}


def judge(pending: int = 0, age: int | None = None, link: dict[str, Any] = UP,
          dead: int = 0, used: float = 1.0) -> dict[str, Any]:
    return judge_health(CFG, pending=pending, oldest_age_ms=age, dead=dead, link=link,
                        live_mb=used, cap_mb=100.0, clock_skew_warn_s=60.0)


def test_levels_at_the_thresholds() -> None:
    assert [level(v, 5, 20) for v in (0, 4, 5, 20, 21)] == [
        "healthy", "healthy", "degraded", "degraded", "warning"]


def test_overall_is_the_worst_of_queue_latency_and_link() -> None:
    assert judge()["overall"] == "healthy"
    assert judge(pending=5)["overall"] == "degraded"
    assert judge(pending=21)["overall"] == "warning"
    assert judge(age=30_001)["overall"] == "warning"
    down = {"state": "BACKOFF", "breaker": "OPEN", "next_attempt_in_s": 2.5, "down_for_s": 12.0}
    out = judge(link=down)
    assert (out["overall"], out["link"]) == ("degraded", {
        "state": "BACKOFF", "level": "degraded", "connected": False, "breaker": "OPEN",
        "next_attempt_in_s": 2.5, "down_for_s": 12.0, "warning_over_s": 300.0})
    assert judge(link={"state": "AUTH_FAILED"})["overall"] == "warning"
    # no cloud link configured: the link is not judged
    assert judge(link={"state": "DISCONNECTED", "note": "cloud link not configured"})[
        "overall"] == "healthy"
    # dead letters, storage and skew have their own levels, outside the overall one
    out = judge(dead=3, used=96.0, link={**UP, "clock_skew_ms": -61_000})
    assert (out["overall"], out["dead_letters"]["level"], out["storage"]["level"],
            out["clock_skew"]["level"]) == ("healthy", "degraded", "warning", "warning")


def test_sync_latency_is_the_links_measure_or_the_oldest_pending_age_when_larger() -> None:
    out = judge(age=1_000, link={**UP, "sync_latency_ms": 6_000})["sync_latency"]
    assert (out["value_ms"], out["measured_ms"], out["level"]) == (6_000, 6_000, "degraded")
    out = judge(age=40_000, link={**UP, "sync_latency_ms": 200})["sync_latency"]
    assert (out["value_ms"], out["level"]) == (40_000, "warning")
    out = judge()["sync_latency"]
    assert (out["value_ms"], out["measured_ms"], out["level"]) == (0, None, "healthy")


@pytest.mark.parametrize("state", ["CONNECTING", "SYNCING", "BACKOFF", "DISCONNECTED"])
def test_a_reconnecting_link_is_degraded_and_a_warning_once_down_too_long(state: str) -> None:
    def link_level(down_for_s: float | None) -> str:
        link = {"state": state, "breaker": "CLOSED", "down_for_s": down_for_s}
        return str(judge(link=link)["link"]["level"])
    assert [link_level(s) for s in (0.0, 299.9, 300.0, 300.1, 86_400.0)] == [
        "degraded", "degraded", "degraded", "warning", "warning"]
    assert link_level(None) == "degraded"  # a link that does not say how long
    assert judge(link={"state": state, "down_for_s": 301.0})["overall"] == "warning"


def test_auth_failed_is_a_warning_at_once() -> None:
    assert judge(link={"state": "AUTH_FAILED", "down_for_s": 1.0})["link"]["level"] == "warning"


def test_the_board_counts_the_time_down_and_the_next_attempt_at_each_read() -> None:
    now = [100.0]
    board = StatusBoard()
    board.publish({"state": "BACKOFF", "down_since_ms": 5}, next_attempt_at=103.0,
                  down_since=40.0, monotonic=lambda: now[0])
    assert board.value == {"state": "BACKOFF", "down_since_ms": 5, "next_attempt_in_s": 3.0,
                           "down_for_s": 60.0}
    now[0] = 400.5
    assert board.value == {"state": "BACKOFF", "down_since_ms": 5, "next_attempt_in_s": 0.0,
                           "down_for_s": 360.5}
    board.publish({"state": "CONNECTED", "down_since_ms": None}, monotonic=lambda: now[0])
    assert board.value == {"state": "CONNECTED", "down_since_ms": None}


def test_a_rule_chain_refusal_or_a_changed_rules_file_degrades_the_health() -> None:
    """The running agent's rules status (rules/source.py ChainSource.status) counts: degraded
    with its reasons; without one (the agent stopped) the rules are not judged."""
    reasons = ["rule chain from cloud refused at 2026-12-06T08:13:34.649Z (no rule chain in "
               "force)"]
    out = judge_health(CFG, pending=0, oldest_age_ms=None, dead=0, link=UP, live_mb=1.0,
                       cap_mb=100.0, clock_skew_warn_s=60.0,
                       rules={"health": {"level": "degraded", "reasons": reasons}})
    assert (out["overall"], out["rules"]) == ("degraded", {"level": "degraded",
                                                           "reasons": reasons})
    assert (judge()["overall"], judge()["rules"]) == ("healthy", {"level": None, "reasons": []})


def test_storage_is_judged_on_what_cannot_be_reclaimed_on_demand() -> None:
    """A drained edge keeps its delivered events for storage.retention_hours: at 97% used with
    90% of them it is healthy (they are purged before anything is refused or evicted); the
    raw use stays in ``used_pct``."""
    def storage(used: float, reclaimable: float) -> dict[str, Any]:
        return dict(judge_health(CFG, pending=0, oldest_age_ms=None, dead=0, link=UP,
                                 live_mb=used, cap_mb=100.0, clock_skew_warn_s=60.0,
                                 reclaimable_mb=reclaimable)["storage"])
    assert storage(97.0, 90.0) == {"value_pct": 7.0, "used_pct": 97.0, "reclaimable_pct": 90.0,
                                   "level": "healthy", "healthy_under_pct": 80.0,
                                   "warning_over_pct": 95.0}
    assert [storage(97.0, r)["level"] for r in (17.1, 17.0, 2.0, 1.9, 0.0)] == [
        "healthy", "degraded", "degraded", "warning", "warning"]
    assert storage(101.0, 0.5)["value_pct"] == 100.5  # pending alone past the cap
