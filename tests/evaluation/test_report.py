"""The run report on a smoke checkpoint (synthetic data, no training needed)."""

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from bbg_jax import checkpoint
from bbg_jax.configs import load_experiment
from bbg_jax.evaluation import diagnostics, evaluators, probe, report, sharded_probe
from bbg_jax.evaluation.config import eval_config
from bbg_jax.train_state import create_train_state

SMOKE = str(Path(__file__).resolve().parents[2] / "experiments" / "smoke.py")


def _smoke_checkpoint(tmp_path):
    """A smoke config's checkpoint at step 4 and periodic FID reports, as a run leaves them."""
    config = load_experiment(SMOKE)
    config.eval = eval_config(fid_num_samples=32)
    config.eval.batch_size = 16
    config.eval.standing_batches = 1
    config.eval.probe.epochs = 2
    config.eval.probe.max_train = 64
    config.eval.diagnostics.num_samples = 32
    config.eval.diagnostics.num_images = 32
    workdir = str(tmp_path)
    state = jax.jit(lambda k: create_train_state(config, k))(jax.random.key(0))
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
    return config, workdir, state


def test_report_table_baselines_and_reconstructions(tmp_path):
    config, workdir, _ = _smoke_checkpoint(tmp_path)
    batches = evaluators.dataset_batches(config, 16)
    rep = report.build_report(workdir, batches_fn=batches)

    assert json.load(open(tmp_path / "report.json")) == json.loads(json.dumps(rep))
    assert set(rep["probe"]) == set(report.ROWS)

    # The raw-pixel row by hand: each image flattened; the probe fitted with the eval config's
    # settings on the first 64 training images (eval.probe.max_train), its L2 chosen on
    # train_val; top-1 / top-5 counted here on train_val and on the evaluation split ("test").
    def split(name, limit):
        parts = list(batches(name, limit))
        x = np.concatenate([np.asarray(b["image_e"], np.float32).reshape(len(b["label"]), -1)
                            for b in parts])
        return x, np.concatenate([np.asarray(b["label"]) for b in parts])

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        split("train", 64), split("trainval", None), split("eval", None))
    assert len(x_train) == 64
    num_classes = int(y_train.max()) + 1
    assert rep["chance"] == 1.0 / num_classes
    fit = probe.train_probe(x_train, y_train, x_val, y_val, num_classes,
                            evaluators.probe_settings(config.eval))

    def top(x, y, k):  # the label among the k highest logits: fewer than k classes above it
        logits = x @ fit.weights + fit.bias
        above = (logits > logits[np.arange(len(y)), y][:, None]).sum(axis=1)
        return float(np.mean(above < k))

    assert rep["probe"]["raw_pixels"] == pytest.approx({
        "l2": fit.l2, "top1_trainval": top(x_val, y_val, 1), "top5_trainval": top(x_val, y_val, 5),
        "top1_test": top(x_test, y_test, 1), "top5_test": top(x_test, y_test, 5)}, abs=1e-12)
    for row in rep["probe"].values():  # every accuracy is a count of examples
        assert row["l2"] in config.eval.probe.l2_grid
        for name, n in (("trainval", len(y_val)), ("test", len(y_test))):
            assert row[f"top1_{name}"] <= row[f"top5_{name}"]
            for k in (1, 5):
                count = row[f"top{k}_{name}"] * n
                assert count == pytest.approx(round(count), abs=1e-9), (row, name, k)
    for feature in ("avepool", "bn_crelu"):
        for name in ("trainval", "test"):
            assert rep["margin_over_random_encoder"][f"{feature}_{name}"] == (
                rep["probe"][f"bigbigan_{feature}"][f"top1_{name}"]
                - rep["probe"][f"random_encoder_{feature}"][f"top1_{name}"])
    assert rep["fid"]["first"] == {"step": 2, "fid_32_ema_standing_train": 90.0}
    assert rep["fid"]["last"]["fid_32_ema_standing_train"] == 70.0
    diag = rep["diagnostics"]["last"]
    assert diag["step"] == 4 and rep["diagnostics"]["first"] == diag
    assert -1.0 <= diag["latent_recovery_corr_raw"] <= 1.0
    for judge in ("pixel", "probe"):
        assert 0.0 <= diag[f"recon_agreement_{judge}_ema"] <= 1.0
    assert "pixel_judge.npz" in os.listdir(tmp_path / "features")
    # The fixed baselines' features are cached, the trained encoder's under its step.
    cached = sorted(os.listdir(tmp_path / "features"))
    assert "pixels_eval.npz" in cached and any(c.startswith("random_encoder") for c in cached)
    assert {"trained_step4_raw_eval.npz", "trained_step4_raw_train_first64.npz"} <= set(cached)
    assert "step 4" in report.format_table(rep)


