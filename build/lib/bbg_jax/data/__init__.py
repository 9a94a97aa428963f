"""The input pipeline: TFDS sources, the two-view BigBiGAN input, and a synthetic source.

This package is the only place in the library that imports TensorFlow, and only some of its
modules do: ``config``, ``idx``, ``global_batch`` and ``synthetic`` are TensorFlow-free, so
accelerator runs fed by the synthetic source never load it. Import the modules directly
(``from bbg_jax.data import pipeline``); this file deliberately imports nothing.

Modules:
  config          ``data_config()``: the ``config.data`` section and what every field means.
  idx             reader for the IDX files of (Fashion-)MNIST (numpy only).
  fashion_mnist   a TFDS builder that prepares ``fashion_mnist`` from Debian's local IDX files.
  tfds_source     finding/preparing a TFDS dataset, split strings, train_val, per-process splits.
  augment         crops, flips, padding and the two views (TensorFlow ops, one example at a time).
  pipeline        the deterministic, restartable per-process tf.data pipeline.
  global_batch    per-process numpy batches -> global ``jax.Array`` on a Mesh (no TensorFlow).
  synthetic       the same batch dict from numpy only, for benchmarks and accelerator runs.
  benchmark       ``python -m bbg_jax.data.benchmark``: images/s per host core.
"""
