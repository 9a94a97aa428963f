"""Does E learn to invert G? Latent recovery during a short run, in two games.

    .venv/bin/python scripts/coupling_check.py --config=experiments/fashion_mnist.py \
        --game=frozen_g --steps=150 --every=25 --config.model.z_dim=4 [--config.x=y ...]

* ``frozen_g``: G stays at its initial weights and the "data" are its own samples G(z'), so the
  encoder pairs (G(z'), E(G(z'))) match the generator pairs (G(z), z) exactly when E = G⁻¹:
  a BiGAN whose optimum is known, with the project's own step (``train.make_step_functions``:
  D updates, then the E update; G's update is undone after every step).
  With ``--config.train.init_from=WORKDIR`` G, E and D start from that run's latest
  checkpoint (G frozen there): does E move towards the inverse of a trained G?
* ``full``: the whole game on Fashion-MNIST training images (Debian's IDX files, padded to
  32 px in [-1, 1] as the pipeline pads them; no TensorFlow).

Every ``--every`` steps it prints a JSON line: latent recovery of the current raw G
(``bbg_jax.evaluation.diagnostics.latent_recovery`` on 500 fixed z), E's mean z_stdev on those
samples, and the step's D loss and mean scores on encoder and generator pairs.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bbg_jax import checkpoint
from bbg_jax.evaluation.diagnostics import latent_recovery
from bbg_jax.models import build_models
from bbg_jax.train import make_step_functions
from bbg_jax.train_state import create_train_state, make_optimizers

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/fashion_mnist.py",
                                          "Experiment config file.")
_GAME = flags.DEFINE_enum("game", "frozen_g", ["frozen_g", "full"], "Which game (docstring).")
_STEPS = flags.DEFINE_integer("steps", 150, "Training steps.")
_EVERY = flags.DEFINE_integer("every", 25, "Print a line every N steps.")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation and data order.")


def fashion_mnist_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    from bbg_jax.data.fashion_mnist import DEBIAN_DIR, read_split

    images, labels = read_split(DEBIAN_DIR, "train", n)
    x = images.astype(np.float32) / 127.5 - 1.0
    return np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0), labels


def main(argv) -> None:
    del argv
    config = _CONFIG.value
    z_dim, n_d, batch = config.model.z_dim, config.train.n_d_steps, config.data.batch_size
    fns = make_step_functions(config)
    state = create_train_state(config, jax.random.key(_SEED.value))
    if config.train.init_from:
        # A trained run's G, E and D (fresh optimiser state): does E keep moving towards G⁻¹
        # once G stops moving?
        loaded = checkpoint.load_parameters(config.train.init_from, jax.eval_shape(lambda: state))
        txs = make_optimizers(config, sorted(loaded.params))
        state = state.replace(params=loaded.params, model_state=loaded.model_state,
                              opt_state={k: txs[k].init(v) for k, v in loaded.params.items()})
    g_init = state.params["G"]
    models = build_models(config)
    G, E = models["G"], models["E"]

    def generate(state, params, z):
        x, _ = G.apply({"params": params, **state.model_state["G"]}, z, None, train=True,
                       mutable=["batch_stats", "spectral"])
        return x

    @jax.jit
    def frozen_g_step(state, key):
        z = jax.random.normal(key, (n_d, batch, z_dim))
        x = jax.vmap(lambda zi: generate(state, g_init, zi))(z)
        batch_ = {"image_e": x, "image_d": x, "label": jnp.zeros((n_d, batch), jnp.int32)}
        state, metrics = fns.train_step(state, batch_)
        return state.replace(params={**state.params, "G": g_init}), metrics

    full_step = jax.jit(fns.train_step)
    z_fixed = jax.random.normal(jax.random.key(123), (500, z_dim))

    @jax.jit
    def encode_samples(state):
        out = E.apply({"params": state.params["E"], **state.model_state["E"]},
                      generate(state, state.params["G"], z_fixed), train=False,
                      noise=jnp.zeros_like(z_fixed))
        return out["z_mean"], out["z_stdev"]

    if _GAME.value == "full":
        images, labels = fashion_mnist_images(50_000)
    rng = np.random.default_rng(_SEED.value)
    start = time.perf_counter()
    for step in range(_STEPS.value + 1):
        if _GAME.value == "frozen_g":
            state, metrics = frozen_g_step(state, jax.random.key(10_000 + step))
        else:
            idx = rng.integers(0, len(images), (n_d, batch))
            state, metrics = full_step(state, {"image_e": images[idx], "image_d": images[idx],
                                               "label": labels[idx].astype(np.int32)})
        if step % _EVERY.value == 0:
            z_mean, z_stdev = encode_samples(state)
            line = {"game": _GAME.value, "step": step + 1,
                    **{f"latent_recovery_{k}": round(v, 4)
                       for k, v in latent_recovery(np.asarray(z_fixed), z_mean).items()},
                    "z_stdev_mean": round(float(jnp.mean(z_stdev)), 4),
                    **{k: round(float(v), 4) for k, v in metrics.items()
                       if k == "d_loss" or k.startswith("mean_score")},
                    "seconds": round(time.perf_counter() - start, 1)}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    app.run(main)
