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
    if steps:
        assert row["median_s"] > 0 and row["images_per_s"] > 0
    else:
        assert row["median_s"] is None and row["images_per_s"] is None
