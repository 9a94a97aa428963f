"""Prints each network's parameter count for an experiment config, as JSON.

    python -m bbg_jax.models.summary --config experiments/bigbigan_imagenet128.py

Initialisation is abstract (jax.eval_shape): full-size models cost seconds, not memory.
Spectral-norm vectors and BN statistics are state, not parameters, and are not counted.
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from bbg_jax.models.build import abstract_variables, count_params

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)


def summarize(config) -> dict[str, int]:
    variables = abstract_variables(config)
    return {name: count_params(v) for name, v in sorted(variables.items())}


def main(argv):
    del argv
    print(json.dumps(summarize(_CONFIG.value)))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
