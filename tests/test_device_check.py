"""The device check (bbg_jax/device_check.py, scripts/device_check.sh): its device half runs
without TensorFlow, ml_collections and clu, and its exports are what the pipeline and the
experiment configs give."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bbg_jax import device_check
from bbg_jax.configs import load_experiment

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("ml_collections", "tensorflow", "tensorflow_datasets", "clu")

# Installed by PYTHONPATH in every process of the device half (the run and its workers): an
# import of a blocked package, or of any module under it, fails as on the device machine.
BLOCKER = textwrap.dedent(f"""
    import sys

    class _Blocker:
        blocked = {BLOCKED!r}

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.blocked:
                raise ImportError(f"{{name}} is blocked: the device machine has none")
            return None

    sys.meta_path.insert(0, _Blocker())
""")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_check")
    device_check.prepare(out, num_images=64, repo=REPO)
    return out


def blocked_env(tmp_path):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("OUT", None)
    return env


def test_the_blocker_blocks(tmp_path):
    env = blocked_env(tmp_path)
    for name in BLOCKED:
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], env=env,
                              capture_output=True, text=True)
        assert proc.returncode != 0 and "blocked" in proc.stderr, name


def test_device_half_runs_without_tensorflow_ml_collections_clu(prepared, tmp_path):
    """The whole device half (the run, its probe and a worker running the Fashion-MNIST item)
    with those imports failing. For compile time only: XLA optimises less, and the conv weight
    gradient is XLA's (on a CPU ``auto`` picks the einsum form, several times the HLO)."""
    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    path = copy / "configs" / "fashion_mnist.json"
    config = json.loads(path.read_text())
    config["train"]["conv_weight_grad"] = "xla"
    path.write_text(json.dumps(config))
    env = blocked_env(tmp_path)
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    env["OUT"] = str(tmp_path / "out")
    proc = subprocess.run(
        [sys.executable, "-m", "bbg_jax.device_check", "run", "--prepared", str(copy),
         "--cpu", "--only", "fashion_mnist_train", "--batch", "train=2", "--train_steps", "3"],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r["what"] for r in rows] == ["device_check_start", "fashion_mnist_train",
                                         "device_check_done"]
    run = rows[1]
    assert run["steps"] == 3 and run["final_step"] == 3 and run["all_finite"]
    assert {"d_loss", "e_loss", "g_loss"} <= set(run["final_losses"])
    assert run["s_per_step"] > 0
    written = (tmp_path / "out" / "device_check.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in written] == rows


def test_benchmark_path_imports_without_them(prepared, tmp_path):
    """The benchmark item's code up to XLA's compile (its lazy imports included): config from
    JSON, state, step batches from the synthetic source, the traced and lowered step, the
    analytic FLOPs."""
    code = textwrap.dedent(f"""
        import jax
        from bbg_jax import benchmark, device_check, flops, sharding
        from bbg_jax.data.batches import step_batches
        from bbg_jax.train import jit_train_step
        from bbg_jax.train_state import create_train_state

        config = device_check.load_config({str(prepared)!r}, "smoke")
        config.data.dataset = "synthetic"
        config.data.batch_size = 2
        config.model.dtype = "bfloat16"
        mesh = sharding.make_mesh()
        state = jax.eval_shape(lambda: create_train_state(config, jax.random.key(0)))
        batch = next(step_batches(config, mesh, 0))
        jit_train_step(config, mesh).lower(state, batch)
        assert flops.train_step_flops(config) > 0
        assert benchmark.platform_peak(jax.devices()[0], "bfloat16") is None
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=blocked_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _same(a, b):
    if isinstance(b, dict):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in b)
    if isinstance(b, (list, tuple)):
        return isinstance(a, tuple) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("name", sorted(device_check.CONFIGS))
def test_exported_config_reads_back_as_the_experiment(prepared, name):
    config = load_experiment(str(REPO / device_check.CONFIGS[name]))
    back = device_check.load_config(prepared, name)
    for section in ("model", "data", "train"):
        assert _same(back[section], config[section].to_dict()), section
    assert back.model.generator.ch == config.model.generator.ch
    assert back.train.get("conv_weight_grad", "xla") == config.train.conv_weight_grad
    assert back.train.get("no_such_field", 7) == 7
    with pytest.raises(AttributeError):
        _ = back.no_such_section


def test_fashion_mnist_export_is_the_pipeline_view(prepared):
    """The exported uint8 images, scaled and flipped on the device, equal the tf.data views
    (augmentation='pad', random_flip) of the same training examples."""
    import tensorflow as tf

    from bbg_jax.data import augment, fashion_mnist

    data = load_experiment(str(REPO / device_check.CONFIGS["fashion_mnist"])).data
    images = np.load(prepared / device_check.IMAGES)
    labels = np.load(prepared / device_check.LABELS)
    raw, raw_labels = fashion_mnist.read_split(data.local_fashion_mnist_dir, "train",
                                               limit=data.train_val_size + len(images))
    np.testing.assert_array_equal(labels, raw_labels[data.train_val_size:])
    assert images.shape == (64, 32, 32, 1) and images.dtype == np.uint8
    spec = augment.ViewSpec("pad", data.resolution_e, data.resolution_d, data.channels,
                            random_flip=True, source_channels=1)
    for i in (0, 5):
        for flip in (False, True):
            want_e, want_d = augment.two_views(tf.constant(raw[data.train_val_size + i]), spec,
                                               tf.constant(flip))
            got = images[i].astype(np.float32) / 127.5 - 1.0
            got = got[:, ::-1] if flip else got
            np.testing.assert_allclose(got, want_e.numpy(), atol=1e-6)
            np.testing.assert_allclose(got, want_d.numpy(), atol=1e-6)


def test_fashion_mnist_batches():
    images = np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4, 1)
    labels = np.arange(10, dtype=np.int32)
    a = device_check.fashion_mnist_batches(images, labels, batch=4, n_d=2, seed=3)
    b = device_check.fashion_mnist_batches(images, labels, batch=4, n_d=2, seed=3)
    first = next(a)
    assert {k: v.shape for k, v in first.items()} == {
        "image_d": (2, 4, 4, 4, 1), "image_e": (2, 4, 4, 4, 1), "label": (2, 4)}
    assert first["image_d"].dtype == np.float32 and first["label"].dtype == np.int32
    assert -1 <= first["image_d"].min() and first["image_d"].max() <= 1
    np.testing.assert_array_equal(first["image_d"], first["image_e"])
    # 8 distinct examples in the first step (one permutation), then a new epoch.
    assert len(set(first["label"].ravel())) == 8
    next(b)
    second_a, second_b = next(a), next(b)  # the same seed gives the same stream
    for k in second_a:
        np.testing.assert_array_equal(second_a[k], second_b[k])
    # Each row is its example, flipped or not.
    row = first["image_d"][0, 0]
    source = images[first["label"][0, 0]].astype(np.float32) / 127.5 - 1
    assert np.array_equal(row, source) or np.array_equal(row, source[:, ::-1])


def _train_row(**losses):
    return {"what": "fashion_mnist_train", "config": "fashion_mnist", "steps": 3,
            "final_losses": losses, "mean_losses_last_steps": losses,
            "all_finite": all(np.isfinite(v) for v in losses.values())}


def test_an_item_with_non_finite_losses_fails():
    good = _train_row(d_loss=1.2, g_loss=0.3)
    assert device_check.verdict(0, [good], 1.0) is None
    why = device_check.verdict(0, [_train_row(d_loss=float("nan"), g_loss=0.3)], 1.0)
    assert why == ("non-finite losses: final_losses.d_loss, "
                   "mean_losses_last_steps.d_loss")
    assert "g_loss" in device_check.verdict(0, [_train_row(d_loss=1.0, g_loss=float("inf"))], 1)
    # A NaN at some step that the last losses no longer show: the row's own verdict.
    assert device_check.verdict(0, [{**good, "all_finite": False}], 1.0) == (
        "non-finite losses: all_finite=false")
    # A benchmark row (its last timed step's losses).
    bench = {"what": "train_step", "final_losses": {"d_loss": float("nan")}, "all_finite": False}
    assert device_check.verdict(0, [bench], 1.0) == "non-finite losses: final_losses.d_loss"
    compile_only = {"what": "train_step", "final_losses": None, "all_finite": None}
    assert device_check.verdict(0, [compile_only], 1.0) is None
    assert device_check.verdict(1, [good], 1.0) == "exit status 1"
    assert device_check.verdict("timeout", [], 9.4) == "stopped at the time budget after 9 s"
    assert device_check.verdict(0, [], 1.0) == "exit status 0 without a result row"


def test_run_exits_non_zero_when_an_item_trains_to_nan(monkeypatch, tmp_path, capsys):
    """``run`` with its worker and probe replaced: the worker exits 0 and reports NaN losses;
    the item is failed, the done line lists it, and the exit status is 1."""
    nan = _train_row(d_loss=float("nan"), g_loss=0.3)

    class _Done:
        returncode, stderr = 0, ""
        stdout = device_check.RESULT_MARK + json.dumps(nan) + "\n"

    monkeypatch.setattr(device_check, "_probe", lambda env: {
        "backend": "cpu", "device": "cpu", "devices": 1, "jax": "test"})
    monkeypatch.setattr(device_check.subprocess, "run", lambda *a, **k: _Done())
    monkeypatch.delenv("OUT", raising=False)
    rc = device_check.main(["run", "--prepared", str(tmp_path), "--cpu", "--only",
                            "fashion_mnist_train"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 1
    assert rows[1]["failed"].startswith("non-finite losses: final_losses.d_loss")
    assert np.isnan(rows[1]["final_losses"]["d_loss"])  # the row is kept beside the verdict
    assert rows[-1] == {**rows[-1], "what": "device_check_done", "items_ok": 0,
                        "failed": ["fashion_mnist_train:fashion_mnist:float32"]}
