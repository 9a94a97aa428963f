"""A run's evaluation settings as the evaluators, the diagnostics and the run report read them.

``bbg_jax.evaluation.config`` defines the ``eval`` section and stays free of JAX; this module
reads it from a run's config and turns the probe's part into ``probe.ProbeSettings``.
"""

from __future__ import annotations

import ml_collections

from bbg_jax.evaluation import probe
from bbg_jax.evaluation.config import eval_config


def eval_section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return config.eval if "eval" in config else eval_config()


def probe_settings(ev: ml_collections.ConfigDict) -> probe.ProbeSettings:
    pr = ev.probe
    return probe.ProbeSettings(pr.epochs, pr.batch_size, pr.learning_rate, tuple(pr.l2_grid),
                               ev.seed)
