"""The fid evaluator reports the Inception Score when a logits head is supplied."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbg_jax.configs import load_experiment
from bbg_jax.evaluation import evaluators, metrics
from bbg_jax.evaluation.config import eval_config
from bbg_jax.train_state import create_train_state

SMOKE = str(Path(__file__).resolve().parents[2] / "experiments" / "smoke.py")


def _config(head=None):
    config = load_experiment(SMOKE)
    config.eval = eval_config(fid_num_samples=40)
    config.eval.batch_size = 20
    config.eval.standing_batches = 1
    config.eval.fid.inception_logits_head = head
    return config


def test_is_from_the_same_samples_as_fid(tmp_path):
    rng = np.random.default_rng(0)
    head = tmp_path / "head.npz"
    kernel, bias = rng.normal(size=(2048, 7)) * 0.05, rng.normal(size=7)
    np.savez(head, kernel=kernel, bias=bias)
    config = _config(str(head))
    seen = []

    def features(images):  # records what the evaluator fed to "Inception"
        x = jnp.asarray(images).reshape(images.shape[0], -1)
        f = jnp.tile(x[:, :64], (1, 32))
        seen.append(np.asarray(f))
        return f

    state = jax.jit(lambda k: create_train_state(config, k))(jax.random.key(0))
    ev = evaluators.FIDEvaluator(config, str(tmp_path), evaluators.dataset_batches(config, 20),
                                 features=features)
    out, _ = ev.run(state)
    fakes = np.concatenate(seen[:2])  # the 40 generated samples come first, then real images
    ref, ref_std = metrics.inception_score(fakes @ kernel + bias)
    assert out["is_40_ema_standing"] == pytest.approx(ref, rel=1e-9)
    assert out["is_40_ema_standing_std"] == pytest.approx(ref_std, rel=1e-9)
    assert "fid_40_ema_standing_train" in out


def test_bad_logits_heads_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="logits_head"):
        metrics.load_logits_head(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "wrong.npz", weights=np.zeros((2048, 3)))
    with pytest.raises(ValueError, match="'kernel'"):
        metrics.load_logits_head(str(tmp_path / "wrong.npz"))
    np.savez(tmp_path / "shape.npz", kernel=np.zeros((1000, 3)), bias=np.zeros(3))
    with pytest.raises(ValueError, match="2048"):
        metrics.load_logits_head(str(tmp_path / "shape.npz"))


def test_converter_reads_the_tf_graph_constants(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from bbg_jax.evaluation.inception import logits_head

    kernel = np.arange(2048 * 3, dtype=np.float32).reshape(2048, 3)
    bias = np.array([1.0, 2.0, 3.0], np.float32)
    graph = tf.Graph()
    with graph.as_default():
        tf.constant(kernel, name="softmax/weights")
        tf.constant(bias, name="softmax/biases")
    path = tmp_path / "graph.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    head = logits_head.extract(str(path))
    np.testing.assert_array_equal(head["kernel"], kernel)
    np.testing.assert_array_equal(head["bias"], bias)
    empty = tmp_path / "empty.pb"
    empty.write_bytes(tf.Graph().as_graph_def().SerializeToString())
    with pytest.raises(ValueError, match="softmax/weights"):
        logits_head.extract(str(empty))
