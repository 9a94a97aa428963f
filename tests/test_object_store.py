"""A gs:// workdir on a real GCS server (fake-gcs-server on loopback): training writes every
artefact into the bucket, a SIGKILLed run resumes from the bucket bit-exactly, and evaluation
and the run report read and write there. Nothing may land in a local ``gs:`` folder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "smoke.py")
# Every evaluator, on a tiny sample: FID's Inception on 16 images, the probe on 32 per split.
# Each evaluator on its own schedule: FID only at step 6.
EVAL = ["--config.eval.evaluators=('samples','fid','probe','diagnostics')",
        "--config.eval.samples.every_steps=3", "--config.eval.fid.every_steps=6",
        "--config.eval.probe.every_steps=3", "--config.eval.diagnostics.every_steps=6",
        "--config.eval.fid.num_samples=16", "--config.eval.probe.epochs=2",
        "--config.eval.diagnostics.num_samples=16", "--config.eval.diagnostics.num_images=16"]


def _env(gcs_emulator, **extra):
    return {**os.environ, **gcs_emulator, "JAX_PLATFORMS": "cpu", **extra}


def _run(args, env, cwd, wait=True):
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-6000:]
    return out


def _main(workdir, *flags, env, cwd, compilation_cache, faults=(), wait=True):
    """``faults``: tests/loop_driver.py flags (the run then starts through the driver)."""
    entry = [str(ROOT / "tests" / "loop_driver.py"), *faults, "--"] if faults else [
        "-m", "bbg_jax.main"]
    return _run([*entry, f"--config={SMOKE}", f"--workdir={workdir}",
                 f"--config.train.compilation_cache_dir={compilation_cache}", *flags],
                env, cwd, wait)


def _fresh():
    """Drops this process's cached bucket listings (gcsfs keeps them): other processes wrote.

    fsspec keeps one instance per thread and keyword set, and epath holds the one it made first
    (possibly on one of orbax's threads), so every instance is invalidated, not this thread's."""
    import gcsfs

    for fs in list(gcsfs.GCSFileSystem._cache.values()):
        fs.invalidate_cache()
    epath.backend.fsspec_backend.fs("gs://any").invalidate_cache()


def _state(workdir, step):
    _fresh()
    return ocp.StandardCheckpointer().restore(epath.Path(workdir) / "checkpoints" / str(step)
                                              / "state")


def _no_local_gs_folder(*dirs):
    for d in dirs:
        assert not any(p.name.startswith("gs:") for p in Path(d).rglob("*")), d


@pytest.fixture(scope="module")
def bucket_cache(gcs_emulator):
    """The persistent compilation cache in a bucket, shared by this module's runs."""
    import gcsfs

    bucket = f"bbg-xla-cache-{os.getpid()}"
    gcsfs.GCSFileSystem(token="anon").mkdir(bucket)
    return f"gs://{bucket}/xla"


@pytest.fixture(scope="module")
def trained(gcs_emulator, tmp_path_factory, bucket_cache):
    """The smoke config trained for 6 steps in gs://<bucket>/run with every evaluator."""
    import gcsfs

    bucket = f"gs://bbg-trained-{os.getpid()}"
    gcsfs.GCSFileSystem(token="anon").mkdir(bucket[5:])
    cwd = tmp_path_factory.mktemp("cwd")
    start = time.time()
    out = _main(f"{bucket}/run", *EVAL, env=_env(gcs_emulator), cwd=cwd,
                compilation_cache=bucket_cache)
    print(f"smoke run into the bucket: {time.time() - start:.0f} s")
    return f"{bucket}/run", cwd, out


def test_training_writes_every_artefact_into_the_bucket(trained, bucket_cache):
    workdir, cwd, _ = trained
    _fresh()
    run = epath.Path(workdir)
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoints", "eval", "features", "fid_stats",
            "best_probe_checkpoint"} <= names, names
    assert any(n.startswith("events.out.tfevents") for n in names), names
    assert json.loads((run / "config.json").read_text())["train"]["num_steps"] == 6
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == \
        ["3", "6"]
    for step, evaluated in ((3, ["samples", "probe"]),
                            (6, ["samples", "fid", "probe", "diagnostics"])):
        report = json.loads((run / "eval" / f"step_{step}" / "report.json").read_text())
        assert report["step"] == step
        assert report["evaluators"] == evaluated
        assert ("fid_16_ema_standing_train" in report["metrics"]) == (step == 6)
        assert "probe_top1_bn_crelu_trainval" in report["metrics"]
        assert ("latent_recovery_corr_raw" in report["metrics"]) == (step == 6)
        pngs = {p.name for p in (run / "eval" / f"step_{step}").glob("*.png")}
        assert {"samples_ema_standing.png", "reconstructions_ema_standing.png"} <= pngs
    assert list((run / "fid_stats").glob("*.npz"))
    assert (run / "features" / "pixel_judge.npz").exists()
    assert {p.name for p in (run / "features").glob("trained_step6_*.npz")}
    best = json.loads((run / "eval" / "best_probe.json").read_text())
    assert list((run / "best_probe_checkpoint" / str(best["step"])).iterdir())
    # TensorBoard's events hold the scalars (the file is a full copy of the staged one).
    events = next(p for p in run.iterdir() if p.name.startswith("events.out"))
    assert b"d_loss" in events.read_bytes()
    # The compiled train step is in the bucket's compilation cache (gs:// works there too).
    assert any("train_step" in p.name for p in epath.Path(bucket_cache).iterdir())
    _no_local_gs_folder(cwd, ROOT)


