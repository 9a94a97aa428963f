"""End to end on the smoke config: train 6 steps, then evaluate the checkpoint standalone."""

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from bbg_jax import loop
from bbg_jax.configs import load_experiment
from bbg_jax.evaluation import evaluators, standalone
from bbg_jax.evaluation.config import eval_config

SMOKE = str(Path(__file__).resolve().parents[2] / "experiments" / "smoke.py")


def _fake_features(images):
    """Stands in for Inception (minutes per batch on this CPU): cheap image statistics."""
    x = jnp.asarray(images).reshape(images.shape[0], -1)
    return jnp.tile(x[:, :64], (1, 32))  # [N, 2048]


@pytest.mark.slow
def test_smoke_checkpoint_evaluates_standalone(tmp_path):
    config = load_experiment(SMOKE)
    config.eval = eval_config(fid_num_samples=32)
    config.eval.batch_size = 16
    config.eval.sheet_size = 8
    config.eval.standing_batches = 2
    config.eval.probe_epochs = 2
    config.eval.probe_max_train = 64
    workdir = str(tmp_path)
    loop.train_and_evaluate(config, workdir)

    batches = evaluators.dataset_batches(config, 16)
    state = standalone.restore(config, workdir)
    evs = [evaluators.SampleSheets(config, batches),
           evaluators.FIDEvaluator(config, workdir, batches, features=_fake_features),
           evaluators.ProbeEvaluator(config, batches)]
    metrics, images = evaluators.run_all(evs, state)
    assert "fid_32_ema_standing_train" in metrics
    assert np.isfinite(metrics["fid_32_ema_standing_train"])
    assert os.path.exists(os.path.join(workdir, "fid_stats"))  # real statistics cached
    assert "probe_top1_bn_crelu_trainval" in metrics
    assert {"samples_ema_standing", "interpolations_ema_standing",
            "reconstructions_ema_standing"} <= set(images)
    assert all(im.dtype == np.uint8 and im.ndim == 3 for im in images.values())

    path = standalone.write_outputs(workdir, 6, metrics, images, {"generator": "ema"})
    assert json.load(open(path))["metrics"] == metrics
    assert standalone.record_best_probe(workdir, 6, metrics)
    assert os.path.isdir(os.path.join(workdir, "best_probe_checkpoint", "6"))
    assert not standalone.record_best_probe(workdir, 6, metrics)  # not an improvement
