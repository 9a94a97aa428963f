"""Grouped batch norm equals running each group of the batch through the network on its own."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbg_jax.configs import load_experiment
from bbg_jax.models import build_models, init_variables, layers

SMOKE = str(Path(__file__).resolve().parents[2] / "experiments" / "smoke.py")


def test_normalizer_groups_are_independent_batches():
    x = jax.random.normal(jax.random.key(0), (6, 3, 3, 4)) * 3 + 1
    bn = layers.BatchNorm(groups=3)
    variables = bn.init(jax.random.key(1), x, train=False)
    y, new = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    parts = [layers.BatchNorm().apply(variables, x[i:i + 2], train=True,
                                        mutable=["batch_stats"]) for i in (0, 2, 4)]
    np.testing.assert_allclose(y, jnp.concatenate([p[0] for p in parts]), rtol=1e-5, atol=1e-5)
    # Running statistics move by the mean of the groups' moments.
    want = np.mean([p[1]["batch_stats"]["norm"]["mean"] for p in parts], axis=0)
    np.testing.assert_allclose(new["batch_stats"]["norm"]["mean"], want, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="bn_groups"):
        layers.BatchNorm(groups=4).apply(variables, x, train=True, mutable=["batch_stats"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["G", "E"])
def test_network_with_two_groups_equals_two_half_batches(name):
    config = load_experiment(SMOKE)
    variables = init_variables(config, jax.random.key(0), batch=2)[name]
    grouped = load_experiment(SMOKE)
    grouped.model.bn_groups = 2
    if name == "G":
        inputs = (jax.random.normal(jax.random.key(1), (8, config.model.z_dim)),
                  jnp.zeros((8,), jnp.int32))
        kwargs = {}
    else:
        inputs = (jax.random.normal(jax.random.key(1), (8, 32, 32, 3)),)
        kwargs = {"noise": jnp.zeros((8, config.model.z_dim))}

    def run(cfg, sl):
        args = [a[sl] for a in inputs]
        kw = {k: v[sl] for k, v in kwargs.items()}
        out, _ = build_models(cfg)[name].apply(variables, *args, train=True,
                                               mutable=["batch_stats", "spectral"], **kw)
        return out if name == "G" else out["z_mean"]

    whole = run(grouped, slice(None))
    halves = jnp.concatenate([run(config, slice(0, 4)), run(config, slice(4, 8))])
    np.testing.assert_allclose(whole, halves, rtol=1e-4, atol=1e-5)
    assert not np.allclose(run(config, slice(None)), halves, atol=1e-3)  # global BN differs
