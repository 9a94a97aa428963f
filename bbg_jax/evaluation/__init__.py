"""Evaluation: FID Inception port, FID/IS, linear probe, image sheets, evaluator contract.

Modules (import them directly; this file imports nothing, so TensorFlow and the Inception
weights load only when used):
  torchscript_weights  torch-free reader of TorchScript zip archives (restricted unpickler)
  inception            Flax FID Inception-v3, its preprocessing and weight loader
  inception_benchmark  ``python -m bbg_jax.evaluation.inception_benchmark``: images/s
  metrics              Fréchet distance, Inception Score, streaming feature statistics
  fid_sanity           ``python -m bbg_jax.evaluation.fid_sanity``: FID on Fashion-MNIST
  probe                frozen-E features and the linear probe
  generation           sampling G: EMA/raw weights, batch/standing BN statistics
  png, sheets          a numpy+zlib PNG writer; sample/reconstruction/interpolation sheets
  config               the ``eval`` config section
  evaluators           ``run(state) -> (metrics, images)`` evaluators and their builder
  standalone           evaluate a checkpoint, write report.json and PNGs, track the best probe
"""
