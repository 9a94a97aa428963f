"""BigBiGAN, the paper's base model (Table 1, "Base"): BigGAN-128 G and F, ResNet-50 E at 128 px.

Command:   python -m bbg_jax.main --config=experiments/bigbigan_imagenet128.py --workdir=DIR \
               --config.data.data_dir=DIR_WITH_TFDS_IMAGENET
           python -m bbg_jax.compile_check --config experiments/bigbigan_imagenet128.py \
               --topology v5p:2x4x4
           python -m bbg_jax.models.summary --config experiments/bigbigan_imagenet128.py
Hardware:  a TPU v5p-64 slice (32 chips, 64 images per chip; 19.5 of 95 GiB per chip compiled)
           or 32+ H100s; global batch 2048 (x and z).
Time:      one step (2 D updates + 1 G/E update) is 1.10 PFLOP by XLA's cost analysis (analytic
           580 GFLOP per image, 1.19 PFLOP per step). On 32 TPU v5p chips (459 TFLOP/s bf16 each)
           at an assumed 40% utilisation that is 0.19 s per step, 26 hours for the 500k steps of
           the ablations (compiled FLOPs; the README table has every row).
Expected:  parameter counts (checked by tests/test_configs.py):
           G 70,306,116 (BigGAN-128 with one 128-d label embedding instead of a 1000-class table);
           D 152,789,284 = F 86,444,833 + H 29,622,272 + J 36,716,544 + three heads 5,635;
           E 83,220,272 = ResNet-50 v2 trunk 23,500,352 + 4 x 4096 residual MLP head 59,719,920.
Paper:     the base row of Table 1 (linear probe accuracy on train_val, FID, IS).
[open]:    H/J depth and width (8 x 2048), the E head (4 x 4096), not in the paper; BigGAN's
           learning rates (G 5e-5, D 2e-4, E = G), 2 D steps per G/E step, Adam eps 1e-6, no
           orthogonal regularisation, EMA start 20k (BigGAN's settings) -- all in config.train.
"""

import ml_collections

from bbg_jax.configs import model_config, train_config
from bbg_jax.data.config import data_config
from bbg_jax.evaluation.config import imagenet_eval_config


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.model = model_config(resolution=128, ch=96, z_dim=120)
    config.data = data_config("imagenet2012", resolution=128, batch_size=2048)
    config.train = train_config()
    config.train.online_probe_classes = 1000  # the ImageNet online probe
    config.eval = imagenet_eval_config()
    return config
