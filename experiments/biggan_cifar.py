"""BigGAN-PyTorch's CIFAR-10 recipe (scripts/launch_cifar_ema.sh) as a bbg-jax config.

Command:   python -m bbg_jax.main --config=experiments/biggan_cifar.py --workdir=DIR
           (TFDS cifar10, downloaded where the machine can reach the internet:
           --config.data.download=True; prepared once into data.data_dir)
           python -m bbg_jax.benchmark --config=experiments/biggan_cifar.py \
               --config.data.dataset=synthetic   (speed only; no data needed)
           python scripts/vs_biggan_pytorch.py --peer=PATH_TO_BigGAN-PyTorch   (side by side)
Hardware:  one GPU (BigGAN-PyTorch ran it on 2); 500 epochs of 50k images at batch 50 with 4 D
           steps per G step = 125k G steps.
Expected:  the BigGAN paper reports IS 9.22 and FID 14.73 for BigGAN on CIFAR-10 (their figures,
           not measured here; BigGAN-PyTorch's README publishes none for this script).
Recipe:    32 px, G ch 64 (256 channels per block: G's 32-px plan is 4·ch), D 256 channels per
           block (D's 32-px plan is 2·ch, hence d.ch = 128), z 128 without hierarchical z or a
           shared embedding, class-conditional BN and a projection D over 10 classes, no
           attention, hinge loss, batch 50, 4 D steps per G step, Adam(0, 0.999) at 2e-4 for
           both, EMA of G (decay 0.9999) from step 1000, no orthogonal regularisation.
Model:     BigGAN-PyTorch's, by these values: z reaches G's first linear layer only
           (z_in_blocks=False) and each conditional BN maps the class to its gain and bias
           (a 10-wide embedding table, the one-hot's equivalent); D downsamples in its first
           two blocks and every downsampling block has a 1x1 shortcut convolution.
           Parameters: G 4,304,487 against BigGAN-PyTorch's 4,304,387 (the 10 x 10 table), D
           4,207,361, equal; forward FLOPs per image within 0.4 %
           (scripts/vs_biggan_pytorch.py --parity; tests/test_documented_commands.py).
Departs:   initialisation is bbg-jax's (BigGAN-PyTorch: N(0, 0.02)); each BN's maps are
           spectrally normalised and read a learned class table, where BigGAN-PyTorch learns
           one plain embedding per BN; Adam eps 1e-6 and BN/SN eps 1e-4 (BigGAN-PyTorch's CIFAR run:
           1e-8, 1e-5, 1e-8); images are random-flipped (BigGAN-PyTorch: none for C10).
"""

import ml_collections

from bbg_jax.configs import biggan_model, train_config
from bbg_jax.data.config import data_config
from bbg_jax.evaluation.config import eval_config, set_every_steps


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    m = config.model = biggan_model(resolution=32, ch=64, z_dim=128, num_classes=10)
    m.generator.hierarchical_z = False
    # BigGAN-PyTorch without --hier or --G_shared: z reaches G's first linear layer only, and
    # each conditional BN maps the one-hot class to its gain and bias. A 10-wide embedding
    # table feeding 10 -> C maps is that (100 parameters more).
    m.generator.z_in_blocks = False
    m.generator.embed_dim = 10
    m.discriminator.ch = 128  # 2·ch per block at 32 px: 256 channels, as BigGAN-PyTorch's D
    # BigGAN-PyTorch's D_arch[32]: the first two blocks downsample (32 -> 8), and every
    # downsampling block has a 1x1 shortcut convolution.
    m.discriminator.downsample = (True, True, False, False)
    m.discriminator.conv_shortcut = "channels_or_down"
    config.data = data_config("cifar10", resolution=32, batch_size=50)
    config.data.augmentation = "centre_crop"
    config.data.train_val_size = 0
    config.data.random_flip = True

    t = config.train = train_config()
    t.loss_terms = "x_only"  # the plain hinge loss: BigGAN is BigBiGAN without E
    t.num_steps = 125_000
    t.n_d_steps = 4
    t.lr_g = 2e-4
    t.lr_d = 2e-4
    t.ema_decay = 0.9999
    t.ema_start_step = 1000
    t.checkpoint_every = 2000
    t.keep_every = 10_000

    ev = config.eval = eval_config(fid_num_samples=10_000)
    ev.evaluators = ("samples", "fid")
    ev.fid.splits = ("eval",)
    set_every_steps(ev, 10_000)
    return config