def test_sigkill_then_resume_from_the_bucket_is_bit_exact(trained, gcs_emulator, tmp_path,
                                                          bucket_cache, gcs_bucket):
    reference, _, _ = trained
    workdir = f"{gcs_bucket}/killed"
    proc = _main(workdir, env=_env(gcs_emulator), cwd=tmp_path, compilation_cache=bucket_cache,
                 faults=["--hold_at=3"], wait=False)
    marker = epath.Path(workdir) / "hanging_at_3"
    deadline = time.time() + 600
    while _fresh() or not marker.exists():
        assert proc.poll() is None, proc.stdout.read()[-6000:]
        assert time.time() < deadline, "the run never reached step 3"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    _fresh()
    steps = [p.name for p in (epath.Path(workdir) / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps == ["3"]
    out = _main(workdir, env=_env(gcs_emulator), cwd=tmp_path, compilation_cache=bucket_cache)
    assert "resumed from step 3" in out
    _fresh()
    a, b = _state(workdir, 6), _state(reference, 6)
    assert all(np.array_equal(x, y) for x, y in zip(
        jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    # The resumed run's log has each step once: the killed run's lines after step 3 are gone.
    rows = (epath.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    _no_local_gs_folder(tmp_path, ROOT)


def test_async_checkpoints_in_the_bucket_equal_synchronous_ones(trained, gcs_emulator, tmp_path,
                                                                bucket_cache, gcs_bucket):
    reference, _, _ = trained
    workdir = f"{gcs_bucket}/async"
    _main(workdir, "--config.train.async_checkpointing=True", env=_env(gcs_emulator),
          cwd=tmp_path, compilation_cache=bucket_cache)
    for step in (3, 6):
        a, b = _state(workdir, step), _state(reference, step)
        assert all(np.array_equal(x, y) for x, y in zip(
            jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_eval_mode_and_report_on_the_bucket(trained, gcs_emulator, tmp_path):
    workdir, _, _ = trained
    run = epath.Path(workdir)
    (run / "eval" / "step_3" / "report.json").unlink()
    _run(["-m", "bbg_jax.main", "--mode=eval", f"--workdir={workdir}", "--step=3"],
         _env(gcs_emulator), tmp_path)
    _fresh()
    report = json.loads((run / "eval" / "step_3" / "report.json").read_text())
    assert report["step"] == 3 and "probe_top1_bn_crelu_trainval" in report["metrics"]
    # --mode=eval runs every evaluator of eval.evaluators, whatever its training schedule.
    assert report["evaluators"] == ["samples", "fid", "probe", "diagnostics"]

    out = _run(["-m", "bbg_jax.evaluation.report", f"--workdir={workdir}"], _env(gcs_emulator),
               tmp_path)
    assert "linear probe top-1" in out
    _fresh()
    summary = json.loads((run / "report.json").read_text())
    assert summary["step"] == 6
    assert {"raw_pixels", "bigbigan_bn_crelu"} <= set(summary["probe"])
    assert summary["fid"]["first"]["step"] == 3 and summary["fid"]["last"]["step"] == 6
    # The report reads the evaluations' diagnostics: step 3's from --mode=eval above (training
    # ran none there), step 6's from training.
    assert summary["diagnostics"]["first"]["step"] == 3
    assert summary["diagnostics"]["last"]["step"] == 6
    _no_local_gs_folder(tmp_path, ROOT)


@pytest.mark.parametrize("module", [
    "loop.py", "checkpoint.py", "evaluation/standalone.py", "evaluation/evaluators.py",
    "evaluation/report.py", "evaluation/probe.py", "evaluation/metrics.py",
    "evaluation/png.py", "evaluation/diagnostics.py", "evaluation/probe_files.py",
    "compilation_cache.py"])
def test_workdir_code_uses_the_path_layer_only(module):
    """pathlib, os.path, open, glob and shutil know no buckets: bbg_jax.paths (epath) only."""
    source = (ROOT / "bbg_jax" / module).read_text()
    for banned in ("pathlib", "os.path", "open(", "import glob", "shutil", "os.replace",
                   "os.makedirs"):
        assert banned not in source, (module, banned)
