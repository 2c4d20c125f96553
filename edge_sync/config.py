"""Configuration: YAML files with ThingsBoard-style placeholders, loaded into frozen dataclasses.

This module owns the configuration model of both processes: `EdgeConfig` (the agent,
``conf/edge.yml``) and `CloudConfig` (the reference cloud, ``conf/cloud.yml``), the placeholder
resolver and the generic converter from YAML to dataclasses. It is pure: no threads, no sockets,
no logging; it reads the environment only through the mapping it is given.

Placeholders
    A string value may contain ``${NAME:default}`` (the environment variable NAME, else the
    default, which may be empty: ``${NAME:}``) or ``${NAME}`` (NAME must be set, but only if that
    key is used). Defaults cannot contain ``}``; an environment value is substituted verbatim and
    never scanned again. Placeholders are resolved per value after the YAML is parsed, so an
    environment value can never change the structure of the file.

Loading
    ``load_edge_config()`` reads the packaged ``edge_sync/conf/edge.yml`` (or the file named by
    EDGE_CONFIG). A file given explicitly is laid over the packaged defaults key by key, so a
    site file only needs the keys it changes, and every key it leaves out keeps its packaged
    default and environment variable. Unknown keys are errors (typo protection).

Validation
    Values are converted by the dataclass field types (int, float, bool, str, Path, str enums,
    ``X | None``) and checked against the bounds in the field metadata, in ``__post_init__``, so
    a dataclass built directly in code is validated too. Every problem is a `ConfigError` whose
    message names the dotted key, the offending value, what was expected and the environment
    variable the value came from, e.g. ``cloud.rpc.port: 'abc' is not valid: expected an integer
    between 1 and 65535 (value from environment variable CLOUD_RPC_PORT)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from edge_sync.common.limits import DEFAULT_MAX_MESSAGE_BYTES
from edge_sync.errors import ConfigError

__all__ = [
    "CLOUD_CONFIG_ENV",
    "CONF_DIR",
    "DEFAULT_CLOUD_CONFIG",
    "DEFAULT_EDGE_CONFIG",
    "EDGE_CONFIG_ENV",
    "ActorsConfig",
    "AdminConfig",
    "BatchConfig",
    "CircuitBreakerConfig",
    "CloudConfig",
    "CloudLinkConfig",
    "CloudRpcConfig",
    "CloudStorageConfig",
    "CloudSyncConfig",
    "DevicesConfig",
    "DownlinkConfig",
    "EdgeConfig",
    "EdgesRpcConfig",
    "FullPolicy",
    "HttpConfig",
    "KeepaliveConfig",
    "LogConfig",
    "LogFormat",
    "LogLevel",
    "MqttConfig",
    "MqttTlsConfig",
    "QueueConfig",
    "ReconnectConfig",
    "RetryConfig",
    "StorageConfig",
    "SupervisorConfig",
    "check_edge_config",
    "effective_settings",
    "load_cloud_config",
    "load_edge_config",
    "resolve_placeholders",
]

CONF_DIR = Path(__file__).parent / "conf"
DEFAULT_EDGE_CONFIG = CONF_DIR / "edge.yml"
DEFAULT_CLOUD_CONFIG = CONF_DIR / "cloud.yml"
EDGE_CONFIG_ENV = "EDGE_CONFIG"
CLOUD_CONFIG_ENV = "CLOUD_CONFIG"

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# Enumerations
# --------------------------------------------------------------------------------------------


class LogLevel(enum.StrEnum):
    """loguru's level names, lowest first."""

    TRACE = "TRACE"
    DEBUG = "DEBUG"
    INFO = "INFO"
    SUCCESS = "SUCCESS"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class LogFormat(enum.StrEnum):
    """``text``: one human-readable line per record; ``json``: one JSON object per line."""

    TEXT = "text"
    JSON = "json"


class FullPolicy(enum.StrEnum):
    """What the edge does when its store reaches ``storage.max_size_mb``."""

    REFUSE = "refuse"
    """Refuse new data (HTTP 507); everything already accepted is kept."""
    EVICT_OLDEST_NORMAL = "evict_oldest_normal"
    """Drop the oldest pending normal-priority events (counted and logged) to make room."""


