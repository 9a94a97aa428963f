#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh), train BigBiGAN on Fashion-MNIST
# (experiments/fashion_mnist.py) with periodic evaluation, then write the report
# (baselines, FID first/last, reconstruction class agreement) to WORKDIR/report.json.
#
#   bash scripts/run_fashion_mnist.sh [WORKDIR] [--config.train.num_steps=2000 ...]
#
# Re-running the same command resumes training from the workdir's latest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${1:-/tmp/bbg-fashion-mnist}"
shift || true
bash scripts/setup.sh
# Split the batch over 2 simulated host devices (one per core of a 2-core machine), unless the
# caller chose a device count; on an accelerator this only affects the unused host platform.
if [[ "${XLA_FLAGS:-}" != *xla_force_host_platform_device_count* ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${BBG_CPU_DEVICES:-2}"
fi
.venv/bin/python -m bbg_jax.main --config=experiments/fashion_mnist.py --workdir="$WORKDIR" "$@"
.venv/bin/python -m bbg_jax.evaluation.report --workdir="$WORKDIR"
echo "report: $WORKDIR/report.json"
