"""BigBiGAN Table 1: the base model and one variant per ablation row (`table1.py:<variant>`).

Command:   python -m bbg_jax.main --config=experiments/table1.py:<variant> --workdir=DIR \
               --config.data.data_dir=DIR_WITH_TFDS_IMAGENET
           python -m bbg_jax.compile_check --config experiments/table1.py:<variant> \
               --topology v5p:2x4x4
           Variants (VARIANTS below): base, deterministic_e, uniform_prior, x_unary_only,
           z_unary_only, no_unary, small_e, small_g, no_e, high_res_e, low_res_g, high_res_g,
           resnet101, resnet_x2, revnet, revnet_x2, revnet_x4, resnet_e_lr, revnet_x4_e_lr.
Hardware:  a TPU v5p-64 slice (32 chips, 64 images per chip) or 32+ H100s; global batch 2048.
           high_res_g needs twice the chips (v5p-128, --topology v5p:4x4x4): at 64 images
           per chip its 256 px G/D need 136 GiB of temporaries (XLA refused v5p:2x4x4); at 32
           per chip it compiles to 78 GiB of the 95 GiB HBM.
Time:      500k G/E steps each. Analytic FLOPs (convolutions and matmuls of the traced forward
           passes, backward = 2 x forward; `bbg_jax.flops.train_step_flops`) and the
           time on 32 v5p chips (high_res_g: 64) at 40% of 459 TFLOP/s (the README table has
           XLA's compiled numbers, 3-12% below these):
             variant                     GFLOP/image  PFLOP/step  s/step  hours
             base, deterministic_e,             587     1.203   0.205   28
               uniform_prior, *_unary*, resnet_e_lr
             small_e                            578     1.183   0.201   28
             small_g                            398     0.816   0.139   19
             no_e                               569     1.166   0.198   28
             high_res_e                         628     1.285   0.219   30
             low_res_g                          457     0.936   0.159   22
             high_res_g (64 chips)             2072     4.244   0.361   50
             resnet101                          600     1.228   0.209   29
             resnet_x2                          627     1.284   0.219   30
             revnet / revnet_x2                 579/589 1.185/1.206  0.20  28
             revnet_x4, revnet_x4_e_lr          626     1.282   0.218   30
Expected:  each row's numbers of the paper's Table 1: linear-probe top-1 on train_val
           (avepool and bn_crelu features), IS and FID of the EMA generator. The base model is
           "ResNet-50 E at 128, BigGAN G/D at 128, ch 96, unary terms, stochastic E".
Paper:     Donahue & Simonyan 2019, Table 1; VARIANTS maps each variant to its row's name.
[open]:    everything [open] in experiments/bigbigan_imagenet128.py, plus per variant:
           small_e halves E's channel width (ResNet-50 at 32 base channels instead of 64; the row
           is "Small E (32)"), and small_g sets only G's ch to 32 (D keeps 96) -- which widths
           the paper shrank is not stated beyond the row names; high_res_g uses z_dim 140 (the
           hierarchical z of BigGAN-256, 7 chunks of 20), and H and E's head follow that z;
           no_e is the unconditional BigGAN (single learned label, hinge loss on x only).
"""

from pathlib import Path

import ml_collections

from bbg_jax.configs import load_experiment


def _base() -> ml_collections.ConfigDict:
    # The base row is exactly experiments/bigbigan_imagenet128.py; every variant starts from it.
    return load_experiment(str(Path(__file__).with_name("bigbigan_imagenet128.py")))


def _resolutions(config, g_res: int, e_res: int, z_dim: int = 120) -> None:
    """G/D at ``g_res``, E at ``e_res``; the data pipeline pools 2x2 when e_res == 2 g_res."""
    config.model.z_dim = z_dim
    config.model.generator.resolution = config.model.discriminator.resolution = g_res
    config.model.encoder.resolution = e_res
    config.data.resolution_d, config.data.resolution_e = g_res, e_res


def _encoder(config, trunk: str, width: int = 1) -> None:
    config.model.encoder.trunk = trunk
    config.model.encoder.width = width


def _half_width_encoder(config) -> None:
    """ResNet-50 at 32 base channels. The width field is typed int, so it is replaced; the
    encoder must accept fractional widths for this to build (patch listed in the README)."""
    del config.model.encoder["width"]
    config.model.encoder.width = 0.5


def _no_encoder(config) -> None:
    """The "No E (GAN)" row: unconditional BigGAN, D on x alone, hinge loss on s_x."""
    config.model.encoder.enabled = False
    config.model.discriminator.kind = "gan"
    config.model.discriminator.num_classes = 0
    config.train.loss_terms = "x_only"


# name -> (the paper's row, how it differs from base). Kept as data so tests and the README
# table iterate over exactly the variants that exist.
VARIANTS = {
    "base": ("Base", lambda c: None),
    "deterministic_e": ("Deterministic E", lambda c: setattr(c.model.encoder, "stochastic",
                                                             False)),
    "uniform_prior": ("Uniform P_z", lambda c: setattr(c.train, "prior", "uniform")),
    "x_unary_only": ("x Unary Only", lambda c: setattr(c.train, "loss_terms", "no_z_unary")),
    "z_unary_only": ("z Unary Only", lambda c: setattr(c.train, "loss_terms", "no_x_unary")),
    "no_unary": ("No Unaries (BiGAN)", lambda c: setattr(c.train, "loss_terms", "joint_only")),
    "small_e": ("Small E (32)", _half_width_encoder),
    "small_g": ("Small G (32)", lambda c: setattr(c.model.generator, "ch", 32)),
    "no_e": ("No E (GAN)", _no_encoder),
    "high_res_e": ("High Res E (256)", lambda c: _resolutions(c, 128, 256)),
    "low_res_g": ("Low Res G (64)", lambda c: _resolutions(c, 64, 128)),
    "high_res_g": ("High Res G (256)", lambda c: _resolutions(c, 256, 128, z_dim=140)),
    "resnet101": ("ResNet-101", lambda c: _encoder(c, "resnet101")),
    "resnet_x2": ("ResNet x2", lambda c: _encoder(c, "resnet50", 2)),
    "revnet": ("RevNet", lambda c: _encoder(c, "revnet50")),
    "revnet_x2": ("RevNet x2", lambda c: _encoder(c, "revnet50", 2)),
    "revnet_x4": ("RevNet x4", lambda c: _encoder(c, "revnet50", 4)),
    "resnet_e_lr": ("ResNet (up E LR)", lambda c: setattr(c.train, "e_lr_multiplier", 10.0)),
    "revnet_x4_e_lr": ("RevNet x4 (up E LR)",
                       lambda c: (_encoder(c, "revnet50", 4),
                                  setattr(c.train, "e_lr_multiplier", 10.0))),
}

def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "base"
    if variant not in VARIANTS:
        raise ValueError(f"Unknown Table 1 variant {variant!r}; choose one of "
                         f"{', '.join(VARIANTS)}.")
    config = _base()
    VARIANTS[variant][1](config)
    return config
