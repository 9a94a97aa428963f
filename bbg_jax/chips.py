"""Accelerator chips' public datasheet figures: one table for the benchmark (peak FLOP/s of the
chip it runs on) and the compile check (HBM and peak of the chip it compiles for).

Figures are per chip, dense (no sparsity). NVIDIA: H100 SXM and H200 989 / 494 / 67 TFLOP/s
(bf16 / tf32 / fp32), H100 PCIe 756 / 378 / 51, A100 312 / 156 / 19.5; bf16 and tf32 are the
tensor cores' rates, fp32 the non-tensor-core rate. TPUs: the bf16 rate only (v4, v5p: one
device per chip, megacore).
"""

from __future__ import annotations

import dataclasses

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # the compile check's --chip value (and a TPU topology's prefix)
    device_kind: str  # what identifies it inside jax's Device.device_kind
    hbm_bytes: int
    bf16_flops: float
    tf32_flops: float | None = None
    fp32_flops: float | None = None


# More specific device kinds first: the first one found in a device's kind wins.
CHIPS: tuple[Chip, ...] = (
    Chip("h100_pcie", "H100 PCIe", 80 * GIB, 756e12, 378e12, 51e12),
    Chip("h100", "H100", 80 * GIB, 989e12, 494e12, 67e12),
    Chip("h200", "H200", 141 * GIB, 989e12, 494e12, 67e12),
    Chip("a100", "A100", 80 * GIB, 312e12, 156e12, 19.5e12),
    Chip("v3", "TPU v3", 32 * GIB, 123e12),
    Chip("v4", "TPU v4", 32 * GIB, 275e12),
    Chip("v5e", "TPU v5 lite", 16 * GIB, 197e12),
    Chip("v5p", "TPU v5p", 95 * GIB, 459e12),
    Chip("v6e", "TPU v6 lite", 32 * GIB, 918e12),
)
BY_NAME = {chip.name: chip for chip in CHIPS}


def from_device_kind(device_kind: str) -> Chip | None:
    """The chip a ``jax.Device.device_kind`` names; None for CPUs and unknown chips."""
    kind = device_kind.lower()
    return next((chip for chip in CHIPS if chip.device_kind.lower() in kind), None)
