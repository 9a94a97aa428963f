"""The released BigBiGAN RevNet-50 x4 (bigbigan-revnet50x4): high-res E, up E LR, 1M steps.

Command:   python -m bbg_jax.main --config=experiments/final_revnet50x4.py --workdir=DIR \
               --config.data.data_dir=DIR_WITH_TFDS_IMAGENET
           python -m bbg_jax.compile_check --config experiments/final_revnet50x4.py \
               --topology v5p:4x4x4
Hardware:  a TPU v5p-128 slice (64 chips, 32 images per chip) or 64 H100s; global batch 2048.
Time:      analytic 782 GFLOP per image (RevNet-50 x4 E at 256 px 41.6 forward) -> 1.60 PFLOP
           per step -> 0.14 s on 64 v5p chips at 40% of 459 TFLOP/s -> 38 h for 1M steps
           (XLA's compiled 1.42 PFLOP: 33 h; the README table has the compiled numbers).
Expected:  linear probe on ImageNet validation: top-1/top-5 60.8/81.4 (avepool_feat) and
           61.3/81.9 (bn_crelu_feat) (the BigBiGAN paper's Table 2).
Paper:     Table 2 (BigBiGAN RevNet-50 x4), the paper's headline result.
[open]:    as experiments/final_resnet50.py. The RevNet is trained with ordinary backprop
           (activations stored), not with reversible recomputation: same maths, more memory.
"""

import importlib.util
from pathlib import Path

import ml_collections

# Experiment files are loaded by path, not as a package, so the shared builder is loaded the
# same way.
_spec = importlib.util.spec_from_file_location(
    "final_resnet50", Path(__file__).with_name("final_resnet50.py"))
_final = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_final)


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg
    return _final.final_config("revnet50", 4)
