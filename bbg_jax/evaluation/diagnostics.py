"""Is E learning to invert G? The coupling diagnostics, defined once, run as an evaluator.

E learns about images only through D's joint score s_xz, so a run whose probe barely beats a
random-weight encoder needs to show where the coupling stands. Every evaluation (and the run
report) records:

* ``latent_recovery_corr_{raw,ema}``: on fresh z, the mean over dimensions of the Pearson
  correlation between z and E's ``z_mean`` of G(z) (1 when E inverts G up to a per-dimension
  affine map, 0 when they are unrelated); ``latent_recovery_rel_error_{raw,ema}``: the mean of
  ||z_mean - z|| / ||z|| (0 for an exact inverse, 1 for z_mean = 0).
* ``z_chunk_effect_{i}_raw`` (hierarchical z only): the mean |G(z') − G(z)| per pixel when
  z' redraws chunk i of z (the chunk that feeds G's first layer is 0, block i's conditional
  BN reads chunk i): how much of each chunk reaches x, so how much of z D can see and E can
  recover. ``latent_recovery_corr_chunk_{i}_raw``: latent recovery over that chunk's dimensions.
* ``encoder_z_stdev_mean``: the mean of E's posterior scale on evaluation images (near 1, the
  prior's scale, z_sample is mostly noise and s_xz has little to read).
* ``score_gap_{xz,x,z}``: D's mean score on encoder pairs (x, E(x)) minus that on generator
  pairs (G(z), z), for each score D has: how well D separates the two joint distributions.
* ``recon_agreement_{pixel,probe}_{raw,ema}``: the fraction of evaluation images x whose
  reconstruction G(E(x)) (z_mean) gets x's predicted class, judged by a linear classifier on raw
  pixels (which does not use E) and by the BigBiGAN probe (a linear classifier on E's
  ``bn_crelu_feat``); ``recon_accuracy_...``: the reconstructions' accuracy against the labels.

``raw`` is G's current weights (the G that E is trained against), ``ema`` its moving average;
both with the evaluation's BN mode (``eval.bn_stats``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bbg_jax import paths
from bbg_jax.evaluation import generation, probe
from bbg_jax.evaluation.config import pixels_max_train
from bbg_jax.evaluation.probe_files import trained_classifier_path, trained_features_path
from bbg_jax.evaluation.settings import eval_section, probe_settings
from bbg_jax.evaluation.sharded import ShardedFn, one_answer, replicate
from bbg_jax.models import build_models
from bbg_jax.models.generator import BIGGAN_G_CHANNELS

JUDGES = ("pixel", "probe")
PROBE_JUDGE_FEATURE = "bn_crelu_feat"
# The names of the metrics this module writes begin with one of these.
METRIC_PREFIXES = ("latent_recovery_", "encoder_z_stdev_mean", "score_gap_", "recon_agreement_",
                   "recon_accuracy_", "z_chunk_effect_")


def z_chunks(config: ml_collections.ConfigDict) -> int:
    """How many equal chunks G splits z into (1 when z is not hierarchical): one for the first
    layer and one per block, as ``Generator`` splits it."""
    g = config.model.generator
    if not g.hierarchical_z or g.deep:
        return 1
    return len(BIGGAN_G_CHANNELS.get(g.resolution, ())) or 1


def latent_recovery(z: np.ndarray, z_hat: np.ndarray) -> dict[str, float]:
    """Correlation (mean over dimensions) and relative error (mean over rows) of ``z_hat``
    against ``z``, both [N, d]."""
    z, z_hat = np.asarray(z, np.float64), np.asarray(z_hat, np.float64)
    zc, hc = z - z.mean(0), z_hat - z_hat.mean(0)
    denominator = np.sqrt((zc ** 2).sum(0) * (hc ** 2).sum(0))
    # A constant z_hat dimension carries nothing about z: correlation 0, not NaN.
    corr = np.where(denominator > 0, (zc * hc).sum(0) / np.maximum(denominator, 1e-300), 0.0)
    rel = np.linalg.norm(z_hat - z, axis=1) / np.linalg.norm(z, axis=1)
    return {"corr": float(corr.mean()), "rel_error": float(rel.mean())}


def class_agreement(pred_x: np.ndarray, pred_r: np.ndarray, label: np.ndarray
                    ) -> dict[str, float]:
    """How often a reconstruction gets its original's predicted class, and its accuracy."""
    pred_x, pred_r, label = map(np.asarray, (pred_x, pred_r, label))
    return {"agreement": float(np.mean(pred_x == pred_r)),
            "accuracy": float(np.mean(pred_r == label))}


