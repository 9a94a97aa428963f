"""``python -m bbg_jax.main`` with faults injected where a test chooses (no test code ships in
the library: the loop takes ``loop.Hooks``, and this driver passes them in).

    python tests/loop_driver.py [--hold_at=N] [--nan_at=N] [--pause_in_save_at=N] -- \\
        --config=experiments/smoke.py --workdir=DIR [more bbg_jax.main flags]

--hold_at=N           after step N, write ``WORKDIR/hanging_at_N`` (process 0) and wait for
                      SIGTERM (one process) or keep stepping at 1 s per step (several processes,
                      whose preemption sync point lies ahead).
--nan_at=N            step N trains on images multiplied by NaN.
--pause_in_save_at=N  the save of step N stops after its files are written, before orbax commits
                      them (renames the temporary directory): write ``WORKDIR/saving_N`` and
                      sleep until killed.
"""

from __future__ import annotations

import argparse
import functools
import runpy
import sys
import time

import numpy as np


def _hold_at(n: int, workdir: str):
    import jax

    from bbg_jax import paths

    def after_step(step, stop_requested):
        if step < n:
            return
        if step == n and jax.process_index() == 0:
            paths.write_atomic(paths.path(workdir) / f"hanging_at_{n}", "")
        if jax.process_count() == 1:
            while not stop_requested():
                time.sleep(0.05)
        else:
            time.sleep(1.0)

    return after_step


def _nan_at(n: int):
    def batch(step, batch):
        return {**batch, "image_d": batch["image_d"] * np.nan} if step == n else batch

    return batch


def _pause_in_save(n: int, workdir: str) -> None:
    """Holds the commit of step ``n``'s checkpoint: every file is written, none committed."""
    from orbax.checkpoint._src.path import atomicity

    from bbg_jax import paths

    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def held_finalize(self, *args, **kwargs):
        if self._final_path.name == str(n):
            paths.write_atomic(paths.path(workdir) / f"saving_{n}", "")
            while True:
                time.sleep(1.0)
        return await finalize(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = held_finalize


def main() -> None:
    split = sys.argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--hold_at", type=int)
    parser.add_argument("--nan_at", type=int)
    parser.add_argument("--pause_in_save_at", type=int)
    ours, main_flags = parser.parse_args(sys.argv[1:split]), sys.argv[split + 1:]
    workdir = next(f.split("=", 1)[1] for f in main_flags if f.startswith("--workdir="))

    from bbg_jax import loop

    hooks = loop.Hooks()
    if ours.hold_at is not None:
        hooks = loop.Hooks(batch=hooks.batch, after_step=_hold_at(ours.hold_at, workdir))
    if ours.nan_at is not None:
        hooks = loop.Hooks(batch=_nan_at(ours.nan_at), after_step=hooks.after_step)
    if ours.pause_in_save_at is not None:
        _pause_in_save(ours.pause_in_save_at, workdir)
    loop.train_and_evaluate = functools.partial(loop.train_and_evaluate, hooks=hooks)
    sys.argv = ["bbg_jax.main", *main_flags]
    runpy.run_module("bbg_jax.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
