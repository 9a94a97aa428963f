"""Evaluate a checkpoint: ``python -m bbg_jax.main --mode=eval --workdir=DIR [--step=N]``.

Writes WORKDIR/eval/step_N/report.json (metrics plus what produced them) and one PNG per sheet,
and updates WORKDIR/eval/best_probe.json when the train_val probe accuracy improves.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import jax
import ml_collections

from bbg_jax import checkpoint
from bbg_jax.evaluation import evaluators as evaluators_lib
from bbg_jax.evaluation.png import write_png
from bbg_jax.train_state import create_train_state

BEST_METRIC = "probe_top1_bn_crelu_trainval"


def restore(config: ml_collections.ConfigDict, workdir: str, step: int | None = None):
    """The train state of ``step`` (latest when None) in WORKDIR/checkpoints."""
    abstract = jax.eval_shape(lambda: create_train_state(
        config, jax.random.PRNGKey(config.train.seed)))
    return checkpoint.restore_state(workdir, abstract, step)


def saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The config the run saved (WORKDIR/config.json), for --mode=eval without --config."""
    with open(os.path.join(workdir, "config.json")) as f:
        return ml_collections.ConfigDict(json.load(f))


def write_outputs(workdir: str, step: int, metrics: dict, images: dict, provenance: dict
                  ) -> str:
    out_dir = os.path.join(workdir, "eval", f"step_{step}")
    os.makedirs(out_dir, exist_ok=True)
    for name, image in images.items():
        write_png(os.path.join(out_dir, f"{name}.png"), image)
    report = {"step": step, "metrics": metrics, "images": sorted(images), **provenance}
    path = os.path.join(out_dir, "report.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    return path


def periodic_reports(workdir: str) -> list[dict]:
    """Every WORKDIR/eval/step_*/report.json that ``write_outputs`` wrote, in step order."""
    reports = []
    for path in glob.glob(os.path.join(workdir, "eval", "step_*", "report.json")):
        with open(path) as f:
            reports.append(json.load(f))
    return sorted(reports, key=lambda r: r["step"])


def record_best_probe(workdir: str, step: int, metrics: dict, keep_checkpoint: bool = True
                      ) -> bool:
    """Tracks the best train_val probe accuracy; keeps a copy of its checkpoint.

    The paper early-stops on train_val accuracy, so that checkpoint must survive the retention
    policy: it is copied to WORKDIR/best_probe_checkpoint/ (outside the manager's directory).
    """
    if BEST_METRIC not in metrics:
        return False
    path = os.path.join(workdir, "eval", "best_probe.json")
    if os.path.exists(path):
        with open(path) as f:
            if json.load(f)["value"] >= metrics[BEST_METRIC]:
                return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    src = os.path.join(checkpoint.checkpoint_dir(workdir), str(step))
    if keep_checkpoint and os.path.isdir(src):
        dst = os.path.join(workdir, "best_probe_checkpoint")
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, os.path.join(dst, str(step)))
    with open(path + ".tmp", "w") as f:
        json.dump({"metric": BEST_METRIC, "value": metrics[BEST_METRIC], "step": step}, f)
    os.replace(path + ".tmp", path)
    return True


def evaluate_checkpoint(config: ml_collections.ConfigDict | None, workdir: str,
                        step: int | None = None, batches=None) -> dict:
    config = config or saved_config(workdir)
    state = restore(config, workdir, step)
    step = int(jax.device_get(state.step))
    ev = evaluators_lib.eval_section(config)
    evaluators = evaluators_lib.build_evaluators(config, workdir, batches)
    metrics, images = evaluators_lib.run_all(evaluators, state)
    provenance = {"generator": ev.generator, "bn_stats": ev.bn_stats,
                  "fid_num_samples": ev.fid_num_samples,
                  "evaluators": [e.name for e in evaluators]}
    write_outputs(workdir, step, metrics, images, provenance)
    record_best_probe(workdir, step, metrics)
    return metrics
