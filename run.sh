#!/usr/bin/env bash
# One entry point for a fresh machine (Python 3.11+ is all it needs):
#   ./run.sh serve [--host H --port P --workers N]   install, then run the service
#   ./run.sh test  [pytest args]                     install, lint, type-check, run every test
# Everything goes into ./.venv (override with SENDWISE_VENV); reinstalls only when
# pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${SENDWISE_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

ensure_env() {
    local extra="$1"
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "sendwise needs Python 3.11 or newer ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
        exit 1
    fi
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    local stamp="$VENV/.sendwise-install-$(cat pyproject.toml | sha256sum | cut -c1-16)${extra:+-dev}"
    if [ ! -f "$stamp" ]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".${extra}"
        touch "$stamp"
    fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    serve)
        ensure_env ""
        exec "$VENV/bin/sendwise" serve "$@"
        ;;
    test)
        ensure_env "[dev]"
        echo "== ruff"; "$VENV/bin/ruff" check .
        echo "== mypy"; "$VENV/bin/mypy"
        echo "== pytest"; exec "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./run.sh serve [sendwise serve options] | ./run.sh test [pytest options]" >&2
        exit 2
        ;;
esac
