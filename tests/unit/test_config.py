"""edge_sync.config: packaged defaults, environment overrides, validation messages, the resolver."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from edge_sync.config import (
    DEFAULT_CLOUD_CONFIG,
    DEFAULT_EDGE_CONFIG,
    AdminConfig,
    CloudConfig,
    CloudLinkConfig,
    CloudRpcConfig,
    EdgeConfig,
    EdgesRpcConfig,
    FullPolicy,
    LogConfig,
    LogFormat,
    LogLevel,
    ReconnectConfig,
    StorageConfig,
    load_cloud_config,
    load_edge_config,
    resolve_placeholders,
)
from edge_sync.errors import ConfigError, EdgeSyncError

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")


def write(tmp_path: Path, text: str, name: str = "edge.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def attr(obj: object, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(leaves(value, path))
        else:
            out[path] = value
    return out


# --------------------------------------------------------------------------------------------
# Packaged defaults
# --------------------------------------------------------------------------------------------

EDGE_DEFAULTS: dict[str, object] = {
    "cloud.routing_key": "",
    "cloud.routing_secret": "",
    "cloud.rpc.host": "localhost",
    "cloud.rpc.port": 7070,
    "cloud.rpc.timeout_ms": 5000,
    "cloud.rpc.ssl_enabled": False,
    "cloud.rpc.ssl_cert": None,
    "cloud.rpc.max_inbound_message_size": 4194304,
    "cloud.batch.size": 100,
    "cloud.batch.timeout_ms": 1000,
    "cloud.retry.interval_ms": 3000,
    "cloud.retry.max_retries": 10,
    "cloud.retry.ack_timeout_ms": 60000,
    "cloud.retry.permanent_after": 3,
    "cloud.reconnect.interval_ms": 3000,
    "cloud.reconnect.max_interval_ms": 60000,
    "cloud.reconnect.multiplier": 2.0,
    "cloud.reconnect.jitter": 0.2,
    "cloud.reconnect.stable_after_s": 30,
    "cloud.circuit_breaker.failure_threshold": 5,
    "cloud.circuit_breaker.open_s": 300,
    "cloud.keepalive.time_s": 30,
    "cloud.keepalive.timeout_s": 5,
    "cloud.keepalive.permit_without_calls": True,
    "cloud.sync.full_after_offline_hours": 24.0,
    "cloud.clock_skew_warn_s": 60,
    "cloud.window": 8,
    "storage.data_dir": Path("./data/edge"),
    "storage.map_size_initial_mb": 64,
    "storage.max_size_mb": 10240,
    "storage.full_policy": FullPolicy.REFUSE,
    "storage.retention_hours": 168,
    "storage.purge_interval_s": 300,
    "storage.refusal_log_interval_s": 60,
    "queue.group_commit_max_events": 5000,
    "actors.shards": 4,
    "actors.passivate_after_s": 300,
    "supervisor.max_restarts": 5,
    "supervisor.within_s": 30,
    "http.host": "0.0.0.0",
    "http.port": 8080,
    "http.max_body_bytes": 1048576,
    "http.request_timeout_s": 10,
    "mqtt.enabled": True,
    "mqtt.host": "0.0.0.0",
    "mqtt.port": 1883,
    "mqtt.max_message_bytes": 1048576,
    "mqtt.connect_timeout_s": 10,
    "mqtt.max_inflight_per_client": 1000,
    "mqtt.max_sessions": 10000,
    "mqtt.session_expiry_s": 3600,
    "mqtt.max_unacked_per_session": 1000,
    "mqtt.tls.enabled": False,
    "mqtt.tls.host": "0.0.0.0",
    "mqtt.tls.port": 8883,
    "mqtt.tls.cert": None,
    "mqtt.tls.key": None,
    "mqtt.tls.client_ca": None,
    "devices.type_cast": True,
    "admin.host": "127.0.0.1",
    "admin.port": 8090,
    "admin.fault_injection": False,
    "admin.token": "",
    "log.level": LogLevel.INFO,
    "log.format": LogFormat.TEXT,
    "log.file": None,
    "log.rotation": "50 MB",
    "log.retention": "10",
    "rules.file": None,
    "rules.script_timeout_ms": 100,
    "rules.script_memory_mb": 16,
    "rules.script_max_errors": 3,
    "rules.script_block_duration_s": 60,
    "rules.local_retention_hours": 168.0,
    "health.queue_depth_healthy": 1000,
    "health.queue_depth_warning": 5000,
    "health.sync_latency_healthy_s": 5.0,
    "health.sync_latency_warning_s": 30.0,
    "health.storage_used_healthy_pct": 80.0,
    "health.storage_used_warning_pct": 95.0,
    "health.link_down_warning_s": 300.0,
}

CLOUD_DEFAULTS: dict[str, object] = {
    "rpc.host": "0.0.0.0",
    "rpc.port": 7070,
    "rpc.ssl_enabled": False,
    "rpc.ssl_cert": None,
    "rpc.ssl_key": None,
    "rpc.max_inbound_message_size": 4194304,
    "rpc.keepalive_permit_time_s": 1,
    "rpc.permit_without_calls": True,
    "storage.data_dir": Path("./data/cloud"),
    "storage.max_size_mb": 10240,
    "downlink.resend_timeout_ms": 10000,
    "downlink.max_attempts": 3,
    "admin.host": "127.0.0.1",
    "admin.port": 8091,
    "admin.token": "",
    "log.level": LogLevel.INFO,
    "log.format": LogFormat.TEXT,
    "log.file": None,
    "log.rotation": "50 MB",
    "log.retention": "10",
}


@pytest.mark.parametrize(("key", "expected"), EDGE_DEFAULTS.items())
def test_edge_default(key: str, expected: object) -> None:
    assert attr(load_edge_config(env={}), key) == expected


@pytest.mark.parametrize(("key", "expected"), CLOUD_DEFAULTS.items())
def test_cloud_default(key: str, expected: object) -> None:
    assert attr(load_cloud_config(env={}), key) == expected


def test_defaults_lists_cover_every_key_of_the_packaged_files() -> None:
    edge = leaves(yaml.safe_load(DEFAULT_EDGE_CONFIG.read_text()))
    cloud = leaves(yaml.safe_load(DEFAULT_CLOUD_CONFIG.read_text()))
    assert set(edge) == set(EDGE_DEFAULTS)
    assert set(cloud) == set(CLOUD_DEFAULTS)


def test_packaged_files_agree_with_the_dataclass_defaults() -> None:
    assert load_edge_config(env={}) == EdgeConfig()
    assert load_cloud_config(env={}) == CloudConfig()


@pytest.mark.parametrize("packaged", [DEFAULT_EDGE_CONFIG, DEFAULT_CLOUD_CONFIG])
def test_every_packaged_key_has_a_placeholder_and_a_comment(packaged: Path) -> None:
    lines = packaged.read_text().splitlines()
    names: list[str] = []
    for i, line in enumerate(lines):
        m = re.fullmatch(r'\s*(\w+): "(\$\{.*\})"', line)
        if m is None:
            continue
        match = PLACEHOLDER.fullmatch(m.group(2))
        assert match is not None, line
        name, default = match.group(1), match.group(2)
        assert default is not None, f"{m.group(1)} has no default"
        comment = lines[i - 1].strip()
        assert comment.startswith("#"), f"{m.group(1)} has no comment"
        assert f"Env: {name}" in comment
        shown = default if default else "empty"
        assert f"Default: {shown}." in comment
        names.append(name)
    assert len(names) == len(leaves(yaml.safe_load(packaged.read_text())))
    assert len(names) == len(set(names)), "an env var is used twice"


def test_repo_root_conf_is_the_packaged_folder() -> None:
    root_conf = Path(__file__).resolve().parents[2] / "conf"
    assert (root_conf / "edge.yml").resolve() == DEFAULT_EDGE_CONFIG.resolve()


# --------------------------------------------------------------------------------------------
# Environment overrides: every variable in the packaged files
# --------------------------------------------------------------------------------------------

EDGE_OVERRIDES: dict[str, tuple[str, str, object]] = {
    "CLOUD_ROUTING_KEY": ("cloud.routing_key", "rk-1", "rk-1"),
    "CLOUD_ROUTING_SECRET": ("cloud.routing_secret", "s3cret!", "s3cret!"),
    "CLOUD_RPC_HOST": ("cloud.rpc.host", "cloud.example", "cloud.example"),
    "CLOUD_RPC_PORT": ("cloud.rpc.port", "17070", 17070),
    "CLOUD_RPC_TIMEOUT": ("cloud.rpc.timeout_ms", "250", 250),
    "CLOUD_RPC_SSL_ENABLED": ("cloud.rpc.ssl_enabled", "TRUE", True),
    "CLOUD_RPC_SSL_CERT": ("cloud.rpc.ssl_cert", "/etc/ca.pem", Path("/etc/ca.pem")),
    "CLOUD_RPC_MAX_INBOUND_MESSAGE_SIZE": ("cloud.rpc.max_inbound_message_size", "65536", 65536),
    "EDGE_CLOUD_BATCH_SIZE": ("cloud.batch.size", "10000", 10000),
    "EDGE_CLOUD_BATCH_TIMEOUT_MS": ("cloud.batch.timeout_ms", "0", 0),
    "EDGE_CLOUD_RETRY_INTERVAL_MS": ("cloud.retry.interval_ms", "10", 10),
    "EDGE_CLOUD_RETRY_MAX_RETRIES": ("cloud.retry.max_retries", "0", 0),
    "EDGE_CLOUD_RETRY_ACK_TIMEOUT_MS": ("cloud.retry.ack_timeout_ms", "5000", 5000),
    "EDGE_CLOUD_RETRY_PERMANENT_AFTER": ("cloud.retry.permanent_after", "1", 1),
    "EDGE_CLOUD_RECONNECT_INTERVAL_MS": ("cloud.reconnect.interval_ms", "50", 50),
    "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": ("cloud.reconnect.max_interval_ms", "3000", 3000),
    "EDGE_CLOUD_RECONNECT_MULTIPLIER": ("cloud.reconnect.multiplier", "1.5", 1.5),
    "EDGE_CLOUD_RECONNECT_JITTER": ("cloud.reconnect.jitter", "0", 0.0),
    "EDGE_CLOUD_RECONNECT_STABLE_AFTER_S": ("cloud.reconnect.stable_after_s", "0.5", 0.5),
    "EDGE_CLOUD_CIRCUIT_BREAKER_FAILURE_THRESHOLD": (
        "cloud.circuit_breaker.failure_threshold",
        "2",
        2,
    ),
    "EDGE_CLOUD_CIRCUIT_BREAKER_OPEN_S": ("cloud.circuit_breaker.open_s", "1.5", 1.5),
    "EDGE_CLOUD_KEEPALIVE_TIME_S": ("cloud.keepalive.time_s", "10", 10.0),
    "EDGE_CLOUD_KEEPALIVE_TIMEOUT_S": ("cloud.keepalive.timeout_s", "2", 2.0),
    "EDGE_CLOUD_KEEPALIVE_PERMIT_WITHOUT_CALLS": (
        "cloud.keepalive.permit_without_calls",
        "no",
        False,
    ),
    "EDGE_CLOUD_SYNC_FULL_AFTER_OFFLINE_HOURS": (
        "cloud.sync.full_after_offline_hours", "0", 0.0),
    "EDGE_CLOUD_CLOCK_SKEW_WARN_S": ("cloud.clock_skew_warn_s", "5", 5.0),
    "EDGE_CLOUD_WINDOW": ("cloud.window", "1", 1),
    "EDGE_DATA_DIR": ("storage.data_dir", "/var/lib/edge-sync", Path("/var/lib/edge-sync")),
    "EDGE_STORAGE_MAP_SIZE_INITIAL_MB": ("storage.map_size_initial_mb", "1", 1),
    "EDGE_STORAGE_MAX_MB": ("storage.max_size_mb", "64", 64),
    "EDGE_STORAGE_FULL_POLICY": (
        "storage.full_policy",
        "evict_oldest_normal",
        FullPolicy.EVICT_OLDEST_NORMAL,
    ),
    "EDGE_STORAGE_RETENTION_HOURS": ("storage.retention_hours", "0", 0.0),
    "EDGE_STORAGE_PURGE_INTERVAL_S": ("storage.purge_interval_s", "0.1", 0.1),
    "EDGE_STORAGE_REFUSAL_LOG_INTERVAL_S": ("storage.refusal_log_interval_s", "0.5", 0.5),
    "EDGE_QUEUE_GROUP_COMMIT_MAX_EVENTS": ("queue.group_commit_max_events", "1", 1),
    "EDGE_ACTORS_SHARDS": ("actors.shards", "64", 64),
    "EDGE_ACTORS_PASSIVATE_AFTER_S": ("actors.passivate_after_s", "0.2", 0.2),
    "EDGE_SUPERVISOR_MAX_RESTARTS": ("supervisor.max_restarts", "0", 0),
    "EDGE_SUPERVISOR_WITHIN_S": ("supervisor.within_s", "1", 1.0),
    "EDGE_HTTP_HOST": ("http.host", "127.0.0.1", "127.0.0.1"),
    "EDGE_HTTP_PORT": ("http.port", "0", 0),
    "EDGE_HTTP_MAX_BODY_BYTES": ("http.max_body_bytes", "10", 10),
    "EDGE_HTTP_REQUEST_TIMEOUT_S": ("http.request_timeout_s", "2.5", 2.5),
    "EDGE_MQTT_ENABLED": ("mqtt.enabled", "false", False),
    "EDGE_MQTT_HOST": ("mqtt.host", "127.0.0.1", "127.0.0.1"),
    "EDGE_MQTT_PORT": ("mqtt.port", "0", 0),
    "EDGE_MQTT_MAX_MESSAGE_BYTES": ("mqtt.max_message_bytes", "10", 10),
    "EDGE_MQTT_CONNECT_TIMEOUT_S": ("mqtt.connect_timeout_s", "0.5", 0.5),
    "EDGE_MQTT_MAX_INFLIGHT_PER_CLIENT": ("mqtt.max_inflight_per_client", "7", 7),
    "EDGE_MQTT_MAX_SESSIONS": ("mqtt.max_sessions", "0", 0),
    "EDGE_MQTT_SESSION_EXPIRY_S": ("mqtt.session_expiry_s", "1.5", 1.5),
    "EDGE_MQTT_MAX_UNACKED_PER_SESSION": ("mqtt.max_unacked_per_session", "3", 3),
    "EDGE_MQTT_TLS_ENABLED": ("mqtt.tls.enabled", "no", False),
    "EDGE_MQTT_TLS_HOST": ("mqtt.tls.host", "127.0.0.1", "127.0.0.1"),
    "EDGE_MQTT_TLS_PORT": ("mqtt.tls.port", "0", 0),
    "EDGE_MQTT_TLS_CERT": ("mqtt.tls.cert", "/etc/cert.pem", Path("/etc/cert.pem")),
    "EDGE_MQTT_TLS_KEY": ("mqtt.tls.key", "/etc/key.pem", Path("/etc/key.pem")),
    "EDGE_MQTT_TLS_CLIENT_CA": ("mqtt.tls.client_ca", "/etc/ca.pem", Path("/etc/ca.pem")),
    "EDGE_DEVICES_TYPE_CAST": ("devices.type_cast", "false", False),
    "EDGE_ADMIN_HOST": ("admin.host", "0.0.0.0", "0.0.0.0"),
    "EDGE_ADMIN_PORT": ("admin.port", "18090", 18090),
    "EDGE_FAULT_INJECTION": ("admin.fault_injection", "true", True),
    "EDGE_ADMIN_TOKEN": ("admin.token", "t0ken", "t0ken"),
    "EDGE_LOG_LEVEL": ("log.level", "debug", LogLevel.DEBUG),
    "EDGE_LOG_FORMAT": ("log.format", "JSON", LogFormat.JSON),
    "EDGE_LOG_FILE": ("log.file", "/tmp/edge.log", Path("/tmp/edge.log")),
    "EDGE_LOG_ROTATION": ("log.rotation", "1 day", "1 day"),
    "EDGE_LOG_RETENTION": ("log.retention", "7 days", "7 days"),
    "EDGE_RULES_FILE": ("rules.file", "/etc/edge/chain.json", Path("/etc/edge/chain.json")),
    "EDGE_RULES_SCRIPT_TIMEOUT_MS": ("rules.script_timeout_ms", "250", 250),
    "EDGE_RULES_SCRIPT_MEMORY_MB": ("rules.script_memory_mb", "32", 32),
    "EDGE_RULES_SCRIPT_MAX_ERRORS": ("rules.script_max_errors", "5", 5),
    "EDGE_RULES_SCRIPT_BLOCK_DURATION_S": ("rules.script_block_duration_s", "0", 0),
    "EDGE_RULES_LOCAL_RETENTION_HOURS": ("rules.local_retention_hours", "24", 24.0),
    "EDGE_HEALTH_QUEUE_DEPTH_HEALTHY": ("health.queue_depth_healthy", "5", 5),
    "EDGE_HEALTH_QUEUE_DEPTH_WARNING": ("health.queue_depth_warning", "8000", 8000),
    "EDGE_HEALTH_SYNC_LATENCY_HEALTHY_S": ("health.sync_latency_healthy_s", "1.5", 1.5),
    "EDGE_HEALTH_SYNC_LATENCY_WARNING_S": ("health.sync_latency_warning_s", "60", 60.0),
    "EDGE_HEALTH_STORAGE_USED_HEALTHY_PCT": ("health.storage_used_healthy_pct", "50", 50.0),
    "EDGE_HEALTH_STORAGE_USED_WARNING_PCT": ("health.storage_used_warning_pct", "99", 99.0),
    "EDGE_HEALTH_LINK_DOWN_WARNING_S": ("health.link_down_warning_s", "60", 60.0),
}

CLOUD_OVERRIDES: dict[str, tuple[str, str, object]] = {
    "EDGES_RPC_HOST": ("rpc.host", "127.0.0.1", "127.0.0.1"),
    "EDGES_RPC_PORT": ("rpc.port", "0", 0),
    "EDGES_RPC_SSL_ENABLED": ("rpc.ssl_enabled", "0", False),
    "EDGES_RPC_SSL_CERT": ("rpc.ssl_cert", "/etc/cert.pem", Path("/etc/cert.pem")),
    "EDGES_RPC_SSL_PRIVATE_KEY": ("rpc.ssl_key", "/etc/key.pem", Path("/etc/key.pem")),
    "EDGES_RPC_MAX_INBOUND_MESSAGE_SIZE": ("rpc.max_inbound_message_size", "1024", 1024),
    "EDGES_RPC_KEEPALIVE_PERMIT_TIME_S": ("rpc.keepalive_permit_time_s", "0.5", 0.5),
    "EDGES_RPC_PERMIT_WITHOUT_CALLS": ("rpc.permit_without_calls", "false", False),
    "CLOUD_DATA_DIR": ("storage.data_dir", "/srv/cloud", Path("/srv/cloud")),
    "CLOUD_STORAGE_MAX_MB": ("storage.max_size_mb", "100", 100),
    "CLOUD_DOWNLINK_RESEND_TIMEOUT_MS": ("downlink.resend_timeout_ms", "500", 500),
    "CLOUD_DOWNLINK_MAX_ATTEMPTS": ("downlink.max_attempts", "5", 5),
    "CLOUD_ADMIN_HOST": ("admin.host", "0.0.0.0", "0.0.0.0"),
    "CLOUD_ADMIN_PORT": ("admin.port", "0", 0),
    "CLOUD_ADMIN_TOKEN": ("admin.token", "t0ken", "t0ken"),
    "CLOUD_LOG_LEVEL": ("log.level", "WARNING", LogLevel.WARNING),
    "CLOUD_LOG_FORMAT": ("log.format", "json", LogFormat.JSON),
    "CLOUD_LOG_FILE": ("log.file", "/tmp/cloud.log", Path("/tmp/cloud.log")),
    "CLOUD_LOG_ROTATION": ("log.rotation", "10 MB", "10 MB"),
    "CLOUD_LOG_RETENTION": ("log.retention", "3", "3"),
}


@pytest.mark.parametrize(("var", "case"), EDGE_OVERRIDES.items())
def test_edge_env_override(var: str, case: tuple[str, str, object]) -> None:
    key, raw, expected = case
    assert attr(load_edge_config(env={var: raw}), key) == expected


@pytest.mark.parametrize(("var", "case"), CLOUD_OVERRIDES.items())
def test_cloud_env_override(var: str, case: tuple[str, str, object]) -> None:
    key, raw, expected = case
    assert attr(load_cloud_config(env={var: raw}), key) == expected


@pytest.mark.parametrize(
    ("packaged", "table"),
    [(DEFAULT_EDGE_CONFIG, EDGE_OVERRIDES), (DEFAULT_CLOUD_CONFIG, CLOUD_OVERRIDES)],
)
def test_override_tables_cover_every_env_var(
    packaged: Path, table: dict[str, tuple[str, str, object]]
) -> None:
    tree = leaves(yaml.safe_load(packaged.read_text()))
    found = {PLACEHOLDER.fullmatch(v).group(1): k for k, v in tree.items()}  # type: ignore[union-attr]
    assert found == {var: case[0] for var, case in table.items()}


def test_spec_and_design_variable_names() -> None:
    """The environment variables the README and the scripts name, in one place."""
    env = {
        "CLOUD_ROUTING_KEY": "k",
        "CLOUD_ROUTING_SECRET": "s",
        "CLOUD_RPC_HOST": "h",
        "CLOUD_RPC_PORT": "1",
        "CLOUD_RPC_TIMEOUT": "2",
        "CLOUD_RPC_SSL_ENABLED": "false",
        "CLOUD_RPC_SSL_CERT": "c",
        "EDGE_DATA_DIR": "d",
        "EDGE_HTTP_PORT": "3",
        "EDGE_ADMIN_PORT": "4",
        "EDGE_LOG_LEVEL": "ERROR",
        "EDGE_LOG_FORMAT": "json",
    }
    cfg = load_edge_config(env=env)
    assert (cfg.cloud.routing_key, cfg.cloud.routing_secret) == ("k", "s")
    assert (cfg.cloud.rpc.host, cfg.cloud.rpc.port, cfg.cloud.rpc.timeout_ms) == ("h", 1, 2)
    assert cfg.cloud.rpc.ssl_cert == Path("c")
    assert (cfg.storage.data_dir, cfg.http.port, cfg.admin.port) == (Path("d"), 3, 4)
    assert (cfg.log.level, cfg.log.format) == (LogLevel.ERROR, LogFormat.JSON)
    cloud = load_cloud_config(env={"EDGES_RPC_PORT": "5", "CLOUD_DATA_DIR": "e"})
    assert (cloud.rpc.port, cloud.storage.data_dir) == (5, Path("e"))
    assert load_cloud_config(env={"CLOUD_ADMIN_PORT": "6"}).admin.port == 6


def test_os_environ_is_the_default_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EDGES_RPC_PORT", "7171")
    assert load_edge_config().storage.data_dir == tmp_path
    assert load_cloud_config().rpc.port == 7171


@pytest.mark.parametrize("word", ["true", "True", "YES", "yes", "1", " true "])
def test_bool_true_words(word: str) -> None:
    assert load_edge_config(env={"CLOUD_RPC_SSL_ENABLED": word}).cloud.rpc.ssl_enabled is True


@pytest.mark.parametrize("word", ["false", "FALSE", "No", "0"])
def test_bool_false_words(word: str) -> None:
    env = {"EDGE_CLOUD_KEEPALIVE_PERMIT_WITHOUT_CALLS": word}
    assert load_edge_config(env=env).cloud.keepalive.permit_without_calls is False


@pytest.mark.parametrize("word", ["", "none", "None", "null"])
def test_optional_path_empty_or_none_is_none(word: str) -> None:
    assert load_edge_config(env={"EDGE_LOG_FILE": word}).log.file is None


def test_empty_env_value_is_used_not_the_default() -> None:
    """A variable set to "" is set (as in Spring/ThingsBoard): a port of "" is an error."""
    with pytest.raises(ConfigError, match=r"cloud\.rpc\.port: '' is not valid"):
        load_edge_config(env={"CLOUD_RPC_PORT": ""})


# --------------------------------------------------------------------------------------------
# Files: EDGE_CONFIG / CLOUD_CONFIG, explicit paths laid over the packaged defaults
# --------------------------------------------------------------------------------------------


def test_edge_config_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: 9999\n")
    assert load_edge_config(env={"EDGE_CONFIG": str(path)}).http.port == 9999


def test_cloud_config_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "rpc:\n  port: 7777\n", "cloud.yml")
    assert load_cloud_config(env={"CLOUD_CONFIG": str(path)}).rpc.port == 7777


def test_explicit_path_wins_over_edge_config_env(tmp_path: Path) -> None:
    a = write(tmp_path, "http:\n  port: 1111\n", "a.yml")
    b = write(tmp_path, "http:\n  port: 2222\n", "b.yml")
    assert load_edge_config(a, env={"EDGE_CONFIG": str(b)}).http.port == 1111


def test_site_file_is_laid_over_the_packaged_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "storage:\n  data_dir: /data/x\ncloud:\n  rpc:\n    host: cloud.local\n    ssl_enabled: yes\n",
    )
    cfg = load_edge_config(path, env={"CLOUD_RPC_PORT": "9000"})
    assert cfg.storage.data_dir == Path("/data/x")
    assert cfg.cloud.rpc.host == "cloud.local"
    assert cfg.cloud.rpc.ssl_enabled is True  # YAML 1.1 boolean
    assert cfg.cloud.rpc.port == 9000  # omitted key: packaged placeholder still honoured
    assert cfg.storage.max_size_mb == 10240


def test_literal_values_in_a_site_file_ignore_the_env(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: 8181\n")
    assert load_edge_config(path, env={"EDGE_HTTP_PORT": "1"}).http.port == 8181


def test_empty_site_file_means_all_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing here\n")
    assert load_edge_config(path, env={}) == EdgeConfig()


def test_section_with_all_keys_commented_out(tmp_path: Path) -> None:
    path = write(tmp_path, "log:\n  # level: DEBUG\n")
    assert load_edge_config(path, env={}).log == LogConfig()


def test_placeholders_in_site_file_and_embedded_text(tmp_path: Path) -> None:
    path = write(tmp_path, 'cloud:\n  routing_key: "edge-${SITE:x}-${LINE}"\n')
    cfg = load_edge_config(path, env={"LINE": "7"})
    assert cfg.cloud.routing_key == "edge-x-7"


def test_home_is_expanded_in_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_edge_config(env={"EDGE_DATA_DIR": "~/edge"}).storage.data_dir == tmp_path / "edge"


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_config_error_is_an_edge_sync_error() -> None:
    assert issubclass(ConfigError, EdgeSyncError)


def test_non_numeric_port_names_key_value_expectation_and_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_edge_config(env={"CLOUD_RPC_PORT": "abc"})
    message = str(info.value)
    assert message.startswith("cloud.rpc.port: 'abc' is not valid: expected an integer")
    assert "between 1 and 65535" in message
    assert "CLOUD_RPC_PORT" in message


def test_non_numeric_value_in_file_does_not_mention_env(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: eighty\n")
    with pytest.raises(ConfigError) as info:
        load_edge_config(path, env={})
    assert str(info.value) == ("http.port: 'eighty' is not valid: expected an integer between 0 and 65535")


@pytest.mark.parametrize(
    ("var", "value", "key", "expected"),
    [
        ("CLOUD_RPC_PORT", "0", "cloud.rpc.port", "between 1 and 65535"),
        ("CLOUD_RPC_PORT", "65536", "cloud.rpc.port", "between 1 and 65535"),
        ("EDGE_HTTP_PORT", "-1", "http.port", "between 0 and 65535"),
        ("EDGES_RPC_PORT", "70000", "rpc.port", "between 0 and 65535"),
        ("CLOUD_RPC_TIMEOUT", "0", "cloud.rpc.timeout_ms", ">= 1"),
        ("EDGE_CLOUD_BATCH_SIZE", "0", "cloud.batch.size", "between 1 and 10000"),
        ("EDGE_CLOUD_BATCH_SIZE", "10001", "cloud.batch.size", "between 1 and 10000"),
        ("EDGE_ACTORS_SHARDS", "65", "actors.shards", "between 1 and 64"),
        ("EDGE_CLOUD_RECONNECT_MULTIPLIER", "0.5", "cloud.reconnect.multiplier", ">= 1"),
        ("EDGE_CLOUD_RECONNECT_JITTER", "1.5", "cloud.reconnect.jitter", "between 0 and 1"),
        ("EDGE_CLOUD_RECONNECT_JITTER", "nan", "cloud.reconnect.jitter", "between 0 and 1"),
        ("EDGE_CLOUD_KEEPALIVE_TIME_S", "0", "cloud.keepalive.time_s", "> 0"),
        ("EDGE_CLOUD_SYNC_FULL_AFTER_OFFLINE_HOURS", "-1", "cloud.sync.full_after_offline_hours",
         "a number >= 0"),
        ("EDGE_CLOUD_SYNC_FULL_AFTER_OFFLINE_HOURS", "a day", "cloud.sync.full_after_offline_hours",
         "a number >= 0"),
        ("EDGE_HEALTH_LINK_DOWN_WARNING_S", "-5", "health.link_down_warning_s", "a number >= 0"),
        ("CLOUD_RPC_PORT", "70.5", "cloud.rpc.port", "an integer"),
        ("CLOUD_RPC_HOST", " ", "cloud.rpc.host", "a non-empty string"),
        ("EDGE_DATA_DIR", "", "storage.data_dir", "a non-empty path"),
    ],
)
def test_out_of_range_and_malformed_values(var: str, value: str, key: str, expected: str) -> None:
    load = load_cloud_config if var.startswith("EDGES_") else load_edge_config
    with pytest.raises(ConfigError) as info:
        load(env={var: value})
    message = str(info.value)
    assert message.startswith(f"{key}: {value!r} is not valid: expected ")
    assert expected in message
    assert var in message


def test_bad_bool() -> None:
    with pytest.raises(ConfigError) as info:
        load_edge_config(env={"CLOUD_RPC_SSL_ENABLED": "maybe"})
    assert str(info.value).startswith(
        "cloud.rpc.ssl_enabled: 'maybe' is not valid: expected a boolean (true/false/yes/no/1/0)"
    )


def test_bad_enum_lists_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        load_edge_config(env={"EDGE_LOG_FORMAT": "xml"})
    assert str(info.value).startswith("log.format: 'xml' is not valid: expected one of text, json")
    with pytest.raises(ConfigError, match="refuse, evict_oldest_normal"):
        load_edge_config(env={"EDGE_STORAGE_FULL_POLICY": "drop"})
    with pytest.raises(ConfigError, match="TRACE, DEBUG, INFO, SUCCESS, WARNING, ERROR, CRITICAL"):
        load_edge_config(env={"EDGE_LOG_LEVEL": "verbose"})


def test_max_interval_below_interval() -> None:
    env = {"EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": "1000"}
    with pytest.raises(ConfigError) as info:
        load_edge_config(env=env)
    message = str(info.value)
    assert message.startswith("cloud.reconnect.max_interval_ms: '1000' is not valid")
    assert "interval_ms (3000)" in message
    assert "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS" in message
    equal = {"EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": "3000"}
    assert load_edge_config(env=equal).cloud.reconnect.max_interval_ms == 3000


def test_max_size_below_initial_map_size() -> None:
    with pytest.raises(ConfigError, match=r"^storage\.max_size_mb: '32' is not valid"):
        load_edge_config(env={"EDGE_STORAGE_MAX_MB": "32"})


def test_ssl_cert_must_exist_only_when_ssl_is_enabled(tmp_path: Path) -> None:
    missing = str(tmp_path / "ca.pem")
    assert load_edge_config(env={"CLOUD_RPC_SSL_CERT": missing}).cloud.rpc.ssl_cert is not None
    env = {"CLOUD_RPC_SSL_ENABLED": "true", "CLOUD_RPC_SSL_CERT": missing}
    with pytest.raises(ConfigError) as info:
        load_edge_config(env=env)
    assert str(info.value).startswith(f"cloud.rpc.ssl_cert: {missing!r} is not valid")
    assert "CLOUD_RPC_SSL_CERT" in str(info.value)
    (tmp_path / "ca.pem").write_text("pem")
    assert load_edge_config(env=env).cloud.rpc.ssl_cert == tmp_path / "ca.pem"
    # TLS without a CA file means the system roots
    assert load_edge_config(env={"CLOUD_RPC_SSL_ENABLED": "true"}).cloud.rpc.ssl_cert is None


def test_mqtt_tls_needs_an_existing_cert_and_existing_optional_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^mqtt\.tls\.cert: '' is not valid"):
        load_edge_config(env={"EDGE_MQTT_TLS_ENABLED": "true"})
    cert = tmp_path / "cert.pem"
    env = {"EDGE_MQTT_TLS_ENABLED": "true", "EDGE_MQTT_TLS_CERT": str(cert)}
    with pytest.raises(ConfigError, match=r"^mqtt\.tls\.cert: .* an existing file"):
        load_edge_config(env=env)
    cert.write_text("pem")
    tls = load_edge_config(env=env).mqtt.tls
    assert (tls.enabled, tls.cert, tls.key, tls.client_ca) == (True, cert, None, None)
    for var, key in (("EDGE_MQTT_TLS_KEY", "key"), ("EDGE_MQTT_TLS_CLIENT_CA", "client_ca")):
        missing = str(tmp_path / f"{key}.pem")
        with pytest.raises(ConfigError, match=rf"^mqtt\.tls\.{key}: .* an existing file"):
            load_edge_config(env={**env, var: missing})
    # off: the files are not looked at
    assert load_edge_config(env={"EDGE_MQTT_TLS_CERT": "/nowhere.pem"}).mqtt.tls.enabled is False


def test_cloud_ssl_needs_cert_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^rpc\.ssl_cert: '' is not valid"):
        load_cloud_config(env={"EDGES_RPC_SSL_ENABLED": "true"})
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("c")
    env = {
        "EDGES_RPC_SSL_ENABLED": "true",
        "EDGES_RPC_SSL_CERT": str(cert),
        "EDGES_RPC_SSL_PRIVATE_KEY": str(key),
    }
    with pytest.raises(ConfigError, match=r"^rpc\.ssl_key: .* EDGES_RPC_SSL_PRIVATE_KEY"):
        load_cloud_config(env=env)
    key.write_text("k")
    assert load_cloud_config(env=env).rpc.ssl_key == key


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "cloud:\n  rpc:\n    prot: 7070\n")
    with pytest.raises(ConfigError) as info:
        load_edge_config(path, env={})
    message = str(info.value)
    assert message.startswith("cloud.rpc.prot: unknown key")
    assert "did you mean 'cloud.rpc.port'?" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "storrage:\n  data_dir: x\n")
    with pytest.raises(ConfigError, match=r"^storrage: unknown key; did you mean 'storage'\?"):
        load_edge_config(path, env={})


def test_tenant_and_edge_id_are_not_configuration(tmp_path: Path) -> None:
    path = write(tmp_path, "edge_id: 1234\n")
    with pytest.raises(ConfigError, match=r"^edge_id: unknown key"):
        load_edge_config(path, env={})


def test_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "http: 8080\n")
    with pytest.raises(ConfigError, match=r"^http: 8080 is not valid: expected a mapping"):
        load_edge_config(path, env={})


def test_top_level_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of settings at the top level"):
        load_edge_config(path, env={})


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: 8080\n  host: [unclosed\nadmin:\n  port: 1\n")
    with pytest.raises(ConfigError) as info:
        load_edge_config(path, env={})
    message = str(info.value)
    assert str(path) in message
    assert re.search(r"line [45]\b", message), message


def test_yaml_bad_indentation_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: 8080\n   host: x\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}, line 3, column \d+: "):
        load_edge_config(path, env={})


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: 1\n  port: 2\n")
    with pytest.raises(ConfigError, match=r"line 3.*duplicate key 'port'"):
        load_edge_config(path, env={})


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yml"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: configuration file not found"):
        load_edge_config(path, env={})


def test_missing_file_named_by_env(tmp_path: Path) -> None:
    path = tmp_path / "nope.yml"
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_cloud_config(env={"CLOUD_CONFIG": str(path)})


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_edge_config(tmp_path, env={})  # a directory
    binary = tmp_path / "bin.yml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=re.escape(str(binary))):
        load_edge_config(binary, env={})


def test_required_placeholder_only_matters_when_set(tmp_path: Path) -> None:
    path = write(tmp_path, 'cloud:\n  routing_key: "${SITE_ROUTING_KEY}"\n')
    with pytest.raises(ConfigError) as info:
        load_edge_config(path, env={})
    assert str(info.value).startswith("cloud.routing_key: environment variable SITE_ROUTING_KEY is not set")
    assert load_edge_config(path, env={"SITE_ROUTING_KEY": "k"}).cloud.routing_key == "k"


def test_yaml_types_that_do_not_fit(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: true\n")
    with pytest.raises(ConfigError, match=r"^http\.port: True is not valid: expected an integer"):
        load_edge_config(path, env={})
    path = write(tmp_path, "http:\n  host: [a, b]\n")
    with pytest.raises(ConfigError, match=r"^http\.host: \['a', 'b'\] is not valid"):
        load_edge_config(path, env={})


def test_secret_is_never_shown_in_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "cloud:\n  routing_secret: [hunter2]\n")
    with pytest.raises(ConfigError) as info:
        load_edge_config(path, env={})
    assert "hunter2" not in str(info.value)
    assert str(info.value).startswith("cloud.routing_secret: '****' is not valid")


# --------------------------------------------------------------------------------------------
# The dataclasses
# --------------------------------------------------------------------------------------------


def test_dataclasses_are_frozen_and_slotted() -> None:
    cfg = load_edge_config(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cloud.rpc.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.storage = StorageConfig()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_cloud_config(env={}).rpc.port = 1  # type: ignore[misc]
    assert not hasattr(cfg, "__dict__")
    assert not hasattr(cfg.cloud.reconnect, "__dict__")
    assert hash(cfg) == hash(load_edge_config(env={}))


def test_routing_secret_is_not_in_repr() -> None:
    cfg = load_edge_config(env={"CLOUD_ROUTING_SECRET": "topsecret-value"})
    assert cfg.cloud.routing_secret == "topsecret-value"
    assert "topsecret" not in repr(cfg)
    assert "topsecret" not in str(cfg.cloud)
    assert "routing_secret" not in repr(cfg.cloud)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"^port: 0 is not valid: expected an integer between"):
        CloudRpcConfig(port=0)
    with pytest.raises(ConfigError, match="max_interval_ms"):
        ReconnectConfig(interval_ms=5000, max_interval_ms=4000)
    with pytest.raises(ConfigError, match="ssl_key"):
        EdgesRpcConfig(ssl_enabled=True, ssl_cert=Path(__file__))


def test_replace_builds_test_configs(tmp_path: Path) -> None:
    cfg = EdgeConfig(storage=StorageConfig(data_dir=tmp_path))
    cfg = dataclasses.replace(cfg, http=dataclasses.replace(cfg.http, port=0))
    assert (cfg.storage.data_dir, cfg.http.port) == (tmp_path, 0)
    assert CloudConfig().admin == AdminConfig(port=8091)
    assert CloudLinkConfig().rpc == CloudRpcConfig()


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
defaults = st.text().filter(lambda s: "}" not in s)


@given(name=names, value=st.text(), default=defaults)
def test_env_value_round_trips(name: str, value: str, default: str) -> None:
    assert resolve_placeholders(f"${{{name}:{default}}}", {name: value}) == value
    assert resolve_placeholders(f"${{{name}}}", {name: value}) == value


@given(name=names, default=defaults)
def test_default_round_trips_when_unset(name: str, default: str) -> None:
    assert resolve_placeholders(f"${{{name}:{default}}}", {}) == default


@given(text=st.text().filter(lambda s: "${" not in s), env=st.dictionaries(names, st.text()))
def test_text_without_placeholders_is_unchanged(text: str, env: dict[str, str]) -> None:
    assert resolve_placeholders(text, env) == text


@given(
    prefix=st.text().filter(lambda s: "$" not in s),
    suffix=st.text().filter(lambda s: "$" not in s),
    name=names,
    value=st.text(),
)
def test_placeholder_inside_text(prefix: str, suffix: str, name: str, value: str) -> None:
    assert resolve_placeholders(f"{prefix}${{{name}:x}}{suffix}", {name: value}) == (prefix + value + suffix)


@given(port=st.integers())
def test_port_accepted_exactly_in_range(port: int) -> None:
    env = {"CLOUD_RPC_PORT": str(port)}
    if 1 <= port <= 65535:
        assert load_edge_config(env=env).cloud.rpc.port == port
    else:
        with pytest.raises(ConfigError, match=r"^cloud\.rpc\.port: .*integer between 1 and 65535"):
            load_edge_config(env=env)


def test_health_thresholds_must_be_in_order() -> None:
    with pytest.raises(ConfigError, match=r"health\.queue_depth_healthy"):
        load_edge_config(env={"EDGE_HEALTH_QUEUE_DEPTH_HEALTHY": "6000"})
    with pytest.raises(ConfigError, match=r"health\.sync_latency_healthy_s"):
        load_edge_config(env={"EDGE_HEALTH_SYNC_LATENCY_HEALTHY_S": "31"})


@pytest.mark.parametrize(("env", "value"), [
    ("EDGE_RULES_SCRIPT_MAX_ERRORS", "0"), ("EDGE_RULES_SCRIPT_MAX_ERRORS", "1001"),
    ("EDGE_RULES_SCRIPT_BLOCK_DURATION_S", "-1"), ("EDGE_RULES_SCRIPT_BLOCK_DURATION_S", "86401"),
])
def test_the_script_blocklist_settings_are_bounded(env: str, value: str) -> None:
    key = {"EDGE_RULES_SCRIPT_MAX_ERRORS": "script_max_errors",
           "EDGE_RULES_SCRIPT_BLOCK_DURATION_S": "script_block_duration_s"}[env]
    with pytest.raises(ConfigError, match=rf"^rules\.{key}: '{value}' is not valid"):
        load_edge_config(env={env: value})
