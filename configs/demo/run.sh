#!/usr/bin/env bash
# The main job: install fcnode into .venv (once) and run the demo (three fusion centers and a JTTF).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
echo "installing fcnode into .venv (log: .venv/install.log) ..."
if ! { .venv/bin/python -m pip install --upgrade pip \
       && .venv/bin/python -m pip install -e '.[test]'; } > .venv/install.log 2>&1; then
  tail -n 30 .venv/install.log
  echo "install failed; full log in .venv/install.log" >&2
  exit 1
fi
exec .venv/bin/python configs/demo/demo.py "$@"
