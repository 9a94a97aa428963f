"""The probe evaluator reads each process's part of a split and trains data-parallel on the
sharded features (``sharded_probe``), with the numbers of the replicated probe it replaced.

* ``tfds_source.first_examples`` and ``tfds.even_splits``: the processes' parts of the first N
  examples of a real Fashion-MNIST split, read by ``pipeline.eval_dataset``, are contiguous and
  together are the split read whole, in order;
* ``evaluators.process_part`` (a source that gives every process the whole split) cuts the same
  contiguous parts;
* on the Fashion-MNIST config (its model and data, splits cut to 1,000 / 500 / 500 examples),
  ``ProbeEvaluator`` gives the metrics of ``FeatureExtractor`` + ``probe.probe_metrics`` (the
  evaluator before the sharding): the same L2 choices, accuracies within one example.
  The two-process case is tests/test_multiprocess.py's (1 x 8 against 2 x 4 devices) and
  tests/evaluation/test_sharded_probe.py's.
"""

from pathlib import Path

import jax
import numpy as np
import pytest

from bbg_jax.configs import load_experiment
from bbg_jax.data import config as data_config
from bbg_jax.data import pipeline, tfds_source
from bbg_jax.evaluation import evaluators, probe
from bbg_jax.evaluation.settings import probe_settings
from bbg_jax.train_state import create_train_state

FASHION_MNIST = str(Path(__file__).resolve().parents[2] / "experiments" / "fashion_mnist.py")


def test_first_examples_of_a_split():
    assert tfds_source.first_examples("train[10000:]", 5) == "train[10000:10005]"
    assert tfds_source.first_examples("test", 3) == "test[0:3]"
    assert tfds_source.first_examples("train[:10000]", 20_000) == "train[0:10000]"
    assert tfds_source.first_examples("train[10:20]", 5) == "train[10:15]"
    with pytest.raises(ValueError, match=r"'train\[:50%\]'.*no percentages"):
        tfds_source.first_examples("train[:50%]", 5)


def _read(c, split: str, index: int, count: int) -> dict[str, np.ndarray]:
    parts = list(pipeline.eval_dataset(c, split, batch_size=64, process_index=index,
                                       process_count=count).as_numpy_iterator())
    return {k: np.concatenate([p[k] for p in parts]) for k in ("image_e", "label")}


def test_three_processes_parts_of_fashion_mnist_are_the_split_in_order():
    c = data_config.data_config("fashion_mnist")
    split = tfds_source.first_examples(tfds_source.training_split(c), 301)
    whole = _read(c, split, 0, 1)
    parts = [_read(c, split, p, 3) for p in range(3)]
    assert [len(p["label"]) for p in parts] == [101, 100, 100]
    for k in whole:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
    # ... and the split's first 301 examples, as the whole-split reader cuts them.
    head = []
    for batch in pipeline.eval_dataset(c, tfds_source.training_split(c), batch_size=64,
                                       process_index=0, process_count=1).as_numpy_iterator():
        head.append(batch["label"])
        if sum(map(len, head)) >= 301:
            break
    np.testing.assert_array_equal(whole["label"], np.concatenate(head)[:301])


def test_process_part_of_a_source_that_gives_every_process_everything():
    def source(which, max_examples):
        rows = np.arange(70 if max_examples is None else max_examples)
        for i in range(0, len(rows), 16):
            yield {"label": rows[i:i + 16], "image_e": rows[i:i + 16, None] * 2.0}

    for count in (1, 2, 3, 8):
        parts = [np.concatenate([b["label"] for b in evaluators.process_part(
            source, "train", None, process_index=p, process_count=count)] or [[]])
            for p in range(count)]
        np.testing.assert_array_equal(np.concatenate(parts), np.arange(70))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1, count
    cut = list(evaluators.process_part(source, "train", 40, process_index=1, process_count=2))
    assert np.concatenate([b["label"] for b in cut]).tolist() == list(range(20, 40))
    assert all(len(b["image_e"]) == len(b["label"]) for b in cut)


def test_the_evaluator_gives_the_replicated_probe_numbers_on_fashion_mnist():
    config = load_experiment(FASHION_MNIST)
    config.data.train_val_size = 500
    config.data.eval_split = "test[:500]"
    config.eval.batch_size = 100
    config.eval.probe.max_train = 1000
    config.eval.probe.epochs = 3
    state = jax.jit(lambda k: create_train_state(config, k))(jax.random.key(0))
    batches = evaluators.dataset_batches(config, config.eval.batch_size)

    got, _ = evaluators.ProbeEvaluator(config, batches).run(state)

    extract = probe.FeatureExtractor(evaluators.build_models(config)["E"])
    variables = {"params": state.params["E"], **state.model_state["E"]}
    feats = {"train": extract(variables, batches("train", 1000)),
             "trainval": extract(variables, batches("trainval", None)),
             "test": extract(variables, batches("eval", None))}
    assert [len(f["label"]) for f in feats.values()] == [1000, 500, 500]
    want = probe.probe_metrics(feats, 10, probe_settings(evaluators.eval_section(config)))
    print({k: (got[k], want[k]) for k in sorted(want)})
    assert sorted(got) == sorted(want)
    for k in want:
        if k.startswith("probe_l2_"):
            assert got[k] == want[k], k
        else:
            assert abs(got[k] - want[k]) <= 1 / 500 + 1e-9, (k, got[k], want[k])
