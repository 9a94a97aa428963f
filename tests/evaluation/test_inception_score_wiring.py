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
    """A constructed case with a known answer. The stand-in "Inception" gives the k-th image it
    is fed the pool feature e_(k mod 7) while the 40 samples come (they are fed first), and e_0
    for the real images after them; the head is 50 x the identity on those 7 dimensions plus a
    constant bias (a shift, which changes no softmax). So each sample's p(y|x) is one-hot up to
    6e-22, the 10 splits of 4 consecutive samples each hold 4 distinct classes, p(y) is uniform
    on them, every KL is log 4 and IS = exp(log 4) = 4 in every split: mean 4, std 0. IS of the
    real images would be 1; IS over other splits or counts would not be 4 with std 0."""
    head = tmp_path / "head.npz"
    kernel = np.zeros((2048, 7))
    kernel[:7] = 50 * np.eye(7)
    np.savez(head, kernel=kernel, bias=np.full(7, 3.0))
    config = _config(str(head))
    fed = []

    def features(images):
        out = np.zeros((images.shape[0], 2048), np.float32)
        for i in range(images.shape[0]):
            k = len(fed) + i
            out[i, k % 7 if k < 40 else 0] = 1.0
        fed.extend(np.asarray(images))
        return jnp.asarray(out)

    state = jax.jit(lambda k: create_train_state(config, k))(jax.random.key(0))
    ev = evaluators.FIDEvaluator(config, str(tmp_path), evaluators.dataset_batches(config, 20),
                                 features=features)
    out, _ = ev.run(state)
    assert len(fed) == 80  # 40 samples, then the 40 real images of the FID statistics
    assert out["is_40_ema_standing"] == pytest.approx(4.0, rel=1e-12)
    assert out["is_40_ema_standing_std"] == pytest.approx(0.0, abs=1e-12)
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
