"""Training semantics of the step against hand-written references: EMA, learning rates and
warm-up, orthogonal regularisation, the latent prior, and checkpoint retention.

The real G/E/D take minutes to compile on a small CPU, and none of these semantics depends on
their architecture, so the step here runs the real ``create_train_state`` /
``make_step_functions`` / ``train_step`` code with tiny stand-in networks that have the real
ones' interfaces (``build_models`` is swapped while the step is built). Every stand-in has the
parameter kinds the behaviour under test distinguishes (a 4-D conv kernel, dense kernels, a
nested conditional-BN kernel, biases, a label embedding: a table and a kernel under "embed").

Semantics the references encode (train.py / train_state.py):

* EMA: after the G/E update that ends step k (k = state.step afterwards, 1-based),
  ema_k = d_k ema_{k-1} + (1 - d_k) params_k with d_k = ema_decay if k >= ema_start_step else 0,
  starting from a copy of the initial parameters: before the start step the average is a copy of
  the weights (BigGAN-PyTorch's EMA with ``start_itr``). G always, E with ``ema_encoder``.
* Learning rates: Adam(b1, b2, eps) per network; peak G = lr_g, E = lr_g * e_lr_multiplier,
  D = lr_d; the G/E update of step s (0-based, = state.step before it) uses
  peak * min(s / warmup_steps, 1) (so step 0 of a warm-up does not move the weights); D's c-th
  update (0-based) uses the rate of G step c // n_d_steps.
* Orthogonal regularisation: ortho_reg_weight * sum_W ||W^T W * (1 - I)||_F^2 is added to the
  G/E loss, over G's kernels with >= 2 axes viewed as (fan_in, out), except those under a name
  containing "embed"; nothing of E or D. Its gradient is 4 beta W (W^T W * (1 - I)).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from bbg_jax import checkpoint, sharding
from bbg_jax.configs import model_config, train_config
from bbg_jax.train import jit_train_step, make_step_functions
from bbg_jax.train_state import (
    TrainState,
    create_train_state,
    ema_networks,
    make_optimizers,
)

ROOT = Path(__file__).resolve().parents[1]
Z_DIM, RES, CH, BATCH = 4, 4, 2, 32


# --- stand-in networks with the real interfaces -----------------------------------------------

class _CondGain(nn.Module):
    """A nested kernel (path bn/gamma/kernel), as in G's conditional batch norm."""

    @nn.compact
    def __call__(self, z):
        return nn.Dense(CH, name="gamma")(z)


class _LabelEmbedding(nn.Module):
    """A label table and a projection: a kernel the regulariser exempts by its module's name."""

    @nn.compact
    def __call__(self, label):
        return nn.Dense(Z_DIM, name="proj")(nn.Embed(3, Z_DIM, name="table")(label))


class TinyG(nn.Module):
    """G(z, label, train): a label embedding, a dense layer, a nested conditional gain, a 3x3
    conv. In training mode with ``batch_stats`` mutable it records statistics of the z it was
    given ([min, max, mean, mean of squares]), so a test can see the latents the step drew."""

    @nn.compact
    def __call__(self, z, label=None, train=True):
        if label is None:  # unconditional ("single" label), as BigBiGAN
            label = jnp.zeros((z.shape[0],), jnp.int32)
        e = _LabelEmbedding(name="embed")(label)
        h = nn.Dense(RES * RES * CH, name="linear")(z + e).reshape(-1, RES, RES, CH)
        h = h * (1.0 + _CondGain(name="bn")(z)[:, None, None, :])
        x = jnp.tanh(nn.Conv(CH, (3, 3), padding="SAME", name="conv")(nn.relu(h)))
        seen = self.variable("batch_stats", "z_seen", lambda: jnp.zeros((4,), jnp.float32))
        if train and self.is_mutable_collection("batch_stats"):
            seen.value = jnp.stack([z.min(), z.max(), z.mean(), jnp.mean(z * z)])
        return x


