"""JAX's persistent compilation cache, shared by training (``bbg_jax.loop``) and the evaluation
of a checkpoint (``bbg_jax.evaluation.standalone``): a restarted job loads its compiled programs.
"""

from __future__ import annotations

import logging

import jax
import ml_collections

from bbg_jax import paths

log = logging.getLogger(__name__)


def use_compilation_cache(config: ml_collections.ConfigDict, workdir: str) -> None:
    """JAX's persistent compilation cache in ``train.compilation_cache_dir`` (``WORKDIR/...``
    means under the workdir; any epath location, gs:// included; empty = off), so a restarted
    job loads its compiled steps instead of compiling them again."""
    where = config.train.get("compilation_cache_dir", "")
    if not where:
        return
    if jax.process_count() > 1 and jax.default_backend() == "cpu":
        # JAX keys CPU executables per process and only process 0 writes entries, so the other
        # processes would compile while process 0 loads, and the first collective would time out
        # waiting for them (gloo: 30 s). JAX strips the device assignment from GPU keys for this
        # reason; multi-host TPU is the cache's documented use.
        log.warning("Persistent compilation cache off: multi-process CPU run.")
        return
    if where.startswith("WORKDIR/"):
        where = str(paths.path(workdir) / where[len("WORKDIR/"):])
    jax.config.update("jax_compilation_cache_dir", where)
    # The default skips programs that compile in under a second; cache every train/eval step.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