def test_report_reuses_the_probe_evaluators_features(tmp_path, monkeypatch):
    config, workdir, state = _smoke_checkpoint(tmp_path)
    batches = evaluators.dataset_batches(config, 16)
    extractions, calibrations = [], []
    calibrate = report.random_encoder_variables
    # The evaluator's extractor (each process its part) and the report's (the whole split).
    for cls in (sharded_probe.LocalFeatureExtractor, probe.FeatureExtractor):
        monkeypatch.setattr(cls, "__call__", lambda self, *a, _call=cls.__call__, **k: (
            extractions.append(1) or _call(self, *a, **k)))
    monkeypatch.setattr(report, "random_encoder_variables",
                        lambda *a, **k: calibrations.append(1) or calibrate(*a, **k))

    # The periodic evaluation at step 4 extracts train/trainval/eval features and keeps them.
    evaluator = evaluators.ProbeEvaluator(config, batches, workdir)
    metrics, _ = evaluator.run(state)
    assert len(extractions) == 3
    kept = evaluators.trained_features_path(workdir, 4, "raw", "eval")
    assert os.path.exists(evaluators.trained_features_path(workdir, 4, "raw", "train", 64))
    with np.load(kept) as f:
        np.testing.assert_array_equal(f["label"], np.concatenate(
            [b["label"] for b in batches("eval", None)]))

    # The report extracts only the random encoder's features: the trained ones are reused, and
    # its trained-feature probe reads what the evaluator measured.
    rep = report.build_report(workdir, batches_fn=batches)
    assert len(extractions) == 3 + 3 and len(calibrations) == 1
    assert rep["probe"]["bigbigan_bn_crelu"]["top1_test"] == metrics[
        "probe_top1_bn_crelu_test"]
    # A second report extracts nothing and does not calibrate the random encoder again.
    report.build_report(workdir, batches_fn=batches)
    assert len(extractions) == 6 and len(calibrations) == 1

    # The diagnostics' probe judge is the classifier the evaluator fitted on bn_crelu_feat, not a
    # second fit; without the evaluator's files it fits the same classifier itself.
    fits, train_probe = [], probe.train_probe
    monkeypatch.setattr(probe, "train_probe",
                        lambda *a, **k: fits.append(1) or train_probe(*a, **k))
    e_variables = {"params": state.params["E"], **state.model_state["E"]}
    kept_judge = diagnostics.Diagnostics(config, workdir, batches).probe_judge(e_variables, 4)
    assert not fits
    fresh_judge = diagnostics.Diagnostics(config, None, batches).probe_judge(e_variables, 4)
    assert len(fits) == 1 and kept_judge.l2 == fresh_judge.l2
    np.testing.assert_allclose(kept_judge.weights, fresh_judge.weights, rtol=1e-4, atol=1e-5)

    # The next evaluation keeps only its own step's features.
    evaluator.run(state.replace(step=state.step + 2))
    kept = sorted(p.name for p in (tmp_path / "features").glob("trained_step*"))
    assert kept == [f"trained_step6_raw_{w}.npz" for w in (
        "classifier_bn_crelu_feat", "eval", "train_first64", "trainval")]


def test_random_encoder_statistics_are_calibrated_on_data():
    config = load_experiment(SMOKE)
    batches = evaluators.dataset_batches(config, 16)("train", 64)
    variables = report.random_encoder_variables(config, batches, seed=3)
    means = [np.abs(np.asarray(x)).max() for p, x in
             jax.tree.flatten_with_path(variables["batch_stats"])[0]
             if p[-1].key == "mean"]
    assert max(means) > 0  # moved from the zero initialisation


def test_report_table_fid_line_one_or_two_evaluations():
    """One FID evaluation prints its value; two print first -> last."""
    row = {"top1_trainval": 0.5, "top1_test": 0.5, "top5_test": 0.9, "l2": 0.0}
    rep = {"step": 8, "margin_over_random_encoder": {"bn_crelu_test": 0.04},
           "probe": {"raw_pixels": row}, "chance": 0.1,
           "diagnostics": {"first": {"step": 4}, "last": {"step": 8}}}
    one = {"step": 8, "fid_500_ema": 121.64}
    rep["fid"] = {"first": one, "last": one}
    assert "  fid_500_ema: step 8 121.6\n" in report.format_table(rep)
    rep["fid"] = {"first": {"step": 4, "fid_500_ema": 140.0}, "last": one}
    assert "  fid_500_ema: step 4 140.0 -> step 8 121.6\n" in report.format_table(rep)
    assert "step 8: BigBiGAN bn_crelu features +4.0 points" in report.format_table(rep)
