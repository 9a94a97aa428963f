"""Where the trained encoder's probe features and classifiers are kept in the workdir.

The probe evaluator writes them; the diagnostics' probe judge and the run report
(``bbg_jax.evaluation.report``) read them instead of extracting or fitting again.
"""

from __future__ import annotations

import re

import jax

from bbg_jax import paths

_PROCESS_SUFFIX = re.compile(r"_process\d+of\d+$")


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


def _process_suffix() -> str:
    n = jax.process_count()
    return "" if n == 1 else f"_process{jax.process_index()}of{n}"


def this_process_file(path: paths.epath.Path) -> paths.epath.Path:
    """``path`` for a file that holds this process's part of something (its rows of a split's
    features): unchanged in a one-process run, ``NAME_process{i}of{n}.npz`` in an n-process
    one (a file per process: nothing of the whole split is gathered to one process)."""
    return path.with_name(f"{path.stem}{_process_suffix()}{path.suffix}")


def belongs_to_this_process(path: paths.epath.Path) -> bool:
    """Whether this process wrote (and deletes) ``path``: its own per-process files, and on
    process 0 the files without a process suffix."""
    match = _PROCESS_SUFFIX.search(path.stem)
    if match is None:
        return jax.process_index() == 0
    return match.group(0) == _process_suffix()
