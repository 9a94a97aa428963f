"""Test-wide settings: run JAX on the CPU with deterministic float32 matmuls."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
