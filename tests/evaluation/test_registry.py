"""The evaluator registry and each evaluator's own training schedule (eval.<name>.every_steps)."""

from __future__ import annotations

import pytest

from bbg_jax.evaluation import evaluators
from bbg_jax.evaluation.config import EVALUATORS, eval_config


class _Named:
    def __init__(self, name):
        self.name = name


def _config(**every):
    import ml_collections

    config = ml_collections.ConfigDict()
    config.eval = eval_config()
    for name, steps in every.items():
        config.eval[name].every_steps = steps
    return config


def test_registry_holds_every_evaluator_the_config_accepts():
    assert set(evaluators.REGISTRY) == set(EVALUATORS)


@pytest.mark.parametrize("step, expected", [
    (2, []), (3, ["samples"]), (6, ["samples", "fid"]), (9, ["samples"]),
    (10, ["samples", "fid"]),  # the last step evaluates whatever is scheduled at all
])
def test_each_evaluator_runs_on_its_own_schedule(step, expected):
    config = _config(samples=3, fid=6, probe=0)
    evs = [_Named(n) for n in EVALUATORS]
    assert [e.name for e in evaluators.due(evs, config, step, last_step=10)] == expected


def test_the_probe_is_not_built_for_a_gan_without_an_encoder(tmp_path):
    from bbg_jax.configs import model_config

    config = _config()
    config.model = model_config(resolution=32, ch=16, z_dim=120)
    config.model.encoder.enabled = False
    config.model.discriminator.kind = "gan"
    built = [evaluators.REGISTRY[n](config, str(tmp_path), lambda *a: iter(()))
             for n in ("probe",)]
    assert built == [None]
