"""Kill soak: SIGKILL the smoke run at random moments, resume it, and compare bit for bit.

    python scripts/kill_soak.py --runs=50 [--workdir=/tmp/kill_soak] [--seed=0] [--parallel=2]
        [--compilation_cache_dir=DIR] [--keep]

One uninterrupted run of ``experiments/smoke.py`` (6 steps, checkpoints at 3 and 6) is the
reference. Each soak run starts the same job in its own workdir and is SIGKILLed:
  * at a random moment of its training (uniform from the moment its train state is ready over
    the reference run's training time, measured beside as many runs as the soak runs at a
    time; start-up is skipped: killing an import proves nothing), or,
    every ``--in_save_every``-th run, in the middle of saving step 3 or 6 (all files written,
    nothing committed; tests/loop_driver.py holds orbax's commit);
then resumed with the README's command until it finishes. A run passes when its final
checkpoint equals the reference's bit for bit (every array of the train state) and its
metrics.jsonl holds steps 1..6 once each, with the reference's values. All runs share one
persistent compilation cache, as a requeued job does (``--compilation_cache_dir``, default
WORKDIR/compilation_cache). A run's train state is ready when the job says so on the terminal:
its stage line ``train: fresh initialisation; ...`` or ``train: resumed from step N; ...``
(``bbg_jax.loop``). Prints one JSON line per run and a summary; exits 1 if any run failed.
``--keep`` keeps every run's workdir (by default only a failed run's), so a test can compare
them itself.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "smoke.py")
DRIVER = str(ROOT / "tests" / "loop_driver.py")

_RUNS = flags.DEFINE_integer("runs", 50, "Soak runs.", lower_bound=0)
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/kill_soak", "Directory for every run.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")
_PARALLEL = flags.DEFINE_integer("parallel", 2, "Soak runs at a time.", lower_bound=1)
_IN_SAVE_EVERY = flags.DEFINE_integer(
    "in_save_every", 4, "Every N-th run is killed in the middle of a save (0: never).",
    lower_bound=0)
_CACHE = flags.DEFINE_string(
    "compilation_cache_dir", None, "The persistent compilation cache every run shares "
    "(default: WORKDIR/compilation_cache).")
_KEEP = flags.DEFINE_bool("keep", False, "Keep every run's workdir, not only a failed run's.")

# The loop's stage line once the train state is restored or initialised (bbg_jax/loop.py,
# console.say: on stderr, which the soak reads merged into stdout). The line the soak waited for
# before, the INFO log "Train state: ...", no longer reaches the terminal (it is not verbose).
TRAINING_LINE = re.compile(
    r"^train: (fresh initialisation|resumed from step \d+|initialised from .+); ")


class _Run:
    """The smoke job in ``workdir`` as a subprocess; ``training`` is set once its train state
    is restored or initialised (the loop's ``TRAINING_LINE``)."""

    def __init__(self, workdir: Path, cache: Path, faults: list[str]):
        entry = [DRIVER, *faults, "--"] if faults else ["-m", "bbg_jax.main"]
        cmd = [sys.executable, *entry, f"--config={SMOKE}", f"--workdir={workdir}",
               f"--config.train.compilation_cache_dir={cache}"]
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        self.started = time.time()
        self.training = threading.Event()
        self.training_at: float | None = None
        self.output: list[str] = []
        self.ended = threading.Event()  # the reader has read the last line
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            if TRAINING_LINE.match(line) and not self.training.is_set():
                self.training_at = time.time()
                self.training.set()
        self.training.set()  # ended: nobody waits for a line that will not come
        self.ended.set()

    def wait(self, timeout: float = 1800) -> int:
        return self.proc.wait(timeout=timeout)


def _finish(workdir: Path, cache: Path) -> float:
    """Runs the job to its end; returns the seconds it spent after its state was ready."""
    run = _Run(workdir, cache, [])
    rc = run.wait()
    run.ended.wait(60)
    tail = "".join(run.output[-20:])
    if rc != 0:
        raise RuntimeError(f"run in {workdir} exited {rc}:\n{tail}")
    if run.training_at is None:
        raise RuntimeError(f"run in {workdir} never printed its train-state line "
                           f"({TRAINING_LINE.pattern!r}):\n{tail}")
    return time.time() - run.training_at


def _checkpoint_steps(workdir: Path) -> list[int]:
    root = workdir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def _uncommitted(workdir: Path) -> list[str]:
    root = workdir / "checkpoints"
    return sorted(p.name for p in root.iterdir() if "tmp" in p.name) if root.exists() else []


def _state(workdir: Path, step: int):
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def _metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _compare(workdir: Path, reference: Path) -> list[str]:
    import jax
    import numpy as np

    problems = []
    a, b = _state(workdir, 6), _state(reference, 6)
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    differing = sum(not np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True))
    if differing:
        problems.append(f"{differing} of {len(leaves_a)} state arrays differ at step 6")
    if _metrics(workdir) != _metrics(reference):
        problems.append(f"metrics.jsonl differs: steps {[r['step'] for r in _metrics(workdir)]}")
    return problems


