"""scripts/_venv.sh sourced from an operator's interactive shell (README: `source
scripts/_venv.sh` puts edge-sync and edge-cloud on PATH) leaves that shell's options as they
were: a failing command afterwards must not end the shell (it did when the script left
`set -euo pipefail` behind). The scripts that source it (scripts/demo here) still stop on the
first error.

Real bash processes on a copy of the scripts in a temporary root whose .venv holds a stub
`python` and a stamp that matches setup.cfg and constraints.txt, so nothing is installed; a
stamp that does not match makes the stub's `pip install` run (and fail when told to)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")

STUB_PYTHON = """#!/bin/sh
echo "stub-python $*" >> "$STUB_LOG"
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then exit "${STUB_PIP_EXIT:-0}"; fi
exit 0
"""


def fake_root(tmp_path: Path, *, stamp_matches: bool) -> Path:
    """A copy of scripts/_venv.sh and scripts/demo beside a setup.cfg, a constraints.txt and a
    .venv whose bin/python is the stub; the stamp matches the two files or not."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    for name in ("_venv.sh", "demo"):
        shutil.copy2(ROOT / "scripts" / name, root / "scripts" / name)
    (root / "setup.cfg").write_text("[metadata]\nname = fake\n")
    (root / "constraints.txt").write_text("fake==1\n")
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STUB_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    digest = hashlib.sha256(b"[metadata]\nname = fake\n" + b"fake==1\n").hexdigest()
    (root / ".venv" / ".installed").write_text((digest if stamp_matches else "old") + "\n")
    return root


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HISTFILE": str(tmp_path / "hist"),
            "PS1": "", "STUB_LOG": str(tmp_path / "stub.log"), **extra}


def interactive(root: Path, env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    """``script`` typed into an interactive bash (commands read from stdin, as in a terminal)."""
    assert BASH is not None
    return subprocess.run([BASH, "--norc", "--noprofile", "-i"], input=script, cwd=root, env=env,
                          capture_output=True, text=True, timeout=30, check=False)


# The shell's options before and after sourcing, compared by the shell itself (`set +o` and
# `shopt -p` print the commands that restore them), then a failing command.
SOURCED = """set +o > before.txt; shopt -p >> before.txt
source scripts/_venv.sh
echo "sourced: $?"
set +o > after.txt; shopt -p >> after.txt
cmp -s before.txt after.txt && echo "options: unchanged" || diff before.txt after.txt
echo "first on PATH: ${PATH%%:*}"
false
echo "STILL HERE"
"""


def test_sourced_in_an_interactive_shell_leaves_its_options_and_the_shell_alive(
        tmp_path: Path) -> None:
    root = fake_root(tmp_path, stamp_matches=True)
    done = interactive(root, environment(tmp_path), SOURCED)
    lines = done.stdout.splitlines()
    assert lines == ["sourced: 0", "options: unchanged", f"first on PATH: {root}/.venv/bin",
                     "STILL HERE"], done.stderr
    assert not (tmp_path / "stub.log").exists()  # the stamp matched: nothing installed


def test_sourced_with_strict_options_already_set_keeps_them(tmp_path: Path) -> None:
    """An operator who runs with `set -u` (or a script with errexit) keeps exactly that."""
    root = fake_root(tmp_path, stamp_matches=True)
    done = interactive(root, environment(tmp_path), "set -u -o pipefail\n" + SOURCED)
    assert done.stdout.splitlines()[:2] == ["sourced: 0", "options: unchanged"], done.stderr
    assert done.stdout.splitlines()[-1] == "STILL HERE"


def test_sourced_twice_puts_the_venv_on_path_once(tmp_path: Path) -> None:
    root = fake_root(tmp_path, stamp_matches=True)
    script = ("source scripts/_venv.sh; source scripts/_venv.sh\n"
              'echo "$PATH" | tr : "\\n" | grep -c "/.venv/bin$"\n')
    done = interactive(root, environment(tmp_path), script)
    assert done.stdout.splitlines() == ["1"], done.stderr


def test_a_failed_install_returns_1_and_leaves_the_shell_and_path_alone(tmp_path: Path) -> None:
    root = fake_root(tmp_path, stamp_matches=False)
    env = environment(tmp_path, STUB_PIP_EXIT="1")
    done = interactive(root, env, SOURCED)
    assert done.stdout.splitlines() == ["sourced: 1", "options: unchanged",
                                        "first on PATH: /usr/bin", "STILL HERE"], done.stderr
    assert f"scripts/_venv.sh: could not prepare {root}/.venv" in done.stderr
    # the first pip call (upgrading pip itself) failed: the install stopped there
    assert (tmp_path / "stub.log").read_text().splitlines() == [
        "stub-python -m pip install -q --upgrade pip"]
    assert (root / ".venv" / ".installed").read_text() == "old\n"  # not marked as installed


def test_a_script_runs_its_command_with_the_venv_python(tmp_path: Path) -> None:
    """scripts/demo after a changed setup.cfg: installs (the stub's pip), writes the stamp,
    then execs the venv's python."""
    assert BASH is not None
    root = fake_root(tmp_path, stamp_matches=False)
    done = subprocess.run([BASH, str(root / "scripts" / "demo"), "--devices", "3"], cwd=tmp_path,
                          env=environment(tmp_path), capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "stub.log").read_text().splitlines() == [
        "stub-python -m pip install -q --upgrade pip",
        f"stub-python -m pip install -q -c {root}/constraints.txt -e {root}[dev]",
        "stub-python -m edge_sync.demo --devices 3",
    ]
    digest = hashlib.sha256(b"[metadata]\nname = fake\n" + b"fake==1\n").hexdigest()
    assert (root / ".venv" / ".installed").read_text() == digest + "\n"


def test_a_script_stops_when_the_install_fails(tmp_path: Path) -> None:
    assert BASH is not None
    root = fake_root(tmp_path, stamp_matches=False)
    done = subprocess.run([BASH, str(root / "scripts" / "demo")], cwd=tmp_path,
                          env=environment(tmp_path, STUB_PIP_EXIT="1"), capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert "could not prepare" in done.stderr
    assert (tmp_path / "stub.log").read_text().splitlines() == [
        "stub-python -m pip install -q --upgrade pip"]  # never the demo


@pytest.mark.parametrize("name", ["test", "demo", "bench", "gen-proto"])
def test_every_script_sets_strict_mode_before_sourcing(name: str) -> None:
    """_venv.sh no longer sets errexit for its caller: each script sets it itself, first."""
    lines = (ROOT / "scripts" / name).read_text().splitlines()
    strict = lines.index("set -euo pipefail")
    assert lines.index('source "$(dirname "$0")/_venv.sh"') == strict + 1
    assert os.access(ROOT / "scripts" / name, os.X_OK)
