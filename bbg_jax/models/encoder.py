"""BigBiGAN's encoder E: an image classifier trunk followed by a head that outputs q(z | x).

E maps a real image to the generator's latent space so that the joint discriminator can compare
(x, E(x)) with (G(z), z); its trunk features are also what the paper evaluates as a representation.
The trunks (``resnet.ResNetV2``, ``revnet.RevNet``) follow "Revisiting self-supervised visual
representation learning" (Kolesnikov et al., 2019), which BigBiGAN reuses; the head is BigBiGAN's:
global average pool -> residual MLP -> linear map to the mean and pre-softplus scale of a diagonal
Gaussian.

Every batch norm is a plain (not spectrally normalised) ``layers.BatchNorm``: E is not constrained
by the discriminator's Lipschitz requirements. Convolutions compute in ``dtype``; parameters and
batch-norm statistics stay float32, and all outputs are float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bbg_jax.configs import (
    check_bool,
    check_choice,
    check_int,
    check_int_sequence,
    check_number,
    config_error,
)
from bbg_jax.models import layers
from bbg_jax.models.resnet import ResNetV2
from bbg_jax.models.revnet import RevNet

Array = jax.Array
Dtype = Any

# Units per stage. Stage output channels are (256, 512, 1024, 2048) x width for every trunk.
TRUNK_DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
    "revnet50": (3, 4, 6, 3),
}
VALID_TRUNKS = tuple(TRUNK_DEPTHS)

# Roots: "imagenet" is the published 7x7/2 conv + 3x3/2 max-pool (the whole network then
# downsamples by 2**5); "small" is the CIFAR-style 3x3/1 conv without a pool (2**3 in all), for
# 28-32 px images, where the ImageNet root would leave an 8x8 map for the first stage.
ROOTS = ("imagenet", "small")
TOTAL_STRIDE = {"imagenet": 32, "small": 8}


# The fields ``check_fields`` reads, and the values that a config written before the last three
# existed means by their absence.
CHECKED_FIELDS = ("trunk", "width", "mlp_depth", "mlp_width", "stochastic", "bn_momentum",
                  "bn_eps", "stage_depths", "root", "reversible_backprop")
ABSENT_MEANS = {"stage_depths": None, "root": "imagenet", "reversible_backprop": False}


def check_fields(values: dict[str, Any], prefix: str) -> None:
    """The encoder's field rules, for the module (``prefix`` "Encoder.") and for a config's
    ``model.encoder`` section ("model.encoder."): a ``ConfigError`` (a ValueError) naming
    ``prefix + field``, the value and what is allowed."""
    check_choice(prefix + "trunk", values["trunk"], VALID_TRUNKS)
    check_choice(prefix + "root", values["root"], ROOTS)
    width = values["width"]
    check_number(prefix + "width", width, 0, low_open=True)
    if not float(64 * width).is_integer():  # fractional widths (the paper's "Small E")
        raise config_error(prefix + "width", width,
                           "a number > 0 that makes 64 x width a whole number (0.25, 0.5, 1, 2,"
                           " 4, ...)", "the trunk's root has 64 x width channels")
    check_int(prefix + "mlp_depth", values["mlp_depth"], 1)
    check_int(prefix + "mlp_width", values["mlp_width"], 1)
    check_bool(prefix + "stochastic", values["stochastic"])
    check_number(prefix + "bn_momentum", values["bn_momentum"], 0, 1, high_open=True)
    check_number(prefix + "bn_eps", values["bn_eps"], 0, low_open=True)
    depths = values["stage_depths"]
    check_int_sequence(prefix + "stage_depths", None if depths is None else tuple(depths), 1, 4)
    reversible = values["reversible_backprop"]
    check_bool(prefix + "reversible_backprop", reversible)
    if reversible and not values["trunk"].startswith("revnet"):
        raise config_error(prefix + "reversible_backprop", reversible, "False",
                           f"{prefix}trunk={values['trunk']!r}: only a RevNet trunk "
                           "reconstructs its activations")


def trunk_feature_dim(width: float) -> int:
    """Width of ``avepool_feat`` (the trunk's last stage) for any of the trunks."""
    return int(2048 * width)


class Encoder(nn.Module):
    """BigBiGAN encoder: trunk (submodule ``trunk``) + head producing a diagonal Gaussian over z.

    Call: ``E.apply(variables, x, train=..., noise=None)`` with NHWC images x in [-1, 1] whose
    height and width are multiples of 32 (8 with ``root="small"``); returns a dict of float32
    ``avepool_feat`` (N, 2048*width: the trunk's pooled feature, the representation the paper
    evaluates), ``bn_crelu_feat`` (N, 4096*width), ``z_mean``, ``z_stdev`` and ``z_sample``
    (N, z_dim).

    Collections: ``params`` and ``batch_stats`` (every batch norm; E has no spectral norm).
    ``train=True`` normalises with the batch's statistics and writes the running averages, so
    apply it with ``mutable=["batch_stats"]`` and keep the returned state; ``train=False`` uses
    the stored averages (features of single images, a trained checkpoint). A training pass with
    ``batch_stats`` immutable raises ``layers.StateNotMutableError``, unless ``update_state=False``
    (compute with batch statistics, keep the stored ones).

    Stochastic mode samples z = mu + softplus(s) * eps with eps the ``noise`` argument or, if
    absent, drawn from the ``noise`` rng stream. Deterministic mode (``stochastic=False``, the
    deterministic-E ablation): the final linear layer outputs only z_dim values, z = z_mean, and
    ``z_stdev`` is zeros (a point mass); no rng is needed.

    Fields: trunk (``VALID_TRUNKS``), width (channel multiplier), z_dim, mlp_depth and mlp_width
    (the head's residual MLP), stochastic, bn_momentum, bn_eps, bn_groups, dtype (compute),
    remat, stage_depths, root (``ROOTS``), reversible_backprop (RevNet), param_dtype (the
    ``params`` collection's dtype), update_state (above) and conv_impl (``conv.CONV_IMPLS``;
    None defers to the ``conv.weight_grad`` context, "xla" outside it).
    """

    trunk: str = "resnet50"
    width: float = 1  # multiplier; fractional (0.5) for the "Small E" ablation
    z_dim: int = 120
    mlp_depth: int = 4
    mlp_width: int = 4096
    stochastic: bool = True
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    bn_groups: int = 1
    dtype: Dtype = jnp.float32
    remat: bool = False  # recompute each unit's activations in the backward pass
    # Units per stage, overriding the trunk's standard depths: for small CPU experiments and
    # tests (e.g. (1, 1, 1, 1)); None keeps ResNet/RevNet-50/101/152 as published.
    stage_depths: tuple[int, ...] | None = None
    root: str = "imagenet"  # see ROOTS
    # RevNet only: backward pass by reconstruction instead of stored activations.
    reversible_backprop: bool = False
    param_dtype: Dtype = jnp.float32
    update_state: bool = True  # see layers.check_state_writable
    conv_impl: str | None = None  # see bbg_jax.models.conv

    def _check_config(self) -> None:
        check_fields({k: getattr(self, k) for k in CHECKED_FIELDS}, "Encoder.")
        check_int("Encoder.z_dim", self.z_dim, 1)

    def _check_input(self, x: Array) -> None:
        if x.ndim != 4:
            raise ValueError(f"Encoder expects NHWC images, got shape {x.shape}.")
        _, h, w, _ = x.shape
        stride = TOTAL_STRIDE[self.root]
        if h % stride or w % stride:
            raise ValueError(
                f"Encoder input height and width must be multiples of {stride} with the "
                f"{self.root!r} root, got {h}x{w}."
            )

    @nn.compact
    def __call__(
        self, x: Array, train: bool = True, noise: Array | None = None
    ) -> dict[str, Array]:
        self._check_config()
        self._check_input(x)
        reversible = self.trunk.startswith("revnet")
        trunk_cls = RevNet if reversible else ResNetV2
        trunk_kw = {"reversible_backprop": self.reversible_backprop} if reversible else {}
        depths = TRUNK_DEPTHS[self.trunk] if self.stage_depths is None else self.stage_depths
        h = trunk_cls(
            tuple(depths),
            width=self.width,
            bn_momentum=self.bn_momentum,
            bn_eps=self.bn_eps,
            bn_groups=self.bn_groups,
            dtype=self.dtype,
            remat=self.remat,
            root=self.root,
            param_dtype=self.param_dtype,
            update_state=self.update_state,
            conv_impl=self.conv_impl,
            name="trunk",
            **trunk_kw,
        )(x, train)
        # Pool in float32: a bfloat16 mean over 64 (or more) positions loses precision for nothing.
        avepool_feat = jnp.mean(h.astype(jnp.float32), axis=(1, 2))

        # The linear-evaluation feature: normalised without learned parameters, then split into
        # positive and negative parts so a linear classifier sees both signs through one ReLU.
        normed = layers.BatchNorm(
            use_scale=False,
            use_bias=False,
            momentum=self.bn_momentum,
            eps=self.bn_eps,
            groups=self.bn_groups,
            dtype=jnp.float32,
            update_state=self.update_state,
            name="feat_bn",
        )(avepool_feat, train)
        bn_crelu_feat = jnp.concatenate([nn.relu(normed), nn.relu(-normed)], axis=-1)

        g = layers.ResidualMLP(
            depth=self.mlp_depth,
            width=self.mlp_width,
            spectral_norm=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="head_mlp",
        )(avepool_feat, train)
        n_out = 2 * self.z_dim if self.stochastic else self.z_dim
        out = layers.SNDense(n_out, spectral_norm=False, dtype=self.dtype,
                             param_dtype=self.param_dtype, name="head_out")(
            g, train
        ).astype(jnp.float32)

        if not self.stochastic:
            z_mean = out
            return dict(
                avepool_feat=avepool_feat,
                bn_crelu_feat=bn_crelu_feat,
                z_mean=z_mean,
                z_stdev=jnp.zeros_like(z_mean),
                z_sample=z_mean,
            )

        z_mean, s = out[:, : self.z_dim], out[:, self.z_dim :]
        z_stdev = jax.nn.softplus(s)
        if noise is None:
            noise = jax.random.normal(self.make_rng("noise"), z_mean.shape, jnp.float32)
        elif noise.shape != z_mean.shape:
            raise ValueError(
                f"Encoder noise must have shape {z_mean.shape} (batch, z_dim), got {noise.shape}."
            )
        z_sample = z_mean + z_stdev * noise.astype(jnp.float32)
        return dict(
            avepool_feat=avepool_feat,
            bn_crelu_feat=bn_crelu_feat,
            z_mean=z_mean,
            z_stdev=z_stdev,
            z_sample=z_sample,
        )
