"""BigBiGAN's joint term s_xz, which is what pushes E towards G⁻¹, tested alone and in the step.

0. *G shows z*: every z chunk changes G's images at initialisation (without that, most of z is
   invisible to D and unrecoverable by E whatever the joint term does), and so does every
   coordinate of the main job's 8-d latent, which is fed whole to G (the fix for G dropping
   chunks during training, docs/fashion_mnist.md "Cause 3").
1. *D can learn the joint*: G frozen at initialisation; "encoder pairs" (G(z), z) against the
   same images with z permuted within the batch. Both marginals are identical, so only s_xz can
   separate them. D alone trains on them with the step's own D update
   (``d_update_on_pairs``) and losses.
2. *The step pairs the right rows*: the real input path (Fashion-MNIST through the tf.data
   pipeline, two views at 64 / 32 px, the batch split over 2 devices, the jitted step); every
   D pass is recorded, and the z beside each real x must be E(x) of that same example and the
   x beside each z must be G(z), both recomputed outside the step.
3. *The game couples E to G*: the frozen-G game inside the real training step (G stays at its
   initial weights and the data are its own samples, so E = G⁻¹ is the game's exact optimum):
   D's s_xz gap and E's latent recovery must rise, recovery to 0.8, with the main job's model
   (its D with ``joint_projection=feature_map`` and its latent fed whole to G).

The departure ``model.discriminator.joint_projection=feature_map`` (a bilinear term between F's
unpooled map and H(z), zero at initialisation) has two tests beside (1): it starts as the
paper's D, and it learns the joint faster on the same shuffled pairs.

Widths are narrow (G and D ch 8, H and J 2 x 64, E at 1/8 width) to fit the default suite;
docs/fashion_mnist.md ("Why the joint term was silent") has the same measurements at the main
job's widths, for the paper's D and each departure, and the numbers quoted below. The bar of (1)
at z = 4 (95 % within 150 steps) is not met by the paper's D and is marked
``xfail(strict=True)``; at z = 120 (80 %) no D tried meets it within 150 steps (the main job's D
at its own widths does by step 300), and docs/fashion_mnist.md has those curves.
"""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from xla_flags import cpu_devices

from bbg_jax.configs import load_experiment
from bbg_jax.evaluation.diagnostics import latent_recovery
from bbg_jax.models import build_models
from bbg_jax.train import make_step_functions
from bbg_jax.train_state import create_train_state

ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST = str(ROOT / "experiments" / "fashion_mnist.py")


def narrow_fashion_mnist(z_dim: int, batch: int, **model):
    """The main job's config with narrow G, D and E (the same architecture and objective)."""
    c = load_experiment(FASHION_MNIST)
    c.model.z_dim = z_dim
    # The paper's G (z in 4 chunks, one per block) and D unless a test asks: these tests measure
    # the joint term itself, at the latent sizes the figures below were measured with.
    c.model.generator.hierarchical_z = True
    c.model.discriminator.joint_projection = "none"
    c.model.generator.ch = 8
    c.model.discriminator.ch = 8
    c.model.discriminator.mlp_width = 64
    c.model.encoder.width = 0.125
    c.model.encoder.mlp_width = 64
    c.data.batch_size = batch
    c.train.warmup_steps = 0
    for key, value in model.items():
        section, field = key.split("__")
        c.model[section][field] = value
    return c


def generator_samples(G, state, z):
    """G's training-mode output (batch statistics) without touching its stored state."""
    return G.clone(update_state=False).apply(
        {"params": state.params["G"], **state.model_state["G"]}, z, None, train=True)


# --- 0. how much of z reaches x at initialisation ----------------------------------------------

def redraw_effects(config, width: int) -> list[float]:
    """Mean |G(z') - G(z)| at initialisation, z' = z with one group of ``width`` consecutive
    coordinates redrawn, for each group (64 z; G's training-mode output)."""
    z_dim = config.model.z_dim
    G = build_models(config)["G"]
    state = create_train_state(config, jax.random.key(0))
    z = jax.random.normal(jax.random.key(1), (64, z_dim))
    fresh = jax.random.normal(jax.random.key(2), (64, z_dim))
    sample = jax.jit(lambda z: generator_samples(G, state, z))  # one compile, a call per group
    x = sample(z)
    return [float(jnp.mean(jnp.abs(sample(
        z.at[:, i:i + width].set(fresh[:, i:i + width])) - x)))
        for i in range(0, z_dim, width)]


