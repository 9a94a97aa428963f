"""The Flax FID Inception against the TorchScript original (needs torch: `pip install torch`)."""

import numpy as np
import pytest

from bbg_jax.evaluation import inception

torch = pytest.importorskip("torch")


def _relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def _reference_nv_bilinear(x, size: int):
    """fid-helper-pytorch's ``nv_bilinear`` (its reference resize), restated in torch."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += 1.0 / w - 1.0 / size
    theta[1, 2] += 1.0 / h - 1.0 / size
    grid = torch.nn.functional.affine_grid(
        theta[None].repeat(n, 1, 1), [n, c, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@pytest.fixture(scope="module")
def models():
    path = inception.default_weights_path()
    return inception.InceptionFeatures(path), torch.jit.load(path, map_location="cpu").eval()


@pytest.mark.slow
def test_features_match_torchscript_on_random_inputs(models):
    ours_fn, ref_net = models
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 0.9921875, size=(4, 299, 299, 3)).astype(np.float32)
    ours = _net_only(ours_fn, x)  # bypass preprocessing: the raw network on its input range
    with torch.inference_mode():
        ref = ref_net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert ours.shape == ref.shape == (4, 2048)
    err = _relative_error(ours, ref)
    print(f"relative L2 error, network only: {err:.2e}; max abs {np.abs(ours - ref).max():.2e}")
    assert err < 1e-4


def _net_only(features: inception.InceptionFeatures, x: np.ndarray) -> np.ndarray:
    net = inception.FIDInceptionV3()
    return np.asarray(net.apply({"params": features.params}, x))


@pytest.mark.slow
def test_preprocessing_and_features_match_reference_pipeline(models):
    """32 px images in [-1, 1] -> quantise -> TF-legacy bilinear to 299 -> /128 - 1 -> network."""
    ours_fn, ref_net = models
    rng = np.random.default_rng(1)
    images = rng.uniform(-1.0, 1.0, size=(3, 32, 32, 3)).astype(np.float32)
    ours = np.asarray(ours_fn(images))
    with torch.inference_mode():
        t = torch.from_numpy(images).permute(0, 3, 1, 2)
        t = ((t + 1) / 2).clamp(0, 1).mul(255).round()
        t = _reference_nv_bilinear(t, 299) / 255
        t = (t * (0.9921875 + 1) - 1).clamp(-1, 0.9921875)
        ref = ref_net(t).numpy()
    err = _relative_error(ours, ref)
    print(f"relative L2 error, full pipeline: {err:.2e}")
    assert err < 1e-4
