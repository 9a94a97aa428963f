"""Benchmark harness: time the train step (and its pieces) on synthetic data, no TensorFlow.

    python -m bbg_jax.benchmark --config experiments/smoke.py [--batch 64] [--steps 10]
        [--pieces] [--dtype bfloat16] [--config.key=value ...]

Prints a table and one JSON line per run: compile time; median and spread of the step time over
``--steps`` steps after warm-up; images/s; the compiled step's FLOPs (XLA cost analysis) beside
the analytic count (``bbg_jax.flops``); achieved FLOP/s and its fraction of the platform's peak
(``peak_used``: bf16; for float32 TF32 where XLA runs float32 matmuls as TF32, the GPU default,
else fp32); whether every timed step's metrics were finite, and the last step's losses;
peak device memory where the platform reports it, and XLA's compiled temporary and argument
bytes per device on every platform. ``--pieces`` also times G/E/D forward passes,
the D update, the G/E update, the spectral-norm power iterations and self-attention.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from bbg_jax import chips, flops, sharding
from bbg_jax.data.batches import step_batches
from bbg_jax.models import build_models, init_variables
from bbg_jax.train import jit_train_step, make_step_functions
from bbg_jax.train_state import create_train_state


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program: this module's functions are
    imported by tests and notebooks, where a second absl ``--config`` flag would collide."""
    global _CONFIG, _BATCH, _STEPS, _PIECES, _DTYPE
    # Here, not at the top: the device check (bbg_jax.device_check) imports this module's
    # functions where ml_collections is not installed.
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
    _BATCH = flags.DEFINE_integer("batch", None, "Global batch (default: the config's).")
    _STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after one warm-up step; 0 = compile "
                                  "only (memory and FLOPs, no timing).")
    _PIECES = flags.DEFINE_bool("pieces", False, "Also time the step's parts.")
    _DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Override model.dtype.")


# jax_default_matmul_precision values under which XLA keeps float32 matmuls and convolutions
# in float32 on a GPU; every other value (None, the default, included) lets it use TF32 tensor
# cores ("default"/"bfloat16"/"fastest" and "high"/"tensorfloat32" both do on Ampere and later).
_FULL_FP32 = ("highest", "float32", "f32_f32_f32", "any_f32_f32_f32")


def fp32_matmuls_run_as_tf32(device: jax.Device) -> bool:
    """Whether XLA runs this program's float32 matmuls and convolutions as TF32 on ``device``:
    a GPU, the default matmul precision not raised to float32, and NVIDIA's global switch
    ``NVIDIA_TF32_OVERRIDE=0`` not set."""
    if device.platform != "gpu" or os.environ.get("NVIDIA_TF32_OVERRIDE") == "0":
        return False
    precision = jax.config.jax_default_matmul_precision
    return str(precision).lower() not in _FULL_FP32 if precision is not None else True


def peak_info(device: jax.Device, dtype: str) -> tuple[float | None, str | None]:
    """(peak FLOP/s per device, which peak): "bf16"; for float32 "tf32" where XLA runs float32
    matmuls as TF32 (``fp32_matmuls_run_as_tf32``) and the chip has TF32 tensor cores, else
    "fp32"; (None, None) on CPUs and unknown chips."""
    chip = chips.from_device_kind(device.device_kind)
    if chip is None:
        return None, None  # CPU and unknown chips: no peak to compare against
    if dtype == "bfloat16":
        return chip.bf16_flops, "bf16"
    if chip.tf32_flops is not None and fp32_matmuls_run_as_tf32(device):
        return chip.tf32_flops, "tf32"
    return chip.fp32_flops, "fp32"


def platform_peak(device: jax.Device, dtype: str) -> float | None:
    return peak_info(device, dtype)[0]


def fraction_of_peak(achieved: float | None, peak: float | None, devices: int) -> float | None:
    """Achieved FLOP/s over the peak of all devices (None when either is unknown)."""
    return None if peak is None or achieved is None else achieved / (peak * devices)


