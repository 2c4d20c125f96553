"""A time in ms since the epoch as ISO 8601 UTC with milliseconds (``2024-05-01T12:00:00.123Z``):
how the admin API, the status and log lines write a time."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_ms(ms: int, fallback: str = "") -> str:
    """``ms`` as ``2024-05-01T12:00:00.123Z``; ``fallback`` when no date has that time (out
    of the platform's range)."""
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
            f"{ms % 1000:03d}Z"
    except (OverflowError, OSError, ValueError):
        return fallback