def chunk_effects(**generator):
    """Mean |G(z') - G(z)| with z' = z but chunk i redrawn, for each of G's 4 z chunks (32 px)."""
    config = narrow_fashion_mnist(120, 64, **{f"generator__{k}": v for k, v in generator.items()})
    return redraw_effects(config, 30)


def test_every_z_chunk_reaches_the_image_at_initialisation():
    """Chunk 0 feeds G's first layer, chunk i block i's conditional BN. With the references'
    orthogonal CBN maps every chunk moves x; with zero-initialised maps (the earlier default)
    chunks 1-3 cannot, so D cannot see them and E cannot recover them."""
    references = chunk_effects()
    zeros = chunk_effects(cbn_map_init="zeros", single_embed_init="normal")
    print(json.dumps({"orthogonal": references, "zeros": zeros}))
    assert min(references) > 0.05, references
    assert zeros[0] > 0.05 and max(zeros[1:]) == 0.0, zeros


def test_every_latent_coordinate_of_the_main_job_reaches_the_image():
    """The main job's fix: its 8-d latent is not chunked, so every coordinate feeds G's first
    layer and every conditional BN, and redrawing any one of them moves x (at step 750 of seed
    0 by 0.085-0.262 per pixel, and E recovers each in proportion: docs/fashion_mnist.md,
    "Cause 3"). In 4 chunks (the paper's latent) the same coordinate would reach one block only."""
    config = load_experiment(FASHION_MNIST)
    z_dim = config.model.z_dim
    assert z_dim == 8 and not config.model.generator.hierarchical_z
    effects = redraw_effects(config, 1)
    print(json.dumps(effects))
    assert len(effects) == z_dim and min(effects) > 0.05, effects
    # G's first layer and every block's conditional BN read every coordinate: the 6 gain and 6
    # bias maps take z_dim + the label embedding's width (chunked, each would take z_dim / 4).
    params = jax.eval_shape(lambda: create_train_state(config, jax.random.key(0))).params["G"]
    assert params["linear"]["kernel"].shape[0] == z_dim
    cbn_inputs = {jax.tree_util.keystr(path): leaf.shape[0]
                  for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                  if "['bn" in jax.tree_util.keystr(path) and leaf.ndim == 2}
    assert len(cbn_inputs) == 12, cbn_inputs
    assert set(cbn_inputs.values()) == {z_dim + config.model.generator.embed_dim}, cbn_inputs


# --- 1. D learns the joint on matched against shuffled pairs --------------------------------

def shuffled_pairs_run(z_dim: int, steps: int, batch: int = 64, seed: int = 0,
                       every: int | None = None, config=None, **model):
    """D alone, ``steps`` updates on matched (G(z), z) against (G(z), z permuted). Returns the
    curve of s_xz's pair accuracy (sign right on both sides, threshold 0) and its hinge loss on
    512 fresh pairs, measured every ``every`` steps (default: first and last)."""
    config = config or narrow_fashion_mnist(z_dim, batch, **model)
    fns = make_step_functions(config)
    state = create_train_state(config, jax.random.key(seed))
    models = build_models(config)
    G, D = models["G"], models["D"]

    @jax.jit
    def step(state, key):
        z = jax.random.normal(key, (batch, z_dim))
        x = generator_samples(G, state, z)
        shuffled = z[jax.random.permutation(jax.random.fold_in(key, 1), batch)]
        state, _ = fns.d_update_on_pairs(state, (x, z), (x, shuffled))
        return state

    @jax.jit
    def measure(state):
        z = jax.random.normal(jax.random.key(10_000), (512, z_dim))
        x = generator_samples(G, state, z)
        d = {"params": state.params["D"], **state.model_state["D"]}
        matched = D.apply(d, x, z, train=False)["score_xz"]
        shuffled = D.apply(d, x, jnp.roll(z, 1, axis=0), train=False)["score_xz"]
        accuracy = 0.5 * (jnp.mean(matched > 0) + jnp.mean(shuffled < 0))
        hinge = jnp.mean(jax.nn.relu(1 - matched)) + jnp.mean(jax.nn.relu(1 + shuffled))
        return accuracy, hinge

    curve = []
    for i in range(steps + 1):
        if i in (0, steps) or (every and i % every == 0):
            accuracy, hinge = measure(state)
            curve.append({"step": i, "accuracy": round(float(accuracy), 3),
                          "hinge": round(float(hinge), 3)})
        if i < steps:
            state = step(state, jax.random.fold_in(jax.random.key(seed + 1), i))
    return curve


