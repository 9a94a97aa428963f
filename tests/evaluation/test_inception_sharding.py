"""FID features split over devices equal one device's (the evaluator's speed-up on CPU)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from xla_flags import cpu_devices  # noqa: E402

SCRIPT = r"""
import sys
import jax, numpy as np
from bbg_jax import sharding
from bbg_jax.evaluation.inception import InceptionFeatures
assert len(jax.devices()) == 2
f = InceptionFeatures()
x = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
odd = f(x)                     # padded to 4, split over both devices
even = f(np.concatenate([x, x[:1]]))
one = InceptionFeatures(mesh=sharding.make_mesh(jax.devices()[:1]))(x)
np.savez(sys.argv[1], odd=odd, even=even, one=one, devices=f._fn.mesh.devices.size)
"""


def test_split_features_equal_one_device(tmp_path):
    out = tmp_path / "features.npz"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": cpu_devices(2)}
    subprocess.run([sys.executable, "-c", SCRIPT, str(out)], check=True, env=env, cwd=ROOT,
                   timeout=600)
    r = np.load(out)
    assert r["odd"].shape == (3, 2048) and int(r["devices"]) == 2
    np.testing.assert_allclose(r["odd"], r["one"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r["even"][:3], r["one"], rtol=1e-5, atol=1e-6)
