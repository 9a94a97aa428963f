"""BigBiGAN on Fashion-MNIST, sized for a 2-core CPU: the main job a new user runs first.

Command:   bash scripts/run_fashion_mnist.sh [WORKDIR] [--config.train.num_steps=N ...]
           (= python -m bbg_jax.main --config=experiments/fashion_mnist.py --workdir=WORKDIR
              after scripts/setup.sh)
Hardware:  a 2-core CPU: 0.98-1.25 s per step, 21.3 min end to end on a fresh clone with
           set-up, data package, evaluations and report (docs/fashion_mnist.md "Time").
           The script splits the batch over 2 simulated host devices (XLA_FLAGS), and
           train.conv_weight_grad=auto computes conv weight gradients as einsums on CPU
           (no layer here is wide enough for its Winograd path).
Expected:  at 750 steps, seeds 0-2: linear-probe test top-1 76.8 +- 0.7 % (bn_crelu_feat)
           against 71.5 +- 0.8 % for the random-weight encoder (margin +5.3 +- 1.0 points) and
           84.2 % for raw pixels; latent recovery corr(z, E(G(z))) 0.34 +- 0.03 (0.04 with
           z = 120 in chunks); reconstruction class agreement 42 +- 6 % (raw G, pixel judge;
           chance 10 %); FID-500 98 +- 5 (README "Results summary", docs/fashion_mnist.md).

The same code as the ImageNet configs — BigGAN-style G and D trunk F, residual-MLP H and J,
stochastic ResNet-v2 encoder with the BigBiGAN head, the full objective — at 32 px (28 px padded
with black), one grayscale channel, narrow widths and one unit per ResNet stage. Training reads
the training split less its first 10k examples (train_val); evaluation uses the test split.
Departures from the paper, for the CPU budget and the data's size: an 8-d latent fed whole to G
(the paper: 120 in chunks), G/D width ch=16 (BigGAN-CIFAR's 4·ch = 64
channels per block), E at 1/4 width with one unit per stage, 2-layer × 256 MLPs for H, J and E's
head, a bilinear joint term beside J (model.discriminator.joint_projection), G and D
learning rate 2e-4 (BigGAN's CIFAR setting), EMA (decay 0.995) from step 100, batch 64 with one
D step per G/E step, 750 steps (the study in docs/fashion_mnist.md: at this size the encoder
gains most from steps, not from a wider D, more D steps or a faster E).
"""

import ml_collections

from bbg_jax.configs import model_config, train_config
from bbg_jax.data.config import data_config
from bbg_jax.evaluation.config import eval_config


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    # An 8-d latent, all of it into G's first layer and every conditional BN (no hierarchical
    # chunks): at z = 120 G learns to ignore the 90 coordinates that reach it only through the
    # conditional BNs, which held E's latent recovery near 0.04; at z = 8 G uses every coordinate
    # and the joint term drives E towards G's inverse (docs/fashion_mnist.md, "Why the joint
    # term was silent").
    config.model = model_config(resolution=32, ch=16, z_dim=8)
    config.model.generator.hierarchical_z = False
    config.model.image_channels = 1
    e = config.model.encoder
    # The published ImageNet root (7x7/2 conv + 3x3/2 pool): stages see 8/4/2/1 px. The small
    # root (--config.model.encoder.root=small: 3x3/1, no pool; stages at 32/16/8/4 px) makes the
    # random-weight baseline much stronger and the step 1.2x dearer (README).
    e.width = 0.25  # stage channels 64/128/256/512; avepool_feat 512-d, bn_crelu_feat 1024-d
    e.stage_depths = (1, 1, 1, 1)
    e.mlp_depth = 2
    e.mlp_width = 256
    d = config.model.discriminator
    d.mlp_depth = 2
    d.mlp_width = 256
    # A departure (docs/departures.md): s_xz also gets a bilinear term between F's unpooled
    # 4 x 4 x 32 map and H(z). The paper's J alone learns which z goes with which x too slowly
    # for 750 steps; with the term, reconstructions keep their class 43 % of the time against
    # 15 % (docs/fashion_mnist.md, "Why the joint term was silent"). "none" is the paper's D.
    d.joint_projection = "feature_map"

    config.data = data_config("fashion_mnist", resolution=32, batch_size=64)
    config.data.channels = 1
    config.data.random_flip = True

    t = config.train = train_config()
    # Steps are what E's coupling to G needs most at this size (docs/fashion_mnist.md, "The
    # study"): 750 steps take 17-23 min here; the evaluations fill the rest of the 30 min.
    t.num_steps = 750
    t.n_d_steps = 1
    t.lr_g = 2e-4
    t.lr_d = 2e-4
    # Half-life ~140 steps: the evaluated G stays within a few hundred steps of the G that E was
    # trained against (0.999 from step 200 left it 74 % step-199 weights at step 500).
    t.ema_decay = 0.995
    t.ema_start_step = 100
    t.log_every = 50
    t.checkpoint_every = 375
    t.keep_every = 0
    t.online_probe_classes = 10

    # FID on 500 samples against the test split (the Inception runs at a few images/s on this
    # CPU, see the README), the probe on all 50k training / 10k train_val / 10k test features.
    ev = config.eval = eval_config(fid_num_samples=500)
    ev.evaluators = ("samples", "fid", "probe", "diagnostics")
    # Probe and diagnostics at the middle and the end (the report's first -> last); sheets and
    # FID (~3.5 min of Inception here) at the end only.
    ev.samples.every_steps = 750
    ev.fid.every_steps = 750
    ev.probe.every_steps = 375
    ev.diagnostics.every_steps = 375
    ev.fid.splits = ("eval",)
    ev.batch_size = 100
    ev.standing_batches = 10
    return config
