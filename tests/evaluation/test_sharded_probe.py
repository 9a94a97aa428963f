"""The data-parallel probe on per-process feature shards (``evaluation.sharded_probe``).

* one process, 2 CPU devices: the sharded probe on 1 and on 2 devices gives ``train_probe``'s
  classifiers (the same minibatches; only the order of float sums differs) on separable data;
* two ``jax.distributed`` processes on loopback x 2 devices, each extracting and holding only
  its part of every split (ragged: 150 / 151 rows, a different number of batches): the metrics
  and classifier of one process on one device;
* at RevNet-50x4's feature widths (8,192 + 16,384 floats per image, 8,192 images), two
  processes x 4 devices: today's replicated path (``FeatureExtractor`` + ``probe_metrics``)
  and the sharded one give the same metrics, and the sharded one's peak RSS per process stays
  under a ceiling that the replicated one exceeds.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bbg_jax import sharding
from bbg_jax.evaluation import probe
from bbg_jax.evaluation import sharded_probe as sp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from xla_flags import cpu_devices  # noqa: E402

# Growth of a process's peak RSS (VmHWM) during the 24,576-wide probe, over its RSS just before.
# Measured here (2 processes x 4 CPU devices, 8,192 + 2 x 512 images, two runs): the replicated
# path 1,718-1,769 MB (every process holds all 8,192 x 24,576 floats, 805 MB, twice while
# concatenating), the sharded path 1,145-1,201 MB (its half, 403 MB, once, the devices' copy of
# one feature, and ~500 MB that does not grow with N). At 4,096 images the two were 987-1,045
# against 869-876 MB: the part that grows with N is what differs.
CEILING_MB = 1400
TIMEOUT_S = 600

CHILD = r"""
import json, os, resource, sys
import numpy as np
import jax
jax.config.update("jax_default_matmul_precision", "highest")
mode, out = sys.argv[1], sys.argv[2]
if len(sys.argv) > 3:
    jax.distributed.initialize(f"127.0.0.1:{sys.argv[3]}", 2, int(sys.argv[4]))
sys.path.insert(0, os.environ["TESTS_DIR"])
import test_sharded_probe as t
result = getattr(t, "child_" + mode)()
if jax.process_index() == 0:
    with open(out, "w") as f:
        json.dump(result, f)
"""


def _run(mode: str, tmp_path, processes: int = 1, devices: int = 2) -> dict:
    out = tmp_path / f"{mode}.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TESTS_DIR": str(ROOT / "tests" / "evaluation"),
           "XLA_FLAGS": cpu_devices(devices)}
    if processes == 1:
        argv = [[sys.executable, "-c", CHILD, mode, str(out)]]
    else:
        from test_multiprocess import free_port

        port = str(free_port())
        argv = [[sys.executable, "-c", CHILD, mode, str(out), port, str(p)]
                for p in range(processes)]
    began = time.monotonic()
    procs = [subprocess.Popen(a, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for a in argv]
    try:
        logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    print(f"{mode}: {processes} process(es) x {devices} devices, "
          f"{time.monotonic() - began:.1f} s")
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-6000:]
    return json.loads(out.read_text())


# --- shared problems --------------------------------------------------------------------------

def _blobs(seed: int, n: int, d: int, k: int, spread: float):
    """Gaussian blobs around fixed centres (the first draw of ``seed``); labels 0..k-1."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * spread
    y = np.random.default_rng(seed + n).integers(0, k, n)
    x = centres[y] + np.random.default_rng(seed + 2 * n).normal(size=(n, d))
    return x.astype(np.float32), y.astype(np.int32)