class _Head(nn.Module):
    @nn.compact
    def __call__(self, h):
        return nn.relu(nn.Dense(8, name="dense_0")(h))


class TinyE(nn.Module):
    """E(x, train, noise) -> {z_mean, z_sample, avepool_feat, bn_crelu_feat}; head_mlp/dense_0
    as in the real encoder (create_train_state reads the probe's feature size there)."""

    z_dim: int = Z_DIM

    @nn.compact
    def __call__(self, x, train=True, noise=None):
        feat = nn.relu(nn.Dense(8, name="trunk")(x.reshape(x.shape[0], -1)))
        mean_feat = self.variable("batch_stats", "feat_mean", lambda: jnp.zeros((8,)))
        if train and self.is_mutable_collection("batch_stats"):
            mean_feat.value = feat.mean(0)
        h = _Head(name="head_mlp")(feat)
        mean = nn.Dense(self.z_dim, name="z_mean")(h)
        scale = nn.softplus(nn.Dense(self.z_dim, name="z_scale")(h))
        if noise is None:
            noise = jax.random.normal(self.make_rng("noise"), mean.shape)
        return {"z_mean": mean, "z_sample": mean + scale * noise, "avepool_feat": feat,
                "bn_crelu_feat": feat}


class TinyD(nn.Module):
    """D(x, z, train) -> the three scores of BigBiGAN's joint discriminator."""

    @nn.compact
    def __call__(self, x, z, train=True):
        fx = jnp.tanh(nn.Dense(8, name="f")(x.reshape(x.shape[0], -1)))
        fz = jnp.tanh(nn.Dense(8, name="h")(z))
        fxz = jnp.concatenate([fx, fz], -1)
        return {"score_x": nn.Dense(1, name="s_x")(fx)[:, 0],
                "score_z": nn.Dense(1, name="s_z")(fz)[:, 0],
                "score_xz": nn.Dense(1, name="j")(fxz)[:, 0]}


def tiny_models(config):
    return {"G": TinyG(), "D": TinyD(), "E": TinyE()}


def tiny_config(**train_overrides):
    config = ml_collections.ConfigDict()
    config.model = model_config(resolution=RES, ch=1, z_dim=Z_DIM)
    config.model.image_channels = CH
    config.train = train_config()
    config.train.update(dict(n_d_steps=2, lr_g=1e-2, lr_d=2e-2, e_lr_multiplier=10.0,
                             warmup_steps=4, ema_decay=0.75, ema_start_step=3,
                             ema_encoder=True, checkpoint_every=2))
    config.train.update(train_overrides)
    return config