def score_gap(scores_enc: dict[str, np.ndarray], scores_gen: dict[str, np.ndarray]
              ) -> dict[str, float]:
    """Mean score on encoder pairs minus mean score on generator pairs, per score name
    (``score_xz`` -> ``xz``)."""
    return {name.removeprefix("score_"): float(np.mean(scores_enc[name])
                                               - np.mean(scores_gen[name]))
            for name in scores_enc}


def pixels(images: np.ndarray) -> np.ndarray:
    """The raw-pixel features: each image flattened (the report's raw_pixels row)."""
    images = np.asarray(images, np.float32)
    return images.reshape(images.shape[0], -1)


def predict(classifier: probe.ProbeResult, features: np.ndarray) -> np.ndarray:
    return np.argmax(np.asarray(features) @ classifier.weights + classifier.bias, -1)


def _take(batches, n: int | None, keys=None, transform=None) -> dict[str, np.ndarray]:
    """The first ``n`` examples (all when None) of ``batches``, concatenated: iteration stops
    at the batch that reaches ``n`` (nothing past it is read, whatever the source yields).
    ``keys`` keeps only those arrays; ``transform(key, array)`` maps each batch's before it is
    kept (the pixel features are made batch by batch, never from the whole images)."""
    parts, seen = [], 0
    for batch in batches:
        if n is not None:
            batch = {k: v[:n - seen] for k, v in batch.items()}
        kept = {k: np.asarray(v) for k, v in batch.items() if keys is None or k in keys}
        if transform is not None:
            kept = {k: transform(k, v) for k, v in kept.items()}
        parts.append(kept)
        seen += len(next(iter(batch.values())))
        if n is not None and seen >= n:
            break
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def pixel_features(batches, n: int | None) -> dict[str, np.ndarray]:
    """The raw-pixel features (``pixels`` of ``image_e``) and labels of the first ``n``
    examples (all when None), made batch by batch (read stops at ``n``)."""
    out = _take(batches, n, keys=("image_e", "label"),
                transform=lambda k, v: pixels(v) if k == "image_e" else v.astype(np.int32))
    return {"pixels": out["image_e"], "label": out["label"]}


