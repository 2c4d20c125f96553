"""How long the edge was without the cloud when a connect is accepted, and whether that asks for
a full sync (link/state.py sync_mode; the setting ``cloud.sync.full_after_offline_hours``).

The time offline is the edge's clock now minus its last recorded contact with the cloud
(storage/link_contact.py), both on the edge's clock, so the cloud's clock never enters it. When
the clock is behind the record (it went back: a bad real-time clock at boot, a manual change)
the time offline is unknown: it is logged and does not ask for a full sync; the record follows
the clock at the next contact. A clock that jumps forward can only make a connect ask for a
full sync too soon, which costs a full sync and loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from loguru import logger

_log = logger.bind(component="link")

_HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Offline:
    """The time offline as a connect judges it: whether it asks for a full sync, and why."""

    full: bool
    reason: str  # e.g. "offline for 26.3 h (more than 24 h)"


def span(ms: int) -> str:
    """A duration as a reader takes it in: seconds, minutes or hours, one decimal."""
    if ms >= _HOUR_MS:
        return f"{ms / _HOUR_MS:.1f} h"
    if ms >= 60_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 1000:.1f} s"


def judge_offline(*, last_contact_ms: int | None, now_ms: int,
                  full_after_hours: float) -> Offline | None:
    """The verdict on the time offline; None when no contact was ever recorded (a store of an
    earlier release, or one that never synced: the other rules decide) or when the rule is off
    (``full_after_hours`` 0). Logs a warning when the clock is behind the last contact."""
    if last_contact_ms is None or full_after_hours <= 0:
        return None
    offline_ms = now_ms - last_contact_ms
    limit = f"{full_after_hours:g} h"
    if offline_ms < 0:
        behind = span(-offline_ms)
        _log.bind(last_contact_ms=last_contact_ms, now_ms=now_ms).warning(
            "the edge's clock is {} behind its last contact with the cloud (the clock went "
            "back): the time offline is unknown and does not ask for a full sync", behind)
        return Offline(False, f"time offline unknown: the clock is {behind} behind the last "
                              f"contact (it went back)")
    if offline_ms > full_after_hours * _HOUR_MS:
        return Offline(True, f"offline for {span(offline_ms)} (more than {limit})")
    return Offline(False, f"offline for {span(offline_ms)} (at most {limit})")