def _part(n: int) -> slice:
    """This process's contiguous part of n rows (processes in order, as ``tfds.even_splits``)."""
    import jax

    p, count = jax.process_index(), jax.process_count()
    return slice(p * n // count, (p + 1) * n // count)


def _local_batches(x, y, batch: int):
    part = _part(len(x))
    x, y = x[part], y[part]
    for i in range(0, len(x), batch):
        yield {"image_e": x[i:i + batch], "label": y[i:i + batch]}


def _result(r: probe.ProbeResult) -> dict:
    return {"l2": r.l2, "val_top1_per_l2": r.val_top1_per_l2, "weights": r.weights.tolist(),
            "bias": r.bias.tolist()}


# --- (a) one process, two devices -------------------------------------------------------------

SEPARABLE = probe.ProbeSettings(epochs=5, batch_size=50, learning_rate=1e-2,
                                l2_grid=(0.0, 1e-3, 10.0))


def child_one() -> dict:
    import jax

    tx, ty = _blobs(0, 301, 16, 4, spread=4.0)
    vx, vy = _blobs(0, 101, 16, 4, spread=4.0)
    out = {"train_probe": _result(probe.train_probe(tx, ty, vx, vy, 4, SEPARABLE))}
    for n in (1, 2):
        mesh = sharding.make_mesh(jax.devices()[:n])
        val = sp.shard_rows(vx, vy, mesh)
        r = sp.train_probe_sharded(sp.shard_rows(tx, ty, mesh), val, 4, SEPARABLE, mesh)
        out[f"sharded_{n}"] = {**_result(r), **sp.evaluate_probe_sharded(r, val, mesh)}
    return out


def test_sharded_probe_equals_train_probe_on_one_and_two_devices(tmp_path):
    r = _run("one", tmp_path)
    ref = r["train_probe"]
    vx, vy = _blobs(0, 101, 16, 4, spread=4.0)
    ref_acc = probe.evaluate_probe(probe.ProbeResult(
        ref["l2"], ref["val_top1_per_l2"], np.asarray(ref["weights"], np.float32),
        np.asarray(ref["bias"], np.float32)), vx, vy)
    assert ref["l2"] == 0.0 and ref_acc["top1"] >= 0.98  # separable: the known answer
    for n, atol in ((1, 1e-6), (2, 1e-5)):
        got = r[f"sharded_{n}"]
        assert got["l2"] == ref["l2"]
        assert got["val_top1_per_l2"] == ref["val_top1_per_l2"]
        assert (got["top1"], got["top5"]) == (ref_acc["top1"], ref_acc["top5"])
        # The same minibatches: one device reproduces train_probe's float sums, two reorder
        # them (max |dw| measured 3e-8 on both).
        np.testing.assert_allclose(got["weights"], ref["weights"], atol=atol)
        np.testing.assert_allclose(got["bias"], ref["bias"], atol=atol)


# --- (b) two processes, each with its part only -----------------------------------------------

NOISY = probe.ProbeSettings(epochs=3, batch_size=50, learning_rate=1e-2,
                            l2_grid=(0.0, 1e-2, 1.0))
SIZES = {"train": 301, "trainval": 103, "test": 99}


def _noisy_split(which: str):
    # Overlapping blobs: top-1 well below 1, so a wrong row set or gradient changes it.
    return _blobs(7, SIZES[which], 12, 5, spread=0.6)


class _Identity:
    """The "encoder" of the 2-process test: its features are its inputs."""

    z_dim = 1

    def apply(self, variables, x, train, noise):
        return {k: x * variables["scale"] for k in probe.FEATURES}


def child_two() -> dict:
    extract = sp.LocalFeatureExtractor(_Identity())
    feats = {}
    for which in SIZES:
        x, y = _noisy_split(which)
        # 150 / 151 rows in batches of 50: process 1 has a 4th batch of one row.
        feats[which] = extract({"scale": np.float32(1.0)}, _local_batches(x, y, 50))
        assert len(feats[which]["label"]) == len(range(SIZES[which])[_part(SIZES[which])])
        np.testing.assert_array_equal(feats[which]["avepool_feat"], x[_part(len(x))])
    fitted = {}
    metrics = sp.probe_metrics_sharded(feats, sp.global_num_classes(
        [f["label"] for f in feats.values()]), NOISY, ("avepool_feat",), fitted)
    return {"metrics": metrics, "fitted": _result(fitted["avepool_feat"])}


def test_two_processes_with_half_the_rows_each_equal_one_process(tmp_path):
    import jax

    two = _run("two", tmp_path, processes=2)
    feats = {w: dict(zip(("avepool_feat", "label"), _noisy_split(w), strict=True))
             for w in SIZES}
    one_fitted, ref_fitted = {}, {}
    mesh = sharding.make_mesh(jax.devices()[:1])
    one = sp.probe_metrics_sharded(feats, 5, NOISY, ("avepool_feat",), one_fitted, mesh)
    ref = probe.probe_metrics(feats, 5, NOISY, ("avepool_feat",), ref_fitted)
    assert one == ref  # one process, one device: today's probe
    assert 0.3 < ref["probe_top1_avepool_test"] < 0.95  # neither chance nor trivial
    assert two["metrics"] == ref, (two["metrics"], ref)
    for key in ("weights", "bias"):  # measured max |dw| 1.5e-8
        np.testing.assert_allclose(two["fitted"][key], getattr(ref_fitted["avepool_feat"], key),
                                   atol=1e-5)


# --- (c) RevNet-50x4 widths: memory per process -----------------------------------------------

WIDE = probe.ProbeSettings(epochs=1, batch_size=256, learning_rate=1e-3, l2_grid=(0.0, 1e-3))
WIDE_SIZES = {"train": 8192, "trainval": 512, "test": 512}


class _Tile:
    """An "encoder" whose probe features have RevNet-50x4's widths: its 96 inputs tiled to
    8,192 (avepool) and 16,384 (bn_crelu) floats."""

    z_dim = 1

    def apply(self, variables, x, train, noise):
        import jax.numpy as jnp

        f = jnp.tile(x, (1, 256)) * variables["scale"]
        return {"avepool_feat": f[:, :8192], "bn_crelu_feat": f[:, 8192:]}


def _wide_split(which: str):
    return _blobs(11, WIDE_SIZES[which], 96, 10, spread=0.3)


def _rss_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _peak(work) -> dict:
    from jax.experimental import multihost_utils

    before = _rss_mb("VmRSS")
    metrics = work()
    growth = _rss_mb("VmHWM") - before
    every = multihost_utils.process_allgather(np.float32(growth))
    return {"metrics": metrics, "growth_mb": [float(g) for g in np.ravel(every)],
            "hwm_mb": _rss_mb("VmHWM")}


def child_replicated() -> dict:
    """Today's evaluator: every process reads every split whole; features come back whole."""
    def work():
        extract = probe.FeatureExtractor(_Tile())
        feats = {}
        for which in WIDE_SIZES:
            x, y = _wide_split(which)
            batches = ({"image_e": x[i:i + 512], "label": y[i:i + 512]}
                       for i in range(0, len(x), 512))
            feats[which] = extract({"scale": np.float32(1.0)}, batches)
        return probe.probe_metrics(feats, 10, WIDE)

    return _peak(work)


def child_sharded() -> dict:
    def work():
        extract = sp.LocalFeatureExtractor(_Tile())
        feats = {}
        for which in WIDE_SIZES:
            x, y = _wide_split(which)
            feats[which] = extract({"scale": np.float32(1.0)}, _local_batches(x, y, 256))
        return sp.probe_metrics_sharded(feats, 10, WIDE)

    return _peak(work)


def test_revnet_width_probe_stays_under_a_ceiling_the_replicated_one_exceeds(tmp_path):
    replicated = _run("replicated", tmp_path, processes=2, devices=4)
    sharded = _run("sharded", tmp_path, processes=2, devices=4)
    print("peak RSS growth per process (MB): replicated", replicated["growth_mb"],
          "sharded", sharded["growth_mb"], "; VmHWM of process 0:", replicated["hwm_mb"],
          sharded["hwm_mb"])
    assert min(replicated["growth_mb"]) > CEILING_MB  # the ceiling means something
    assert max(sharded["growth_mb"]) < CEILING_MB
    # The same L2 choices; accuracies within one of the 512 examples (4 devices sum the
    # gradients in another order than one does; measured: equal, or 1 example apart).
    assert sharded["metrics"].keys() == replicated["metrics"].keys()
    for key, value in replicated["metrics"].items():
        tolerance = 0.0 if key.startswith("probe_l2_") else 1.01 / 512
        assert abs(sharded["metrics"][key] - value) <= tolerance, (key, sharded, replicated)
    assert replicated["metrics"]["probe_top1_bn_crelu_test"] > 0.3  # chance: 0.1
