"""The training loop as users run it: ``python -m bbg_jax.main`` on the smoke config in a
subprocess. The metrics log, bit-exact resume after SIGKILL (between checkpoints and in the middle
of a save), a checkpoint on SIGTERM, the stop on NaN, refusal of another model config, damaged
checkpoints, and evaluation of a checkpoint. Faults are injected by ``tests/loop_driver.py``.
All runs share the session's persistent compilation cache: the first compiles, the rest load.
"""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bbg_jax import checkpoint, loop, sharding
from bbg_jax.configs import load_experiment

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "smoke.py")
DRIVER = str(ROOT / "tests" / "loop_driver.py")


def tree_equal(a, b):
    return all(np.array_equal(x, y) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _main(workdir, cache, *flags, faults=(), env_extra=None, wait=True):
    """Runs the smoke config in ``workdir``; ``faults`` are loop_driver flags."""
    # TF_ENABLE_ONEDNN_OPTS=1: TensorFlow then prints its oneDNN notice from C++ (port.cc) on
    # every CPU, not only on AVX-512 ones: the native file-descriptor-2 line the log must keep.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_ENABLE_ONEDNN_OPTS": "1",
           **(env_extra or {})}
    entry = [DRIVER, *faults, "--"] if faults else ["-m", "bbg_jax.main"]
    cmd = [sys.executable, *entry, f"--config={SMOKE}", f"--workdir={workdir}",
           f"--config.train.compilation_cache_dir={cache}", *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = proc.communicate(timeout=900)
        return proc.returncode, out
    return proc


def _wait_for(path: Path, proc, timeout=600):
    start = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {path} appeared:\n{proc.stdout.read()}")
        if time.time() - start > timeout:
            raise TimeoutError(str(path))
        time.sleep(0.1)


def _restore(workdir, step):
    return ocp.StandardCheckpointer().restore(Path(workdir) / "checkpoints" / str(step) / "state")


def _steps(workdir):
    return sorted(int(p.name) for p in (Path(workdir) / "checkpoints").iterdir()
                  if p.name.isdigit())


def _snapshot(workdir) -> dict[str, bytes]:
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(Path(workdir).rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, compilation_cache):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    rc, out = _main(workdir, compilation_cache)
    assert rc == 0, out
    (workdir.parent / "uninterrupted_terminal.txt").write_text(out)
    return workdir


def test_terminal_shows_stages_progress_and_summaries_and_the_log_file_the_rest(uninterrupted):
    lines = (uninterrupted.parent / "uninterrupted_terminal.txt").read_text().splitlines()
    assert lines[0] == f"bbg_jax.main: train in {uninterrupted}; log: {uninterrupted}/log.txt"
    assert re.fullmatch(r"train: fresh initialisation; \d+ devices?, global batch 8, 6 steps",
                        lines[1])
    summaries = [line for line in lines if re.fullmatch(
        r"step \d/6  D -?\d+\.\d{3}  G -?\d+\.\d{3}  E -?\d+\.\d{3}  online probe "
        r"\d+\.\d%( .*)?", line)]
    assert [int(line.split()[1][0]) for line in summaries] == [1, 2, 3, 4, 5, 6]
    assert re.fullmatch(r"train: reached step 6 in \d+\.\d min", lines[-1])
    # Nothing else: no absl/JAX/TensorFlow INFO lines, no native notices.
    assert len(lines) <= 2 + 6 + 1 + 2, lines  # + at most two bare progress lines
    log = (uninterrupted / "log.txt").read_text()
    for line in lines:  # the log keeps every line the terminal showed ...
        assert line in log
    assert "logging_writer.py" in log  # ... and the INFO logs
    assert "port.cc" in log  # TensorFlow's C++ notices (file descriptor 2) land there too


def _copy(src, dst) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)


