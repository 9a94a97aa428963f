"""The run report: ``python -m bbg_jax.evaluation.report --workdir=DIR [--step=N]``.

Writes DIR/report.json (and prints its table) for a trained BigBiGAN checkpoint:

* a linear-probe table computed by one probe (``bbg_jax.evaluation.probe``, L2 chosen on
  train_val) over four feature sets: raw pixels, the same encoder with random weights
  (``avepool_feat`` and ``bn_crelu_feat``; its BN statistics re-estimated on training images so
  the baseline is not handicapped by uncalibrated normalisation), and BigBiGAN's ``avepool_feat``
  and ``bn_crelu_feat``: top-1/top-5 on train_val and on the evaluation split;
* FID at the first and the last periodic evaluation up to the step (DIR/eval/step_*/);
* the margin of BigBiGAN's features over the random-weight encoder's (test and train_val top-1);
* the coupling diagnostics (``bbg_jax.evaluation.diagnostics``: latent recovery, E's posterior
  scale, D's score gap, reconstruction class agreement with the raw and the EMA G judged by a
  raw-pixel classifier and by the BigBiGAN probe) at the first and the last periodic evaluation,
  measured here when the evaluation at the step did not run them.

Features of the fixed baselines (pixels, random encoder) are cached in DIR/features/ (they do not
change between steps); the trained encoder's features are those the probe evaluator kept when it
evaluated the step (DIR/features/trained_step{N}_raw_*.npz), else extracted afresh.
"""

from __future__ import annotations

import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from bbg_jax import console, paths
from bbg_jax.evaluation import diagnostics, probe, standalone
from bbg_jax.evaluation import evaluators as evaluators_lib
from bbg_jax.evaluation.config import pixels_max_train
from bbg_jax.models import build_models
from bbg_jax.models.build import example_inputs

SPLITS = ("train", "trainval", "eval")


def pixel_features(batches, n: int | None = None) -> dict[str, np.ndarray]:
    """The raw-pixel features (``diagnostics.pixels``, the pixel judge's) of the first ``n``
    examples (every example when None), made batch by batch."""
    return diagnostics.pixel_features(batches, n)


def random_encoder_variables(config: ml_collections.ConfigDict, batches, seed: int,
                             calibration_batches: int = 50) -> dict:
    """E at initialisation, its BN running statistics re-estimated on training images."""
    E = build_models(config)["E"]
    x, *_ = example_inputs(config)["E"]
    variables = flax.core.unfreeze(E.init({"params": jax.random.key(seed)}, x, train=False,
                                          noise=jnp.zeros((x.shape[0], config.model.z_dim))))

    @jax.jit
    def calibrate(variables, images):
        noise = jnp.zeros((images.shape[0], config.model.z_dim))
        _, new = E.apply(variables, images, train=True, noise=noise, mutable=["batch_stats"])
        return {**variables, **new}

    for i, b in enumerate(batches):
        if i == calibration_batches:
            break
        variables = calibrate(variables, jnp.asarray(b["image_e"]))
    return variables


def probe_table(features: dict[str, dict[str, dict[str, np.ndarray]]], num_classes: int,
                settings: probe.ProbeSettings) -> dict[str, dict]:
    """{row: {top1_trainval, top1_test, top5_..., l2}}."""
    rows = {}
    for row, (source, key) in ROWS.items():
        if source not in features:
            continue
        f = features[source]
        result = probe.train_probe(f["train"][key], f["train"]["label"], f["trainval"][key],
                                   f["trainval"]["label"], num_classes, settings)
        out = {"l2": result.l2}
        for split, name in (("trainval", "trainval"), ("eval", "test")):
            for metric, value in probe.evaluate_probe(result, f[split][key],
                                                      f[split]["label"]).items():
                out[f"{metric}_{name}"] = value
        rows[row] = out
    return rows


# Table row -> (feature source, feature key).
ROWS = {
    "raw_pixels": ("pixels", "pixels"),
    "random_encoder_avepool": ("random", "avepool_feat"),
    "random_encoder_bn_crelu": ("random", "bn_crelu_feat"),
    "bigbigan_avepool": ("trained", "avepool_feat"),
    "bigbigan_bn_crelu": ("trained", "bn_crelu_feat"),
}


def fid_first_last(workdir: str, up_to: int | None = None) -> dict:
    """The FID metrics of the first and the last periodic evaluation (at or before ``up_to``)."""
    found = []
    for r in standalone.periodic_reports(workdir):
        fids = {k: v for k, v in r["metrics"].items() if k.startswith("fid_")}
        if fids and (up_to is None or r["step"] <= up_to):
            found.append((r["step"], fids))
    if not found:
        return {}
    (s0, f0), (s1, f1) = found[0], found[-1]
    return {"first": {"step": s0, **f0}, "last": {"step": s1, **f1},
            "all": {str(s): f for s, f in found}}


def diagnostics_first_last(workdir: str, up_to: int) -> dict:
    """The coupling diagnostics (``bbg_jax.evaluation.diagnostics``) of the first and the last
    periodic evaluation at or before ``up_to``: {"first": {"step": s, ...}, "last": ...}."""
    found = [{"step": r["step"], **{k: v for k, v in r["metrics"].items()
                                    if k.startswith(diagnostics.METRIC_PREFIXES)}}
             for r in standalone.periodic_reports(workdir) if r["step"] <= up_to]
    found = [f for f in found if len(f) > 1]
    return {"first": found[0], "last": found[-1]} if found else {}


