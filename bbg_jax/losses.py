"""The BigBiGAN objective (Donahue & Simonyan 2019) and its ablations, as one function of
D's scores.

D returns {"score_x", "score_z", "score_xz"} on encoder pairs (x ~ data, ẑ = E(x)) and on
generator pairs (G(z), z). With the terms T taking part, the released reference code's
normalisation is::

    scores_enc = concat_t∈T s_t(encoder pairs)
    scores_gen = concat_t∈T s_t(generator pairs)
    d_loss = mean(relu(1 - scores_enc)) + mean(relu(1 + scores_gen))  # each term hinged apart
    e_loss = mean(scores_enc)
    g_loss = -mean(scores_gen)

Ablations are choices of T (``TERMS``): all three terms (BigBiGAN); "no_z_unary" (s_xz, s_x: the
x-unary term only); "no_x_unary" (s_xz, s_z: the z-unary term only); "joint_only" (s_xz alone:
BiGAN); "x_only" (s_x alone: plain hinge BigGAN, where the "encoder pairs" are real images and
there is no e_loss).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

TERMS: dict[str, tuple[str, ...]] = {
    "all": ("score_xz", "score_x", "score_z"),
    "no_z_unary": ("score_xz", "score_x"),
    "no_x_unary": ("score_xz", "score_z"),
    "joint_only": ("score_xz",),
    "x_only": ("score_x",),
}


def score_terms(name: str) -> tuple[str, ...]:
    if name not in TERMS:
        raise ValueError(f"Unknown loss terms {name!r}; choose one of {sorted(TERMS)}.")
    return TERMS[name]


def _gather(scores: dict[str, Array], terms: tuple[str, ...], side: str) -> Array:
    missing = [t for t in terms if t not in scores]
    if missing:
        raise ValueError(
            f"The {side} scores lack {missing} needed by these loss terms; the discriminator "
            f"returned {sorted(scores)}. Use terms='x_only' with a GAN discriminator."
        )
    return jnp.concatenate([jnp.ravel(scores[t]).astype(jnp.float32) for t in terms])


def bigbigan_losses(
    scores_enc: dict[str, Array] | None, scores_gen: dict[str, Array], terms: str = "all"
) -> dict[str, Array]:
    """D, E and G losses from D's scores on encoder (real) pairs and generator pairs.

    Returns ``d_loss``, ``g_loss``, ``e_loss`` (absent for terms="x_only", which has no encoder),
    the two halves of the D hinge (``d_loss_enc``, ``d_loss_gen``), and the mean of every score
    that took part on each side (``mean_score_xz_enc``, ...) for logging.

    ``scores_enc=None`` (terms="x_only" only: the G update of a GAN, whose loss reads no real
    score) returns the generator side alone: ``g_loss`` and ``mean_<term>_gen``.
    """
    selected = score_terms(terms)
    gen = _gather(scores_gen, selected, "generator-pair")
    if scores_enc is None:
        if terms != "x_only":
            raise ValueError(f"terms={terms!r} has an e_loss, which needs the encoder pairs.")
        return {"g_loss": -jnp.mean(gen),
                **{f"mean_{t}_gen": jnp.mean(scores_gen[t].astype(jnp.float32))
                   for t in selected}}
    enc = _gather(scores_enc, selected, "encoder-pair")
    out = {
        "d_loss_enc": jnp.mean(jax.nn.relu(1.0 - enc)),
        "d_loss_gen": jnp.mean(jax.nn.relu(1.0 + gen)),
        "g_loss": -jnp.mean(gen),
    }
    out["d_loss"] = out["d_loss_enc"] + out["d_loss_gen"]
    if terms != "x_only":
        out["e_loss"] = jnp.mean(enc)
    for t in selected:
        out[f"mean_{t}_enc"] = jnp.mean(scores_enc[t].astype(jnp.float32))
        out[f"mean_{t}_gen"] = jnp.mean(scores_gen[t].astype(jnp.float32))
    return out
