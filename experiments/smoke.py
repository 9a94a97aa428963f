"""A tiny BigBiGAN (32 px, narrow G/D/E, 2-layer MLPs) for tests and quick checks on a CPU.

Command:   python -m bbg_jax.models.summary --config experiments/smoke.py
Hardware:  any CPU; a forward pass of all three networks takes well under a second.
Expected:  not a research configuration: it exists so tests exercise the full-size code paths.
"""

import ml_collections

from bbg_jax.configs import model_config


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.model = model_config(resolution=32, ch=8, z_dim=16)
    config.model.encoder.width = 1
    config.model.encoder.mlp_depth = 2
    config.model.encoder.mlp_width = 32
    config.model.discriminator.mlp_depth = 2
    config.model.discriminator.mlp_width = 32
    config.dataset = "fashion_mnist"
    config.batch_size = 8
    return config
