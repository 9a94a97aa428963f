"""Rematerialised blocks give the same outputs, statistics and gradients as stored ones."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbg_jax.configs import load_experiment
from bbg_jax.models import build_models, init_variables
from bbg_jax.models.build import example_inputs

SMOKE = str(Path(__file__).resolve().parents[2] / "experiments" / "smoke.py")


def _grads(config, name):
    model = build_models(config)[name]
    variables = init_variables(config, jax.random.key(0), batch=4)[name]
    inputs = [jax.random.normal(jax.random.key(i + 1), x.shape) if x.dtype == jnp.float32
              else x for i, x in enumerate(example_inputs(config, 4)[name])]
    kwargs = {"noise": jnp.ones((4, config.model.z_dim))} if name == "E" else {}

    def loss(params):
        out, new_state = model.apply({**variables, "params": params}, *inputs, train=True,
                                     mutable=["batch_stats", "spectral"], **kwargs)
        leaves = jax.tree.leaves(out)
        return sum(jnp.sum(jnp.sin(x)) for x in leaves), new_state

    return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["G", "D", "E"])
def test_remat_matches_stored_activations(name):
    plain, remat = load_experiment(SMOKE), load_experiment(SMOKE)
    remat.model.remat = (name,)
    (g0, s0), (g1, s1) = _grads(plain, name), _grads(remat, name)
    for a, b in zip(jax.tree.leaves((g0, s0)), jax.tree.leaves((g1, s1)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_remat_names_are_refused():
    config = load_experiment(SMOKE)
    config.model.remat = ("G", "H")
    with pytest.raises(ValueError, match="model.remat"):
        build_models(config)
