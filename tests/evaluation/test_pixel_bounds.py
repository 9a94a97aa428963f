"""The raw-pixel classifiers (the diagnostics' pixel judge, the report's raw_pixels row) read at
most eval.pixels_max_train training examples, counted at the data source, while BigBiGAN's probe
keeps its whole split (issue 31, item 1)."""

from collections import Counter
from pathlib import Path

import jax
import numpy as np

from bbg_jax import checkpoint
from bbg_jax.configs import load_experiment
from bbg_jax.evaluation import diagnostics, evaluators, report
from bbg_jax.evaluation.config import PIXELS_MAX_TRAIN, eval_config, pixels_max_train
from bbg_jax.train_state import create_train_state

SMOKE = str(Path(__file__).resolve().parents[2] / "experiments" / "smoke.py")
BATCH = 16  # synthetic data: a split read whole (max_examples None) is 4 batches, 64 examples


def _config(bound=40):
    config = load_experiment(SMOKE)
    config.eval = eval_config(fid_num_samples=16)
    config.eval.batch_size = BATCH
    config.eval.standing_batches = 1
    config.eval.probe.epochs = 1
    config.eval.diagnostics.num_samples = 16
    config.eval.diagnostics.num_images = 16
    config.eval.pixels_max_train = bound
    return config


class CountingSource:
    """The real batches (``dataset_batches``), counted as they leave the source: {split: rows}.
    ``ignore_limit`` yields the whole split whatever the reader asks for (the reader must stop)."""

    def __init__(self, config, ignore_limit=False):
        self.inner = evaluators.dataset_batches(config, BATCH)
        self.ignore_limit = ignore_limit
        self.rows = Counter()

    def __call__(self, which, max_examples):
        for batch in self.inner(which, None if self.ignore_limit else max_examples):
            self.rows[which] += len(batch["label"])
            yield batch


def test_defaults_keep_the_fashion_mnist_numbers():
    """50k = Fashion-MNIST's training split (train minus the 10k train_val): read whole, as
    before; the probe's own max_train still bounds the pixel classifiers when smaller."""
    ev = eval_config()
    assert ev.pixels_max_train == PIXELS_MAX_TRAIN == 50_000 and ev.probe.max_train is None
    assert pixels_max_train(ev) == 50_000
    ev.probe.max_train = 64
    assert pixels_max_train(ev) == 64
    ev.pixels_max_train = None
    assert pixels_max_train(ev) == 64
    ev.probe.max_train = None
    assert pixels_max_train(ev) is None
    # A config.json saved before the field existed: the default.
    saved = eval_config()
    del saved["pixels_max_train"]
    assert pixels_max_train(saved) == 50_000


def test_pixel_judge_reads_only_its_bound(tmp_path):
    config = _config(bound=40)
    source = CountingSource(config)
    dg = diagnostics.Diagnostics(config, str(tmp_path), source)
    source.rows.clear()  # the fixed evaluation images read at construction
    judge = dg.pixel_judge()
    assert source.rows == {"train": 40, "trainval": 64}
    res = config.data.resolution_e
    assert judge.weights.shape[0] == res * res * config.data.channels  # E's pixels, flat
    with np.load(tmp_path / "features" / "pixel_judge.npz") as f:
        assert int(f["max_train"]) == 40
    # Cached: a second evaluator reads nothing; another bound refits with its own reads.
    second = diagnostics.Diagnostics(config, str(tmp_path), source)
    source.rows.clear()
    second.pixel_judge()
    assert source.rows == {}
    other = _config(bound=24)
    source = CountingSource(other)
    diagnostics.Diagnostics(other, str(tmp_path), source).pixel_judge()
    assert source.rows["train"] == 24
    with np.load(tmp_path / "features" / "pixel_judge.npz") as f:
        assert int(f["max_train"]) == 24


def test_the_reader_stops_even_when_the_source_does_not():
    """A source that yields the whole split: consumption stops at the batch that reaches the
    bound (40 of 64 rows: three batches of 16 pulled, the fourth never), and 40 are kept."""
    source = CountingSource(_config(), ignore_limit=True)
    out = diagnostics.pixel_features(source("train", 40), 40)
    assert source.rows["train"] == 48 and len(out["pixels"]) == len(out["label"]) == 40
    assert out["pixels"].dtype == np.float32 and out["label"].dtype == np.int32
    whole = diagnostics.pixel_features(CountingSource(_config())("train", None), None)
    np.testing.assert_array_equal(out["pixels"], whole["pixels"][:40])


def test_report_pixels_are_bounded_and_the_probe_keeps_its_split(tmp_path):
    """The report's raw_pixels row is fitted on the first 40 training examples; the probe
    evaluator (and the report's trained/random rows) still read all 64."""
    config = _config(bound=40)
    workdir = str(tmp_path)
    state = jax.jit(lambda k: create_train_state(config, k))(jax.random.key(0))
    manager = checkpoint.make_manager(workdir, config)
    checkpoint.save(manager, state, config, {"data_batch": 0})
    manager.close()
    (tmp_path / "config.json").write_text(config.to_json_best_effort())

    source = CountingSource(config)
    evaluators.ProbeEvaluator(config, source, workdir).run(state)
    assert source.rows == {"train": 64, "trainval": 64, "eval": 64}
    train = np.load(evaluators.trained_features_path(workdir, 0, "raw", "train"))
    assert len(train["label"]) == 64

    source = CountingSource(config)
    rep = report.build_report(workdir, batches_fn=source, config=config)
    assert rep["probe_settings"]["raw_pixels_max_train"] == 40
    assert rep["probe_settings"]["max_train"] is None
    with np.load(tmp_path / "features" / "pixels_train_first40.npz") as f:
        assert len(f["label"]) == 40
    assert {"raw_pixels", "bigbigan_bn_crelu", "random_encoder_bn_crelu"} <= set(rep["probe"])
