"""`edge-sync config check`: every configuration error at once (config.check_edge_config and
the command), the effective settings with secrets masked; the run path's loader still raises
its first error, worded as before."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_sync.config import check_edge_config, effective_settings, load_edge_config
from edge_sync.errors import ConfigError

SECRET = "s3cr3t-routing-Zq81"
TOKEN = "adm1n-t0ken-Pw55"

THREE_ERRORS = """\
cloud:
  rpc:
    port: 99999
  windoww: 3
storage:
  full_policy: drop_everything
"""
MESSAGES = [
    "cloud.windoww: unknown key; did you mean 'cloud.window'?",
    "cloud.rpc.port: 99999 is not valid: expected an integer between 1 and 65535",
    "storage.full_policy: 'drop_everything' is not valid: expected one of refuse, "
    "evict_oldest_normal",
]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_sync.cli.edge", "config", "check", *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


def test_three_errors_reported_at_once(tmp_path: Path) -> None:
    f = tmp_path / "edge.yml"
    f.write_text(THREE_ERRORS)
    cfg, errors = check_edge_config(f, env={})
    assert cfg is None
    assert [e.split(" (keys allowed")[0] for e in errors] == MESSAGES
    done = run("--config", str(f))
    assert done.returncode == 1
    for message in MESSAGES:
        assert f"error: {message}" in done.stdout
    assert "3 error(s) in the configuration" in done.stdout


def test_the_run_path_still_raises_the_first_error(tmp_path: Path) -> None:
    f = tmp_path / "edge.yml"
    f.write_text(THREE_ERRORS)
    with pytest.raises(ConfigError) as raised:
        load_edge_config(f, env={})
    assert str(raised.value).startswith(MESSAGES[0])


def test_errors_from_the_environment_and_bounds_together(tmp_path: Path) -> None:
    f = tmp_path / "edge.yml"
    f.write_text("http:\n  port: 70000\n  request_timeout_s: -1\n")
    _cfg, errors = check_edge_config(f, env={"EDGE_ADMIN_PORT": "abc",
                                             "CLOUD_ROUTING_SECRET": SECRET})
    assert len(errors) == 3, errors
    assert any(e.startswith("http.port: 70000 is not valid") for e in errors)
    assert any(e.startswith("http.request_timeout_s: -1 is not valid") for e in errors)
    assert any(e.startswith("admin.port: 'abc' is not valid") and "EDGE_ADMIN_PORT" in e
               for e in errors)


def test_effective_configuration_masks_secrets(tmp_path: Path) -> None:
    f = tmp_path / "edge.yml"
    f.write_text("cloud:\n  window: 3\n")
    env = {"CLOUD_ROUTING_SECRET": SECRET, "EDGE_ADMIN_TOKEN": TOKEN,
           "CLOUD_ROUTING_KEY": "rk-1", "EDGE_HTTP_PORT": "8181"}
    cfg, errors = check_edge_config(f, env=env)
    assert errors == [] and cfg is not None
    settings = dict(effective_settings(cfg))
    assert settings["cloud.routing_secret"] == "'****'"
    assert settings["admin.token"] == "'****'"
    assert settings["cloud.window"] == "3"  # the file
    assert settings["http.port"] == "8181"  # the environment
    assert settings["cloud.routing_key"] == "'rk-1'"
    assert settings["mqtt.enabled"] == "true"  # a default
    done = run("--config", str(f), env=env)
    assert done.returncode == 0, done.stderr
    assert "cloud.routing_secret: '****'" in done.stdout
    assert "admin.token: '****'" in done.stdout
    assert "http.port: 8181" in done.stdout and "cloud.window: 3" in done.stdout
    assert SECRET not in done.stdout + done.stderr and TOKEN not in done.stdout + done.stderr


def test_a_bad_secret_is_named_without_its_value(tmp_path: Path) -> None:
    f = tmp_path / "edge.yml"
    f.write_text("admin:\n  token: [1, 2]\n  port: -5\n")
    done = run("--config", str(f), env={"CLOUD_ROUTING_SECRET": SECRET})
    assert done.returncode == 1
    assert "admin.token: '****' is not valid" in done.stdout
    assert "admin.port: -5 is not valid" in done.stdout
    assert SECRET not in done.stdout + done.stderr
