#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh: Debian data package, .venv with the package and its test
# extra), lints, then runs pytest. Extra arguments go to pytest:
#   bash scripts/test.sh                 # default suite (excludes tests marked slow)
#   bash scripts/test.sh -m slow         # the slow tests only
#   bash scripts/test.sh -m 'slow or not slow'   # everything
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${VENV:-.venv}"
"$VENV/bin/ruff" check .
exec "$VENV/bin/python" -m pytest "$@"