def test_metrics_jsonl_has_one_line_per_logged_step(uninterrupted):
    rows = [json.loads(line)
            for line in (Path(uninterrupted) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))  # smoke: log_every 1, 6 steps
    for r in rows:
        assert {"d_loss", "g_loss", "e_loss"} <= set(r)
        assert all(np.isfinite(v) for v in r.values())


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_resume_after_sigkill_is_bit_exact(uninterrupted, tmp_path, compilation_cache):
    proc = _main(tmp_path, compilation_cache, faults=["--hold_at=4"], wait=False)
    _wait_for(tmp_path / "hanging_at_4", proc)
    _kill(proc)
    assert _steps(tmp_path) == [3]
    rc, out = _main(tmp_path, compilation_cache, "-v")  # -v: the INFO logs on the terminal too
    assert rc == 0, out
    assert "resumed from step 3" in out
    assert re.search(r"^I\d{4} .*logging_writer.py", out, re.M), out
    assert tree_equal(_restore(tmp_path, 6), _restore(uninterrupted, 6))
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_kill_in_the_middle_of_a_save_resumes_from_the_previous_checkpoint(
        uninterrupted, tmp_path, compilation_cache):
    proc = _main(tmp_path, compilation_cache, faults=["--pause_in_save_at=6"], wait=False)
    _wait_for(tmp_path / "saving_6", proc)
    _kill(proc)
    # Step 6's files are all written, in orbax's temporary directory; none is committed.
    assert _steps(tmp_path) == [3]
    assert any(p.name.startswith("6.") for p in (tmp_path / "checkpoints").iterdir())
    rc, out = _main(tmp_path, compilation_cache)
    assert rc == 0, out
    assert "resumed from step 3" in out
    assert tree_equal(_restore(tmp_path, 6), _restore(uninterrupted, 6))


def test_sigterm_checkpoints_current_step_and_resumes(uninterrupted, tmp_path, compilation_cache):
    proc = _main(tmp_path, compilation_cache, faults=["--hold_at=2"], wait=False)
    _wait_for(tmp_path / "hanging_at_2", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "SIGTERM: checkpointed step 2" in out
    assert _steps(tmp_path) == [2]  # not a checkpoint_every step: saved because of SIGTERM
    rc, out = _main(tmp_path, compilation_cache)
    assert rc == 0, out
    assert "resumed from step 2" in out
    assert tree_equal(_restore(tmp_path, 6), _restore(uninterrupted, 6))


def test_non_finite_loss_stops_with_named_step_and_term(tmp_path, compilation_cache):
    rc, out = _main(tmp_path, compilation_cache, faults=["--nan_at=5"])
    assert rc != 0
    # NaN images reach D's gradient at once (ReLUs may swallow them in the forward scores).
    assert "Non-finite grad_norm_D=nan" in out and "at step 5" in out
    assert "last good checkpoint is step 3" in out
    assert _steps(tmp_path) == [3]
    restored = _restore(tmp_path, 3)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored["params"]))


def test_resume_with_different_model_config_is_refused(uninterrupted, tmp_path,
                                                        compilation_cache):
    workdir = _copy(uninterrupted, tmp_path / "run")
    before = _snapshot(workdir)
    rc, out = _main(workdir, compilation_cache, "--config.model.generator.ch=16",
                    "--config.train.num_steps=7")
    assert rc != 0
    assert "model.generator.ch" in out and "different model config" in out
    assert _snapshot(workdir) == before  # config.json, logs and checkpoints untouched


def test_init_from_starts_a_fresh_run_from_another_runs_parameters(uninterrupted, tmp_path):
    config = load_experiment(SMOKE)
    config.train.init_from = str(uninterrupted)
    state, how = _resume_in_process(tmp_path / "new", config)
    assert how == f"initialised from {uninterrupted}"
    assert int(state.step) == 0
    latest = _restore(uninterrupted, 6)
    for part in ("params", "ema_params", "model_state"):
        assert tree_equal(getattr(state, part), latest[part]), part
    # Fresh optimizer state: Adam's moments and counts start at zero, not at the old run's.
    assert all(not np.any(x) for x in jax.tree.leaves(state.opt_state))
    assert any(np.any(x) for x in jax.tree.leaves(latest["opt_state"]))


# --- damaged checkpoints --------------------------------------------------------------------

