"""Flax linen models of BigBiGAN (Donahue & Simonyan, 2019): BigGAN's G and D (Brock et al.,
2018), the joint D(x, z), and ResNet/RevNet encoders E. docs/modules.md is the guide.

The public API is ``__all__``: the four networks, their layers, the state-collection names, the
convolution choices and the config-driven builders the trainer uses. Each network's docstring
lists its fields, call inputs and outputs, and the collections it reads and writes; in short::

    G(z, label=None, train=...)      -> images        params, batch_stats, spectral
    E(x, train=..., noise=None)      -> dict of feats  params, batch_stats
    BigBiGANDiscriminator(x, z, train=...) -> scores   params, spectral
    GANDiscriminator(x, label=None, train=...) -> scores  params, spectral

``train=True`` writes batch-norm running statistics and spectral-norm vectors: apply with
``mutable=["batch_stats", "spectral"]`` (those the network has), or it raises
``StateNotMutableError``.
"""

from bbg_jax.models import layers
from bbg_jax.models.build import (
    abstract_variables,
    build_models,
    count_params,
    example_inputs,
    init_variables,
)
from bbg_jax.models.conv import CONV_IMPLS, weight_grad
from bbg_jax.models.discriminator import JOINT_PROJECTIONS, BigBiGANDiscriminator, GANDiscriminator
from bbg_jax.models.encoder import Encoder
from bbg_jax.models.generator import Generator
from bbg_jax.models.layers import (
    BATCH_STATS,
    SPECTRAL,
    BatchNorm,
    ConditionalBatchNorm,
    ResidualMLP,
    SelfAttention,
    SNConv,
    SNDense,
    SpectralNormParam,
    StateNotMutableError,
    orthogonal_regularizer,
    spectral_normalize,
)

__all__ = [
    # networks
    "Generator",
    "Encoder",
    "BigBiGANDiscriminator",
    "GANDiscriminator",
    "JOINT_PROJECTIONS",
    # layers
    "layers",
    "SNDense",
    "SNConv",
    "BatchNorm",
    "ConditionalBatchNorm",
    "SelfAttention",
    "ResidualMLP",
    "SpectralNormParam",
    "spectral_normalize",
    "orthogonal_regularizer",
    # state collections and their error
    "BATCH_STATS",
    "SPECTRAL",
    "StateNotMutableError",
    # convolution implementation (a module's conv_impl, or the trainer's context)
    "CONV_IMPLS",
    "weight_grad",
    # config-driven builders (the trainer's)
    "abstract_variables",
    "build_models",
    "count_params",
    "example_inputs",
    "init_variables",
]