def build_report(workdir: str, step: int | None = None, batches_fn=None,
                 config: ml_collections.ConfigDict | None = None) -> dict:
    t0 = time.time()
    config = config or standalone.saved_config(workdir)
    ev = evaluators_lib.eval_section(config)
    batches_fn = batches_fn or evaluators_lib.dataset_batches(config, ev.batch_size)
    state = standalone.restore(config, workdir, step)
    step = int(jax.device_get(state.step))
    max_train = ev.probe.max_train
    limits = {"train": max_train, "trainval": None, "eval": None}
    # The raw-pixel row reads its own bounded number of training examples (the whole split as
    # float32 pixels does not fit a host at ImageNet size); the probe's rows keep max_train.
    pixel_limits = {**limits, "train": pixels_max_train(ev)}
    E = build_models(config)["E"]
    extract = probe.FeatureExtractor(E)  # jitted once for every split and both encoders

    seconds: dict[str, float] = {}  # where the report's time goes, kept in report.json

    def timed(name, fn):
        start = time.time()
        out = fn()
        seconds[name] = round(time.time() - start, 1)
        return out

    def split_features(compute, path):
        return {s: probe.cached(path(s), lambda s=s: compute(s)) for s in SPLITS}

    def fixed(name, limited=None):
        def path(s):
            first = "" if limited is None or limited[s] is None else f"_first{limited[s]}"
            return paths.path(workdir) / "features" / f"{name}_{s}{first}.npz"
        return path

    features = {
        "pixels": timed("pixel_features", lambda: split_features(
            lambda s: pixel_features(batches_fn(s, pixel_limits[s]), pixel_limits[s]),
            fixed("pixels", pixel_limits))),
        # The probe evaluator kept these if it evaluated this step (same batches and limits).
        "trained": timed("trained_features", lambda: split_features(
            lambda s: extract({"params": state.params["E"], **state.model_state["E"]},
                              batches_fn(s, limits[s])),
            lambda s: evaluators_lib.trained_features_path(workdir, step, "raw", s, limits[s]))),
    }
    # One random initialisation per training seed, so the baseline row has its own seed spread.
    random_seed = 1000 + config.train.seed
    random_vars = []  # calibrated only if some split's features are not cached yet

    def random_features(s):
        if not random_vars:
            random_vars.append(timed("random_encoder_calibration", lambda: (
                random_encoder_variables(config, batches_fn("train", None), random_seed))))
        return extract(random_vars[0], batches_fn(s, limits[s]))

    features["random"] = timed("random_features", lambda: split_features(
        random_features, fixed(f"random_encoder_seed{random_seed}")))
    num_classes = int(features["pixels"]["train"]["label"].max()) + 1
    settings = evaluators_lib.probe_settings(ev)
    rows = timed("probes", lambda: probe_table(features, num_classes, settings))

    diag = diagnostics_first_last(workdir, step)
    if diag.get("last", {}).get("step") != step:  # the evaluation at this step had none
        measured, _ = timed("diagnostics", lambda: diagnostics.Diagnostics(
            config, workdir, batches_fn).run(state))
        diag = {"first": diag.get("first", {"step": step, **measured}),
                "last": {"step": step, **measured}}
    margin = {f"{feature}_{split}": rows[f"bigbigan_{feature}"][f"top1_{split}"]
              - rows[f"random_encoder_{feature}"][f"top1_{split}"]
              for feature in ("avepool", "bn_crelu") for split in ("trainval", "test")}
    report = {
        "step": step,
        "probe": rows,
        "probe_settings": {"epochs": settings.epochs, "batch_size": settings.batch_size,
                           "learning_rate": settings.learning_rate,
                           "l2_grid": list(settings.l2_grid), "max_train": max_train,
                           "raw_pixels_max_train": pixel_limits["train"],
                           "selected_on": "trainval", "test_split": config.data.eval_split},
        "fid": fid_first_last(workdir, up_to=step),
        "margin_over_random_encoder": margin,
        "diagnostics": diag,
        "chance": 1.0 / num_classes,
        "seed": config.train.seed,
        "seconds": round(time.time() - t0, 1),
        "seconds_by_part": seconds,
    }
    if jax.process_index() == 0:
        paths.write_json(paths.path(workdir) / "report.json", report)
    return report


def format_table(report: dict) -> str:
    m = report["margin_over_random_encoder"]["bn_crelu_test"]
    lines = [f"step {report['step']}: BigBiGAN bn_crelu features {100 * m:+.1f} points test "
             f"top-1 over the same encoder with random weights",
             "linear probe top-1 (train_val / test)"]
    for row, r in report["probe"].items():
        lines.append(f"  {row:26s} {r['top1_trainval']:.4f} / {r['top1_test']:.4f}"
                     f"   (L2 {r['l2']:g})")
    fid = report["fid"]
    if fid:
        name = next(k for k in fid["first"] if k.startswith("fid_"))
        first, last = fid["first"], fid["last"]
        lines.append(f"  {name}: step {last['step']} {last[name]:.1f}"
                     if first["step"] == last["step"] else
                     f"  {name}: step {first['step']} {first[name]:.1f} -> "
                     f"step {last['step']} {last[name]:.1f}")
    lines.extend(diagnostics.format_lines(report["diagnostics"]["first"],
                                          report["diagnostics"]["last"], report["chance"]))
    return "\n".join(lines)


_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")


def main(argv):
    del argv
    console.quiet_terminal()  # INFO logs into WORKDIR/log.txt, as for training
    run_log = console.RunLog(_WORKDIR.value, native_to_log=True)
    console.say(f"report: linear probes of raw pixels, a random-weight encoder and the trained "
                f"encoder; reconstructions ({_WORKDIR.value}) ...")
    try:
        report = build_report(_WORKDIR.value, _STEP.value)
    finally:
        run_log.close()
    print(format_table(report))


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
