"""A tiny BigBiGAN (32 px, narrow G/D, one-unit-per-stage ResNet E, 2-layer MLPs) for tests.

Command:   python -m bbg_jax.main --config=experiments/smoke.py --workdir=/tmp/smoke
Hardware:  any CPU; synthetic data (no TensorFlow); 6 steps, a checkpoint every 3.
Expected:  not a research configuration: it exists so tests exercise the full-size code paths.
"""

import ml_collections

from bbg_jax.configs import model_config, train_config
from bbg_jax.data.config import data_config
from bbg_jax.evaluation.config import eval_config


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.model = model_config(resolution=32, ch=8, z_dim=16)
    config.model.encoder.stage_depths = (1, 1, 1, 1)  # a 14-layer ResNet-v2
    config.model.encoder.mlp_depth = 2
    config.model.encoder.mlp_width = 32
    config.model.discriminator.mlp_depth = 2
    config.model.discriminator.mlp_width = 32
    config.data = data_config("synthetic", resolution=32, batch_size=8)
    config.train = train_config()
    config.train.num_steps = 6
    config.train.n_d_steps = 2
    config.train.ema_start_step = 2
    config.train.log_every = 1
    config.train.checkpoint_every = 3
    config.train.online_probe_classes = 1000  # synthetic labels are drawn from 1000 classes
    # Sample sheets only: FID's Inception runs at a few images/s on a CPU.
    config.eval = eval_config(fid_num_samples=32)
    config.eval.evaluators = ("samples",)
    config.eval.batch_size = 8
    config.eval.samples.sheet_size = 8
    config.eval.standing_batches = 2
    return config
