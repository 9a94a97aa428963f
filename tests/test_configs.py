"""Experiment configs build, count their parameters via the CLI, and reject bad values clearly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbg_jax.configs import load_experiment
from bbg_jax.models import build_models, count_params, example_inputs, init_variables
from bbg_jax.models.summary import summarize

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    return load_experiment(str(ROOT / "experiments" / f"{name}.py"))


def run_summary(name):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-m", "bbg_jax.models.summary",
         "--config", str(ROOT / "experiments" / f"{name}.py")],
        capture_output=True, text=True, check=True, cwd=ROOT, env=env, timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_summary_cli_reports_biggan_reference_counts():
    assert run_summary("biggan_imagenet128") == {"G": 70_433_988, "D": 87_982_370}


def test_bigbigan_base_counts():
    counts = summarize(load("bigbigan_imagenet128"))
    # G: BigGAN-128 with one 128-d label embedding in place of the 1000 x 128 class table.
    assert counts["G"] == 70_433_988 - 1000 * 128 + 128
    # E: ResNet-50 v2 trunk + 4 x 4096 residual MLP head + linear to (mu, s) in R^240
    # (+ nothing for the parameter-free BN of bn_crelu_feat).
    head = 2048 * 4096 + 4096 + 3 * (4096 * 4096 + 4096) + 4096 * 240 + 240
    assert counts["E"] == 23_500_352 + head
    # D: F = BigGAN-128 D trunk (compare_gan's D less its class embedding and output layer);
    # H: 120 -> 2048 then 7 x (2048 -> 2048); J: (1536 + 2048) -> 2048 then 7 x (2048 -> 2048);
    # three linear heads.
    f = 87_982_370 - 1000 * 1536 - (1536 + 1)
    square = 7 * (2048 * 2048 + 2048)
    h = 120 * 2048 + 2048 + square
    j = (1536 + 2048) * 2048 + 2048 + square
    heads = (1536 + 1) + 2 * (2048 + 1)
    assert counts["D"] == f + h + j + heads


@pytest.mark.slow  # ~30 s: initialises and runs a full ResNet-50 trunk eagerly
def test_smoke_config_runs_all_networks():
    config = load("smoke")
    models = build_models(config)
    inputs = example_inputs(config, batch=4)
    variables = init_variables(config, jax.random.key(0), batch=4)
    assert set(models) == {"G", "E", "D"}
    x = models["G"].apply(variables["G"], *inputs["G"], train=False)
    assert x.shape == (4, 32, 32, 3)
    out = models["E"].apply(variables["E"], x, train=False, rngs={"noise": jax.random.key(1)})
    scores = models["D"].apply(variables["D"], x, out["z_sample"], train=False)
    assert all(np.isfinite(np.asarray(s)).all() and s.shape == (4,) for s in scores.values())


def test_biggan_config_has_no_encoder():
    config = load("biggan_imagenet128")
    assert set(build_models(config)) == {"G", "D"}


@pytest.mark.parametrize("field,value,message", [
    ("model.dtype", "float16", "model.dtype"),
    ("model.discriminator.kind", "wgan", "model.discriminator.kind"),
    ("model.discriminator.resolution", 64, "model.discriminator.resolution=64: allowed 32"),
    ("model.encoder.enabled", False, "needs the encoder"),
])
def test_bad_config_values_are_named(field, value, message):
    config = load("smoke")
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=message):
        build_models(config)


def test_bfloat16_config_keeps_float32_variables():
    config = load("smoke")
    config.model.dtype = "bfloat16"
    variables = jax.eval_shape(lambda: init_variables(config, jax.random.key(0)))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
    assert count_params(variables["G"]) > 0


@pytest.mark.slow  # full-size BigBiGAN-128: ~300M parameters, minutes of CPU compile time
def test_full_size_bigbigan_forward_backward_is_finite():
    config = load("bigbigan_imagenet128")
    models = build_models(config)
    variables = jax.jit(lambda k: init_variables(config, k, batch=2))(jax.random.key(0))
    z = jax.random.normal(jax.random.key(1), (2, config.model.z_dim))
    x_real = jax.random.uniform(jax.random.key(2), (2, 128, 128, 3), minval=-1, maxval=1)

    def total_score(params):
        v = {k: {**variables[k], "params": params[k]} for k in variables}
        x_fake, _ = models["G"].apply(v["G"], z, train=True, mutable=["batch_stats", "spectral"])
        enc, _ = models["E"].apply(v["E"], x_real, train=True, mutable=["batch_stats"],
                                   rngs={"noise": jax.random.key(3)})
        d = models["D"]
        s_gen = d.apply(v["D"], x_fake, z, train=False)
        s_enc = d.apply(v["D"], x_real, enc["z_sample"], train=False)
        return sum(jnp.sum(s_enc[k] - s_gen[k]) for k in s_enc)

    params = {k: v["params"] for k, v in variables.items()}
    value, grads = jax.jit(jax.value_and_grad(total_score))(params)
    assert np.isfinite(float(value))
    for name in ("G", "E", "D"):
        leaves = jax.tree.leaves(grads[name])
        assert all(np.isfinite(np.asarray(g)).all() for g in leaves), name
        assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves), name


def test_a_resume_may_change_how_the_step_computes_but_not_the_model():
    """Attention's implementation and remat keep the parameters and the maths: a saved run's
    config differs from today's only where the model does."""
    import json

    from bbg_jax.checkpoint import config_differences

    config = load("smoke")
    saved = json.loads(config.to_json())
    config.model.attention_impl = "einsum" if config.model.attention_impl != "einsum" else (
        "dot_product")
    config.model.remat = ("G", "E")
    assert config_differences(saved, config, "model") == []
    config.model.generator.ch = 2 * config.model.generator.ch
    assert config_differences(saved, config, "model") == ["model.generator.ch"]