def time_fn(fn: Callable[[], Any], steps: int) -> tuple[float, list[float]]:
    """(first call seconds, per-call seconds of ``steps`` further calls), each synchronised."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, times


def summary(times: list[float]) -> dict[str, float]:
    t = np.asarray(times)
    return {"median_s": float(np.median(t)), "p10_s": float(np.percentile(t, 10)),
            "p90_s": float(np.percentile(t, 90))}


def peak_memory(device: jax.Device) -> int | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return None if not stats else stats.get("peak_bytes_in_use")


def benchmark_step(config, steps: int) -> dict[str, Any]:
    mesh = sharding.make_mesh()
    batch_size = config.data.batch_size
    sharding.check_batch_divisible(batch_size, mesh)
    state = jax.jit(lambda k: create_train_state(config, k),
                    out_shardings=sharding.replicated(mesh))(jax.random.key(0))
    batch = next(step_batches(config, mesh, 0))
    step = jit_train_step(config, mesh)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float(cost.get("flops", 0.0)) * mesh.devices.size  # cost is per device
    # XLA's buffer assignment for one device: where remat, reversible backprop or grouped BN
    # change memory, this shows it on every platform (peak_memory_bytes needs an accelerator).
    mem = compiled.memory_analysis()
    holder = {"state": state}
    outputs = []  # every call's metrics, checked finite after the timing

    def run():
        holder["state"], metrics = compiled(holder["state"], batch)
        outputs.append(metrics)
        return metrics

    analytic = flops.train_step_flops(config, batch_size)
    device = jax.devices()[0]
    peak, peak_used = peak_info(device, config.model.dtype)
    if steps > 0:
        _, times = time_fn(run, steps)
        stats = summary(times)
        achieved = analytic / stats["median_s"]
        history = jax.device_get(outputs)
        all_finite = all(bool(np.all(np.isfinite(v))) for m in history for v in m.values())
        final_losses = {k: float(v) for k, v in sorted(history[-1].items()) if "loss" in k}
    else:  # --steps 0: compile only (memory and FLOPs of configs too slow to run here)
        stats = {"median_s": None, "p10_s": None, "p90_s": None}
        achieved = all_finite = final_losses = None
    return {
        "what": "train_step", "device": device.device_kind, "devices": mesh.devices.size,
        "dtype": config.model.dtype, "batch": batch_size, "n_d_steps": config.train.n_d_steps,
        "compile_s": compile_s, **stats,
        "images_per_s": None if achieved is None else batch_size / stats["median_s"],
        "xla_flops": xla_flops, "analytic_flops": analytic,
        "achieved_flop_per_s": achieved,
        "peak_used": peak_used, "peak_flop_per_s_per_device": peak,
        "fraction_of_peak": fraction_of_peak(achieved, peak, mesh.devices.size),
        "final_losses": final_losses, "all_finite": all_finite,
        "peak_memory_bytes": peak_memory(device),
        "compiled_temp_bytes": None if mem is None else int(mem.temp_size_in_bytes),
        "compiled_argument_bytes": None if mem is None else int(mem.argument_size_in_bytes),
    }


def benchmark_pieces(config, steps: int) -> list[dict[str, Any]]:
    """Times each network's forward pass and each update of the step, jitted on one device."""
    from bbg_jax.models import layers

    b = config.data.batch_size
    models = build_models(config)
    v = jax.jit(lambda k: init_variables(config, k, batch=2))(jax.random.key(0))
    m, d = config.model, config.data
    key = jax.random.key(1)
    z = jax.random.normal(key, (b, m.z_dim))
    y = jnp.zeros((b,), jnp.int32)
    x_d = jax.random.uniform(key, (b, d.resolution_d, d.resolution_d, d.channels), minval=-1)
    pieces: dict[str, Callable[[], Any]] = {
        "G_forward": jax.jit(lambda: models["G"].apply(v["G"], z, y, train=True,
                                                        mutable=["batch_stats", "spectral"])),
        "D_forward": jax.jit(lambda: models["D"].apply(
            v["D"], x_d, z if m.discriminator.kind == "bigbigan" else y, train=True,
            mutable=["spectral"])),
    }
    if "E" in models:
        x_e = jax.random.uniform(key, (b, d.resolution_e, d.resolution_e, d.channels), minval=-1)
        pieces["E_forward"] = jax.jit(lambda: models["E"].apply(
            v["E"], x_e, train=True, noise=z, mutable=["batch_stats"]))
    fns = make_step_functions(config)
    state = jax.jit(lambda k: create_train_state(config, k))(jax.random.key(0))
    real = {k: val[0] for k, val in next(step_batches(
        config, sharding.make_mesh(jax.devices()[:1]), 0)).items()}
    noise = fns.draw(key, b)
    d_update, ge_update = jax.jit(fns.d_update), jax.jit(fns.ge_update)
    pieces["D_update"] = lambda: d_update(state, real, noise)[1]
    pieces["GE_update"] = lambda: ge_update(state, real, noise)[1]
    kernels = [x for p, x in jax.tree.flatten_with_path(v["D"]["params"])[0]
               if getattr(p[-1], "key", None) == "kernel"]
    us = [jnp.ones((k.shape[-1],)) / np.sqrt(k.shape[-1]) for k in kernels]
    pieces["D_spectral_norm_iterations"] = jax.jit(lambda: [
        layers.spectral_normalize(k, u, n_iterations=1, eps=1e-4)[1] for k, u in zip(
            kernels, us, strict=True)])
    attn = layers.SelfAttention(dtype=jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32)
    r = max(d.resolution_d // 2, 8)
    ch = m.generator.ch * 2
    h = jax.random.normal(key, (b, r, r, ch))
    a_vars = attn.init(key, h[:1], train=False)
    pieces[f"self_attention_{r}x{r}x{ch}"] = jax.jit(lambda: attn.apply(a_vars, h, train=True,
                                                                         mutable=["spectral"]))
    rows = []
    for name, fn in pieces.items():
        first, times = time_fn(fn, steps)
        rows.append({"what": name, "batch": b, "first_call_s": first, **summary(times)})
    return rows


def main(argv):
    del argv
    config = _CONFIG.value
    if _BATCH.value:
        config.data.batch_size = _BATCH.value
    if _DTYPE.value:
        config.model.dtype = _DTYPE.value
    config.data.dataset = "synthetic"  # the harness never reads files or imports TensorFlow
    if _STEPS.value < 0 or (_PIECES.value and _STEPS.value == 0):
        raise app.UsageError("--steps must be >= 0, and >= 1 with --pieces (pieces are timed).")
    rows = [benchmark_step(config, _STEPS.value)]
    if _PIECES.value:
        rows += benchmark_pieces(config, _STEPS.value)
    step_row = rows[0]
    if step_row["peak_used"] is not None:
        fraction = step_row["fraction_of_peak"]
        print(f"peak used: {step_row['peak_used']}, "
              f"{step_row['peak_flop_per_s_per_device'] / 1e12:g} TFLOP/s per device"
              + ("" if fraction is None else f"; fraction of peak {fraction:.3f}"))
    for row in rows:
        cells = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in row.items())
        print(cells)
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["config"])
    app.run(main)
