"""A stop request honoured between the batches of an evaluation.

An ImageNet evaluation takes longer than a scheduler's warning before a kill (SLURM's 120 s), so
the training loop cannot wait for it to finish after a SIGTERM. While an evaluation runs inside
training, the loop installs a check (``stop_when``); every evaluation computation calls
``check`` before each batch (``sharded.ShardedFn`` and the probe's training epochs, the loops
that every evaluator's time is spent in), which raises ``EvaluationInterrupted`` once the check
says stop. Where the run has several processes the loop's check agrees across them (a
collective at every 16th call), so every process stops before the same batch. Outside an
installed check (a standalone ``--mode=eval``) nothing changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np

_should_stop: Callable[[], bool] | None = None


class EvaluationInterrupted(Exception):
    """A stop was requested in the middle of an evaluation; nothing of it was written."""


@contextlib.contextmanager
def stop_when(should_stop: Callable[[], bool]) -> Iterator[None]:
    """Within the block, ``check`` raises ``EvaluationInterrupted`` once ``should_stop()``."""
    global _should_stop
    previous, _should_stop = _should_stop, should_stop
    try:
        yield
    finally:
        _should_stop = previous


def check() -> None:
    """Call before each batch, the same number of times on every process (the installed check
    may be a collective)."""
    if _should_stop is not None and _should_stop():
        raise EvaluationInterrupted


def preempted_during(step: int) -> bool:
    """Several processes: whether JAX's preemption sync point (``bbg_jax.loop``) says stop the
    evaluation after training ``step``, the same answer on every process (a collective)."""
    from jax.experimental import multihost_utils

    # A notice during the evaluation sets the sync point to step + 1 (every process last
    # reported ``step``, at the step and at its save). Asking about step + 1 moves this
    # process's reported counter there, so it is put back at once; a notice handled in that
    # instant sets step + 2, and training stops there instead.
    local = multihost_utils.reached_preemption_sync_point(step + 1)
    multihost_utils.reached_preemption_sync_point(step)
    # Each process's sync manager sets the point at its own moment: agree on the batch.
    return bool(np.any(multihost_utils.process_allgather(np.int32(local))))
