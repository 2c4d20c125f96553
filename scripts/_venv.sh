# Make sure .venv exists and holds the pinned project, then put its bin/ first on PATH.
# Needs nothing but python3 (3.11+). Re-installs only when setup.cfg or constraints.txt change.
#
# Sourced by the scripts (scripts/test, demo, bench, gen-proto: each sets its own
# `set -euo pipefail` first), and by hand from an interactive shell (`source scripts/_venv.sh`,
# README.md): it leaves the caller's shell options as they were, so a failing command afterwards
# does not end the operator's shell. The install runs in a subshell; when a step fails, sourcing
# returns 1 (a script with errexit stops there) and PATH is left unchanged.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
if ! (
  # each step says `|| exit 1`: errexit would be ignored here, inside an `if` condition
  set -o pipefail
  stamp="$VENV/.installed"
  want="$(cat "$ROOT/setup.cfg" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)" || exit 1
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" || exit 1
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null || exit 1
    "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[dev]" || exit 1
    echo "$want" > "$stamp" || exit 1
  fi
); then
  echo "scripts/_venv.sh: could not prepare $VENV (see the errors above)" >&2
  return 1
fi
case ":$PATH:" in
  *":$VENV/bin:"*) ;;  # sourced again: already there
  *) export PATH="$VENV/bin:$PATH" ;;
esac
