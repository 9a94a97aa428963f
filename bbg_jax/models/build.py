"""Builds G, E and D from an ml_collections config, and initialises them (abstractly if asked).

The model section of every experiment config (``config.model``) has this shape::

    model.dtype            "float32" | "bfloat16"  -- compute dtype; params/statistics stay float32
    model.z_dim            latent size shared by G, E and D's H
    model.image_channels   3 (or 1 for grayscale data)
    model.bn_eps, model.sn_eps
    model.generator        resolution, ch, conditioning, num_classes, embed_dim, hierarchical_z,
                           z_in_blocks, attention_resolutions, deep, bn_momentum
    model.encoder          enabled, trunk, width, resolution, mlp_depth, mlp_width, stochastic,
                           bn_momentum, bn_eps, stage_depths (None = the published depths)
    model.discriminator    kind ("bigbigan" | "gan"), resolution, ch, deep, attention_resolutions,
                           downsample, conv_shortcut (the BigGAN trunk's plan),
                           mlp_depth, mlp_width, num_classes (projection D when kind == "gan"),
                           joint_projection ("none" | "feature_map", kind == "bigbigan")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bbg_jax.configs import (
    MISSING,
    check_bool,
    check_choice,
    check_int,
    check_int_sequence,
    check_number,
    config_error,
    get_field,
    show,
)
from bbg_jax.models import encoder, layers
from bbg_jax.models.discriminator import (
    BIGGAN_D_CHANNELS,
    JOINT_PROJECTIONS,
    BigBiGANDiscriminator,
    GANDiscriminator,
    check_trunk_plan,
)
from bbg_jax.models.encoder import Encoder
from bbg_jax.models.generator import (
    BIGGAN_DEEP_G_CHANNELS,
    BIGGAN_G_CHANNELS,
    SINGLE_EMBED_INITS,
    Generator,
    check_latent_plan,
)

if TYPE_CHECKING:  # annotations only: the step runs without ml_collections
    import ml_collections

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
D_KINDS = ("bigbigan", "gan")
CONDITIONINGS = ("single", "class", "none")  # Generator.conditioning
REMAT_NETWORKS = ("G", "D", "E")


def compute_dtype(name: str) -> Any:
    if name not in DTYPES:
        raise ValueError(f"model.dtype={name!r} is not supported; use one of {sorted(DTYPES)}.")
    return DTYPES[name]


def _attention(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(r) for r in value)


def check_model_config(m: Any) -> None:
    """The model section's rules, one ``ConfigError`` line per violation (field, value, what is
    allowed). ``bbg_jax.config_checks`` runs them before any compile; ``build_models`` runs them
    for a config built by hand."""
    g, d, e = get_field(m, "generator"), get_field(m, "discriminator"), get_field(m, "encoder")
    for name in ("generator", "discriminator", "encoder"):
        if not (hasattr(get_field(m, name), "get") and hasattr(get_field(m, name), "keys")):
            raise config_error(f"model.{name}", get_field(m, name), "a section, as "
                               "bbg_jax.configs.model_config() builds it")
    check_choice("model.dtype", get_field(m, "dtype"), tuple(DTYPES))
    check_int("model.z_dim", get_field(m, "z_dim"), 1)
    check_choice("model.image_channels", get_field(m, "image_channels"), (1, 3))
    check_number("model.bn_eps", get_field(m, "bn_eps"), 0, low_open=True)
    check_number("model.sn_eps", get_field(m, "sn_eps"), 0, low_open=True)
    check_choice("model.attention_impl", get_field(m, "attention_impl", "einsum"),
                 layers.ATTENTION_IMPLS)
    remat = get_field(m, "remat", ())
    if not (isinstance(remat, (list, tuple)) and set(remat) <= set(REMAT_NETWORKS)):
        raise config_error("model.remat", remat, f"a subset of {REMAT_NETWORKS}")
    check_int("model.bn_groups", get_field(m, "bn_groups", 1), 1)

    check_int("model.generator.ch", get_field(g, "ch"), 1)
    check_bool("model.generator.deep", get_field(g, "deep"))
    plans = BIGGAN_DEEP_G_CHANNELS if g.deep else BIGGAN_G_CHANNELS
    res = get_field(g, "resolution")
    check_choice("model.generator.resolution", res, sorted(plans))
    check_choice("model.generator.conditioning", get_field(g, "conditioning"), CONDITIONINGS)
    check_int("model.generator.num_classes", get_field(g, "num_classes"), 1)
    check_int("model.generator.embed_dim", get_field(g, "embed_dim"), 1)
    check_bool("model.generator.hierarchical_z", get_field(g, "hierarchical_z"))
    check_choice("model.generator.cbn_map_init", get_field(g, "cbn_map_init", "zeros"),
                 layers.CBN_MAP_INITS)
    check_choice("model.generator.single_embed_init", get_field(g, "single_embed_init", "normal"),
                 SINGLE_EMBED_INITS)
    check_number("model.generator.bn_momentum", get_field(g, "bn_momentum"), 0, 1, high_open=True)
    check_int_sequence("model.generator.attention_resolutions",
                        get_field(g, "attention_resolutions", None), 1)
    check_latent_plan(m.z_dim, g.hierarchical_z, get_field(g, "z_in_blocks", True),
                      g.conditioning, g.deep, res, "model.generator.", "model.z_dim")

    check_int("model.discriminator.ch", get_field(d, "ch"), 1)
    check_bool("model.discriminator.deep", get_field(d, "deep"))
    check_choice("model.discriminator.resolution", get_field(d, "resolution"),
                 sorted(BIGGAN_D_CHANNELS))
    if d.resolution != res:
        raise config_error("model.discriminator.resolution", d.resolution, show(res),
                           "= model.generator.resolution: D scores G's images")
    check_int_sequence("model.discriminator.attention_resolutions",
                        get_field(d, "attention_resolutions", None), 1)
    check_trunk_plan(d.deep, d.resolution, get_field(d, "downsample", None),
                     get_field(d, "conv_shortcut", "channels"), "model.discriminator.")
    check_int("model.discriminator.mlp_depth", get_field(d, "mlp_depth"), 1)
    check_int("model.discriminator.mlp_width", get_field(d, "mlp_width"), 1)
    check_int("model.discriminator.num_classes", get_field(d, "num_classes"), 0)
    check_choice("model.discriminator.joint_projection", get_field(d, "joint_projection", "none"),
                 JOINT_PROJECTIONS)

    check_bool("model.encoder.enabled", get_field(e, "enabled"))
    kind = get_field(d, "kind")
    check_choice("model.discriminator.kind", kind, D_KINDS)
    want = "bigbigan" if e.enabled else "gan"
    if kind != want:
        raise config_error("model.discriminator.kind", kind, repr(want),
                           f"model.encoder.enabled={e.enabled}: a 'bigbigan' D scores (x, z) "
                           "pairs and needs the encoder; 'gan' scores x alone")
    if not e.enabled:
        return
    encoder.check_fields({k: get_field(e, k, encoder.ABSENT_MEANS.get(k, MISSING))
                          for k in encoder.CHECKED_FIELDS}, "model.encoder.")
    root = get_field(e, "root", "imagenet")
    stride = encoder.TOTAL_STRIDE[root]
    check_int("model.encoder.resolution", get_field(e, "resolution"), stride)
    if e.resolution % stride:
        raise config_error("model.encoder.resolution", e.resolution,
                           f"a multiple of {stride}", f"the {root!r} root and trunk downsample "
                           f"by {stride}; model.encoder.root='small' downsamples by 8")


def build_models(config: ml_collections.ConfigDict, *, update_state: bool = True
                 ) -> dict[str, nn.Module]:
    """Returns {"G": ..., "D": ...} plus "E" when the encoder is enabled.

    ``update_state`` is set on every module (see ``layers.check_state_writable``): True, a
    training pass writes its batch statistics and spectral vectors and raises when their
    collection is not mutable; False, a training pass computes with batch statistics and keeps
    the stored state (the trainer's D update runs G and E so, through ``module.clone``).
    """
    m = config.model
    check_model_config(m)
    dtype = compute_dtype(m.dtype)
    remat = tuple(m.get("remat", ()))
    attention_impl = m.get("attention_impl", "einsum")
    g, d, e = m.generator, m.discriminator, m.encoder
    models: dict[str, nn.Module] = {
        "G": Generator(
            resolution=g.resolution, ch=g.ch, z_dim=m.z_dim, conditioning=g.conditioning,
            num_classes=g.num_classes, embed_dim=g.embed_dim, hierarchical_z=g.hierarchical_z,
            z_in_blocks=g.get("z_in_blocks", True),
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
    common_d = dict(resolution=d.resolution, ch=d.ch, deep=d.deep,
                    attention_resolutions=_attention(d.attention_resolutions),
                    sn_eps=m.sn_eps, dtype=dtype, attention_impl=attention_impl,
                    remat="D" in remat, update_state=update_state,
                    downsample=(None if d.get("downsample") is None
                                else tuple(bool(b) for b in d.downsample)),
                    conv_shortcut=d.get("conv_shortcut", "channels"))
    if d.kind == "bigbigan":
        models["D"] = BigBiGANDiscriminator(
            mlp_depth=d.mlp_depth, mlp_width=d.mlp_width,
            joint_projection=d.get("joint_projection", "none"), **common_d)
    else:
        models["D"] = GANDiscriminator(num_classes=d.num_classes, **common_d)
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
