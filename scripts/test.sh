#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh: Debian data package, .venv with the package and its test
# extra), lints, then runs pytest on two workers. Extra arguments go to pytest:
#   bash scripts/test.sh                 # default suite (excludes tests marked slow)
#   bash scripts/test.sh -m slow         # the slow tests only
#   bash scripts/test.sh -m 'slow or not slow'   # everything
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${VENV:-.venv}"
"$VENV/bin/ruff" check .
# Two workers (BBG_TEST_WORKERS), each taking whole test files: a file's module fixtures and its
# processes stay together; the files of the longest tests go first (tests/conftest.py). The
# slowest tests and the reason for each skip are listed at the end.
exec "$VENV/bin/python" -m pytest -n "${BBG_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder --durations=25 -rs "$@"