@pytest.fixture(scope="module")
def pairs_z4():
    return shuffled_pairs_run(4, 150)


def test_discriminator_starts_to_learn_which_z_goes_with_which_x(pairs_z4):
    """At z = 4 D's joint term separates the pairs within 150 steps, partly (0.72 here; pairs
    mismatched by the step would stay at 0.5)."""
    print(json.dumps(pairs_z4))
    first, last = pairs_z4[0], pairs_z4[-1]
    assert last["accuracy"] >= 0.65, pairs_z4
    assert last["hinge"] < first["hinge"] - 1.0, pairs_z4


def test_joint_projection_starts_as_the_papers_discriminator():
    """``joint_projection=feature_map`` adds ⟨P·vec(F_map(x)), H(z)⟩ with P = 0 at
    initialisation: from the same key every score equals the paper's D, and P is the only new
    parameter (feature map 4 x 4 x 16 = 256 rows, H's 64 columns here)."""
    paper = narrow_fashion_mnist(4, 8)
    projected = narrow_fashion_mnist(4, 8, discriminator__joint_projection="feature_map")
    x = jax.random.uniform(jax.random.key(1), (8, 32, 32, 1), minval=-1, maxval=1)
    z = jax.random.normal(jax.random.key(2), (8, 4))
    scores, params, states = [], [], []
    for config in (paper, projected):
        D = build_models(config)["D"]
        variables = D.init({"params": jax.random.key(0)}, x, z, train=False)
        params.append(dict(variables["params"]))
        states.append(variables)
        scores.append(D.apply(variables, x, z, train=False))
    extra = params[1].pop("joint_projection")
    assert extra["kernel"].shape == (4 * 4 * 16, 64) and not np.any(extra["kernel"])
    assert jax.tree.structure(params[0]) == jax.tree.structure(params[1])
    for name in ("score_x", "score_z", "score_xz"):
        np.testing.assert_array_equal(scores[0][name], scores[1][name], err_msg=name)
    # And the term is live: a non-zero P changes s_xz only.
    variables = {**states[1], "params": {**params[1], "joint_projection": {
        "kernel": jnp.ones_like(extra["kernel"])}}}
    moved = build_models(projected)["D"].apply(variables, x, z, train=False)
    assert float(jnp.max(jnp.abs(moved["score_xz"] - scores[0]["score_xz"]))) > 1.0
    np.testing.assert_array_equal(moved["score_x"], scores[0]["score_x"])


def test_joint_projection_learns_the_joint_faster(pairs_z4):
    """The departure's reason, measured: the same shuffled-pairs run at z = 4 with the bilinear
    term on F's unpooled map. Measured 0.85 against the paper's 0.72 at step 150 (hinge 0.82
    against 1.63); docs/fashion_mnist.md has the z = 120 row and the game."""
    curve = shuffled_pairs_run(4, 150, discriminator__joint_projection="feature_map")
    print(json.dumps({"feature_map": curve, "paper": pairs_z4}))
    assert curve[-1]["accuracy"] >= 0.8, curve
    assert curve[-1]["accuracy"] >= pairs_z4[-1]["accuracy"] + 0.08, (curve, pairs_z4)
    assert curve[-1]["hinge"] < 1.0, curve


# The bar a BigBiGAN D should clear: the xz hinge term well under its chance value 2 and the
# pairs told apart 95 % of the time at z = 4 within 150 steps. Not met by the paper's D: 0.72
# here (0.85 after 600 steps); the main job's D reaches 0.91 at 150 and 0.95 at 250 with its
# latent fed whole to G, and at z = 120 (bar 80 %) no D tried gets past 0.80 within 150 steps
# (docs/fashion_mnist.md, "Why the joint term was silent"). strict: the day the paper's D
# clears it, this turns into a failure and the mark must go.
@pytest.mark.xfail(strict=True,
                   reason="the paper's D learns the joint slowly (docs/fashion_mnist.md)")
