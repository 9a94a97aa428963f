"""bbg-jax: BigBiGAN in JAX/Flax."""

__version__ = "0.1.0"
