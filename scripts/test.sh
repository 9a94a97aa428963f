#!/usr/bin/env bash
# Bootstraps everything the test suite needs (a virtual environment in .venv with the package and
# its test extra), lints, then runs pytest. Extra arguments go to pytest:
#   bash scripts/test.sh                 # default suite (excludes tests marked slow)
#   bash scripts/test.sh -m slow         # the slow tests only
#   bash scripts/test.sh -m 'slow or not slow'   # everything
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
stamp="$VENV/.bbg-jax-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[test]'
  echo "$want" > "$stamp"
fi

"$VENV/bin/ruff" check .
exec "$VENV/bin/python" -m pytest "$@"
