"""Class-conditional BigGAN-128 (ch 96, shared class embedding, hierarchical z, attention at 64).

Command:   python -m bbg_jax.main --config=experiments/biggan_imagenet128.py --workdir=DIR \
               --config.data.data_dir=DIR_WITH_TFDS_IMAGENET
           python -m bbg_jax.compile_check --config experiments/biggan_imagenet128.py \
               --topology v5p:2x4x4
           python -m bbg_jax.models.summary --config experiments/biggan_imagenet128.py
Hardware:  a TPU v5p-64 slice (32 chips, 64 images per chip) or 32+ H100s; global batch 2048.
Time:      analytic 525 GFLOP per image (forward: G 43.0, D 22.2) -> 1.08 PFLOP per step
           -> 0.18 s on 32 v5p chips at 40% of 459 TFLOP/s -> 25 h for 500k steps (XLA's
           compiled 1.00 PFLOP: 24 h; the README table has the compiled numbers).
Expected:  G 70,433,988 and D 87,982,370 parameters, the reference TF implementation's counts
           (checked by tests/test_configs.py). Generation: IS 166.5 / FID 7.4 is the BigGAN
           paper's 128 px headline, measured with the truncation trick, which this
           codebase does not sample with; without truncation BigGAN's Table 1 gives FID about
           8.7 and IS about 99 for this configuration (batch 2048, ch 96, shared embedding,
           hierarchical z) [to check against the BigGAN paper].
Paper:     BigGAN (Brock et al., 2018), 128 x 128 ImageNet.
Departs:   G's output is tanh in [-1, 1] (compare_gan: [0, 1]); conditional BN starts as plain BN.
"""

import ml_collections

from bbg_jax.configs import biggan_model, train_config
from bbg_jax.data.config import data_config
from bbg_jax.evaluation.config import imagenet_eval_config


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.model = biggan_model(resolution=128, ch=96, z_dim=120, num_classes=1000)
    config.data = data_config("imagenet2012", resolution=128, batch_size=2048)
    config.train = train_config()
    config.eval = imagenet_eval_config()
    config.train.loss_terms = "x_only"  # the plain hinge loss: BigGAN is BigBiGAN without E
    return config
