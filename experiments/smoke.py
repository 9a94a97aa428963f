"""A tiny BigBiGAN (32 px, narrow G/D, one-unit-per-stage ResNet E, 2-layer MLPs) for tests.

Command:   python -m bbg_jax.models.summary --config experiments/smoke.py
Hardware:  any CPU; a forward pass of all three networks takes well under a second.
Expected:  not a research configuration: it exists so tests exercise the full-size code paths.
"""

import ml_collections

from bbg_jax.configs import model_config, train_config


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.model = model_config(resolution=32, ch=8, z_dim=16)
    config.model.encoder.stage_depths = (1, 1, 1, 1)  # a 14-layer ResNet-v2
    config.model.encoder.mlp_depth = 2
    config.model.encoder.mlp_width = 32
    config.model.discriminator.mlp_depth = 2
    config.model.discriminator.mlp_width = 32
    config.train = train_config()
    config.train.batch_size = 8
    config.train.num_steps = 6
    config.train.n_d_steps = 2
    config.train.ema_start_step = 2
    config.train.log_every = 1
    config.train.checkpoint_every = 3
    config.dataset = "fashion_mnist"
    return config
