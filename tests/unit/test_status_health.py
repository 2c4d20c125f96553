"""The status's health judgement (status.judge_health) at the configured thresholds: healthy
under the healthy threshold, warning over the warning one, degraded between; the overall level
is the worst of queue depth, sync latency and the link."""

from __future__ import annotations

from typing import Any

from edge_sync.config import HealthConfig
from edge_sync.status import judge_health, level

CFG = HealthConfig(queue_depth_healthy=5, queue_depth_warning=20, sync_latency_healthy_s=5.0,
                   sync_latency_warning_s=30.0)
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
    down = {"state": "BACKOFF", "breaker": "OPEN", "next_attempt_in_s": 2.5}
    out = judge(link=down)
    assert (out["overall"], out["link"]) == ("degraded", {
        "state": "BACKOFF", "level": "degraded", "connected": False, "breaker": "OPEN",
        "next_attempt_in_s": 2.5})
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