class Diagnostics:
    """The coupling diagnostics of one train state (module docstring); evaluator "diagnostics".

    Fixed for the run: the latents (``eval.diagnostics.num_samples``, from ``eval.seed``) and
    the evaluation images (the first ``eval.diagnostics.num_images`` of the evaluation split).
    The pixel judge is fitted once (train -> L2 chosen on train_val, the probe's protocol) and
    cached in WORKDIR/features/; the probe judge is fitted on the evaluated E's features.
    """

    name = "diagnostics"

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | None, batches):
        self.config, self.workdir, self.batches = config, workdir, batches
        self.ev = ev = eval_section(config)
        dg = ev.diagnostics
        models = build_models(config)
        self.G, self.E, self.D = models["G"], models["E"], models["D"]
        self.sampler = generation.Sampler(config)
        mesh = self.sampler.mesh
        self.z, self.y = (np.asarray(a) if a is not None else None for a in
                          generation.draw_latents(config, jax.random.key(ev.seed + 4),
                                                  dg.num_samples))
        self.real = _take(batches("eval", dg.num_images), dg.num_images)
        z_dim = config.model.z_dim
        self.noise = np.asarray(jax.random.normal(jax.random.key(ev.seed + 5),
                                                  (len(self.real["label"]), z_dim)))
        self.chunks = z_chunks(config)
        # z with one chunk redrawn, for each chunk (``z_chunk_effect_*``).
        fresh = np.asarray(generation.draw_latents(config, jax.random.key(ev.seed + 6),
                                                   dg.num_samples)[0])
        width = z_dim // self.chunks
        self.z_redrawn = []
        for i in range(self.chunks if self.chunks > 1 else 0):
            z = self.z.copy()
            z[:, i * width:(i + 1) * width] = fresh[:, i * width:(i + 1) * width]
            self.z_redrawn.append(z)
        E, D = self.E, self.D

        def encode(variables, batch):
            x = batch["x"]
            out = E.apply(variables, x, train=False, noise=jnp.zeros((x.shape[0], z_dim)))
            return {k: out[k].astype(jnp.float32)
                    for k in ("z_mean", "z_stdev", PROBE_JUDGE_FEATURE)}

        def encode_sample(variables, xn):
            return E.apply(variables, xn["x"], train=False, noise=xn["noise"])["z_sample"]

        def score(variables, xz):
            scores = D.apply(variables, xz["x"], xz["z"], train=False)
            return {k: v.astype(jnp.float32) for k, v in scores.items()}

        self._encode = ShardedFn(encode, mesh)
        self._encode_sample = ShardedFn(encode_sample, mesh)
        self._score = ShardedFn(score, mesh)
        self._pixel_judge = None
        self.extract = probe.FeatureExtractor(E, mesh)

    # -- judges ---------------------------------------------------------------------------------

    def _fit(self, features: dict[str, dict[str, np.ndarray]], key: str) -> probe.ProbeResult:
        train, val = features["train"], features["trainval"]
        num_classes = int(max(train["label"].max(), val["label"].max())) + 1
        return probe.train_probe(train[key], train["label"], val[key], val["label"],
                                 num_classes, probe_settings(self.ev))

    def pixel_judge(self) -> probe.ProbeResult:
        """The raw-pixel classifier: fitted on the first ``eval.pixels_max_train`` training
        examples (``config.pixels_max_train``: at most probe.max_train) and train_val, cached in
        WORKDIR/features/pixel_judge.npz with that bound (a cache of another bound is refitted).
        """
        if self._pixel_judge is None:
            limits = {"train": pixels_max_train(self.ev), "trainval": None}
            bound = np.asarray(-1 if limits["train"] is None else limits["train"])
            path = (None if self.workdir is None else
                    paths.path(self.workdir) / "features" / "pixel_judge.npz")

            def fit():
                feats = {split: pixel_features(self.batches(split, limit), limit)
                         for split, limit in limits.items()}
                return {**probe.result_arrays(self._fit(feats, "pixels")), "max_train": bound}

            arrays = probe.cached(path, fit)
            if "max_train" not in arrays or arrays["max_train"] != bound:
                arrays = fit()  # another bound's (or an older version's) judge: refit, keep it
                if path is not None and jax.process_index() == 0:
                    paths.save_npz(path, arrays)
            self._pixel_judge = probe.result_from_arrays(arrays)
        return self._pixel_judge

    def probe_judge(self, e_variables: dict, step: int) -> probe.ProbeResult:
        """The BigBiGAN probe of the evaluated E: the classifier the probe evaluator fitted for
        this step when it ran first with raw weights, else fitted here (on the features it
        kept, else extracted here)."""
        if self.workdir is not None:
            path = trained_classifier_path(self.workdir, step, "raw", PROBE_JUDGE_FEATURE)
            if one_answer(path.exists()):
                return probe.result_from_arrays(paths.load_npz(path))
        feats = {}
        for split, limit in (("train", self.ev.probe.max_train), ("trainval", None)):
            def compute(split=split, limit=limit):
                return self.extract(e_variables, self.batches(split, limit))
            path = (None if self.workdir is None else
                    trained_features_path(self.workdir, step, "raw", split, limit))
            if path is not None and not one_answer(path.exists()):
                path = None  # do not leave a second copy behind
            feats[split] = probe.cached(path, compute)
        return self._fit(feats, PROBE_JUDGE_FEATURE)

    # -- the evaluator ------------------------------------------------------------------------

    def _batched(self, fn, variables, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``fn`` over ``arrays`` in eval.batch_size rows at a time, concatenated."""
        n, bs = len(next(iter(arrays.values()))), self.ev.batch_size
        parts = [fn(variables, {k: v[i:i + bs] for k, v in arrays.items()})
                 for i in range(0, n, bs)]
        if isinstance(parts[0], dict):
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return np.concatenate(parts)

    def _generate(self, sample, z: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        bs = self.ev.batch_size
        return np.concatenate([sample(z[i:i + bs], None if y is None else y[i:i + bs])
                               for i in range(0, len(z), bs)])

    def _for_encoder(self, images: np.ndarray) -> np.ndarray:
        """G's images at E's resolution, resized as the data pipeline does where they differ."""
        res_e = self.config.model.encoder.resolution
        if images.shape[1] == res_e:
            return images
        return np.asarray(jax.image.resize(
            images, (images.shape[0], res_e, res_e, images.shape[3]), "bilinear"))

    def run(self, state):
        ev = self.ev
        step = int(jax.device_get(state.step))
        mesh = self.sampler.mesh
        e_variables = {"params": state.params["E"], **state.model_state["E"]}
        e_rep = replicate(e_variables, mesh)
        d_rep = replicate({"params": state.params["D"], **state.model_state["D"]}, mesh)
        encode = lambda x: self._batched(self._encode, e_rep, {"x": x})  # noqa: E731
        judges = {"pixel": (self.pixel_judge(), lambda x, e: pixels(x)),
                  "probe": (self.probe_judge(e_variables, step),
                            lambda x, e: e[PROBE_JUDGE_FEATURE])}
        real_x = self.real["image_e"]
        real_e = encode(real_x)
        out = {"encoder_z_stdev_mean": float(np.mean(real_e["z_stdev"]))}
        pred_x = {j: predict(c, f(real_x, real_e)) for j, (c, f) in judges.items()}
        y_real = self.real["label"] if self.y is not None else None
        for which in generation.GENERATORS:
            if which == "ema" and "G" not in state.ema_params:
                continue
            sample = self.sampler.bind(state, which, ev.bn_stats, jax.random.key(ev.seed + 1),
                                       ev.standing_batches, ev.batch_size)
            fake = self._generate(sample, self.z, self.y)
            z_mean = encode(self._for_encoder(fake))["z_mean"]
            for k, v in latent_recovery(self.z, z_mean).items():
                out[f"latent_recovery_{k}_{which}"] = v
            if which == "raw":
                out.update(self._chunks(sample, fake, z_mean))
            recon = self._for_encoder(self._generate(sample, real_e["z_mean"], y_real))
            recon_e = encode(recon)
            for j, (classifier, feature) in judges.items():
                agree = class_agreement(pred_x[j], predict(classifier, feature(recon, recon_e)),
                                        self.real["label"])
                out[f"recon_agreement_{j}_{which}"] = agree["agreement"]
                out[f"recon_accuracy_{j}_{which}"] = agree["accuracy"]
            if which == "raw":
                out.update(self._score_gap(d_rep, e_rep, fake))
        return out, {}

    def _chunks(self, sample, fake: np.ndarray, z_mean: np.ndarray) -> dict[str, float]:
        """Per chunk of z: how much redrawing it changes G(z), and E's recovery of it."""
        out = {}
        width = self.z.shape[1] // self.chunks
        for i, z in enumerate(self.z_redrawn):
            moved = self._generate(sample, z, self.y)
            out[f"z_chunk_effect_{i}_raw"] = float(np.mean(np.abs(moved - fake)))
            part = slice(i * width, (i + 1) * width)
            out[f"latent_recovery_corr_chunk_{i}_raw"] = latent_recovery(
                self.z[:, part], z_mean[:, part])["corr"]
        return out

    def _score_gap(self, d_rep, e_rep, fake: np.ndarray) -> dict[str, float]:
        """D (evaluation mode) on encoder pairs (x, z_sample of E(x)) and generator pairs."""
        n = min(len(fake), len(self.real["label"]))
        z_hat = self._batched(self._encode_sample, e_rep,
                              {"x": self.real["image_e"][:n], "noise": self.noise[:n]})
        enc = self._batched(self._score, d_rep, {"x": self.real["image_d"][:n], "z": z_hat})
        # G's images are at D's resolution (the training step scores them as they are).
        gen = self._batched(self._score, d_rep, {"x": fake[:n], "z": self.z[:n]})
        return {f"score_gap_{k}": v for k, v in score_gap(enc, gen).items()}


def format_lines(first: dict, last: dict, chance: float) -> list[str]:
    """The report table's lines for the diagnostics of the first and last evaluation."""
    def change(name: str, fmt: str = ".3f") -> str:
        a, b = first.get(name), last.get(name)
        if b is None:
            return "n/a"
        if a is None or first["step"] == last["step"]:
            return f"{b:{fmt}}"
        return f"step {first['step']} {a:{fmt}} -> step {last['step']} {b:{fmt}}"

    lines = [f"  latent recovery corr (raw G): {change('latent_recovery_corr_raw')}; "
             f"EMA G: {change('latent_recovery_corr_ema')}"]
    chunks = sorted(int(k.split("_")[3]) for k in last if k.startswith("z_chunk_effect_"))
    if chunks:
        def per_chunk(name: str) -> str:
            return " / ".join(f"{last[name.format(i)]:.3f}" for i in chunks)

        lines.append(f"  per z chunk {' / '.join(map(str, chunks))} at step {last['step']}: "
                     f"mean |dx| when redrawn {per_chunk('z_chunk_effect_{}_raw')}; latent "
                     f"recovery {per_chunk('latent_recovery_corr_chunk_{}_raw')}")
    lines.append(f"  E's mean z_stdev {change('encoder_z_stdev_mean')}; D's s_xz gap (encoder - "
                 f"generator pairs) {change('score_gap_xz')}")
    for judge in JUDGES:
        parts = [f"{which} G {last[f'recon_agreement_{judge}_{which}']:.3f}"
                 for which in ("raw", "ema") if f"recon_agreement_{judge}_{which}" in last]
        lines.append(f"  reconstruction class agreement, {judge} judge: {', '.join(parts)} "
                     f"(chance {chance:.2f})")
    return lines
