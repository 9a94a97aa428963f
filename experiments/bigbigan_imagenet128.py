"""BigBiGAN, the paper's base model (Table 1, "Base"): BigGAN-128 G and F, ResNet-50 E at 128 px.

Command:   python -m bbg_jax.models.summary --config experiments/bigbigan_imagenet128.py
           (training arrives with the training issue: python -m bbg_jax.main --config=<this file>)
Hardware:  TPU v3/v4/v5p pod slice or a GPU cluster; global batch 2048.
Expected:  parameter counts (checked by tests/test_configs.py):
           G 70,306,116 (BigGAN-128 with one 128-d label embedding instead of a 1000-class table);
           D 152,789,284 = F 86,444,833 + H 29,622,272 + J 36,716,544 + three heads 5,635;
           E 83,220,272 = ResNet-50 v2 trunk 23,500,352 + 4 x 4096 residual MLP head 59,719,920.
Paper:     ImageNet linear probe of the base model reported on train_val in Table 1.
Departs:   H/J depth and width (8 x 2048) and the E head (4 x 4096) are [open] in SPEC §2, §5.
"""

import ml_collections

from bbg_jax.configs import model_config, train_config
from bbg_jax.data.config import data_config


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.model = model_config(resolution=128, ch=96, z_dim=120)
    config.data = data_config("imagenet2012", resolution=128, batch_size=2048)
    config.train = train_config()
    return config
