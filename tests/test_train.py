"""The training step: gradient routing, device-count invariance, ablations through the same
step. Everything runs the tiny smoke config on synthetic data (the loop itself: test_loop.py)."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from xla_flags import cpu_devices

from bbg_jax import loop, sharding
from bbg_jax.configs import load_experiment
from bbg_jax.train import make_step_functions
from bbg_jax.train_state import create_train_state

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "smoke.py")


def smoke():
    return load_experiment(SMOKE)


def tree_equal(a, b):
    return all(np.array_equal(x, y) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def tree_changed_everywhere(a, b):
    return all(not np.array_equal(x, y) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.fixture(scope="module")
def step_setup():
    config = smoke()
    fns = make_step_functions(config)
    state = jax.jit(lambda k: create_train_state(config, k))(jax.random.key(0))
    batch = next(loop.step_batches(config, sharding.make_mesh(), 0))
    real = {k: v[0] for k, v in batch.items()}
    noise = fns.draw(jax.random.key(1), real["image_d"].shape[0])
    return config, fns, state, real, noise


def test_state_holds_the_base_key_as_raw_data(step_setup):
    """The state keeps its base key as uint32[2] key data (plain arrays in a checkpoint), the
    bits a state made from the legacy ``PRNGKey(0)`` held: checkpoints and runs are unchanged."""
    _, _, state, _, _ = step_setup
    assert state.rng.dtype == jnp.uint32 and state.rng.shape == (2,)
    np.testing.assert_array_equal(state.rng, [928981903, 3453687069])  # split(PRNGKey(0))[1]
    assert jax.dtypes.issubdtype(state.base_key().dtype, jax.dtypes.prng_key)


def test_d_update_changes_only_d(step_setup):
    _, fns, state, real, noise = step_setup
    # Orthogonally initialised weights have all singular values 1, so any u is already a top
    # singular vector; start from random vectors so that the power iteration visibly moves them.
    spectral = state.model_state["D"]["spectral"]
    keys = iter(jax.random.split(jax.random.key(5), len(jax.tree.leaves(spectral))))
    spectral = jax.tree.map_with_path(
        lambda path, x: (jax.random.normal(next(keys), x.shape) if path[-1].key == "u" else x),
        spectral)
    state = state.replace(model_state={**state.model_state,
                                       "D": {**state.model_state["D"], "spectral": spectral}})
    new, metrics = jax.jit(fns.d_update)(state, real, noise)
    assert tree_equal(new.params["G"], state.params["G"])
    assert tree_equal(new.params["E"], state.params["E"])
    assert tree_equal(new.model_state["G"], state.model_state["G"])
    assert tree_equal(new.model_state["E"], state.model_state["E"])
    assert tree_equal(new.opt_state["G"], state.opt_state["G"])
    assert not tree_equal(new.params["D"], state.params["D"])
    # Every spectral-norm vector u of D moved by its power iteration.
    def us(tree):
        return [x for p, x in jax.tree.flatten_with_path(tree)[0] if p[-1].key == "u"]

    assert tree_changed_everywhere(us(new.model_state["D"]["spectral"]), us(spectral))
    assert np.isfinite(float(metrics["d_loss"]))


def test_ge_update_changes_no_d_parameter(step_setup):
    _, fns, state, real, noise = step_setup
    new, metrics = jax.jit(fns.ge_update)(state, real, noise)
    assert tree_equal(new.params["D"], state.params["D"])
    assert tree_equal(new.model_state["D"], state.model_state["D"])
    assert tree_equal(new.opt_state["D"], state.opt_state["D"])
    assert not tree_equal(new.params["G"], state.params["G"])
    assert not tree_equal(new.params["E"], state.params["E"])
    for name in ("G", "E"):
        assert not tree_equal(new.model_state[name]["batch_stats"],
                              state.model_state[name]["batch_stats"])
    assert {"g_loss", "e_loss", "grad_norm_G", "grad_norm_E"} <= set(metrics)


def test_unary_terms_route_gradients_to_one_player_only():
    """E gets nothing from the x-unary term (s_x reads x only); G nothing from the z-unary term
    (s_z reads z only) -- checked through the real networks, not just the loss function."""
    config = smoke()
    from bbg_jax.models import build_models, init_variables

    models = build_models(config)
    v = jax.jit(lambda k: init_variables(config, k, batch=4))(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3), minval=-1, maxval=1)
    z = jax.random.normal(jax.random.key(2), (4, config.model.z_dim))
    noise = jax.random.normal(jax.random.key(3), (4, config.model.z_dim))

    def scores_enc(e_params):
        z_hat = models["E"].apply({**v["E"], "params": e_params}, x, train=False,
                                  noise=noise)["z_sample"]
        return models["D"].apply(v["D"], x, z_hat, train=False)

    def scores_gen(g_params):
        x_fake = models["G"].apply({**v["G"], "params": g_params}, z, train=False)
        return models["D"].apply(v["D"], x_fake, z, train=False)

    def grad_norm(fn, params, term):
        g = jax.jit(jax.grad(lambda p: jnp.mean(fn(p)[term])))(params)
        return float(sum(jnp.sum(jnp.abs(t)) for t in jax.tree.leaves(g)))

    assert grad_norm(scores_enc, v["E"]["params"], "score_x") == 0.0
    assert grad_norm(scores_enc, v["E"]["params"], "score_z") > 0.0
    assert grad_norm(scores_gen, v["G"]["params"], "score_z") == 0.0
    assert grad_norm(scores_gen, v["G"]["params"], "score_x") > 0.0


# --- multi-device parity --------------------------------------------------------------------

PARITY_SCRIPT = """
import sys, jax, numpy as np
from bbg_jax import loop, sharding
from bbg_jax.configs import load_experiment
from bbg_jax.train import jit_train_step
from bbg_jax.train_state import create_train_state
config = load_experiment(sys.argv[1])
mesh = sharding.make_mesh()
state = jax.jit(lambda k: create_train_state(config, k),
                out_shardings=sharding.replicated(mesh))(jax.random.key(0))
