"""Flax linen models of BigBiGAN: BigGAN G, the joint D (F, H, J), ResNet/RevNet encoders."""

from bbg_jax.models.build import (
    abstract_variables,
    build_models,
    count_params,
    example_inputs,
    init_variables,
)

__all__ = [
    "abstract_variables",
    "build_models",
    "count_params",
    "example_inputs",
    "init_variables",
]
