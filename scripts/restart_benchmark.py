"""Restart time with and without the persistent compilation cache.

    .venv/bin/python scripts/restart_benchmark.py [--config experiments/smoke.py] [--steps 3]
        [--modes cache,no_cache]

For each mode (cache under the workdir, no cache) it trains ``--steps`` steps in a new workdir
(the first start), then restarts the same command with ``2 x --steps`` (a resume, as after a
preemption) and prints the wall time of each start, up to the end of the run, as JSON lines.
Evaluation is off: the figure is the train step's compile against its cache load.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]


def _run(config: str, workdir: str, steps: int, cache: str) -> float:
    cmd = [sys.executable, "-m", "bbg_jax.main", f"--config={config}", f"--workdir={workdir}",
           f"--config.train.num_steps={steps}", f"--config.train.checkpoint_every={steps}",
           "--config.eval.samples.every_steps=0", "--config.eval.fid.every_steps=0",
           "--config.eval.probe.every_steps=0", f"--config.train.compilation_cache_dir={cache}"]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS",
                                                                             "cpu")})
    if out.returncode:
        sys.exit(out.stdout[-3000:] + out.stderr[-3000:])
    return time.perf_counter() - start


_CONFIG = flags.DEFINE_string("config", "experiments/smoke.py", "Experiment config file.")
_STEPS = flags.DEFINE_integer("steps", 3, "Training steps per run.")
# One mode halves the cost (tests/test_documented_commands.py runs the cache mode alone).
_MODES = flags.DEFINE_list("modes", ["cache", "no_cache"],
                           "Which starts to time: with the workdir's cache (cache), without it "
                           "(no_cache).")
flags.register_validator("modes", lambda v: set(v) <= {"cache", "no_cache"},
                         "--modes: cache and/or no_cache")


def main(argv) -> None:
    del argv
    for mode in _MODES.value:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = os.path.join(tmp, "run")
            cache = "WORKDIR/compilation_cache" if mode == "cache" else ""
            first = _run(_CONFIG.value, workdir, _STEPS.value, cache)
            restart = _run(_CONFIG.value, workdir, 2 * _STEPS.value, cache)
        print(json.dumps({"config": _CONFIG.value, "mode": mode, "first_start_s": round(first, 1),
                          "restart_s": round(restart, 1), "steps_per_start": _STEPS.value,
                          "machine": f"{platform.machine()} {os.cpu_count()} cores"}),
              flush=True)


if __name__ == "__main__":
    app.run(main)
