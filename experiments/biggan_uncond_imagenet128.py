"""Unconditional BigGAN-128: BigBiGAN without E (one learned label, D on x alone, hinge loss).

Command:   python -m bbg_jax.main --config=experiments/biggan_uncond_imagenet128.py \
               --workdir=DIR --config.data.data_dir=DIR_WITH_TFDS_IMAGENET
Hardware:  a TPU v5p-64 slice (32 chips) or 32+ H100s; global batch 2048.
Time:      analytic 525 GFLOP per image (forward: G 43.0, D 22.1) -> 1.08 PFLOP per step
           -> 0.18 s on 32 v5p chips at 40% of 459 TFLOP/s -> 25 h for 500k steps (XLA's
           compiled 1.00 PFLOP: 24 h; the README table has the compiled numbers).
Expected:  the "No E (GAN)" row of Table 1 (IS, FID); the BigBiGAN paper quotes FID 23.2 for
           "BigGAN + clustering" as the paper's unconditional comparison point [likely].
Paper:     Table 1 "No E (GAN)" (the same config as experiments/table1.py:no_e).
[open]:    as experiments/bigbigan_imagenet128.py (BigGAN's learning rates and 2 D steps).
"""

import ml_collections

from bbg_jax.configs import model_config, train_config
from bbg_jax.data.config import data_config
from bbg_jax.evaluation.config import imagenet_eval_config


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.model = model_config(resolution=128, ch=96, z_dim=120)
    config.model.encoder.enabled = False
    config.model.discriminator.kind = "gan"
    config.model.discriminator.num_classes = 0  # no projection: unconditional
    config.data = data_config("imagenet2012", resolution=128, batch_size=2048)
    config.train = train_config()
    config.eval = imagenet_eval_config()
    config.train.loss_terms = "x_only"
    return config
