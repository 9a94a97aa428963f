#!/usr/bin/env bash
# The accelerator check in one command: bf16 and fp32 train steps of experiments/smoke.py,
# biggan_cifar.py, fashion_mnist.py and bigbigan_imagenet128.py (images/s, MFU, peak memory,
# compiled FLOPs), then 200 Fashion-MNIST training steps from exported arrays (s/step, final
# losses). JSON lines on stdout, and in $OUT/device_check.jsonl when OUT is set. Under 8 minutes
# on one H100/H200: items start only inside a 420 s budget (--budget_s), the slowest last.
# Fields: docs/performance.md, "Device check". Code: bbg_jax/device_check.py.
#
# 1. Here, once (needs this project's venv: ml_collections, TensorFlow-free readers, and
#    Debian's Fashion-MNIST IDX files in /usr/share/datasets/fashion-mnist):
#        bash scripts/device_check.sh --prepare
#    writes build/device_check/ (git-ignored, 20 MB): the four configs as JSON and 20k padded
#    Fashion-MNIST training images as uint8 .npy.
# 2. On the device machine, from the repo root (the device tool's `run`; the machine needs only
#    jax, flax, optax, numpy and absl-py: no TensorFlow, ml_collections or clu):
#        run(command="bash scripts/device_check.sh", carry=["build/device_check"],
#            timeout_s=540)
# 3. CPU mode, to know it works before a device is lent (small batches, few steps, BigBiGAN-128
#    compiled only; automatic when JAX finds no accelerator):
#        bash scripts/device_check.sh --cpu
#
# Other options go to `python -m bbg_jax.device_check run` (--budget_s S, --batch NAME=N,
# --train_steps N, --only NAME...). PYTHON picks the interpreter (default: .venv/bin/python
# when the repo has one, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
prepared=build/device_check

if [[ "${1:-}" == "--prepare" ]]; then
  shift
  exec "$PYTHON" -m bbg_jax.device_check prepare --out "$prepared" "$@"
fi
if [[ ! -f "$prepared/manifest.json" ]]; then
  echo "device_check: no $prepared; preparing it (needs ml_collections)" >&2
  if ! "$PYTHON" -m bbg_jax.device_check prepare --out "$prepared" >&2; then
    echo "device_check: run 'bash scripts/device_check.sh --prepare' where the project's" \
         "venv is, and carry $prepared to this machine" >&2
    exit 2
  fi
fi
exec "$PYTHON" -m bbg_jax.device_check run --prepared "$prepared" "$@"
