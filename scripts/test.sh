#!/usr/bin/env bash
# Set up .venv (first run) and run the whole suite: lint, format, types, tests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k intake`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,postgres]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# pytest exits 5 when it collected no test: that fails this script like any other failure.
.venv/bin/python -m pytest "$@"