def _truncate_largest_array_file(step_dir: Path) -> None:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as f:
        f.truncate(largest.stat().st_size // 2)


def test_truncated_latest_checkpoint_falls_back_and_resumes_bit_exact(
        uninterrupted, tmp_path, compilation_cache):
    workdir = _copy(uninterrupted, tmp_path / "run")
    _truncate_largest_array_file(workdir / "checkpoints" / "6")
    rc, out = _main(workdir, compilation_cache, "--config.train.num_steps=6")
    assert rc == 0, out
    assert "Checkpoint step 6" in out and "cannot be restored" in out
    assert "resumed from step 3" in out
    assert (workdir / "checkpoints_damaged" / "6" / "state").is_dir()  # kept for inspection
    assert tree_equal(_restore(workdir, 6), _restore(uninterrupted, 6))


def _resume_in_process(workdir, config=None):
    config = config or load_experiment(SMOKE)
    manager = checkpoint.make_manager(workdir, config)
    try:
        return loop.initial_state(config, sharding.make_mesh(), manager)
    finally:
        manager.close()


def test_latest_checkpoint_without_metadata_falls_back(uninterrupted, tmp_path, caplog):
    workdir = _copy(uninterrupted, tmp_path / "run")
    (workdir / "checkpoints" / "6" / "state" / "_METADATA").unlink()
    with caplog.at_level(logging.WARNING, logger="bbg_jax.checkpoint"):
        state, how = _resume_in_process(workdir)
    assert how == "resumed from step 3"
    assert "Checkpoint step 6" in caplog.text and "cannot be restored" in caplog.text
    assert tree_equal(state.params, _restore(uninterrupted, 3)["params"])
    assert _steps(workdir) == [3]
    assert (workdir / "checkpoints_damaged" / "6").is_dir()


def test_no_restorable_checkpoint_stops_without_moving_anything(uninterrupted, tmp_path):
    workdir = _copy(uninterrupted, tmp_path / "run")
    for step in (3, 6):
        (workdir / "checkpoints" / str(step) / "state" / "_METADATA").unlink()
    before = _snapshot(workdir)
    with pytest.raises(checkpoint.CheckpointDamagedError, match="step 6: .*step 3: "):
        _resume_in_process(workdir)
    assert _snapshot(workdir) == before  # never a silent fresh start, nothing moved


# --- evaluation of a checkpoint --------------------------------------------------------------

def _fake_features(images):
    """Stands in for Inception (minutes per batch on this CPU): cheap image statistics."""
    import jax.numpy as jnp

    x = jnp.asarray(images).reshape(images.shape[0], -1)
    return jnp.tile(x[:, :64], (1, 32))  # [N, 2048]


def test_checkpoint_evaluates_standalone(uninterrupted, tmp_path):
    from bbg_jax.evaluation import evaluators, standalone
    from bbg_jax.evaluation.config import eval_config

    workdir = str(_copy(uninterrupted, tmp_path / "run"))
    config = load_experiment(SMOKE)
    config.eval = eval_config(fid_num_samples=32)
    config.eval.batch_size = 16
    config.eval.samples.sheet_size = 8
    config.eval.standing_batches = 2
    config.eval.probe.epochs = 2
    config.eval.probe.max_train = 64
    batches = evaluators.dataset_batches(config, 16)
    state = standalone.restore(config, workdir)
    assert int(state.step) == 6
    fed = []  # every batch of images the FID evaluator gave its "Inception"
    evs = [evaluators.SampleSheets(config, batches),
           evaluators.FIDEvaluator(config, workdir, batches,
                                   features=lambda x: fed.append(np.asarray(x)) or
                                   _fake_features(x)),
           evaluators.ProbeEvaluator(config, batches)]
    metrics, images = evaluators.run_all(evs, state)
    # FID by hand: the 32 samples (fed first, 2 batches of 16) against the first 32 real training
    # images (fed next, and read here from the split). The stand-in features are the first 64
    # pixels tiled 32 times, so mean and covariance are those of the 64 pixels tiled, and FID
    # is 32 x the FID of the 64 pixels, here with tr((C1 C2)^1/2) from the eigenvalues of the
    # non-symmetric C1 C2 (the evaluator symmetrises: C1^1/2 C2 C1^1/2).
    real = np.concatenate([b["image_d"] for b in batches("train", 32)])
    assert len(fed) == 4 and sum(len(f) for f in fed[:2]) == 32
    np.testing.assert_array_equal(np.concatenate(fed[2:]), real)
    fake64, real64 = (np.concatenate(x).reshape(32, -1)[:, :64].astype(np.float64)
                      for x in (fed[:2], fed[2:]))
    c1, c2 = np.cov(fake64, rowvar=False), np.cov(real64, rowvar=False)
    eig = np.clip(np.linalg.eigvals(c1 @ c2).real, 0.0, None)
    diff = fake64.mean(0) - real64.mean(0)
    fid64 = diff @ diff + np.trace(c1) + np.trace(c2) - 2 * np.sqrt(eig).sum()
    assert metrics["fid_32_ema_standing_train"] == pytest.approx(32 * fid64, rel=1e-6)
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
