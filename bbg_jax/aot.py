"""Ahead-of-time lowering of the real train step with abstract inputs (nothing allocated).

Catches shape, sharding and (with a real topology's devices) memory problems before a run is
launched. The launch tooling for pod topologies builds on ``compile_train_step``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from bbg_jax import sharding
from bbg_jax.train import jit_train_step
from bbg_jax.train_state import TrainState, create_train_state


def abstract_inputs(config: ml_collections.ConfigDict, mesh: Mesh
                    ) -> tuple[TrainState, dict[str, jax.ShapeDtypeStruct]]:
    """ShapeDtypeStructs of the train state (replicated) and of one step's global batch."""
    rep = sharding.replicated(mesh)
    state = jax.eval_shape(lambda: create_train_state(config, jax.random.key(0)))
    state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
    d, n_d = config.data, config.train.n_d_steps
    batch_sh = sharding.batch_sharding(mesh, batch_axis=1)

    def images(res):
        return jax.ShapeDtypeStruct((n_d, d.batch_size, res, res, d.channels), jnp.float32,
                                    sharding=batch_sh)

    batch = {"image_d": images(d.resolution_d), "label": jax.ShapeDtypeStruct(
        (n_d, d.batch_size), jnp.int32, sharding=batch_sh)}
    if config.model.encoder.enabled:
        batch["image_e"] = images(d.resolution_e)
    return state, batch


def compile_train_step(config: ml_collections.ConfigDict, mesh: Mesh) -> Any:
    """Lowers and compiles the jitted train step for ``mesh``; returns the compiled executable."""
    sharding.check_batch_divisible(config.data.batch_size, mesh)
    state, batch = abstract_inputs(config, mesh)
    return jit_train_step(config, mesh).lower(state, batch).compile()
