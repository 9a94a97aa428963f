#!/usr/bin/env bash
# Single-machine training on all local accelerators (or the CPU).
#
#   CONFIG=experiments/smoke.py WORKDIR=/tmp/smoke launch/local.sh [extra bbg_jax.main flags]
#
# Variables: CONFIG (default experiments/smoke.py), WORKDIR (default /tmp/bbg_jax/<config>),
# DATA_DIR (TFDS directory; unset = TFDS's default), VENV (default .venv); DRY_RUN=1 prints the
# command, shell-quoted after "+ ", instead of running it.
# Interrupted runs resume from WORKDIR's latest checkpoint when re-run with the same command.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-experiments/smoke.py}
name=$(basename "${CONFIG%%.py*}")${CONFIG#*.py}
WORKDIR=${WORKDIR:-/tmp/bbg_jax/${name//:/_}}
VENV=${VENV:-.venv}
data=()
[[ -n "${DATA_DIR:-}" ]] && data=(--config.data.data_dir="$DATA_DIR")
cmd=("$VENV/bin/python" -m bbg_jax.main --config="$CONFIG" --workdir="$WORKDIR" "${data[@]}" "$@")
if [[ ${DRY_RUN:-0} == 1 ]]; then printf '+'; printf ' %q' "${cmd[@]}"; printf '\n'; exit 0; fi
exec "${cmd[@]}"
