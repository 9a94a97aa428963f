"""The run report's numbers on constructed cases whose answers are known by hand.

``report.build_report`` runs as the CLI runs it (pixel features, the trained and the random
encoder's features, the five probe rows, the reconstruction agreement, report.json and the
table); only the networks are stand-ins with the real interfaces, so that every number has a
known answer:

* images: a class pattern (AMP at pixel ``pattern``, 0 at the other first K pixels) and noise
  in the other pixels. In the train and train_val splits the pattern is the label; in the
  evaluation split it is the label for even examples and label + 1 for odd ones, so a perfect
  classifier of patterns scores exactly 1 on train_val and exactly 0.5 on the test split (a
  swap of the two columns shows).
* E: each feature is (pattern pixels) @ S + (noise pixels) @ N, one (S, N) per feature.
  S = I, N = 0 gives the pattern itself (separable); S = 0 gives pure noise (chance). At
  initialisation (the report's random-encoder baseline) avepool_feat is noise and bn_crelu_feat
  separable; the trained encoder has one informative feature, chosen per case, so every row has
  its own expected answer and swapped rows show. ``z_mean`` = the image (E(x) = x), ``z_stdev``
  = 0.25 everywhere.
* G(z) = z W + b: W = I, b = 0 reconstructs exactly (G(E(x)) = x) and is E's exact inverse
  (E(G(z)) = z); W = 0, b = the image of pattern K0 returns a constant. The EMA generator and
  the raw one differ.
* D: s_x = mean(x), s_z = mean(z), s_xz = mean(x * z) over the 64 pixels.

The diagnostics then have exact answers. Latent recovery: correlation 1 and relative error 0
for the exact generator; correlation 0 (a constant carries nothing) and error mean ||b - z|| /
||z|| for the constant one. Reconstruction agreement (a raw-pixel judge, and the BigBiGAN probe
on bn_crelu_feat): 1 for the exact generator whatever the labels, and the fraction of test images
whose pattern is K0 for the constant one (about chance; 1 if x were compared with itself). The
reconstructions' accuracy is the same hand-counted fraction. D's score gaps are the scores'
means over the evaluation images and over the diagnostics' fixed z.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bbg_jax.configs import model_config, train_config
from bbg_jax.evaluation import diagnostics, generation, report, standalone
from bbg_jax.evaluation.config import eval_config
from bbg_jax.train_state import TrainState

K, RES = 10, 8
PIXELS = RES * RES
AMP = 3.0
K0 = 3  # the class pattern of the constant generator's image
SIZES = {"train": 600, "trainval": 200, "eval": 200}
L2_GRID = (0.0, 1e-4, 1e-2)


def _eye(key, shape, dtype=jnp.float32):
    return jnp.eye(*shape, dtype=dtype)


class PatternEncoder(nn.Module):
    """E(x, train, noise) -> {avepool_feat, bn_crelu_feat, z_mean}, as described above."""

    z_dim: int = PIXELS

    @nn.compact
    def __call__(self, x, train=True, noise=None):
        flat = x.reshape(x.shape[0], -1)
        signal, rest = flat[:, :K], flat[:, K:]
        small = nn.initializers.normal(0.1)
        out = {}
        for feature, signal_init in (("avepool_feat", nn.initializers.zeros), ("bn_crelu_feat",
                                                                                _eye)):
            s = self.param(f"{feature}_signal", signal_init, (K, K))
            n = self.param(f"{feature}_noise", small, (PIXELS - K, K))
            out[feature] = signal @ s + rest @ n
        out["z_mean"] = out["z_sample"] = flat @ self.param("to_z", small, (PIXELS, self.z_dim))
        out["z_stdev"] = jnp.full_like(out["z_mean"], 0.25)
        return out


class LinearGenerator(nn.Module):
    """G(z, label, train) = z W + b as an image; keeps batch statistics as G's batch norms do
    (the standing-statistics pass re-estimates them; the output does not read them)."""

    @nn.compact
    def __call__(self, z, label=None, train=True):
        x = z @ self.param("w", nn.initializers.zeros, (PIXELS, PIXELS)) + self.param(
            "b", nn.initializers.zeros, (PIXELS,))
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((PIXELS,)))
        if train and self.is_mutable_collection("batch_stats"):
            mean.value = 0.01 * x.mean(0)
        return x.reshape(-1, RES, RES, 1)


class ProductDiscriminator(nn.Module):
    """D(x, z, train) -> s_x = mean(x), s_z = mean(z), s_xz = mean(x * z)."""

    @nn.compact
    def __call__(self, x, z, train=True):
        flat = x.reshape(x.shape[0], -1)
        return {"score_x": flat.mean(-1), "score_z": z.mean(-1),
                "score_xz": (flat * z).mean(-1)}


def stand_in_models(config):
    return {"G": LinearGenerator(), "E": PatternEncoder(), "D": ProductDiscriminator()}


def pattern_images(pattern, rng):
    flat = np.zeros((len(pattern), PIXELS), np.float32)
    flat[np.arange(len(pattern)), pattern] = AMP
    flat[:, K:] = rng.uniform(-0.5, 0.5, (len(pattern), PIXELS - K))
    return flat.reshape(-1, RES, RES, 1)


def make_split(which):
    """(images, labels, patterns) of a split: balanced labels in a shuffled order."""
    rng = np.random.default_rng({"train": 1, "trainval": 2, "eval": 3}[which])
    n = SIZES[which]
    labels = rng.permutation(np.arange(n) % K).astype(np.int32)
    pattern = labels.copy()
    if which == "eval":
        pattern[1::2] = (labels[1::2] + 1) % K
    return pattern_images(pattern, rng), labels, pattern


SPLITS = {s: make_split(s) for s in SIZES}


def batches(which, max_examples):
    images, labels, _ = SPLITS[which]
    n = len(labels) if max_examples is None else min(max_examples, len(labels))
    for i in range(0, n, 50):
        j = min(i + 50, n)
        yield {"image_e": images[i:j], "image_d": images[i:j], "label": labels[i:j]}


def make_config():
    config = ml_collections.ConfigDict()
    config.model = model_config(resolution=RES, ch=1, z_dim=PIXELS)
    config.model.image_channels = 1
    config.train = train_config()
    config.data = ml_collections.ConfigDict({"eval_split": "test"})
    config.eval = eval_config()
    config.eval.update(dict(batch_size=50, standing_batches=2, generator="ema",
                            bn_stats="standing"))
    config.eval.probe.update(dict(epochs=10, batch_size=64, learning_rate=1e-2, l2_grid=L2_GRID))
    config.eval.diagnostics.update(dict(num_samples=150, num_images=SIZES["eval"]))
    return config


def generator_params(kind):
    w = np.eye(PIXELS, dtype=np.float32) if kind == "exact" else np.zeros((PIXELS, PIXELS),
                                                                          np.float32)
    b = np.zeros(PIXELS, np.float32)
    if kind == "constant":
        b[K0] = AMP
    return {"w": jnp.asarray(w), "b": jnp.asarray(b)}


def trained_encoder(informative):
    """The "trained" E: ``informative`` is the separable feature, the other one pure noise."""
    rng = np.random.default_rng(7)
    params = {"to_z": jnp.eye(PIXELS)}
    for feature in ("avepool_feat", "bn_crelu_feat"):
        on = feature == informative
        params[f"{feature}_signal"] = jnp.eye(K) if on else jnp.zeros((K, K))
        params[f"{feature}_noise"] = (jnp.zeros((PIXELS - K, K)) if on else jnp.asarray(
            rng.normal(0, 0.1, (PIXELS - K, K)), jnp.float32))
    return params


def make_state(informative, ema_generator, raw_generator):
    return TrainState(
        step=jnp.asarray(7, jnp.int32),
        params={"G": generator_params(raw_generator), "E": trained_encoder(informative),
                "D": {}},
        model_state={"G": {"batch_stats": {"mean": jnp.zeros((PIXELS,))}}, "E": {}, "D": {}},
        opt_state={}, ema_params={"G": generator_params(ema_generator)}, probe={},
        rng=jax.random.key_data(jax.random.key(0)))


def run_report(tmp_path, monkeypatch, state):
    monkeypatch.setattr(report, "build_models", stand_in_models)
    monkeypatch.setattr(generation, "build_models", stand_in_models)
    monkeypatch.setattr(diagnostics, "build_models", stand_in_models)
    restored = []
    monkeypatch.setattr(standalone, "restore",
                        lambda config, workdir, step=None: restored.append(step) or state)
    rep = report.build_report(str(tmp_path), batches_fn=batches, config=make_config())
    assert restored == [None]  # the latest checkpoint
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(rep))
    return rep


def check_separable_row(row, name):
    assert row["top1_trainval"] == 1.0, name
    assert row["top5_trainval"] == 1.0, name
    assert row["top1_test"] == 0.5, name  # the even (unshifted) half of the test split
    assert 0.5 <= row["top5_test"] <= 1.0, name
    assert row["l2"] == L2_GRID[0], name  # every strength is perfect: the first one wins


def check_chance_row(row, name):
    for split in ("trainval", "test"):  # chance is 0.1 (top-5: 0.5) on 200 examples
        assert row[f"top1_{split}"] < 0.25, name
        assert 0.3 < row[f"top5_{split}"] < 0.7, name
    assert row["l2"] in L2_GRID


def check_probe_table(rep, informative):
    other = {"avepool_feat": "bn_crelu_feat", "bn_crelu_feat": "avepool_feat"}[informative]
    short = {"avepool_feat": "avepool", "bn_crelu_feat": "bn_crelu"}
    probe = rep["probe"]
    assert set(probe) == set(report.ROWS)
    separable = ["raw_pixels", "random_encoder_bn_crelu", f"bigbigan_{short[informative]}"]
    chance = ["random_encoder_avepool", f"bigbigan_{short[other]}"]
    for name in separable:
        check_separable_row(probe[name], name)
    for name in chance:
        check_chance_row(probe[name], name)
    assert rep["chance"] == pytest.approx(1.0 / K)
    assert rep["step"] == 7 and rep["fid"] == {}
    assert rep["probe_settings"]["selected_on"] == "trainval"
    table = report.format_table(rep)
    for name in separable:
        assert f"{name:26s} 1.0000 / 0.5000   (L2 0)" in table


def fixed_latents():
    config = make_config()
    z, _ = generation.draw_latents(config, jax.random.key(config.eval.seed + 4),
                                   config.eval.diagnostics.num_samples)
    return np.asarray(z, np.float64)


def check_diagnostics(rep, exact: str, constant: str, probe_judge_known: bool):
    """``exact``/``constant``: which generator ("raw" or "ema") is which."""
    diag = rep["diagnostics"]
    assert diag["first"] == diag["last"]  # no periodic evaluation: measured by the report
    d = diag["last"]
    assert d["step"] == 7
    images, labels, pattern = SPLITS["eval"]
    at_k0 = float(np.mean(pattern == K0))
    assert 0.05 < at_k0 < 0.15  # about chance, far from x compared with x (1.0)
    z = fixed_latents()
    b = np.asarray(generator_params("constant")["b"], np.float64)

    assert d[f"latent_recovery_corr_{exact}"] == pytest.approx(1.0, abs=1e-5)
    assert d[f"latent_recovery_rel_error_{exact}"] == pytest.approx(0.0, abs=1e-5)
    assert d[f"latent_recovery_corr_{constant}"] == 0.0
    assert d[f"latent_recovery_rel_error_{constant}"] == pytest.approx(
        np.mean(np.linalg.norm(b - z, axis=1) / np.linalg.norm(z, axis=1)), rel=1e-5)
    assert d["encoder_z_stdev_mean"] == pytest.approx(0.25)

    judges = ("pixel", "probe") if probe_judge_known else ("pixel",)
    for judge in judges:
        assert d[f"recon_agreement_{judge}_{exact}"] == 1.0
        assert d[f"recon_accuracy_{judge}_{exact}"] == 0.5  # the pattern is the label on half
        assert d[f"recon_agreement_{judge}_{constant}"] == at_k0
        assert d[f"recon_accuracy_{judge}_{constant}"] == float(np.mean(labels == K0)) == 1 / K
    assert 0.0 <= d[f"recon_agreement_probe_{constant}"] <= 1.0

    # D sees the raw generator's images with their z, and each image with E(x) = x.
    x = images.reshape(len(images), -1).astype(np.float64)
    g = z if exact == "raw" else np.broadcast_to(b, z.shape)
    n = len(z)
    assert d["score_gap_x"] == pytest.approx(x[:n].mean() - g.mean(), abs=1e-5)
    assert d["score_gap_z"] == pytest.approx(x[:n].mean() - z.mean(), abs=1e-5)
    assert d["score_gap_xz"] == pytest.approx((x[:n] ** 2).mean() - (g * z).mean(), abs=1e-5)
    table = report.format_table(rep)
    assert f"reconstruction class agreement, pixel judge: raw G " \
           f"{d['recon_agreement_pixel_raw']:.3f}, ema G {d['recon_agreement_pixel_ema']:.3f}" \
           in table


def test_diagnostics_of_an_exact_and_a_constant_generator(tmp_path, monkeypatch):
    # The EMA generator reconstructs exactly; the raw one returns a constant.
    rep = run_report(tmp_path, monkeypatch, make_state("avepool_feat", "exact", "constant"))
    check_probe_table(rep, "avepool_feat")
    # bn_crelu_feat (the probe judge's feature) is noise here: only the pixel judge is exact.
    check_diagnostics(rep, exact="ema", constant="raw", probe_judge_known=False)
    m = rep["margin_over_random_encoder"]  # the random encoder's bn_crelu is the separable one
    assert m["bn_crelu_test"] == rep["probe"]["bigbigan_bn_crelu"]["top1_test"] - 0.5 < 0
    assert m["avepool_test"] == 0.5 - rep["probe"]["random_encoder_avepool"]["top1_test"] > 0.2


def test_diagnostics_with_the_generators_swapped(tmp_path, monkeypatch):
    rep = run_report(tmp_path, monkeypatch, make_state("bn_crelu_feat", "constant", "exact"))
    check_probe_table(rep, "bn_crelu_feat")
    check_diagnostics(rep, exact="raw", constant="ema", probe_judge_known=True)
    assert rep["margin_over_random_encoder"]["bn_crelu_test"] == 0.0  # both separable
    assert "step 7: BigBiGAN bn_crelu features +0.0 points" in report.format_table(rep)
