"""Where the trained encoder's probe features and classifiers are kept in the workdir.

The probe evaluator writes them; the diagnostics' probe judge and the run report
(``bbg_jax.evaluation.report``) read them instead of extracting or fitting again.
"""

from __future__ import annotations

from bbg_jax import paths


def trained_features_path(workdir: str, step: int, params: str, which: str,
                          limit: int | None = None) -> paths.epath.Path:
    """Where the trained encoder's probe features of one split at one step are kept, so the
    run report (``bbg_jax.evaluation.report``) reuses the last evaluation's extraction. The
    name holds everything that selects them: step, raw or EMA weights, split, example limit."""
    first = "" if limit is None else f"_first{limit}"
    return paths.path(workdir) / "features" / f"trained_step{step}_{params}_{which}{first}.npz"


def trained_classifier_path(workdir: str, step: int, params: str, feature: str
                            ) -> paths.epath.Path:
    """Where the probe evaluator keeps the classifier it fitted on one feature at one step, so
    the diagnostics' probe judge (the same fit on the same features) is not fitted twice."""
    name = f"trained_step{step}_{params}_classifier_{feature}.npz"
    return paths.path(workdir) / "features" / name
