#!/usr/bin/env bash
# Set up .venv (first run) and run the whole suite: lint, format, types, tests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k intake`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,postgres]'
# The dashboard's browser tests drive the machine's own Chromium (Debian's package; CI runs
# as root): installed here when missing, never downloaded by Playwright.
command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# pytest exits 5 when it collected no test: that fails this script like any other failure.
.venv/bin/python -m pytest "$@"
