"""Evaluate a checkpoint: ``python -m bbg_jax.main --mode=eval --workdir=DIR [--step=N]``.

Writes WORKDIR/eval/step_N/report.json (metrics plus what produced them) and one PNG per sheet,
and updates WORKDIR/eval/best_probe.json when the train_val probe accuracy improves. Inside
training, WORKDIR/eval/pending.json names the evaluation under way (``mark_pending``).
"""

from __future__ import annotations

import jax
import ml_collections

from bbg_jax import checkpoint, paths, sharding
from bbg_jax.compilation_cache import use_compilation_cache
from bbg_jax.evaluation import evaluators as evaluators_lib
from bbg_jax.evaluation.png import encode_png
from bbg_jax.train_state import create_train_state

BEST_METRIC = "probe_top1_bn_crelu_trainval"


def restore(config: ml_collections.ConfigDict, workdir: str, step: int | None = None):
    """The train state of ``step`` (latest when None) in WORKDIR/checkpoints, replicated over
    every process's devices (the evaluation mesh), whatever the devices of the run that wrote it."""
    rep = sharding.replicated(sharding.make_mesh())
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
        jax.eval_shape(lambda: create_train_state(config, jax.random.key(config.train.seed))))
    return checkpoint.restore_state(workdir, abstract, step)


def saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The config the run saved (WORKDIR/config.json), for --mode=eval without --config; a
    ConfigError (one line) when it is missing or not JSON."""
    from bbg_jax import config_checks

    return config_checks.saved_config(workdir)


def write_outputs(workdir: str, step: int, metrics: dict, images: dict, provenance: dict
                  ) -> paths.epath.Path:
    """WORKDIR/eval/step_N/{report.json, <sheet>.png}; only process 0 writes."""
    out_dir = paths.path(workdir) / "eval" / f"step_{step}"
    path = out_dir / "report.json"
    if jax.process_index() > 0:
        return path
    for name, image in images.items():
        paths.write_atomic(out_dir / f"{name}.png", encode_png(image))
    paths.write_json(path, {"step": step, "metrics": metrics, "images": sorted(images),
                            **provenance})
    return path


def pending_path(workdir: str) -> paths.epath.Path:
    """WORKDIR/eval/pending.json: the evaluation the training loop started and has not finished
    (``{"step": N, "evaluators": [...]}``); a restarted run runs it before training on."""
    return paths.path(workdir) / "eval" / "pending.json"


def mark_pending(workdir: str, step: int, names: list[str]) -> None:
    """Written (process 0) before an evaluation starts, so that a stop in its middle, a SIGTERM
    or a kill, leaves it to the next run."""
    if jax.process_index() == 0:
        paths.write_json(pending_path(workdir), {"step": step, "evaluators": names})


def clear_pending(workdir: str) -> None:
    """Removed (process 0) once the evaluation's report and summaries are written."""
    path = pending_path(workdir)
    if jax.process_index() == 0 and path.exists():
        path.unlink()


def read_pending(workdir: str) -> dict | None:
    path = pending_path(workdir)
    return paths.read_json(path) if path.exists() else None


def periodic_reports(workdir: str) -> list[dict]:
    """Every WORKDIR/eval/step_*/report.json that ``write_outputs`` wrote, in step order."""
    reports = [paths.read_json(p)
               for p in (paths.path(workdir) / "eval").glob("step_*/report.json")]
    return sorted(reports, key=lambda r: r["step"])


def record_best_probe(workdir: str, step: int, metrics: dict, keep_checkpoint: bool = True
                      ) -> bool:
    """Tracks the best train_val probe accuracy; keeps a copy of its checkpoint.

    The paper early-stops on train_val accuracy, so that checkpoint must survive the retention
    policy: it is copied to WORKDIR/best_probe_checkpoint/ (outside the manager's directory).
    """
    if BEST_METRIC not in metrics or jax.process_index() > 0:
        return False
    path = paths.path(workdir) / "eval" / "best_probe.json"
    if path.exists() and paths.read_json(path)["value"] >= metrics[BEST_METRIC]:
        return False
    src = checkpoint.checkpoint_dir(workdir) / str(step)
    if keep_checkpoint and src.is_dir():
        dst = paths.path(workdir) / "best_probe_checkpoint"
        paths.rmtree(dst)
        paths.copytree(src, dst / str(step))
    paths.write_json(path, {"metric": BEST_METRIC, "value": metrics[BEST_METRIC], "step": step})
    return True


def evaluate_checkpoint(config: ml_collections.ConfigDict | None, workdir: str,
                        step: int | None = None, batches=None) -> dict:
    config = config or saved_config(workdir)
    use_compilation_cache(config, workdir)
    state = restore(config, workdir, step)
    step = int(jax.device_get(state.step))
    evaluators = evaluators_lib.build_evaluators(config, workdir, batches)
    metrics, _ = run_and_write(config, workdir, step, evaluators, state)
    return metrics


def run_and_write(config: ml_collections.ConfigDict, workdir: str, step: int, evaluators,
                  state) -> tuple[dict, dict]:
    """Runs ``evaluators`` on ``state``, writes WORKDIR/eval/step_N/ and tracks the best probe
    (in training and standalone alike); returns (metrics, images)."""
    metrics, images = evaluators_lib.run_all(evaluators, state)
    ev = evaluators_lib.eval_section(config)
    provenance = {"generator": ev.generator, "bn_stats": ev.bn_stats,
                  "fid_num_samples": ev.fid.num_samples,
                  "evaluators": [e.name for e in evaluators]}
    write_outputs(workdir, step, metrics, images, provenance)
    record_best_probe(workdir, step, metrics)
    return metrics, images