# --------------------------------------------------------------------------------------------
# Field declarations and validation
# --------------------------------------------------------------------------------------------


class _Invalid(ConfigError):
    """A field of one section is out of bounds; the loader prefixes the section's dotted path."""

    def __init__(self, name: str, value: object, expected: str) -> None:
        self.name = name
        self.value = value
        self.expected = expected
        super().__init__(_invalid_message(name, value, expected))


def _meta(
    *,
    lo: float | None = None,
    hi: float | None = None,
    gt: float | None = None,
    nonempty: bool = False,
    secret: bool = False,
) -> dict[str, Any]:
    """Field metadata: bounds (lo <= v <= hi, v > gt), non-empty, secret (masked in errors)."""
    return {"lo": lo, "hi": hi, "gt": gt, "nonempty": nonempty, "secret": secret}


@dataclass(frozen=True, slots=True)
class _Section:
    """Base of every config section: checks field bounds, then the section's own rules."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            _check_bounds(f, hints[f.name], getattr(self, f.name))
        self._check()

    def _check(self) -> None:
        """Rules relating several fields of this section; raise `_Invalid`. None by default."""


def _check_bounds(f: dataclasses.Field[Any], tp: Any, value: object) -> None:
    meta = f.metadata
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int | float):
        lo, hi, gt = meta.get("lo"), meta.get("hi"), meta.get("gt")
        if (
            (lo is not None and value < lo)
            or (hi is not None and value > hi)
            or (gt is not None and value <= gt)
        ):
            raise _Invalid(f.name, value, _expected(tp, meta))
    elif isinstance(value, str | Path) and meta.get("nonempty") and not str(value).strip():
        raise _Invalid(f.name, str(value), _expected(tp, meta))


# --------------------------------------------------------------------------------------------
# Edge configuration (conf/edge.yml)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CloudRpcConfig(_Section):
    """``cloud.rpc``: the gRPC channel from the edge to the cloud."""

    host: str = field(default="localhost", metadata=_meta(nonempty=True))
    port: int = field(default=7070, metadata=_meta(lo=1, hi=65535))
    timeout_ms: int = field(default=5000, metadata=_meta(lo=1))
    ssl_enabled: bool = False
    ssl_cert: Path | None = None
    """CA certificate (PEM) to trust; None with ssl_enabled means the system roots."""
    max_inbound_message_size: int = field(default=DEFAULT_MAX_MESSAGE_BYTES, metadata=_meta(lo=1))

    def _check(self) -> None:
        if self.ssl_enabled and self.ssl_cert is not None and not self.ssl_cert.is_file():
            raise _Invalid("ssl_cert", self.ssl_cert, "an existing file, since ssl_enabled is true")


@dataclass(frozen=True, slots=True)
class BatchConfig(_Section):
    """``cloud.batch``: how uplink events are grouped into one message."""

    size: int = field(default=100, metadata=_meta(lo=1, hi=10000))
    timeout_ms: int = field(default=1000, metadata=_meta(lo=0))


@dataclass(frozen=True, slots=True)
class RetryConfig(_Section):
    """``cloud.retry``: resending an unacknowledged uplink message."""

    interval_ms: int = field(default=3000, metadata=_meta(lo=0))
    """The wait before resending a message the cloud answered with a failure."""
    max_retries: int = field(default=10, metadata=_meta(lo=0))
    ack_timeout_ms: int = field(default=60000, metadata=_meta(lo=1))
    """How long a sent message may stay unanswered before it is resent (ThingsBoard Edge: 60 s);
    a slow answer within it causes no resend."""
    permanent_after: int = field(default=3, metadata=_meta(lo=1))
    """Against a cloud that does not say whether a failure is retryable (ThingsBoard): failures
    of one message before its events are resent one per message, and failures of one event
    alone before it is dead-lettered."""


@dataclass(frozen=True, slots=True)
class ReconnectConfig(_Section):
    """``cloud.reconnect``: exponential backoff between connection attempts."""

    interval_ms: int = field(default=3000, metadata=_meta(lo=1))
    max_interval_ms: int = field(default=60000, metadata=_meta(lo=1))
    multiplier: float = field(default=2.0, metadata=_meta(lo=1))
    jitter: float = field(default=0.2, metadata=_meta(lo=0, hi=1))
    stable_after_s: float = field(default=30.0, metadata=_meta(lo=0))
    """A connection must stay up this long before the backoff resets."""

    def _check(self) -> None:
        if self.max_interval_ms < self.interval_ms:
            raise _Invalid(
                "max_interval_ms",
                self.max_interval_ms,
                f"an integer >= interval_ms ({self.interval_ms})",
            )


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig(_Section):
    """``cloud.circuit_breaker``: stop connection attempts after repeated failures."""

    failure_threshold: int = field(default=5, metadata=_meta(lo=1))
    open_s: float = field(default=300.0, metadata=_meta(lo=0))
    """How long the breaker stays open before one half-open probe."""


@dataclass(frozen=True, slots=True)
class KeepaliveConfig(_Section):
    """``cloud.keepalive``: gRPC HTTP/2 keepalive pings."""

    time_s: float = field(default=30.0, metadata=_meta(gt=0))
    timeout_s: float = field(default=5.0, metadata=_meta(gt=0))
    permit_without_calls: bool = True


@dataclass(frozen=True, slots=True)
class CloudSyncConfig(_Section):
    """``cloud.sync``: when a connect asks the cloud for a full sync (link/state.py sync_mode)."""

    full_after_offline_hours: float = field(default=24.0, metadata=_meta(lo=0))
    """A connect after more hours than this without contact with the cloud asks for a full sync
    (the entity graph may be stale); 0: never for that reason."""


@dataclass(frozen=True, slots=True)
class CloudLinkConfig(_Section):
    """``cloud``: everything about the edge's connection to the cloud."""

    routing_key: str = ""
    routing_secret: str = field(default="", repr=False, metadata=_meta(secret=True))
    rpc: CloudRpcConfig = field(default_factory=CloudRpcConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    keepalive: KeepaliveConfig = field(default_factory=KeepaliveConfig)
    sync: CloudSyncConfig = field(default_factory=CloudSyncConfig)
    clock_skew_warn_s: float = field(default=60.0, metadata=_meta(lo=0))
    window: int = field(default=8, metadata=_meta(lo=1))
    """Uplink messages in flight (sent, not yet acknowledged)."""


@dataclass(frozen=True, slots=True)
class StorageConfig(_Section):
    """``storage``: the edge's LMDB store."""

    data_dir: Path = field(default=Path("./data/edge"), metadata=_meta(nonempty=True))
    map_size_initial_mb: int = field(default=64, metadata=_meta(lo=1))
    max_size_mb: int = field(default=10240, metadata=_meta(lo=1))
    full_policy: FullPolicy = FullPolicy.REFUSE
    retention_hours: float = field(default=168.0, metadata=_meta(lo=0))
    """Deployed events are purged this long after they were acknowledged."""
    purge_interval_s: float = field(default=300.0, metadata=_meta(gt=0))
    refusal_log_interval_s: float = field(default=60.0, metadata=_meta(gt=0))
    """While the full store refuses new data: one WARNING when refusals start, then one
    summary line per this interval (how many, from which devices), and one INFO once it
    accepts again; each refusal is a DEBUG line."""

    def _check(self) -> None:
        if self.max_size_mb < self.map_size_initial_mb:
            raise _Invalid(
                "max_size_mb",
                self.max_size_mb,
                f"an integer >= map_size_initial_mb ({self.map_size_initial_mb})",
            )


@dataclass(frozen=True, slots=True)
class QueueConfig(_Section):
    """``queue``: group commit of appended events."""

    group_commit_max_events: int = field(default=5000, metadata=_meta(lo=1))


@dataclass(frozen=True, slots=True)
class ActorsConfig(_Section):
    """``actors``: the shards hosting the per-entity actors."""

    shards: int = field(default=4, metadata=_meta(lo=1, hi=64))
    passivate_after_s: float = field(default=300.0, metadata=_meta(gt=0))


@dataclass(frozen=True, slots=True)
class SupervisorConfig(_Section):
    """``supervisor``: restart intensity (at most max_restarts within within_s seconds)."""

    max_restarts: int = field(default=5, metadata=_meta(lo=0))
    within_s: float = field(default=30.0, metadata=_meta(gt=0))


@dataclass(frozen=True, slots=True)
class HttpConfig(_Section):
    """``http``: the device HTTP API."""

    host: str = field(default="0.0.0.0", metadata=_meta(nonempty=True))
    port: int = field(default=8080, metadata=_meta(lo=0, hi=65535))
    """0 picks a free port (tests)."""
    max_body_bytes: int = field(default=1048576, metadata=_meta(lo=1))
    request_timeout_s: float = field(default=10.0, metadata=_meta(gt=0))


@dataclass(frozen=True, slots=True)
class MqttTlsConfig(_Section):
    """``mqtt.tls``: the device MQTT API over TLS (ThingsBoard's ``transport.mqtt.ssl``), a
    listener of its own beside (or instead of) the plain one."""

    enabled: bool = False
    host: str = field(default="0.0.0.0", metadata=_meta(nonempty=True))
    port: int = field(default=8883, metadata=_meta(lo=0, hi=65535))
    """0 picks a free port (tests)."""
    cert: Path | None = None
    """The server's certificate chain (PEM); may hold its private key too."""
    key: Path | None = None
    """The server's private key (PEM); None when ``cert`` holds it."""
    client_ca: Path | None = None
    """CA certificates (PEM): when set, every client must present a certificate signed by one
    of them (the access token still names the device)."""

    def _check(self) -> None:
        if not self.enabled:
            return
        if self.cert is None:
            raise _Invalid("cert", "", "a file path, since enabled is true")
        for name in ("cert", "key", "client_ca"):
            value: Path | None = getattr(self, name)
            if value is not None and not value.is_file():
                raise _Invalid(name, value, "an existing file, since enabled is true")


@dataclass(frozen=True, slots=True)
class MqttConfig(_Section):
    """``mqtt``: the device MQTT API (ThingsBoard's topics, docs/mqtt.md)."""

    enabled: bool = True
    """The plain listener (``host``:``port``); the TLS one is ``tls.enabled``."""
    host: str = field(default="0.0.0.0", metadata=_meta(nonempty=True))
    port: int = field(default=1883, metadata=_meta(lo=0, hi=65535))
    """0 picks a free port (tests)."""
    max_message_bytes: int = field(default=1048576, metadata=_meta(lo=1))
    """Largest PUBLISH accepted (its remaining length); a larger one closes the connection."""
    connect_timeout_s: float = field(default=10.0, metadata=_meta(gt=0))
    """A client that has not sent its CONNECT within this time is disconnected."""
    max_inflight_per_client: int = field(default=1000, metadata=_meta(lo=1))
    """Publishes of one connection accepted and not yet acknowledged (their commit pending);
    at the cap the connection is not read until commits catch up."""
    max_sessions: int = field(default=10000, metadata=_meta(lo=0))
    """Sessions kept for disconnected clean-session-false clients; beyond it the longest
    disconnected is dropped."""
    session_expiry_s: float = field(default=3600.0, metadata=_meta(gt=0))
    """A kept session is dropped this long after its client disconnected."""
    max_unacked_per_session: int = field(default=1000, metadata=_meta(lo=1, hi=65535))
    """QoS 1 messages the edge keeps for a client until its PUBACK (sent, or waiting for room
    under an MQTT 5 client's Receive Maximum); beyond it the oldest is dropped."""
    tls: MqttTlsConfig = field(default_factory=MqttTlsConfig)

    @property
    def serving(self) -> bool:
        """Whether any listener is on."""
        return self.enabled or self.tls.enabled


@dataclass(frozen=True, slots=True)
class DevicesConfig(_Section):
    """``devices``: how the device APIs (HTTP, MQTT, the MQTT gateway) read what devices post."""

    type_cast: bool = True
    """Numeric strings in telemetry and attributes become numbers, as ThingsBoard's
    ``transport.json.type_cast_enabled`` (default true) makes them (api/tb_values.py)."""


@dataclass(frozen=True, slots=True)
class AdminConfig(_Section):
    """``admin``: the local admin HTTP API (status, events page, metrics)."""

    host: str = field(default="127.0.0.1", metadata=_meta(nonempty=True))
    port: int = field(default=8090, metadata=_meta(lo=0, hi=65535))
    fault_injection: bool = field(default=False)
    """Enables POST /api/debug/crash (tests only: makes an actor raise)."""
    token: str = field(default="", repr=False, metadata=_meta(secret=True))
    """Bearer token every admin route but /healthz and /readyz requires; empty = none (then the
    API must listen on a loopback address)."""


@dataclass(frozen=True, slots=True)
class LogConfig(_Section):
    """``log``: where and how the process logs (see `edge_sync.logsetup`)."""

    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.TEXT
    file: Path | None = None
    rotation: str = field(default="50 MB", metadata=_meta(nonempty=True))
    """loguru rotation: a size ("50 MB"), an interval ("1 day") or a time ("00:00")."""
    retention: str = field(default="10", metadata=_meta(nonempty=True))
    """loguru retention: a number of rotated files ("10") or a duration ("7 days")."""


@dataclass(frozen=True, slots=True)
class RulesConfig(_Section):
    """``rules``: the rule chain run on each device's messages (docs/rules.md)."""

    file: Path | None = None
    """A rule chain file (ThingsBoard's export format); it wins over the cloud's root chain."""
    script_timeout_ms: int = field(default=100, metadata=_meta(lo=1, hi=10_000))
    script_memory_mb: int = field(default=16, metadata=_meta(lo=1, hi=1024))
    script_max_errors: int = field(default=3, metadata=_meta(lo=1, hi=1000))
    """Timeouts or memory blow-ups of a rule script, each within ``script_block_duration_s`` of
    the one before, that block it (ThingsBoard's js/tbel ``max_errors``)."""
    script_block_duration_s: int = field(default=60, metadata=_meta(lo=0, hi=86_400))
    """How long a blocked script stays blocked after its last error; 0: never blocked
    (ThingsBoard's ``max_black_list_duration_sec``)."""
    local_retention_hours: float = field(default=168.0, metadata=_meta(gt=0))
    """How long points a chain saved locally (TbMsgTimeseriesNode, defaultTTL 0) are kept."""


@dataclass(frozen=True, slots=True)
class HealthConfig(_Section):
    """``health``: the thresholds of the status's health and the Cloud Events page's panel.
    Under ``*_healthy``: healthy; over ``*_warning``: warning; between: degraded."""

    queue_depth_healthy: int = field(default=1000, metadata=_meta(lo=0))
    queue_depth_warning: int = field(default=5000, metadata=_meta(lo=0))
    sync_latency_healthy_s: float = field(default=5.0, metadata=_meta(lo=0))
    sync_latency_warning_s: float = field(default=30.0, metadata=_meta(lo=0))
    storage_used_healthy_pct: float = field(default=80.0, metadata=_meta(lo=0, hi=100))
    storage_used_warning_pct: float = field(default=95.0, metadata=_meta(lo=0, hi=100))
    link_down_warning_s: float = field(default=300.0, metadata=_meta(lo=0))
    """How long the link may be down (reconnecting since it was lost, or not yet connected since
    the start) while it is only degraded; longer: warning."""

    def _check(self) -> None:
        for low, high in (("queue_depth_healthy", "queue_depth_warning"),
                          ("sync_latency_healthy_s", "sync_latency_warning_s"),
                          ("storage_used_healthy_pct", "storage_used_warning_pct")):
            if getattr(self, low) > getattr(self, high):
                raise _Invalid(low, getattr(self, low), f"at most {high} ({getattr(self, high)})")


@dataclass(frozen=True, slots=True)
class EdgeConfig(_Section):
    """The edge agent's whole configuration (``conf/edge.yml``)."""

    cloud: CloudLinkConfig = field(default_factory=CloudLinkConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    actors: ActorsConfig = field(default_factory=ActorsConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    log: LogConfig = field(default_factory=LogConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    health: HealthConfig = field(default_factory=HealthConfig)


# --------------------------------------------------------------------------------------------
# Reference cloud configuration (conf/cloud.yml)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EdgesRpcConfig(_Section):
    """``rpc``: the reference cloud's gRPC server that edges connect to."""

    host: str = field(default="0.0.0.0", metadata=_meta(nonempty=True))
    port: int = field(default=7070, metadata=_meta(lo=0, hi=65535))
    ssl_enabled: bool = False
    ssl_cert: Path | None = None
    """Server certificate chain (PEM)."""
    ssl_key: Path | None = None
    """Server private key (PEM)."""
    max_inbound_message_size: int = field(default=DEFAULT_MAX_MESSAGE_BYTES, metadata=_meta(lo=1))
    keepalive_permit_time_s: float = field(default=1.0, metadata=_meta(lo=0))
    """The shortest ping interval the server tolerates from a client."""
    permit_without_calls: bool = True

    def _check(self) -> None:
        if not self.ssl_enabled:
            return
        for name in ("ssl_cert", "ssl_key"):
            value: Path | None = getattr(self, name)
            if value is None:
                raise _Invalid(name, "", "a file path, since ssl_enabled is true")
            if not value.is_file():
                raise _Invalid(name, value, "an existing file, since ssl_enabled is true")


@dataclass(frozen=True, slots=True)
class CloudStorageConfig(_Section):
    """``storage``: the reference cloud's LMDB store."""

    data_dir: Path = field(default=Path("./data/cloud"), metadata=_meta(nonempty=True))
    max_size_mb: int = field(default=10240, metadata=_meta(lo=1))


@dataclass(frozen=True, slots=True)
class DownlinkConfig(_Section):
    """``downlink``: messages from the cloud to an edge."""

    resend_timeout_ms: int = field(default=10000, metadata=_meta(lo=1))
    max_attempts: int = field(default=3, metadata=_meta(lo=1))
    """Refusals (success=false) of one downlink before it is parked as failed and the edge's
    queue moves on (ThingsBoard gives up after 3 attempts)."""


def _cloud_admin() -> AdminConfig:
    return AdminConfig(port=8091)


@dataclass(frozen=True, slots=True)
class CloudConfig(_Section):
    """The reference cloud's whole configuration (``conf/cloud.yml``)."""

    rpc: EdgesRpcConfig = field(default_factory=EdgesRpcConfig)
    storage: CloudStorageConfig = field(default_factory=CloudStorageConfig)
    downlink: DownlinkConfig = field(default_factory=DownlinkConfig)
    admin: AdminConfig = field(default_factory=_cloud_admin)
    log: LogConfig = field(default_factory=LogConfig)


# --------------------------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------------------------


def load_edge_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> EdgeConfig:
    """Load the edge configuration.

    ``path`` None means the file named by EDGE_CONFIG in ``env``, else the packaged
    ``edge.yml``. ``env`` (default ``os.environ``) resolves the placeholders. Raises
    `ConfigError`.
    """
    return _load(EdgeConfig, path, env, DEFAULT_EDGE_CONFIG, EDGE_CONFIG_ENV)


def check_edge_config(path: Path | None = None, env: Mapping[str, str] | None = None
                      ) -> tuple[EdgeConfig | None, list[str]]:
    """Load the edge configuration collecting every problem in one pass (``edge-sync config
    check``): (the configuration, []) or (None, every message, each as load_edge_config words
    it)."""
    errors: list[str] = []
    try:
        cfg = _load(EdgeConfig, path, env, DEFAULT_EDGE_CONFIG, EDGE_CONFIG_ENV, errors)
    except ConfigError as exc:  # the file itself: unreadable, not YAML
        return None, [*errors, str(exc)]
    return (None, errors) if errors or cfg is None else (cfg, [])


def effective_settings(section: object, path: str = "") -> list[tuple[str, str]]:
    """Every leaf setting of a loaded configuration as (dotted key, value as text), in
    declaration order; a field marked secret shows ``****`` when set (never its value)."""
    out: list[tuple[str, str]] = []
    for f in dataclasses.fields(section):  # type: ignore[arg-type]
        value = getattr(section, f.name)
        key = _join(path, f.name)
        if dataclasses.is_dataclass(value):
            out += effective_settings(value, key)
        elif f.metadata.get("secret"):
            out.append((key, "'****'" if value else "''"))
        elif isinstance(value, bool):
            out.append((key, "true" if value else "false"))
        else:
            out.append((key, "null" if value is None else _show(value)))
    return out


def load_cloud_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> CloudConfig:
    """Load the reference cloud's configuration (CLOUD_CONFIG, else the packaged ``cloud.yml``)."""
    return _load(CloudConfig, path, env, DEFAULT_CLOUD_CONFIG, CLOUD_CONFIG_ENV)


_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")


def resolve_placeholders(text: str, env: Mapping[str, str]) -> str:
    """Replace every ``${NAME:default}`` / ``${NAME}`` in ``text`` from ``env``.

    Raises `ConfigError` when a ``${NAME}`` without default is not set.
    """
    return _resolve(text, env, "value")[0]


# --------------------------------------------------------------------------------------------
# Internals: reading, merging, resolving, converting
# --------------------------------------------------------------------------------------------


def _load(
    cls: type[_T],
    path: Path | None,
    env: Mapping[str, str] | None,
    packaged: Path,
    path_var: str,
    errors: list[str] | None = None,
) -> _T:
    env = os.environ if env is None else env
    if path is None:
        named = env.get(path_var, "")
        path = Path(named).expanduser() if named else packaged
    tree = _read_yaml(packaged)
    if Path(path) != packaged:
        tree = _merge(tree, _read_yaml(Path(path)))
    return _build(cls, tree, "", env, errors)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated in one mapping (PyYAML keeps the last silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _read_yaml(path: Path) -> dict[Any, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read configuration file: {e}") from e
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = e.problem or e.context or "syntax error"
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of settings at the top level, found {type(data).__name__}"
        )
    return data


def _merge(base: dict[Any, Any], over: dict[Any, Any]) -> dict[Any, Any]:
    """``over`` laid on ``base``: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve(raw: str, env: Mapping[str, str], key: str) -> tuple[str, tuple[str, ...]]:
    """Resolve placeholders in one value; also return the env vars that supplied text."""
    used: list[str] = []

    def substitute(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            used.append(name)
            return env[name]
        if default is None:
            raise ConfigError(
                f"{key}: environment variable {name} is not set and "
                f"the placeholder '${{{name}}}' has no default"
            )
        return default

    return _PLACEHOLDER.sub(substitute, raw), tuple(used)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a config class (computed once per class)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _problem(errors: list[str] | None, message: str) -> None:
    """Raise the problem (loading), or note it and go on (collecting: ``config check``)."""
    if errors is None:
        raise ConfigError(message)
    errors.append(message)


def _build(cls: type[_T], raw: object, path: str, env: Mapping[str, str],
           errors: list[str] | None = None) -> _T:
    """Convert one YAML mapping into the dataclass ``cls``, recursively. With ``errors`` every
    problem is appended there instead of raised, the setting concerned keeping its default
    (a section that still cannot be made is left to its parent's default)."""
    if raw is None:  # a section whose keys are all commented out
        raw = {}
    if not isinstance(raw, dict):
        _problem(errors, _invalid_message(path or "<top level>", raw, "a mapping of settings", ()))
        return None  # type: ignore[return-value]  # collecting only: the parent's default
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name in raw:
        if name not in fields:
            _problem(errors, _unknown_key_message(path, name, list(fields)))
    kwargs: dict[str, object] = {}
    written: dict[str, object] = {}  # each leaf as written (after placeholders), for messages
    sources: dict[str, tuple[str, ...]] = {}
    for name, value in raw.items():
        if name not in fields:
            continue
        tp, key, f = hints[name], _join(path, name), fields[name]
        if _is_section(tp):
            section = _build(tp, value, key, env, errors)
            if section is not None:
                kwargs[name] = section
            continue
        env_vars: tuple[str, ...] = ()
        try:
            if isinstance(value, str):
                value, env_vars = _resolve(value, env, key)
            sources[name], written[name] = env_vars, value
            kwargs[name] = _convert(tp, value, key, f.metadata, env_vars)
        except ConfigError as e:
            if errors is None:
                raise
            errors.append(str(e))
    if errors is not None:  # every field's bounds, not only the first failing one
        for name in list(kwargs):
            if _is_section(hints[name]):
                continue
            try:
                _check_bounds(fields[name], hints[name], kwargs[name])
            except _Invalid as e:
                errors.append(_field_message(path, fields, e, written, sources))
                del kwargs[name]
    try:
        return cls(**kwargs)
    except _Invalid as e:
        _problem(errors, _field_message(path, fields, e, written, sources))
        return None  # type: ignore[return-value]  # collecting only


def _field_message(path: str, fields: Mapping[str, dataclasses.Field[Any]], e: _Invalid,
                   written: Mapping[str, object], sources: Mapping[str, tuple[str, ...]]) -> str:
    secret = bool(fields[e.name].metadata.get("secret")) if e.name in fields else False
    return _invalid_message(_join(path, e.name), written.get(e.name, e.value), e.expected,
                            sources.get(e.name, ()), secret=secret)


_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_NONE = frozenset({"", "none", "null", "~"})
_INT = re.compile(r"[+-]?[0-9]+")


def _optional_inner(tp: Any) -> Any | None:
    """X for ``X | None`` (or ``Optional[X]``), else None."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _convert(tp: Any, value: object, key: str, meta: Mapping[str, Any], env_vars: tuple[str, ...]) -> object:
    """Convert one leaf value to ``tp``; bounds are checked afterwards, by the dataclass."""
    inner = _optional_inner(tp)
    if inner is not None:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        target = inner
    else:
        target = tp
    try:
        return _convert_to(target, value)
    except (TypeError, ValueError):
        raise ConfigError(
            _invalid_message(key, value, _expected(tp, meta), env_vars, secret=bool(meta.get("secret")))
        ) from None


def _convert_to(tp: Any, value: object) -> object:
    """Convert or raise ValueError/TypeError."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
        raise ValueError(value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INT.fullmatch(value.strip()):
            return int(value.strip())
        raise ValueError(value)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(value)
        if isinstance(value, int | float | str):
            number = float(value)
            if math.isfinite(number):
                return number
        raise ValueError(value)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise TypeError(value)
    if tp is Path:
        if isinstance(value, str | Path) and str(value).strip():
            return Path(value).expanduser()
        raise ValueError(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, str):
            text = value.strip()
            for member in tp:
                if member.value == text:
                    return member
            for member in tp:
                if str(member.value).lower() == text.lower():
                    return member
        raise ValueError(value)
    raise TypeError(f"unsupported config field type {tp!r}")  # a bug in this module


def _fmt_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _expected(tp: Any, meta: Mapping[str, Any]) -> str:
    """What a field accepts, in words: 'an integer between 1 and 65535'."""
    inner = _optional_inner(tp)
    if inner is not None:
        return f"{_expected(inner, meta)}, or empty for none"
    if tp is bool:
        return "a boolean (true/false/yes/no/1/0)"
    if tp is int or tp is float:
        noun = "an integer" if tp is int else "a number"
        lo, hi, gt = meta.get("lo"), meta.get("hi"), meta.get("gt")
        if lo is not None and hi is not None:
            return f"{noun} between {_fmt_number(lo)} and {_fmt_number(hi)}"
        if lo is not None:
            return f"{noun} >= {_fmt_number(lo)}"
        if gt is not None:
            return f"{noun} > {_fmt_number(gt)}"
        if hi is not None:
            return f"{noun} <= {_fmt_number(hi)}"
        return noun
    if tp is str:
        return "a non-empty string" if meta.get("nonempty") else "a string"
    if tp is Path:
        return "a non-empty path"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in tp)
    return repr(tp)


def _show(value: object) -> str:
    if isinstance(value, enum.Enum):
        return repr(value.value)
    if isinstance(value, Path):
        return repr(str(value))
    return repr(value)


def _invalid_message(
    key: str,
    value: object,
    expected: str,
    env_vars: tuple[str, ...] = (),
    *,
    secret: bool = False,
) -> str:
    shown = "'****'" if secret else _show(value)
    message = f"{key}: {shown} is not valid: expected {expected}"
    if env_vars:
        names = ", ".join(dict.fromkeys(env_vars))
        noun = "variable" if len(set(env_vars)) == 1 else "variables"
        message += f" (value from environment {noun} {names})"
    return message


def _unknown_key_message(path: str, name: object, known: list[str]) -> str:
    key = _join(path, str(name))
    message = f"{key}: unknown key"
    close = difflib.get_close_matches(str(name), known, n=1)
    if close:
        message += f"; did you mean {_join(path, close[0])!r}?"
    where = f"'{path}'" if path else "the top level"
    return message + f" (keys allowed at {where}: {', '.join(known)})"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
