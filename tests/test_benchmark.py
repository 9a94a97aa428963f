"""The benchmark harness reports what the README says it reports (slow: it compiles a step)."""

from pathlib import Path

import pytest

from bbg_jax import benchmark
from bbg_jax.configs import load_experiment

SMOKE = str(Path(__file__).resolve().parents[1] / "experiments" / "smoke.py")


@pytest.mark.slow
@pytest.mark.parametrize("steps", [0, 2])
def test_benchmark_step_reports_time_flops_and_memory(steps):
    config = load_experiment(SMOKE)
    config.data.dataset = "synthetic"
    row = benchmark.benchmark_step(config, steps)
    assert row["batch"] == config.data.batch_size
    assert row["xla_flops"] > 0 and row["analytic_flops"] > 0
    # Same order of magnitude: XLA counts the step it compiled, flops.py the networks' jaxprs.
    assert 0.5 < row["xla_flops"] / row["analytic_flops"] < 2
    assert row["compiled_temp_bytes"] > 0 and row["compiled_argument_bytes"] > 0
    assert row["peak_used"] is None and row["fraction_of_peak"] is None  # a CPU: no peak
    if steps:
        assert row["median_s"] > 0 and row["images_per_s"] > 0
        assert row["all_finite"] is True
        assert {"d_loss", "g_loss", "e_loss"} <= set(row["final_losses"])
    else:
        assert row["median_s"] is None and row["images_per_s"] is None
        assert row["all_finite"] is None and row["final_losses"] is None


class _Device:
    """What ``benchmark.peak_info`` reads of a ``jax.Device``."""

    def __init__(self, kind: str, platform: str = "gpu"):
        self.device_kind, self.platform = kind, platform


@pytest.mark.parametrize("kind,dtype,precision,peak,used", [
    # XLA's default precision runs float32 matmuls on the TF32 tensor cores of a GPU.
    ("NVIDIA H100 80GB HBM3", "float32", None, 494e12, "tf32"),
    ("NVIDIA H100 80GB HBM3", "float32", "tensorfloat32", 494e12, "tf32"),
    ("NVIDIA H200", "float32", "default", 494e12, "tf32"),
    ("NVIDIA A100-SXM4-80GB", "float32", None, 156e12, "tf32"),
    ("NVIDIA H100 PCIe", "float32", None, 378e12, "tf32"),
    # ... and in float32 when the precision is raised to it.
    ("NVIDIA H100 80GB HBM3", "float32", "highest", 67e12, "fp32"),
    ("NVIDIA A100-SXM4-80GB", "float32", "float32", 19.5e12, "fp32"),
    ("NVIDIA H100 80GB HBM3", "bfloat16", None, 989e12, "bf16"),
    ("NVIDIA H100 PCIe", "bfloat16", "highest", 756e12, "bf16"),
    ("TPU v5p", "bfloat16", None, 459e12, "bf16"),
    ("TPU v5p", "float32", None, None, "fp32"),
    ("cpu", "float32", None, None, None),
])
def test_peak_is_the_one_xla_runs_at(monkeypatch, kind, dtype, precision, peak, used):
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    platform = "cpu" if kind == "cpu" else "tpu" if kind.startswith("TPU") else "gpu"
    import jax

    with jax.default_matmul_precision(precision):  # the suite's conftest sets "highest"
        assert benchmark.peak_info(_Device(kind, platform), dtype) == (peak, used)
        assert benchmark.platform_peak(_Device(kind, platform), dtype) == peak


def test_tf32_switched_off_by_nvidia_override_uses_the_fp32_peak(monkeypatch):
    import jax

    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    with jax.default_matmul_precision(None):
        assert benchmark.peak_info(_Device("NVIDIA H100 80GB HBM3"), "float32") == (67e12, "fp32")


def test_fp32_fraction_of_peak_on_an_h100():
    """A float32 step at 100 TFLOP/s on 2 H100s under XLA's default precision: 100 / (2 × 494)
    of the TF32 peak, not 100 / (2 × 67) = 0.75 of the non-tensor-core peak (which a faster step
    would take above 1)."""
    import jax

    with jax.default_matmul_precision(None):
        peak, used = benchmark.peak_info(_Device("NVIDIA H100 80GB HBM3"), "float32")
    assert used == "tf32"
    assert benchmark.fraction_of_peak(100e12, peak, 2) == pytest.approx(100 / 988, rel=1e-12)
    assert benchmark.fraction_of_peak(None, peak, 2) is None
    assert benchmark.fraction_of_peak(100e12, None, 2) is None