def soak_run(i: int, rng: random.Random, base: Path, cache: Path, reference: Path,
             reference_seconds: float, in_save_every: int, keep: bool = False) -> dict:
    workdir = base / f"run_{i:03d}"
    shutil.rmtree(workdir, ignore_errors=True)
    record: dict = {"run": i}
    if in_save_every and i % in_save_every == in_save_every - 1:
        step = rng.choice([3, 6])
        run = _Run(workdir, cache, [f"--pause_in_save_at={step}"])
        marker = workdir / f"saving_{step}"
        while not marker.exists():
            if run.proc.poll() is not None:
                raise RuntimeError(f"run {i} exited {run.proc.returncode} before saving step "
                                   f"{step}")
            time.sleep(0.05)
        record["kill"] = f"in the save of step {step}"
    else:
        delay = rng.uniform(0.0, reference_seconds)
        run = _Run(workdir, cache, [])
        run.training.wait()
        time.sleep(delay)
        record["kill"] = f"{delay:.1f} s into training"
    proc = run.proc
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    record["killed"] = proc.returncode == -signal.SIGKILL  # False: it had already finished
    record["checkpoints_at_kill"] = _checkpoint_steps(workdir)
    record["uncommitted_at_kill"] = _uncommitted(workdir)
    _finish(workdir, cache)
    problems = _compare(workdir, reference)
    record["bit_exact"] = not problems
    if problems:
        record["problems"] = problems
    elif not keep:
        shutil.rmtree(workdir)  # keep failures for inspection only
    return record


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: flags only")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's INFO lines of every comparison
    parallel = _PARALLEL.value
    began = time.time()
    base = Path(_WORKDIR.value)
    base.mkdir(parents=True, exist_ok=True)
    cache = Path(_CACHE.value) if _CACHE.value else base / "compilation_cache"
    reference = base / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    _finish(base / "warm_up_0", cache)  # the first run compiles; later ones load
    # The reference runs beside parallel - 1 others, as the soak runs will: its wall time is
    # the range the random kills are drawn from.
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        reference_seconds = max(pool.map(
            lambda w: _finish(w, cache),
            [reference, *(base / f"warm_up_{i}" for i in range(1, parallel))]))
    start = time.time()
    for i in range(parallel):
        shutil.rmtree(base / f"warm_up_{i}", ignore_errors=True)
    print(json.dumps({"reference_training_seconds": round(reference_seconds, 1)}), flush=True)

    rngs = [random.Random(_SEED.value * 100_003 + i) for i in range(_RUNS.value)]
    records = []
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        futures = [pool.submit(soak_run, i, rngs[i], base, cache, reference, reference_seconds,
                               _IN_SAVE_EVERY.value, _KEEP.value) for i in range(_RUNS.value)]
        for future in concurrent.futures.as_completed(futures):
            records.append(future.result())
            print(json.dumps(records[-1]), flush=True)
    killed = [r for r in records if r["killed"]]
    in_save = [r for r in killed if r["uncommitted_at_kill"]]
    exact = [r for r in records if r["bit_exact"]]
    summary = {"runs": len(records), "killed": len(killed),
               "killed_with_an_uncommitted_save": len(in_save),
               "finished_before_the_kill": len(records) - len(killed),
               "bit_exact": len(exact), "seconds": round(time.time() - start),
               "seconds_with_warm_up_and_reference": round(time.time() - began)}
    print(json.dumps(summary), flush=True)
    sys.exit(0 if len(exact) == len(records) else 1)


if __name__ == "__main__":
    app.run(main)
