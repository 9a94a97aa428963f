"""The released BigBiGAN ResNet-50 (bigbigan-resnet50): high-resolution E, up E LR, 1M steps.

Command:   python -m bbg_jax.main --config=experiments/final_resnet50.py --workdir=DIR \
               --config.data.data_dir=DIR_WITH_TFDS_IMAGENET
           python -m bbg_jax.compile_check --config experiments/final_resnet50.py \
               --topology v5p:2x4x4
Hardware:  a TPU v5p-64 slice (32 chips, 64 images per chip) or 32+ H100s; global batch 2048.
Time:      analytic 628 GFLOP per image (forward: G 43.0, D 22.4, ResNet-50 E at 256 px 10.8)
           -> 1.29 PFLOP per step -> 0.22 s on 32 v5p chips at 40% of 459 TFLOP/s -> 61 h for
           1M steps (XLA's compiled 1.18 PFLOP: 56 h; the README table has the compiled numbers).
Expected:  linear probe on ImageNet validation: top-1/top-5 55.4/77.4 (avepool_feat) and
           56.6/78.6 (bn_crelu_feat); unconditional FID about 22.3 at 500k and 20.3 at 1M steps
           [likely] (the BigBiGAN paper's Table 2).
Paper:     Table 2 (BigBiGAN ResNet-50) and the "High Res E (256)" generation results.
[open]:    as experiments/bigbigan_imagenet128.py; E LR x10 [likely]; 1M steps [likely].
"""

import ml_collections

from bbg_jax.configs import model_config, train_config
from bbg_jax.data.config import data_config
from bbg_jax.evaluation.config import imagenet_eval_config


def final_config(trunk: str, width: int) -> ml_collections.ConfigDict:
    """High-res E (256 crop; F sees it pooled to 128), E LR x10, 1M steps."""
    config = ml_collections.ConfigDict()
    config.model = model_config(resolution=128, ch=96, z_dim=120)
    config.model.encoder.trunk = trunk
    config.model.encoder.width = width
    config.model.encoder.resolution = 256
    config.data = data_config("imagenet2012", resolution=128, encoder_resolution=256,
                              batch_size=2048)
    config.train = train_config()
    config.train.online_probe_classes = 1000  # the ImageNet online probe
    config.eval = imagenet_eval_config()
    config.train.e_lr_multiplier = 10.0
    config.train.num_steps = 1_000_000
    return config


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg
    return final_config("resnet50", 1)
