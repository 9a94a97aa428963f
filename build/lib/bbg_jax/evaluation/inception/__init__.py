"""The FID Inception-v3: the Flax port, its weight reader, and the tools around it.

The port's public API is re-exported here (``from bbg_jax.evaluation.inception import
InceptionFeatures``); importing it loads JAX and Flax but neither TensorFlow nor the weights.

Modules:
  network              Flax FID Inception-v3, its preprocessing and weight loader
  torchscript_weights  torch-free reader of TorchScript zip archives (restricted unpickler)
  logits_head          ``python -m bbg_jax.evaluation.inception.logits_head``: the Inception
                       Score's classifier from the TF graph (needs TensorFlow)
  benchmark            ``python -m bbg_jax.evaluation.inception.benchmark``: images/s
  fid_sanity           ``python -m bbg_jax.evaluation.inception.fid_sanity``: FID on Fashion-MNIST
"""

from bbg_jax.evaluation.inception.network import (
    BN_EPS,
    FEATURE_DIM,
    INPUT_SIZE,
    PACKAGED_WEIGHTS,
    FIDInceptionV3,
    InceptionFeatures,
    default_weights_path,
    legacy_bilinear_matrix,
    load_params,
    preprocess,
)

__all__ = [
    "BN_EPS",
    "FEATURE_DIM",
    "INPUT_SIZE",
    "PACKAGED_WEIGHTS",
    "FIDInceptionV3",
    "InceptionFeatures",
    "default_weights_path",
    "legacy_bilinear_matrix",
    "load_params",
    "preprocess",
]
