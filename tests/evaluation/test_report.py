"""The run report on a smoke checkpoint (synthetic data, no training needed)."""

import json
import os
from pathlib import Path

import jax
import numpy as np

from bbg_jax import checkpoint
from bbg_jax.configs import load_experiment
from bbg_jax.evaluation import evaluators, report
from bbg_jax.evaluation.config import eval_config
from bbg_jax.train_state import create_train_state

SMOKE = str(Path(__file__).resolve().parents[2] / "experiments" / "smoke.py")


def test_report_table_baselines_and_reconstructions(tmp_path):
    config = load_experiment(SMOKE)
    config.eval = eval_config(fid_num_samples=32)
    config.eval.batch_size = 16
    config.eval.standing_batches = 1
    config.eval.probe_epochs = 2
    config.eval.probe_max_train = 64
    workdir = str(tmp_path)
    state = jax.jit(lambda k: create_train_state(config, k))(jax.random.PRNGKey(0))
    state = state.replace(step=state.step + 4)  # as if trained 4 steps
    manager = checkpoint.make_manager(workdir, config)
    checkpoint.save(manager, state, config, {"data_batch": 0})
    manager.close()
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    for step, fid in ((2, 90.0), (4, 70.0), (6, 50.0)):  # as the loop writes them
        out = tmp_path / "eval" / f"step_{step}"
        out.mkdir(parents=True)
        (out / "report.json").write_text(json.dumps(
            {"step": step, "metrics": {"fid_32_ema_standing_train": fid}}))

    batches = evaluators.dataset_batches(config, 16)
    rep = report.build_report(workdir, batches_fn=batches)

    assert json.load(open(tmp_path / "report.json")) == json.loads(json.dumps(rep))
    assert set(rep["probe"]) == set(report.ROWS)
    for row in rep["probe"].values():
        assert 0.0 <= row["top1_test"] <= row["top5_test"] <= 1.0
        assert row["l2"] in config.eval.probe_l2_grid
    assert rep["fid"]["first"] == {"step": 2, "fid_32_ema_standing_train": 90.0}
    assert rep["fid"]["last"]["fid_32_ema_standing_train"] == 70.0
    rc = rep["reconstruction_class_agreement"]
    assert 0.0 <= rc["agreement"] <= 1.0 and rc["num_images"] > 0
    # The fixed baselines' features are cached; the trained encoder's are not.
    cached = sorted(os.listdir(tmp_path / "features"))
    assert "pixels_eval.npz" in cached and any(c.startswith("random_encoder") for c in cached)
    assert "step 4" in report.format_table(rep)


def test_random_encoder_statistics_are_calibrated_on_data():
    config = load_experiment(SMOKE)
    batches = evaluators.dataset_batches(config, 16)("train", 64)
    variables = report.random_encoder_variables(config, batches, seed=3)
    means = [np.abs(np.asarray(x)).max() for p, x in
             jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]
             if p[-1].key == "mean"]
    assert max(means) > 0  # moved from the zero initialisation
