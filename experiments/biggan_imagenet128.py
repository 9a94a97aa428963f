"""Class-conditional BigGAN-128 (ch 96, shared class embedding, hierarchical z, attention at 64).

Command:   python -m bbg_jax.models.summary --config experiments/biggan_imagenet128.py
Hardware:  TPU v3/v4/v5p pod slice or a GPU cluster; global batch 2048.
Expected:  G 70,433,988 and D 87,982,370 parameters, the reference TF implementation's counts
           (checked by tests/test_configs.py).
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