step = jit_train_step(config, mesh)
batches = loop.step_batches(config, mesh, 0)
losses = []
for _ in range(3):
    state, metrics = step(state, next(batches))
    losses.append([float(metrics[k]) for k in ("d_loss", "g_loss", "e_loss")])
leaves = jax.tree.leaves(jax.device_get(state.params))
np.savez(sys.argv[2], losses=np.array(losses), devices=len(jax.devices()),
         **{f"p{i}": x for i, x in enumerate(leaves)})
if len(sys.argv) > 3:  # also save the state, as the loop does, for a restore elsewhere
    from bbg_jax import checkpoint
    manager = checkpoint.make_manager(sys.argv[3], config)
    checkpoint.save(manager, state, config, {"data_batch": 3 * config.train.n_d_steps})
    manager.close()
"""


def _run_parity(tmp_path, devices, *workdir):
    out = tmp_path / f"parity_{devices}.npz"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": cpu_devices(devices)}
    subprocess.run([sys.executable, "-c", PARITY_SCRIPT, SMOKE, str(out), *map(str, workdir)],
                   check=True, env=env, cwd=ROOT, timeout=900)
    return np.load(out)


def test_one_device_matches_eight_and_restores_its_checkpoint(tmp_path):
    one, eight = _run_parity(tmp_path, 1), _run_parity(tmp_path, 8, tmp_path / "eight")
    assert int(one["devices"]) == 1 and int(eight["devices"]) == 8
    # Reduction order differs (8 partial sums): losses agree to ~2e-4 relative after 3 steps.
    np.testing.assert_allclose(one["losses"], eight["losses"], rtol=1e-3, atol=1e-4)
    n = len([k for k in one.files if k.startswith("p")])
    flat = [np.concatenate([f[f"p{i}"].ravel() for i in range(n)]) for f in (one, eight)]
    # Measured: relative L2 difference 1.6e-5 over all parameters. Single entries can differ by
    # up to ~2e-4: parameters whose true gradient is zero (conv biases before a batch norm) move
    # by Adam(beta1=0) steps of size ~lr driven by rounding noise, whatever the device count.
    assert np.linalg.norm(flat[0] - flat[1]) / np.linalg.norm(flat[0]) < 1e-4
    np.testing.assert_allclose(flat[0], flat[1], rtol=0, atol=1e-3)

    # The 8-device run's checkpoint restores in this 1-device process (evaluation elsewhere).
    from bbg_jax.evaluation import standalone

    assert jax.device_count() == 1
    state = standalone.restore(smoke(), str(tmp_path / "eight"))
    assert int(state.step) == 3
    assert all(x.sharding.device_set == {jax.devices()[0]}
               for x in jax.tree.leaves(state.params))
    restored = jax.tree.leaves(jax.device_get(state.params))
    assert all(np.array_equal(x, eight[f"p{i}"]) for i, x in enumerate(restored))


AOT_SCRIPT = """
import sys, jax
from bbg_jax import sharding
from bbg_jax.aot import compile_train_step
from bbg_jax.configs import load_experiment
config = load_experiment(sys.argv[1])
mesh = sharding.make_mesh()
compiled = compile_train_step(config, mesh)
cost = compiled.cost_analysis()
cost = cost[0] if isinstance(cost, list) else cost
print("devices", len(jax.devices()), "flops_per_device", cost["flops"])
"""


@pytest.mark.slow  # ~2 minutes of XLA compile on 2 CPU cores
def test_paper_base_train_step_compiles_on_eight_devices():
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": cpu_devices(8)}
    out = subprocess.run(
        [sys.executable, "-c", AOT_SCRIPT, str(ROOT / "experiments" / "bigbigan_imagenet128.py")],
        check=True, env=env, cwd=ROOT, timeout=1800, capture_output=True, text=True).stdout
    devices, flops = out.split()[1], float(out.split()[3])
    assert devices == "8"
    # Analytic: ~572 GFLOP per image (2 D updates + 1 G/E update, ResNet-50 E at 128 px)
    # x 2048 images / 8 devices = 146 TFLOP per device; XLA counts 137.6.
    assert 0.8 * 146e12 < flops < 1.2 * 146e12


def _ablation(name):
    config = smoke()
    m, t = config.model, config.train
    if name == "deterministic_e":
        m.encoder.stochastic = False
    elif name == "uniform_prior":
        t.prior = "uniform"
    elif name == "bigan":
        t.loss_terms = "joint_only"
    elif name in ("biggan_conditional", "gan_unconditional"):
        m.encoder.enabled = False
        m.discriminator.kind = "gan"
        t.loss_terms = "x_only"
        if name == "biggan_conditional":
            m.generator.conditioning = "class"
            m.generator.num_classes = m.discriminator.num_classes = 10
    return config


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deterministic_e", "uniform_prior", "bigan",
                                  "biggan_conditional", "gan_unconditional"])
def test_ablations_train_through_the_same_step(name):
    config = _ablation(name)
    mesh = sharding.make_mesh()
    loop.check_config(config)
    state = jax.jit(lambda k: create_train_state(config, k))(jax.random.key(0))
    from bbg_jax.train import jit_train_step

    batch = next(loop.step_batches(config, mesh, 0))
    new, metrics = jit_train_step(config, mesh)(state, batch)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert ("e_loss" in metrics) == config.model.encoder.enabled
    assert int(new.step) == 1
    if name == "biggan_conditional":
        assert int(batch["label"].max()) < 10


def test_interleaved_d_batch_splits_back_into_its_halves():
    from bbg_jax.train import _interleave, _split_scores

    real, fake = jnp.arange(4.0), jnp.arange(4.0) + 10
    mixed = _interleave(real, fake)
    np.testing.assert_array_equal(mixed, [0, 10, 1, 11, 2, 12, 3, 13])
    enc, gen = _split_scores({"score_x": mixed})
    np.testing.assert_array_equal(enc["score_x"], real)
    np.testing.assert_array_equal(gen["score_x"], fake)


def test_online_probe_learns_without_touching_the_encoder(step_setup):
    _, fns, state, real, noise = step_setup
    assert state.probe, "the smoke config enables the online probe"
    ge = jax.jit(fns.ge_update)
    new, metrics = ge(state, real, noise)
    assert {"online_probe_loss", "online_probe_top1_train"} <= set(metrics)
    assert not tree_equal(new.probe["params"], state.probe["params"])
    # A different probe gives exactly the same G and E update: it reads stop-gradient features.
    other = state.replace(probe={**state.probe, "params": jax.tree.map(
        lambda x: x + 1.0, state.probe["params"])})
    new_other, _ = ge(other, real, noise)
    assert tree_equal(new_other.params, new.params)


@pytest.mark.parametrize("cpu_impl,reduced", [
    pytest.param("winograd", True, id="winograd-reduced"),
    pytest.param("einsum", False, marks=pytest.mark.slow, id="einsum"),
    pytest.param("winograd", False, marks=pytest.mark.slow, id="winograd"),
])
def test_cpu_convolution_step_matches_xla(monkeypatch, cpu_impl, reduced):
    """The CPU paths (train.conv_weight_grad = einsum, or auto -> winograd, here on every 3×3
    stride-1 layer of the smoke model) compute XLA's step. The default suite runs Winograd on
    a reduced step (one D update, no online probe); ``-m slow`` the smoke step itself."""
    from bbg_jax.models import winograd

    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    results = {}
    for impl in ("xla", cpu_impl):
        config = smoke()
        config.train.conv_weight_grad = impl
        if reduced:
            config.train.n_d_steps = 1
            config.train.online_probe_classes = 0
        fns = make_step_functions(config)
        state = jax.jit(lambda k, c=config: create_train_state(c, k))(jax.random.key(0))
        batch = next(loop.step_batches(config, sharding.make_mesh(), 0))
        results[impl] = jax.jit(fns.train_step)(state, batch)
    (ref_state, ref_m), (state, m) = results["xla"], results[cpu_impl]
    rtol = {"einsum": 1e-5, "winograd": 1e-4}[cpu_impl]  # Winograd: ≈2e-5 per layer
    for k in ("grad_norm_D", "grad_norm_G", "grad_norm_E", "d_loss", "g_loss", "e_loss"):
        np.testing.assert_allclose(m[k], ref_m[k], rtol=rtol, err_msg=k)
    for name in ("G", "E", "D"):
        a = jnp.concatenate([x.ravel() for x in jax.tree.leaves(ref_state.params[name])])
        b = jnp.concatenate([x.ravel() for x in jax.tree.leaves(state.params[name])])
        assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a)) < 1e-4, name


def test_gan_generator_update_scores_only_the_generated_half():
    """x_only (BigGAN): the G update runs D on G(z) alone; its loss and gradient equal those of
    the interleaved real+generated pass, at fewer FLOPs."""
    from bbg_jax.models import build_models
    from bbg_jax.train import _interleave, _split_scores

    config = _ablation("biggan_conditional")
    models = build_models(config)
    G, D = models["G"], models["D"]
    fns = make_step_functions(config)
    state = jax.jit(lambda k: create_train_state(config, k))(jax.random.key(0))
    batch = next(loop.step_batches(config, sharding.make_mesh(), 0))
    real = {k: v[0] for k, v in batch.items()}
    noise = fns.draw(jax.random.key(1), real["image_d"].shape[0])

    def interleaved_loss(g_params):
        x_fake, _ = G.apply({"params": g_params, **state.model_state["G"]}, noise["z"],
                            noise["y"], train=True, mutable=["batch_stats", "spectral"])
        scores = D.apply({"params": state.params["D"], **state.model_state["D"]},
                         _interleave(real["image_d"], x_fake),
                         _interleave(real["label"], noise["y"]), train=False)
        return -jnp.mean(_split_scores(scores)[1]["score_x"])

    loss, grads = jax.jit(jax.value_and_grad(interleaved_loss))(state.params["G"])
    _, metrics = jax.jit(fns.ge_update)(state, real, noise)
    np.testing.assert_allclose(metrics["g_loss"], loss, rtol=1e-5)
    grad_norm = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64)))
                            for g in jax.tree.leaves(grads)))
    np.testing.assert_allclose(metrics["grad_norm_G"], grad_norm, rtol=1e-5)
    assert "mean_score_x_enc" not in metrics  # no real image was scored

    def compiled_flops(fn, *args):
        return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]

    reference = compiled_flops(jax.value_and_grad(interleaved_loss), state.params["G"])
    d_forward_on_real = compiled_flops(
        lambda v, x, y: D.apply(v, x, y, train=False),
        {"params": state.params["D"], **state.model_state["D"]}, real["image_d"], real["label"])
    # Saved: D's forward and backward on the real half (the update's Adam adds a little).
    saved = reference - compiled_flops(fns.ge_update, state, real, noise)
    assert saved > d_forward_on_real, (saved, d_forward_on_real)
