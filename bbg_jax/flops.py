"""Analytic FLOP counts, independent of XLA's cost analysis.

Counts 2 FLOPs per multiply-add of every convolution and matrix product in a function's jaxpr
(forward only; elementwise work is ignored, as in the papers' counts). The train step's count
combines forward counts: a backward pass costs twice its forward when weight gradients are
needed and once when only input gradients are (D inside the G/E update).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from bbg_jax.models import build_models, init_variables

if TYPE_CHECKING:  # annotations only: the step runs without ml_collections
    import ml_collections


def _eqn_flops(eqn: Any) -> float:
    name = eqn.primitive.name
    if name == "dot_general":
        (lc, _), (lb, _) = eqn.params["dimension_numbers"]
        lhs, rhs = (v.aval.shape for v in eqn.invars)
        out = eqn.outvars[0].aval.shape
        contracted = np.prod([lhs[i] for i in lc]) if lc else 1
        return 2.0 * float(np.prod(out)) * float(contracted)
    if name == "conv_general_dilated":
        lhs, rhs = (v.aval.shape for v in eqn.invars)
        out = eqn.outvars[0].aval.shape
        dn = eqn.params["dimension_numbers"]
        kernel_spatial = [rhs[i] for i in dn.rhs_spec[2:]]
        in_features = rhs[dn.rhs_spec[1]]
        groups = eqn.params["feature_group_count"]
        del groups  # in_features is already per group in the kernel's shape
        return 2.0 * float(np.prod(out)) * float(np.prod(kernel_spatial)) * float(in_features)
    return 0.0


def _jaxpr_flops(jaxpr: Any) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        total += _eqn_flops(eqn)
        for sub in jax_core.jaxprs_in_params(eqn.params):
            total += _jaxpr_flops(sub)
    return total


def forward_flops(fn: Callable, *args: Any) -> float:
    """FLOPs of the convolutions and matmuls of ``fn(*args)`` (abstract: nothing runs)."""
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def network_forward_flops(config: ml_collections.ConfigDict, batch: int = 1) -> dict[str, float]:
    """Forward FLOPs per network for ``batch`` inputs (D on ``batch`` pairs)."""
    models = build_models(config)
    variables = jax.eval_shape(lambda: init_variables(config, jax.random.key(0), batch))
    m, d = config.model, config.data
    z = jax.ShapeDtypeStruct((batch, m.z_dim), jnp.float32)
    label = jax.ShapeDtypeStruct((batch,), jnp.int32)
    x_d = jax.ShapeDtypeStruct((batch, d.resolution_d, d.resolution_d, d.channels), jnp.float32)
    out = {"G": forward_flops(lambda v, z, y: models["G"].apply(v, z, y, train=False),
                              variables["G"], z, label)}
    second = z if m.discriminator.kind == "bigbigan" else label
    out["D"] = forward_flops(lambda v, x, s: models["D"].apply(v, x, s, train=False),
                             variables["D"], x_d, second)
    if "E" in models:
        x_e = jax.ShapeDtypeStruct((batch, d.resolution_e, d.resolution_e, d.channels),
                                   jnp.float32)
        out["E"] = forward_flops(
            lambda v, x: models["E"].apply(v, x, train=False, noise=jnp.zeros((batch, m.z_dim))),
            variables["E"], x_e)
    return out


def train_step_flops(config: ml_collections.ConfigDict, batch: int | None = None) -> float:
    """Analytic FLOPs of one train step at global ``batch`` (default: the config's)."""
    b = config.data.batch_size if batch is None else batch
    f = network_forward_flops(config, 1)
    g, e, dd = f["G"], f.get("E", 0.0), f["D"]
    # D update: G and E forward; D forward + backward (weights) on 2b pairs.
    d_update = g + e + 3.0 * 2.0 * dd
    # G/E update: G and E forward + backward (weights); D forward + input-gradient backward,
    # on 2b pairs, or on the b generated ones where no loss reads a real score (x_only).
    scored = 1.0 if config.train.loss_terms == "x_only" else 2.0
    ge_update = 3.0 * g + 3.0 * e + 2.0 * scored * dd
    return b * (config.train.n_d_steps * d_update + ge_update)
