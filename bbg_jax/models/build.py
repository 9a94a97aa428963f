"""Builds G, E and D from an ml_collections config, and initialises them (abstractly if asked).

The model section of every experiment config (``config.model``) has this shape::

    model.dtype            "float32" | "bfloat16"  -- compute dtype; params/statistics stay float32
    model.z_dim            latent size shared by G, E and D's H
    model.image_channels   3 (or 1 for grayscale data)
    model.bn_eps, model.sn_eps
    model.generator        resolution, ch, conditioning, num_classes, embed_dim, hierarchical_z,
                           attention_resolutions, deep, bn_momentum
    model.encoder          enabled, trunk, width, resolution, mlp_depth, mlp_width, stochastic,
                           bn_momentum, bn_eps, stage_depths (None = the published depths)
    model.discriminator    kind ("bigbigan" | "gan"), resolution, ch, deep, attention_resolutions,
                           mlp_depth, mlp_width, num_classes (projection D when kind == "gan"),
                           joint_projection ("none" | "feature_map", kind == "bigbigan")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bbg_jax.models import layers
from bbg_jax.models.discriminator import BigBiGANDiscriminator, GANDiscriminator
from bbg_jax.models.encoder import Encoder
from bbg_jax.models.generator import Generator

if TYPE_CHECKING:  # annotations only: the step runs without ml_collections
    import ml_collections

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
D_KINDS = ("bigbigan", "gan")


def compute_dtype(name: str) -> Any:
    if name not in DTYPES:
        raise ValueError(f"model.dtype={name!r} is not supported; use one of {sorted(DTYPES)}.")
    return DTYPES[name]


def _attention(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(r) for r in value)


def build_models(config: ml_collections.ConfigDict, *, update_state: bool = True
                 ) -> dict[str, nn.Module]:
    """Returns {"G": ..., "D": ...} plus "E" when the encoder is enabled.

    ``update_state`` is set on every module (see ``layers.check_state_writable``): True, a
    training pass writes its batch statistics and spectral vectors and raises when their
    collection is not mutable; False, a training pass computes with batch statistics and keeps
    the stored state (the trainer's D update runs G and E so, through ``module.clone``).
    """
    m = config.model
    dtype = compute_dtype(m.dtype)
    remat = tuple(m.get("remat", ()))
    if not set(remat) <= {"G", "D", "E"}:
        raise ValueError(f"model.remat={remat!r} names networks whose blocks are "
                         "rematerialised: a subset of ('G', 'D', 'E').")
    attention_impl = m.get("attention_impl", "dot_product")
    if attention_impl not in layers.ATTENTION_IMPLS:
        raise ValueError(f"model.attention_impl={attention_impl!r}; use one of "
                         f"{layers.ATTENTION_IMPLS}.")
    g, d, e = m.generator, m.discriminator, m.encoder
    models: dict[str, nn.Module] = {
        "G": Generator(
            resolution=g.resolution, ch=g.ch, z_dim=m.z_dim, conditioning=g.conditioning,
            num_classes=g.num_classes, embed_dim=g.embed_dim, hierarchical_z=g.hierarchical_z,
            attention_resolutions=_attention(g.attention_resolutions), deep=g.deep,
            out_channels=m.image_channels, bn_eps=m.bn_eps, bn_momentum=g.bn_momentum,
            sn_eps=m.sn_eps, dtype=dtype, attention_impl=attention_impl, remat="G" in remat,
            bn_groups=m.get("bn_groups", 1),
            # A config saved before these keys existed builds the model it trained.
            cbn_map_init=g.get("cbn_map_init", "zeros"),
            single_embed_init=g.get("single_embed_init", "normal"),
            update_state=update_state,
        )
    }
    if d.resolution != g.resolution:
        raise ValueError(
            f"model.discriminator.resolution ({d.resolution}) must equal "
            f"model.generator.resolution ({g.resolution}): D scores G's images."
        )
    common_d = dict(resolution=d.resolution, ch=d.ch, deep=d.deep,
                    attention_resolutions=_attention(d.attention_resolutions),
                    sn_eps=m.sn_eps, dtype=dtype, attention_impl=attention_impl,
                    remat="D" in remat, update_state=update_state)
    if d.kind == "bigbigan":
        if not e.enabled:
            raise ValueError(
                "model.discriminator.kind='bigbigan' scores (x, z) pairs and needs an encoder: "
                "set model.encoder.enabled=True, or use kind='gan' for a plain BigGAN."
            )
        models["D"] = BigBiGANDiscriminator(
            mlp_depth=d.mlp_depth, mlp_width=d.mlp_width,
            joint_projection=d.get("joint_projection", "none"), **common_d)
    elif d.kind == "gan":
        models["D"] = GANDiscriminator(num_classes=d.num_classes, **common_d)
    else:
        raise ValueError(f"model.discriminator.kind={d.kind!r}; use one of {D_KINDS}.")
    if e.enabled:
        models["E"] = Encoder(
            trunk=e.trunk, width=e.width, z_dim=m.z_dim, mlp_depth=e.mlp_depth,
            mlp_width=e.mlp_width, stochastic=e.stochastic, bn_momentum=e.bn_momentum,
            bn_eps=e.bn_eps, dtype=dtype, remat="E" in remat, bn_groups=m.get("bn_groups", 1),
            stage_depths=None if e.stage_depths is None else tuple(e.stage_depths),
            root=e.get("root", "imagenet"),
            reversible_backprop=e.get("reversible_backprop", False),
            update_state=update_state,
        )
    return models


def example_inputs(config: ml_collections.ConfigDict, batch: int = 2) -> dict[str, tuple]:
    """Positional inputs for each network, in float32 (used for init and shape checks)."""
    m = config.model
    z = jnp.zeros((batch, m.z_dim), jnp.float32)
    label = jnp.zeros((batch,), jnp.int32)
    x_d = jnp.zeros((batch, m.discriminator.resolution, m.discriminator.resolution,
                     m.image_channels), jnp.float32)
    inputs = {"G": (z, label)}
    if m.discriminator.kind == "bigbigan":
        inputs["D"] = (x_d, z)
    else:
        inputs["D"] = (x_d, label)
    if m.encoder.enabled:
        r = m.encoder.resolution
        inputs["E"] = (jnp.zeros((batch, r, r, m.image_channels), jnp.float32),)
    return inputs


def init_variables(config: ml_collections.ConfigDict, rng: jax.Array, batch: int = 2
                   ) -> dict[str, Any]:
    """Initialises every network: {"G": variables, "E": ..., "D": ...}."""
    models = build_models(config)
    inputs = example_inputs(config, batch)
    out = {}
    for name, module in models.items():
        rng, key, noise = jax.random.split(rng, 3)
        out[name] = module.init({"params": key, "noise": noise}, *inputs[name], train=False)
    return out


def abstract_variables(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Shapes and dtypes of every network's variables, without allocating them."""
    return jax.eval_shape(lambda: init_variables(config, jax.random.key(0), batch=1))


def count_params(variables: Any) -> int:
    """Number of trainable parameters (the ``params`` collection only)."""
    params = variables["params"] if "params" in variables else variables
    return int(sum(x.size for x in jax.tree.leaves(params)))
