"""Null values devices post: skipped as ThingsBoard skips them (JsonConverter.parseProtoValues
leaves a JsonNull out), and never silently: each is counted in
``edge_sync_device_null_values_total{transport}``, and the device that posted them is named in
one INFO line, then at most once per NULL_LOG_INTERVAL_S.

INFO, not DEBUG: a null is valid input (ThingsBoard takes it without a word), so it is no
warning; but it is a value the device meant to send that is not stored, often a sensor that
failed, and an operator looking for a missing key needs the log at its default level to name
the device and the keys, which the counter cannot. Once per device per interval keeps a device
that sends a null every second to a line every ten minutes; the line says how many were
skipped since the last one.

Any thread (the HTTP API's and the MQTT server's): one lock, taken only when nulls were
skipped.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

from loguru import logger

from edge_sync.clock import Clock
from edge_sync.metrics import Metrics

__all__ = ["MAX_DEVICES_REMEMBERED", "NULL_LOG_INTERVAL_S", "TRANSPORTS", "NullValues"]

NULL_LOG_INTERVAL_S = 600.0
"""A device's null values are logged at most once per this many seconds."""

MAX_DEVICES_REMEMBERED = 10_000
"""Devices whose last line is remembered; beyond it the one that posted nulls longest ago is
forgotten (its next null is logged at once)."""

TRANSPORTS = ("http", "mqtt", "mqtt_gateway")
"""The ``transport`` label's values: the HTTP API (and in-process callers), a device's MQTT
connection, a gateway's (for its devices)."""

_SHOWN_KEYS = 5

_log = logger.bind(component="device-api")


class NullValues:
    def __init__(self, metrics: Metrics | None, clock: Clock) -> None:
        self._clock = clock
        counter = None if metrics is None else metrics.counter(
            "edge_sync_device_null_values_total",
            "null telemetry and attribute values devices posted, skipped as ThingsBoard skips "
            "them, by transport", ("transport",))
        self._counts = {} if counter is None else {
            transport: counter.labels(transport=transport) for transport in TRANSPORTS}
        self._lock = threading.Lock()
        # device -> (monotonic time of its last line, nulls skipped since); oldest first
        self._logged: dict[uuid.UUID, tuple[float, int]] = {}

    def skipped(self, device_id: uuid.UUID, device_name: str, transport: str,
                keys: Sequence[str]) -> None:
        """``device`` posted null values of ``keys`` (one per null) over ``transport``."""
        count = self._counts.get(transport)
        if count is not None:
            count.inc(len(keys))
        now = self._clock.monotonic()
        with self._lock:
            last = self._logged.pop(device_id, None)
            if last is not None and now - last[0] < NULL_LOG_INTERVAL_S:
                self._logged[device_id] = (last[0], last[1] + len(keys))
                return
            if len(self._logged) >= MAX_DEVICES_REMEMBERED:
                del self._logged[next(iter(self._logged))]
            self._logged[device_id] = (now, 0)
        shown = ", ".join(repr(key[:64]) for key in keys[:_SHOWN_KEYS])
        if len(keys) > _SHOWN_KEYS:
            shown += f" and {len(keys) - _SHOWN_KEYS} more"
        _log.bind(device=str(device_id), transport=transport).info(
            "device {} posted null values, skipped as ThingsBoard skips them: {} ({} more "
            "skipped since this device's last such line)", device_name, shown,
            0 if last is None else last[1])
