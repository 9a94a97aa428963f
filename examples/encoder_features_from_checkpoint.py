"""E's features from a trained checkpoint.

A run of ``python -m bbg_jax.main --config=<experiment.py> --workdir=<dir>`` writes orbax
checkpoints of its whole train state under ``<dir>/checkpoints``. To read one: rebuild the
state's shapes from the same config (``create_train_state`` under ``jax.eval_shape``), restore
with ``bbg_jax.checkpoint.restore_state``, and apply E in evaluation mode with its parameters
(``state.params["E"]``) and batch-norm averages (``state.model_state["E"]``).

So that it runs anywhere, this example first writes a checkpoint of its own (the tiny smoke
configuration at initialisation) with the trainer's checkpoint code, then reads it back.
Run: python examples/encoder_features_from_checkpoint.py [workdir]
"""

import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from bbg_jax import checkpoint
from bbg_jax.configs import load_experiment
from bbg_jax.models import build_models
from bbg_jax.train_state import create_train_state

CONFIG = str(Path(__file__).resolve().parents[1] / "experiments" / "smoke.py")


def write_tiny_checkpoint(workdir: str, config) -> None:
    state = create_train_state(config, jax.random.key(0))
    manager = checkpoint.make_manager(workdir, config)
    checkpoint.save(manager, state, config, data_position={})
    manager.close()


def encoder_features(workdir: str, config, images: jax.Array) -> jax.Array:
    abstract = jax.eval_shape(lambda: create_train_state(config, jax.random.key(0)))
    state = checkpoint.restore_state(workdir, abstract)  # the latest step
    E = build_models(config)["E"]
    variables = {"params": state.params["E"], **state.model_state["E"]}
    out = E.apply(variables, images, train=False,
                  noise=jnp.zeros((images.shape[0], config.model.z_dim)))
    return out["avepool_feat"]  # the representation BigBiGAN evaluates (bn_crelu_feat too)


def main(workdir: str) -> None:
    config = load_experiment(CONFIG)
    write_tiny_checkpoint(workdir, config)
    r = config.model.encoder.resolution
    images = jax.random.uniform(jax.random.key(1), (4, r, r, config.model.image_channels),
                                minval=-1.0, maxval=1.0)
    feats = encoder_features(workdir, config, images)
    print("features", feats.shape, "from", checkpoint.checkpoint_dir(workdir))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(tmp)