@pytest.fixture(scope="module")
def stand_ins():
    """Swaps the stand-ins in for every module-scoped build below (undone after the module)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("bbg_jax.train.build_models", tiny_models)
        mp.setattr("bbg_jax.models.build.build_models", tiny_models)
        yield


def build(config, mesh=None):
    """(step functions, initial state) of ``config`` with the stand-in networks."""
    fns = make_step_functions(config, mesh)
    out = None if mesh is None else sharding.replicated(mesh)
    init = jax.jit(lambda k: create_train_state(config, k), out_shardings=out)
    return fns, init(jax.random.key(0))


def make_batch(config, step, batch=BATCH):
    rng = np.random.default_rng(step)
    shape = (config.train.n_d_steps, batch, RES, RES, CH)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    return {"image_d": x, "image_e": x[..., ::-1].copy(),
            "label": np.zeros(shape[:2], np.int32)}


def leaves(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def adam_state(opt_state) -> optax.ScaleByAdamState:
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)]
    assert len(found) == 1
    return found[0]


def expected_lr(peak, warmup, g_step):
    """The hand-written schedule: linear from 0 over ``warmup`` G/E steps, then constant."""
    return peak if warmup <= 0 else peak * min(g_step / warmup, 1.0)


def assert_adam_step(before, after, opt_after, lr, t, rtol=1e-4, atol=2e-7, err=""):
    """after - before == one Adam(b1=0, b2=0.999, eps=1e-6) update at rate ``lr``.

    With b1 = 0 Adam's first moment is the gradient itself, so the optimizer state after the
    update holds g (mu) and the running second moment (nu) of the update just made.
    """
    adam = adam_state(opt_after)
    assert int(adam.count) == t, err
    for p0, p1, g, v in zip(leaves(before), leaves(after), leaves(adam.mu), leaves(adam.nu),
                            strict=True):
        step = -lr * g / (np.sqrt(v / (1.0 - 0.999 ** t)) + 1e-6)
        np.testing.assert_allclose(p1 - p0, step, rtol=rtol, atol=atol, err_msg=err)


# --- one short training run shared by the EMA, learning-rate and prior tests ------------------

NUM_STEPS = 6


@pytest.fixture(scope="module")
def trajectory(stand_ins):
    """NUM_STEPS steps of ``tiny_config`` (uniform prior) through jit_train_step, the loop's
    jitted step over a mesh; ``states`` are host copies (the step donates its input state)."""
    config = tiny_config(prior="uniform")
    mesh = sharding.make_mesh()
    fns, state = build(config, mesh)
    step = jit_train_step(config, mesh)
    states, metrics = [jax.device_get(state)], []
    for s in range(NUM_STEPS):
        batch = sharding.global_batch_from_local(make_batch(config, s), mesh, batch_axis=1)
        state, m = step(state, batch)
        states.append(jax.device_get(state))
        metrics.append(jax.device_get(m))
    return config, fns, states, metrics


def test_ema_copies_weights_before_start_step_then_averages_with_decay(trajectory):
    config, _, states, _ = trajectory
    t = config.train
    assert ema_networks(config, states[0].params) == ["G", "E"]  # ema_encoder=True
    assert set(states[-1].ema_params) == {"G", "E"}
    assert ema_networks(tiny_config(ema_encoder=False), states[0].params) == ["G"]
    for name in ("G", "E"):
        ema = leaves(states[0].params[name])  # create_train_state: a copy of the weights
        for a, b in zip(leaves(states[0].ema_params[name]), ema, strict=True):
            np.testing.assert_array_equal(a, b)
        for k in range(1, NUM_STEPS + 1):
            d = t.ema_decay if k >= t.ema_start_step else 0.0
            ema = [d * e + (1 - d) * p for e, p in zip(ema, leaves(states[k].params[name]),
                                                       strict=True)]
            got = leaves(states[k].ema_params[name])
            for g, e in zip(got, ema, strict=True):
                np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7,
                                           err_msg=f"{name} EMA after step {k}")
            params = leaves(states[k].params[name])
            if k < t.ema_start_step:  # a copy, bit for bit
                assert all(np.array_equal(g, p) for g, p in zip(got, params, strict=True))
    # The weights moved on every step from the start step's neighbourhood on, so the reference
    # above would catch a start one step early or late (step 1 is lr 0 under the warm-up).
    for k in range(2, NUM_STEPS + 1):
        assert any(not np.array_equal(a, b) for a, b in zip(
            leaves(states[k - 1].params["G"]), leaves(states[k].params["G"]), strict=True))


def test_generator_and_encoder_rates_follow_warmup_and_e_multiplier(trajectory):
    config, _, states, metrics = trajectory
    t = config.train
    peaks = {"G": t.lr_g, "E": t.lr_g * t.e_lr_multiplier, "D": t.lr_d}
    assert peaks["E"] == pytest.approx(0.1)
    for s in range(NUM_STEPS):
        for name in ("G", "E"):
            lr = expected_lr(peaks[name], t.warmup_steps, s)
            assert float(metrics[s][f"lr_{name}"]) == pytest.approx(lr, rel=1e-6)
            assert_adam_step(states[s].params[name], states[s + 1].params[name],
                             states[s + 1].opt_state[name], lr, t=s + 1,
                             err=f"{name} at step {s} (lr {lr})")
        assert float(metrics[s]["lr_D"]) == pytest.approx(
            expected_lr(peaks["D"], t.warmup_steps, s), rel=1e-6)
        # D made n_d_steps updates per G/E step.
        assert int(adam_state(states[s + 1].opt_state["D"]).count) == (s + 1) * t.n_d_steps
    # Step 0 of the warm-up moves nothing; the last steps run at the peak rates.
    for name in ("G", "E", "D"):
        assert all(np.array_equal(a, b) for a, b in zip(
            leaves(states[0].params[name]), leaves(states[1].params[name]), strict=True))


def test_discriminator_rate_is_warmed_up_in_generator_steps(trajectory):
    """D's update c (0-based) runs at the rate of G step c // n_d_steps."""
    config, fns, states, _ = trajectory
    t = config.train
    d_update = jax.jit(fns.d_update)
    batch = make_batch(config, 99)
    real = {k: v[0] for k, v in batch.items()}
    for k in range(NUM_STEPS):  # the state after k steps: D has made 2k updates
        state = states[k]
        for i in range(t.n_d_steps):
            c = k * t.n_d_steps + i
            noise = fns.draw(jax.random.key(100 + c), BATCH)
            new, _ = d_update(state, real, noise)
            lr = expected_lr(t.lr_d, t.warmup_steps, c // t.n_d_steps)
            assert_adam_step(state.params["D"], new.params["D"], new.opt_state["D"], lr, t=c + 1,
                             err=f"D update {c} (lr {lr})")
            assert all(np.array_equal(a, b) for a, b in zip(
                leaves(state.params["G"]), leaves(new.params["G"]), strict=True))
            state = new


def test_optimizer_rates_on_a_constant_gradient():
    """make_optimizers alone: with b1 = 0 and a constant gradient g, Adam's update is
    -lr g / (|g| + eps) exactly, so the effective rate per step reads off the update."""
    for warmup in (0, 3):
        config = tiny_config(warmup_steps=warmup, lr_g=1e-3, lr_d=4e-3, e_lr_multiplier=10.0,
                             n_d_steps=2)
        txs = make_optimizers(config, ["D", "E", "G"])
        peaks = {"G": 1e-3, "E": 1e-2, "D": 4e-3}
        g = {"w": jnp.full((3,), 0.5), "b": jnp.full((2,), -2.0)}
        for name, tx in txs.items():
            updates_per_g_step = 2 if name == "D" else 1
            opt = tx.init(g)
            for c in range(6 * updates_per_g_step):
                u, opt = tx.update(g, opt, g)
                lr = expected_lr(peaks[name], warmup, c // updates_per_g_step)
                for key, gv in (("w", 0.5), ("b", -2.0)):
                    np.testing.assert_allclose(
                        u[key], -lr * gv / (abs(gv) + 1e-6), rtol=1e-5, atol=1e-12,
                        err_msg=f"{name} update {c}, warmup {warmup}")


# --- orthogonal regularisation inside the G/E update ------------------------------------------

BETA = 0.5
REGULARISED = {("linear", "kernel"), ("bn", "gamma", "kernel"), ("conv", "kernel")}


def _path_names(path):
    return tuple(p.key for p in path)


@pytest.fixture(scope="module")
def ge_updates(stand_ins, trajectory):
    """One G/E update of the default-prior config with the regulariser off and on (beta = BETA),
    from the same state (the trajectory's initial one), batch and latents."""
    off_config, on_config = tiny_config(), tiny_config(ortho_reg_weight=BETA)
    fns_off, fns_on = make_step_functions(off_config), make_step_functions(on_config)
    state = trajectory[2][0]
    batch = make_batch(off_config, 0)
    real = {k: v[0] for k, v in batch.items()}
    noise = fns_off.draw(jax.random.key(3), BATCH)
    new_off, m_off = jax.jit(fns_off.ge_update)(state, real, noise)
    new_on, m_on = jax.jit(fns_on.ge_update)(state, real, noise)
    return off_config, state, (new_off, m_off), (new_on, m_on)


def test_orthogonal_regulariser_adds_its_analytic_gradient_to_g_only(ge_updates):
    _, state, (new_off, m_off), (new_on, m_on) = ge_updates
    # The update at step 0 of the warm-up has rate 0: compare the gradients, which Adam(b1=0)
    # keeps in its first moment.
    assert "ortho_reg_G" not in m_off
    grad_off = adam_state(new_off.opt_state["G"]).mu
    grad_on = adam_state(new_on.opt_state["G"]).mu

    total = 0.0
    seen = set()
    flat_off = dict(jax.tree.flatten_with_path(grad_off)[0])
    for path, g_on in jax.tree.flatten_with_path(grad_on)[0]:
        name = _path_names(path)
        w = np.asarray(dict(jax.tree.flatten_with_path(state.params["G"])[0])[path],
                       np.float64)
        diff = np.asarray(g_on, np.float64) - np.asarray(flat_off[path], np.float64)
        if name in REGULARISED:
            seen.add(name)
            w2 = w.reshape(-1, w.shape[-1])  # (fan_in, out)
            off_diag = (w2.T @ w2) * (1.0 - np.eye(w2.shape[1]))
            total += np.sum(off_diag ** 2)
            expected = (4.0 * BETA * w2 @ off_diag).reshape(w.shape)
            assert np.abs(expected).max() > 1e-3, name  # a visible contribution
            np.testing.assert_allclose(diff, expected, rtol=1e-4, atol=1e-7, err_msg=str(name))
        else:  # biases, the label embedding (its table, and a kernel exempt by name)
            np.testing.assert_allclose(diff, 0.0, atol=1e-7, err_msg=str(name))
    assert seen == REGULARISED
    np.testing.assert_allclose(float(m_on["ortho_reg_G"]), total, rtol=1e-5)
    # E's gradient does not see the regulariser; the G/E loss terms are the same in both runs.
    for a, b in zip(leaves(adam_state(new_on.opt_state["E"]).mu),
                    leaves(adam_state(new_off.opt_state["E"]).mu), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(m_on["g_loss"]) == pytest.approx(float(m_off["g_loss"]), rel=1e-6)


# --- the latent prior --------------------------------------------------------------------------

def test_default_prior_is_gaussian_inside_the_step(ge_updates):
    config, _, (new_off, _), _ = ge_updates
    assert config.train.prior == "gaussian"
    # G recorded the z of the G/E update: BATCH x Z_DIM normal draws reach beyond [-1, 1].
    z_min, z_max, _, z_sq = np.asarray(new_off.model_state["G"]["batch_stats"]["z_seen"])
    assert z_min < -1.0 and z_max > 1.0
    assert abs(z_sq - 1.0) < 0.4  # 128 draws: E z^2 = 1
    z = np.asarray(make_step_functions(config).draw(jax.random.key(7), 4096)["z"])
    assert abs(z.mean()) < 0.05 and abs(z.var() - 1.0) < 0.07 and np.abs(z).max() > 3.0


def test_uniform_prior_draws_from_minus_one_to_one(trajectory):
    config, fns, states, _ = trajectory
    z = np.asarray(fns.draw(jax.random.key(7), 4096)["z"])
    assert z.min() >= -1.0 and z.max() < 1.0
    assert abs(z.mean()) < 0.03 and abs(z.var() - 1.0 / 3.0) < 0.02
    assert z.min() < -0.99 and z.max() > 0.99  # the whole range, not a narrower one
    # Inside the step: G recorded the z of each G/E update (BATCH x Z_DIM draws per step).
    seen = np.array([s.model_state["G"]["batch_stats"]["z_seen"] for s in states[1:]])
    assert (seen[:, 0] >= -1.0).all() and (seen[:, 1] < 1.0).all()
    assert seen[:, 0].min() < -0.95 and seen[:, 1].max() > 0.95
    assert abs(seen[:, 2].mean()) < 0.05 and abs(seen[:, 3].mean() - 1.0 / 3.0) < 0.04


SHARDED_SCRIPT = """
import importlib.util, json, sys
import jax
spec = importlib.util.spec_from_file_location("semantics", sys.argv[1])
sem = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sem)
import bbg_jax.train
bbg_jax.train.build_models = sem.tiny_models
from bbg_jax import sharding
from bbg_jax.train import jit_train_step, make_step_functions
mesh = sharding.make_mesh()
out = {"devices": len(jax.devices())}
for prior in ("uniform", "gaussian"):
    draw = jax.jit(make_step_functions(sem.tiny_config(prior=prior), mesh).draw,
                   static_argnums=1)
    z = draw(jax.random.key(1), 512)["z"]
    out[prior] = {"split": z.sharding.is_equivalent_to(sharding.batch_sharding(mesh), 2),
                  "shard_rows": sorted(s.data.shape[0] for s in z.addressable_shards),
                  "min": float(z.min()), "max": float(z.max())}
print("RESULT", json.dumps(out))
"""


def test_prior_under_the_steps_batch_sharding_on_two_devices():
    """The step's draw with a two-device mesh: z is split over the data axis like the batch,
    and every shard holds draws of the configured prior."""
    from xla_flags import cpu_devices  # here: a child process imports this module alone

    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": cpu_devices(2)}
    proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, __file__], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["devices"] == 2
    for prior in ("uniform", "gaussian"):
        assert out[prior]["split"] and out[prior]["shard_rows"] == [256, 256]
    u, g = out["uniform"], out["gaussian"]
    assert -1.0 <= u["min"] < -0.95 and 0.95 < u["max"] < 1.0
    assert g["min"] < -1.5 and g["max"] > 1.5


# --- checkpoint retention ----------------------------------------------------------------------

def _tiny_state(step):
    return TrainState(step=jnp.asarray(step, jnp.int32), params={"G": {"w": jnp.full((2,), step,
                                                                                jnp.float32)}},
                      model_state={}, opt_state={}, ema_params={}, probe={},
                      rng=jax.random.key_data(jax.random.key(0)))


@pytest.mark.parametrize("keep_last,keep_every,saved,kept", [
    # The loop saves every checkpoint_every (2) steps: the last 3, plus multiples of 6.
    (3, 6, range(2, 21, 2), [6, 12, 16, 18, 20]),
    # keep_every = 0: the last N only.
    (2, 0, range(1, 8), [6, 7]),
])
def test_checkpoint_retention_keeps_last_n_and_every_kth(tmp_path, keep_last, keep_every,
                                                          saved, kept):
    config = ml_collections.ConfigDict({"train": train_config()})
    config.train.keep_last, config.train.keep_every = keep_last, keep_every
    config.train.async_checkpointing = False
    manager = checkpoint.make_manager(str(tmp_path), config)
    for s in saved:
        checkpoint.save(manager, _tiny_state(s), config, {"data_batch": s})
    assert list(manager.all_steps()) == kept
    manager.close()
    on_disk = sorted(int(p.name) for p in checkpoint.checkpoint_dir(str(tmp_path)).iterdir()
                     if p.name.isdigit())
    assert on_disk == kept
    restored = checkpoint.restore_state(str(tmp_path), jax.eval_shape(lambda: _tiny_state(0)),
                                        step=kept[0])
    assert int(restored.step) == kept[0]
    np.testing.assert_array_equal(restored.params["G"]["w"], [kept[0], kept[0]])
