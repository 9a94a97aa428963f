#!/usr/bin/env bash
# TPU pod slice launcher (gcloud TPU VM): create | setup | run | status | delete.
#
#   PROJECT=my-proj ZONE=us-east5-a TPU_NAME=bbg ACCELERATOR=v5p-64 BUCKET=gs://my-bucket \
#   CONFIG=experiments/table1.py:base RUN=table1_base launch/tpu_pod.sh create setup run
#
# Preemption: re-run `launch/tpu_pod.sh run` (after `create setup` if the slice was deleted).
# The workdir lives on GCS, so the loop resumes from its latest checkpoint there.
#
# Variables (required unless a default is shown):
#   PROJECT, ZONE, TPU_NAME, BUCKET (gs://..., holds tensorflow_datasets/ and runs/)
#   ACCELERATOR        slice type, default v5p-64 (32 chips: the base config's target)
#   RUNTIME            TPU VM image, default v2-alpha-tpuv5 (v4: tpu-ubuntu2204-base)
#   CONFIG, RUN        experiment spec and run name (workdir = $BUCKET/runs/$RUN)
#   EXTRA_FLAGS        more flags for bbg_jax.main, e.g. "--config.train.num_steps=1000"
#   SPOT=1             create a Spot (preemptible) slice
set -euo pipefail

: "${PROJECT:?}" "${ZONE:?}" "${TPU_NAME:?}"
ACCELERATOR=${ACCELERATOR:-v5p-64}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5}
# Pinned versions: the ones the repository is tested with (jax pins the matching libtpu).
JAX_VERSION=0.10.2
PYTHON=python3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TPU=(gcloud compute tpus tpu-vm --project "$PROJECT" --zone "$ZONE")

on_all_workers() { "${TPU[@]}" ssh "$TPU_NAME" --worker=all --command "$1"; }

create() {
  local spot=()
  [[ "${SPOT:-0}" == 1 ]] && spot=(--spot)
  "${TPU[@]}" create "$TPU_NAME" --accelerator-type "$ACCELERATOR" --version "$RUNTIME" \
    "${spot[@]}"
}

setup() {
  # Ship exactly the checked-out commit (tracked files), so every worker runs the same code.
  local tarball=/tmp/bbg_jax_src.tar.gz
  git -C "$ROOT" archive --format=tar.gz -o "$tarball" HEAD
  "${TPU[@]}" scp "$tarball" "$TPU_NAME":~/bbg_jax_src.tar.gz --worker=all
  on_all_workers "set -e; rm -rf ~/bbg_jax && mkdir ~/bbg_jax && tar xzf ~/bbg_jax_src.tar.gz \
    -C ~/bbg_jax && $PYTHON -m venv ~/venv && ~/venv/bin/pip install -q --upgrade pip && \
    ~/venv/bin/pip install -q 'jax[tpu]==$JAX_VERSION' -e ~/bbg_jax"
}

run() {
  : "${BUCKET:?}" "${CONFIG:?}" "${RUN:?}"
  # Every process must find the same coordinator: worker 0's internal address. jax then reads
  # the process id and count from the TPU VM metadata (jax.distributed.initialize()).
  local ip
  ip=$("${TPU[@]}" describe "$TPU_NAME" --format='value(networkEndpoints[0].ipAddress)')
  on_all_workers "cd ~/bbg_jax && JAX_COORDINATOR_ADDRESS=$ip:8476 \
    ~/venv/bin/python -m bbg_jax.main --config=$CONFIG --workdir=$BUCKET/runs/$RUN \
    --config.data.data_dir=$BUCKET/tensorflow_datasets ${EXTRA_FLAGS:-} \
    2>&1 | tee -a ~/train_$RUN.log"
}

status() { "${TPU[@]}" describe "$TPU_NAME" --format='value(state,health)'; }

delete() { "${TPU[@]}" delete "$TPU_NAME" --quiet; }

[[ $# -gt 0 ]] || { sed -n 2,20p "$0"; exit 1; }
for cmd in "$@"; do
  case "$cmd" in
    create|setup|run|status|delete) "$cmd" ;;
    *) echo "unknown command $cmd (create|setup|run|status|delete)" >&2; exit 1 ;;
  esac
done