def test_discriminator_tells_matched_from_shuffled_pairs(pairs_z4):
    print(json.dumps({"z_dim": 4, "curve": pairs_z4}))
    assert pairs_z4[-1]["accuracy"] >= 0.95, pairs_z4
    assert pairs_z4[-1]["hinge"] < 1.0, pairs_z4


# --- 2. the z beside each x in D is E(x) of the same example -----------------------------------

PAIRING_SCRIPT = r"""
import functools, json, sys
import flax.linen as nn
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, sys.argv[1])
from test_joint_term import narrow_fashion_mnist
from bbg_jax import sharding
from bbg_jax.data.batches import step_batches
from bbg_jax.models import build_models
from bbg_jax.models.discriminator import BigBiGANDiscriminator
from bbg_jax.models.encoder import Encoder
from bbg_jax.train import jit_train_step
from bbg_jax.train_state import create_train_state

config = narrow_fashion_mnist(z_dim=120, batch=8)
# The high-resolution E of the paper: E reads 64 px, D the same image pooled to 32 px.
config.model.encoder.resolution = config.data.resolution_e = 64
config.data.data_dir = sys.argv[2]
mesh = sharding.make_mesh()
state = jax.jit(lambda k: create_train_state(config, k),
                out_shardings=sharding.replicated(mesh))(jax.random.key(0))
batch = next(step_batches(config, mesh, 0))
models = build_models(config)
before = jax.device_get(state)  # the step donates its state

calls = []
def record(kind, *arrays):  # no conversion here: that would wait on the devices mid-step
    calls.append((kind, arrays))

def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and isinstance(context.module, BigBiGANDiscriminator):
        jax.debug.callback(functools.partial(record, "D"), args[0], args[1])
    if context.method_name == "__call__" and isinstance(context.module, Encoder):
        jax.debug.callback(functools.partial(record, "E"), args[0], kwargs["noise"])
    return out

with nn.intercept_methods(interceptor):
    step = jit_train_step(config, mesh)
    new_state, metrics = step(state, batch)
    jax.block_until_ready(new_state)
    jax.effects_barrier()
calls = [(kind, [np.asarray(a) for a in arrays]) for kind, arrays in calls]

image_e = np.asarray(batch["image_e"][0]); image_d = np.asarray(batch["image_d"][0])
pooled = image_e.reshape(8, 32, 2, 32, 2, 1).mean(axis=(2, 4))
E, G = models["E"], models["G"]
e_vars = {"params": before.params["E"], **before.model_state["E"]}
g_vars = {"params": before.params["G"], **before.model_state["G"]}
report = {"shards": len(batch["image_d"].sharding.device_set),
          "views_agree": float(np.abs(pooled - image_d).max()), "passes": []}
encoder_noise = [a[1] for kind, a in calls if kind == "E"]
for kind, (x, second) in calls:
    if kind != "D":
        continue
    x_enc, z_enc, x_gen, z_gen = x[0::2], second[0::2], x[1::2], second[1::2]
    # E(x) of every example, recomputed outside the step with each encoder pass's noise.
    candidates = [np.asarray(E.apply(e_vars, jnp.asarray(image_e), train=True,
                                     noise=jnp.asarray(n), mutable=["batch_stats"])[0]["z_sample"])
                  for n in encoder_noise]
    errors = [float(np.abs(z_enc - c).max()) for c in candidates]
    best = candidates[int(np.argmin(errors))]
    rolled = float(np.abs(z_enc - np.roll(best, 1, axis=0)).max())
    g_x = np.asarray(G.clone(update_state=False).apply(g_vars, jnp.asarray(z_gen), None,
                                                       train=True))
    report["passes"].append({
        "x_enc_vs_image_d": float(np.abs(x_enc - image_d).max()),
        "z_enc_vs_E_of_same_row": min(errors), "z_enc_vs_E_of_next_row": rolled,
        "x_gen_vs_G_of_z": float(np.abs(x_gen - g_x).max())})
print("RESULT", json.dumps(report))
"""


