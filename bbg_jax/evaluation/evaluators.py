"""Evaluators with one contract: ``run(state) -> (metrics, images)``, and their registry.

``metrics`` maps provenance-carrying names to floats; ``images`` maps names to uint8 [H, W, C]
sheets. The same objects run periodically inside training (each on its own
``eval.<name>.every_steps``) and standalone on a checkpoint (``bbg_jax.evaluation.standalone``).
``REGISTRY`` maps each name of ``eval.evaluators`` to its builder; a new evaluator is one class
and one entry.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import jax
import ml_collections
import numpy as np

from bbg_jax import paths, sharding
from bbg_jax.evaluation import diagnostics, generation, metrics, probe, sharded_probe, sheets
from bbg_jax.evaluation.probe_files import (
    belongs_to_this_process,
    this_process_file,
    trained_classifier_path,
    trained_features_path,
)
from bbg_jax.evaluation.settings import eval_section, probe_settings
from bbg_jax.evaluation.sharded import ShardedFn, replicate
from bbg_jax.models import build_models

log = logging.getLogger(__name__)

Metrics = dict[str, float]
Images = dict[str, np.ndarray]
# (split, max_examples) -> batches of {"image_e", "image_d", "label"} numpy arrays.
BatchesFn = Callable[[str, int | None], Iterable[dict]]


class Evaluator(Protocol):
    name: str

    def run(self, state) -> tuple[Metrics, Images]: ...


def split_name(config: ml_collections.ConfigDict, which: str) -> str:
    """"train" | "trainval" | "eval" -> the TFDS split string of ``config.data``."""
    from bbg_jax.data import tfds_source  # TensorFlow-free module; real datasets only

    d = config.data
    return {"train": lambda: tfds_source.training_split(d),
            "trainval": lambda: tfds_source.train_val_split(d),
            "eval": lambda: d.eval_split}[which]()


def dataset_batches(config: ml_collections.ConfigDict, batch_size: int) -> DatasetBatches:
    """Real data through ``bbg_jax.data.pipeline`` (TensorFlow); synthetic data from numpy."""
    return DatasetBatches(config, batch_size)


class DatasetBatches:
    """The config's splits as batches. Called as a ``BatchesFn`` it gives every process the
    whole split in the same order (the evaluations that split each batch's rows over all
    devices, ``bbg_jax.evaluation.sharded``: their metrics are those of one process, never those
    of a 1/N part); ``local`` gives this process its own part, read by this process only."""

    def __init__(self, config: ml_collections.ConfigDict, batch_size: int):
        self.config, self.batch_size = config, batch_size

    def __call__(self, which: str, max_examples: int | None) -> Iterator[dict]:
        if self.config.data.dataset == "synthetic":
            return self._synthetic(which, max_examples)
        return self._tfds(which, max_examples, process_index=0, process_count=1)

    def local(self, which: str, max_examples: int | None) -> Iterator[dict]:
        """This process's contiguous part of the split's first ``max_examples`` (processes in
        order; ``tfds.even_splits``), as the data pipeline reads training data."""
        if self.config.data.dataset == "synthetic" or jax.process_count() == 1:
            return process_part(self, which, max_examples)
        from bbg_jax.data import tfds_source  # TensorFlow-free module

        split = split_name(self.config, which)
        if max_examples is not None:
            split = tfds_source.first_examples(split, max_examples)
        return self._tfds_split(split, process_index=None, process_count=None)

    def _synthetic(self, which: str, max_examples: int | None) -> Iterator[dict]:
        from bbg_jax.data.synthetic import synthetic_batch

        c, bs = self.config.data, self.batch_size
        n = max_examples or 4 * bs
        seed = {"train": 1, "trainval": 2, "eval": 3}[which]
        for i in range(0, n, bs):
            yield synthetic_batch(min(bs, n - i), c.resolution_e, c.resolution_d, c.channels,
                                  seed=(seed, i), num_classes=10)

    def _tfds(self, which: str, max_examples: int | None, **process) -> Iterator[dict]:
        seen = 0
        for batch in self._tfds_split(split_name(self.config, which), **process):
            if max_examples is not None:
                batch = {k: v[:max_examples - seen] for k, v in batch.items()}
            yield batch
            seen += len(batch["label"])
            if max_examples is not None and seen >= max_examples:
                return

    def _tfds_split(self, split: str, **process) -> Iterator[dict]:
        from bbg_jax.data import pipeline  # the only route to TensorFlow

        yield from pipeline.eval_dataset(self.config.data, split, batch_size=self.batch_size,
                                         **process).as_numpy_iterator()


def local_batches(batches: BatchesFn, which: str, max_examples: int | None
                  ) -> Iterator[dict]:
    """This process's contiguous part of ``batches(which, max_examples)``: the source's own
    ``local`` reader where it has one, else ``process_part``."""
    local = getattr(batches, "local", None)
    if local is not None:
        return local(which, max_examples)
    return process_part(batches, which, max_examples)


def process_part(batches: BatchesFn, which: str, max_examples: int | None,
                 process_index: int | None = None, process_count: int | None = None
                 ) -> Iterator[dict]:
    """Rows [n p / P, n (p + 1) / P) of the whole split for process p of P (default: this one),
    read from a source that gives every process the whole split: one pass counts the rows, a
    second keeps this process's (a stand-in source or synthetic data; real data reads only its
    part, ``DatasetBatches.local``)."""
    me = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if count == 1:
        yield from batches(which, max_examples)
        return
    n = sum(len(b["label"]) for b in batches(which, max_examples))
    lo, hi, start = n * me // count, n * (me + 1) // count, 0
    for batch in batches(which, max_examples):
        rows = len(batch["label"])
        a, b = max(lo - start, 0), min(hi - start, rows)
        if a < b:
            yield {k: v[a:b] for k, v in batch.items()}
        start += rows
        if start >= hi:
            return


class SampleSheets:
    """Samples from a fixed z, reconstructions of a fixed real batch, interpolations."""

    name = "samples"

    def __init__(self, config, batches: BatchesFn):
        self.config, self.ev = config, eval_section(config)
        n = self.ev.samples.sheet_size
        key = jax.random.key(self.ev.seed)
        self.z, self.y = generation.draw_latents(config, key, n)
        models = build_models(config)
        self.real = next(iter(batches("eval", n))) if "E" in models else None
        self.sampler = generation.Sampler(config)
        if self.real is not None:
            E = models["E"]
            self._encode = ShardedFn(lambda variables, xn: E.apply(
                variables, xn["x"], train=False, noise=xn["noise"]), self.sampler.mesh)

    def run(self, state):
        ev = self.ev
        tag = f"{ev.generator}_{ev.bn_stats}"
        sample = self.sampler.bind(state, ev.generator, ev.bn_stats, jax.random.key(ev.seed + 1),
                                   ev.standing_batches, ev.batch_size)
        images = {f"samples_{tag}": sheets.sample_sheet(sample, self.z, self.y)}
        half = self.z.shape[0] // 2
        images[f"interpolations_{tag}"] = sheets.interpolation_sheet(
            sample, self.z[:half // 2], self.z[half // 2:half], None if self.y is None
            else self.y[:half // 2], ev.samples.interpolation_steps)
        if self.real is not None:
            variables = replicate({"params": state.params["E"], **state.model_state["E"]},
                                  self.sampler.mesh)
            noise = np.asarray(jax.random.normal(jax.random.key(ev.seed + 2),
                                                 (self.z.shape[0], self.config.model.z_dim)))
            images[f"reconstructions_{tag}"] = sheets.reconstruction_sheet(
                sample, lambda x: self._encode(variables, {"x": x, "noise": noise}),
                np.asarray(self.real["image_e"]), np.asarray(self.real["image_d"]), self.y)
        return {}, images


class FIDEvaluator:
    """FID of N samples against cached real statistics; metric fid_{N}_{gen}_{bn}_{split}.

    With ``eval.fid.inception_logits_head`` (an .npz of the classifier on the pool features) the
    same samples also give the Inception Score: is_{N}_{gen}_{bn} and its std over 10 splits.
    """

    name = "fid"

    def __init__(self, config, workdir: str, batches: BatchesFn, features=None):
        from bbg_jax.evaluation.inception import InceptionFeatures

        self.config, self.ev, self.workdir, self.batches = (
            config, eval_section(config), workdir, batches)
        self.features = features or InceptionFeatures(self.ev.fid.inception_weights)
        self.sampler = generation.Sampler(config)
        head = self.ev.fid.inception_logits_head
        self.logits_head = metrics.load_logits_head(head) if head else None
        self._features_key: str | None = None

    def _stats(self, image_batches: Iterable[jax.Array], keep: list | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the batches' features; ``keep`` collects the features."""
        stats = metrics.FeatureStats(2048)
        for images in image_batches:
            f = np.asarray(self.features(images))
            stats.update(f)
            if keep is not None:
                keep.append(f)
        return stats.mean_cov()

    def features_key(self) -> str:
        """What the Inception features depend on besides the images: the weights' content
        (sha256 of the file, not its path), the resize to the network's input, the precision.
        A stand-in feature function without these attributes is keyed by the configured
        weights file (when there is one) and the default resize."""
        from bbg_jax.evaluation.inception import network

        if self._features_key is None:
            digest = getattr(self.features, "weights_digest", None)
            if digest is None:
                try:
                    digest = network.weights_digest(self.ev.fid.inception_weights)
                except (FileNotFoundError, OSError):
                    digest = "none"
            resize = getattr(self.features, "resize", network.resize_name())
            precision = getattr(self.features, "precision", "highest")
            self._features_key = f"inception-{digest[:16]}-{precision}_{resize}"
        return self._features_key

    def real_stats(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """Statistics of the first N real images (image_d) of a split, cached in the workdir
        under everything that selects them: dataset, split, resolution, N, and the features'
        weights, resize and precision (``features_key``)."""
        d, n = self.config.data, self.ev.fid.num_samples
        split = which if d.dataset == "synthetic" else split_name(self.config, which)
        tag = re.sub(r"[^A-Za-z0-9_.-]+", "_",
                     f"{d.dataset}_{split}_{d.resolution_d}px_{n}_{self.features_key()}")
        path = paths.path(self.workdir) / "fid_stats" / f"{tag}.npz"
        cached = probe.cached(path, lambda: dict(zip(("mu", "sigma"), self._stats(
            b["image_d"] for b in self.batches(which, n)), strict=True)))
        return cached["mu"], cached["sigma"]

    def run(self, state):
        ev, n = self.ev, self.ev.fid.num_samples
        sample = self.sampler.bind(state, ev.generator, ev.bn_stats, jax.random.key(ev.seed + 1),
                                   ev.standing_batches, ev.batch_size)

        def fakes():
            # Whole batches only (batch-mode BN sees eval.batch_size images every time); the
            # last one is trimmed to N.
            keys = jax.random.split(jax.random.key(ev.seed + 3), -(-n // ev.batch_size))
            for i, k in enumerate(keys):
                z, y = generation.draw_latents(self.config, k, ev.batch_size)
                yield sample(z, y)[:n - i * ev.batch_size]

        fake_features = [] if self.logits_head is not None else None
        mu, sigma = self._stats(fakes(), keep=fake_features)
        tag = f"{metrics.count_name(n)}_{ev.generator}_{ev.bn_stats}"
        out = {f"fid_{tag}_{which}": metrics.frechet_distance(mu, sigma, *self.real_stats(which))
               for which in ev.fid.splits}
        if self.logits_head is not None:
            # IS from the same samples: the head applied to the pool features (TF's
            # softmax/logits = pool_3 @ W + b), 10 splits as in Salimans et al.
            kernel, bias = self.logits_head
            logits = np.concatenate(fake_features) @ kernel + bias
            out[f"is_{tag}"], out[f"is_{tag}_std"] = metrics.inception_score(logits)
        return out, {}


class ProbeEvaluator:
    """Offline linear probe on frozen-E features (train -> choose L2 on trainval -> eval).

    Each process reads and encodes only its part of every split, and the classifiers train
    data-parallel over every device on features that stay sharded (``sharded_probe``): no host
    holds a whole split's features (125 GB for RevNet-50x4 on ImageNet). With a ``workdir``
    each process keeps its part of the evaluated step's features in WORKDIR/features/ (only the
    latest step's) for the run report and the diagnostics' probe judge.
    """

    name = "probe"

    def __init__(self, config, batches: BatchesFn, workdir: str | None = None):
        self.config, self.ev, self.batches = config, eval_section(config), batches
        self.workdir = workdir
        self.mesh = sharding.make_mesh()
        self.extract = sharded_probe.LocalFeatureExtractor(build_models(config)["E"], self.mesh)

    def _features(self, variables, step: int, which: str, limit: int | None):
        path = (None if self.workdir is None else
                trained_features_path(self.workdir, step, self.ev.probe.params, which, limit))
        return sharded_probe.cached_local(path, lambda: self.extract(
            variables, local_batches(self.batches, which, limit)))

    def _drop_older_features(self, step: int) -> None:
        pr = self.ev.probe
        keep = {this_process_file(trained_features_path(self.workdir, step, pr.params, w, limit))
                for w, limit in (("train", pr.max_train), ("trainval", None), ("eval", None))}
        keep.add(trained_classifier_path(self.workdir, step, pr.params,
                                         diagnostics.PROBE_JUDGE_FEATURE))
        for path in (paths.path(self.workdir) / "features").glob("trained_step*.npz"):
            if path not in keep and belongs_to_this_process(path):
                path.unlink()

    def run(self, state):
        pr = self.ev.probe
        params = state.ema_params["E"] if pr.params == "ema" else state.params["E"]
        variables = {"params": params, **state.model_state["E"]}
        step = int(jax.device_get(state.step))
        feats = {
            "train": self._features(variables, step, "train", pr.max_train),
            "trainval": self._features(variables, step, "trainval", None),
            "test": self._features(variables, step, "eval", None),
        }
        num_classes = sharded_probe.global_num_classes([f["label"] for f in feats.values()])
        fitted: dict[str, probe.ProbeResult] = {}
        metrics = sharded_probe.probe_metrics_sharded(
            feats, num_classes, probe_settings(self.ev), fitted=fitted, mesh=self.mesh)
        if self.workdir is not None:
            if jax.process_index() == 0:  # kept for its only reader, the diagnostics' judge
                feature = diagnostics.PROBE_JUDGE_FEATURE
                paths.save_npz(trained_classifier_path(self.workdir, step, pr.params, feature),
                               probe.result_arrays(fitted[feature]))
            self._drop_older_features(step)
        return metrics, {}


# name -> builder(config, workdir, batches) -> Evaluator, or None where the model has no use for
# it (the probe of a GAN without an encoder).
Builder = Callable[[ml_collections.ConfigDict, str, BatchesFn], "Evaluator | None"]
REGISTRY: dict[str, Builder] = {
    "samples": lambda config, workdir, batches: SampleSheets(config, batches),
    "fid": lambda config, workdir, batches: FIDEvaluator(config, workdir, batches),
    "probe": lambda config, workdir, batches: (ProbeEvaluator(config, batches, workdir)
                                               if "E" in build_models(config) else None),
    "diagnostics": lambda config, workdir, batches: (
        diagnostics.Diagnostics(config, workdir, batches)
        if "E" in build_models(config) else None),
}


def every_steps(config: ml_collections.ConfigDict, name: str) -> int:
    """How often evaluator ``name`` runs during training (0 = never)."""
    return eval_section(config)[name].every_steps


def build_evaluators(config, workdir: str, batches: BatchesFn | None = None,
                     names: Iterable[str] | None = None) -> list[Evaluator]:
    """The evaluators ``names`` (default: ``eval.evaluators``) from the registry."""
    ev = eval_section(config)
    batches = batches or dataset_batches(config, ev.batch_size)
    built = (REGISTRY[name](config, workdir, batches) for name in names or ev.evaluators)
    return [e for e in built if e is not None]


def due(evaluators: Iterable[Evaluator], config, step: int, last_step: int) -> list[Evaluator]:
    """The evaluators whose training schedule includes ``step`` (each runs every
    ``eval.<name>.every_steps`` and at the last step)."""
    out = []
    for e in evaluators:
        every = every_steps(config, e.name)
        if every and (step % every == 0 or step == last_step):
            out.append(e)
    return out


def run_all(evaluators: Iterable[Evaluator], state) -> tuple[Metrics, Images]:
    all_metrics: Metrics = {}
    all_images: Images = {}
    for evaluator in evaluators:
        start = time.perf_counter()
        m, im = evaluator.run(state)
        all_metrics.update(m)
        all_images.update(im)
        log.info("Evaluator %s took %.1f s.", evaluator.name, time.perf_counter() - start)
    return all_metrics, all_images