def test_the_z_beside_each_real_x_is_its_own_encoding_on_two_devices(tmp_path):
    from bbg_jax.data import fashion_mnist

    if not fashion_mnist.local_files_exist(fashion_mnist.DEBIAN_DIR):
        pytest.skip("Debian's dataset-fashion-mnist is not installed (scripts/setup.sh)")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": cpu_devices(2)}
    proc = subprocess.run(
        [sys.executable, "-c", PAIRING_SCRIPT, str(Path(__file__).parent), str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    print(json.dumps(out))
    assert out["shards"] == 2
    assert out["views_agree"] < 1e-5  # image_d is image_e pooled: two views of one example
    assert len(out["passes"]) == 2  # the D update's pass and the G+E update's
    for p in out["passes"]:
        assert p["x_enc_vs_image_d"] == 0.0, p
        assert p["z_enc_vs_E_of_same_row"] < 1e-4, p
        assert p["z_enc_vs_E_of_next_row"] > 0.1, p  # the check can tell rows apart
        assert p["x_gen_vs_G_of_z"] < 1e-4, p


# --- 3. the frozen-G game inside the real step --------------------------------------------------

def frozen_g_game(steps: int, z_dim: int = 4, batch: int = 64, seed: int = 0, every: int = 50,
                  **model):
    """The real ``train_step`` with G reset to its initial weights after every step and its own
    samples as the data (both views). Returns latent recovery (E's z_mean of G(z) against z,
    500 fixed z) and D's s_xz gap (mean over encoder pairs minus generator pairs, the step's
    own metrics averaged over each stretch of ``every`` steps)."""
    config = narrow_fashion_mnist(z_dim, batch, **model)
    fns = make_step_functions(config)
    state = create_train_state(config, jax.random.key(seed))
    g_init = state.params["G"]
    models = build_models(config)
    G, E = models["G"], models["E"]

    @jax.jit
    def game_step(state, key):
        x = generator_samples(G, state, jax.random.normal(key, (batch, z_dim)))
        data = {"image_e": x[None], "image_d": x[None],
                "label": jnp.zeros((1, batch), jnp.int32)}
        state, metrics = fns.train_step(state, data)
        gap = metrics["mean_score_xz_enc"] - metrics["mean_score_xz_gen"]
        return state.replace(params={**state.params, "G": g_init}), gap

    z_fixed = jax.random.normal(jax.random.key(123), (500, z_dim))

    @jax.jit
    def recovery_codes(state):
        x = generator_samples(G, state, z_fixed)
        return E.apply({"params": state.params["E"], **state.model_state["E"]}, x,
                       train=False, noise=jnp.zeros_like(z_fixed))["z_mean"]

    curve = []
    gaps = []
    for i in range(steps + 1):
        if i % every == 0:
            corr = latent_recovery(np.asarray(z_fixed), np.asarray(recovery_codes(state)))["corr"]
            curve.append({"step": i, "latent_recovery": round(float(corr), 3),
                          "xz_gap": round(float(np.mean(gaps)), 3) if gaps else None})
            gaps = []
        if i < steps:
            state, gap = game_step(state, jax.random.fold_in(jax.random.key(seed + 1), i))
            gaps.append(float(gap))
    return curve


def test_frozen_generator_game_drives_the_encoder_towards_its_inverse():
    """The main job's model (``joint_projection=feature_map``, the latent fed whole to G) at
    z = 4: latent recovery 0.06 / 0.53 / 0.71 / 0.78 / 0.83 at steps 50 / 100 / 150 / 200 / 250,
    s_xz gap 0.16-0.51 per stretch. The paper's D in the same game: 0.11 at step 150 with this
    G, 0.30 with the chunked latent, its gap under 0.1 (docs/fashion_mnist.md)."""
    curve = frozen_g_game(steps=250, generator__hierarchical_z=False,
                          discriminator__joint_projection="feature_map")
    print(json.dumps(curve))
    recovery = [point["latent_recovery"] for point in curve]
    assert recovery[-1] >= 0.8, curve
    assert all(b > a - 0.05 for a, b in itertools.pairwise(recovery)), curve  # it rises
    # D tells the pairs apart by the joint term throughout (the unary terms cannot: x is G's own
    # output on both sides), and E's moving towards G⁻¹ is what the gap then pays for.
    gaps = [point["xz_gap"] for point in curve[1:]]
    assert min(gaps) > 0.1 and max(gaps) > 0.4, curve
