"""SIGTERM in the middle of a training run's evaluation: ``python -m bbg_jax.main`` on the smoke
config in a subprocess stops between two evaluation batches and exits 0 within seconds; the
restart runs that step's evaluation first, writes its report and summaries once, and trains on.
"""

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "smoke.py")
# Sample sheets at every checkpoint (steps 3 and 6).
EVAL_FLAGS = ["--config.eval.samples.every_steps=3"]
# Standing statistics over this many generator batches: an evaluation of hours, unless stopped.
ENDLESS = "--config.eval.standing_batches=1000000"


def _start(workdir: Path, cache: str, *flags: str) -> tuple[subprocess.Popen, Path]:
    """The smoke run; its terminal goes to a file (a pipe nobody reads could fill and block)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    terminal = workdir.parent / f"{workdir.name}_terminal_{time.monotonic_ns()}.txt"
    cmd = [sys.executable, "-m", "bbg_jax.main", f"--config={SMOKE}", f"--workdir={workdir}",
           f"--config.train.compilation_cache_dir={cache}", *EVAL_FLAGS, *flags]
    with open(terminal, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, terminal


def _wait_for(path: Path, proc: subprocess.Popen, terminal: Path, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"ended before {path} appeared:\n{terminal.read_text()}"
        assert time.monotonic() < deadline, f"no {path}:\n{terminal.read_text()}"
        time.sleep(0.05)


def _summary_tags(workdir: Path) -> list[tuple[int, str]]:
    """(step, tag) of every summary value in the workdir's TensorBoard event files (TFRecord:
    length, its CRC, the Event proto, its CRC)."""
    tags = []
    for path in sorted(workdir.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
            tags += [(event.step, v.tag) for v in event.summary.value]
            i += 12 + length + 4
    return tags


def test_sigterm_during_evaluation_exits_0_and_the_restart_evaluates_that_step_once(
        tmp_path, compilation_cache):
    workdir = tmp_path / "run"
    proc, terminal = _start(workdir, compilation_cache, ENDLESS)
    pending = workdir / "eval" / "pending.json"
    try:
        _wait_for(pending, proc, terminal)  # written as the evaluation of step 3 starts
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = terminal.read_text()
    assert rc == 0, f"exit code {rc} {took:.0f} s after SIGTERM during the evaluation:\n{out}"
    assert "SIGTERM during the evaluation of step 3" in out
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3"]
    assert json.loads(pending.read_text()) == {"step": 3, "evaluators": ["samples"]}
    assert not (workdir / "eval" / "step_3").exists()

    # The restart, with a short evaluation: step 3's runs before step 4 trains.
    proc, terminal = _start(workdir, compilation_cache)
    assert proc.wait(timeout=600) == 0, terminal.read_text()
    restarted = terminal.read_text()
    assert "resumed from step 3" in restarted
    assert "the evaluation of step 3 was interrupted; running it first" in restarted
    both = out + restarted
    assert both.count("eval at step 3 ") == 1 and both.count("eval at step 6 ") == 1, restarted
    assert restarted.index("eval at step 3 ") < restarted.index("step 4")
    assert not pending.exists()
    for step in (3, 6):
        assert json.loads((workdir / "eval" / f"step_{step}" / "report.json").read_text())[
            "step"] == step
    sheets = [(step, tag) for step, tag in _summary_tags(workdir) if tag.startswith("samples_")]
    assert sorted(sheets) == [(3, "samples_ema_standing"), (6, "samples_ema_standing")]
    logged = [json.loads(line)["step"]
              for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]


def test_an_installed_stop_interrupts_a_sharded_batch_and_is_removed_after():
    from bbg_jax.evaluation import interrupt
    from bbg_jax.evaluation.sharded import ShardedFn

    double = ShardedFn(lambda args, x: 2 * x)
    with interrupt.stop_when(lambda: True), pytest.raises(interrupt.EvaluationInterrupted):
        double(None, np.ones((4, 1), np.float32))
    with interrupt.stop_when(lambda: False):
        assert double(None, np.ones((4, 1), np.float32)).tolist() == [[2.0]] * 4
    double(None, np.ones((4, 1), np.float32))  # nothing installed: a standalone evaluation


def test_processes_agree_to_stop_an_evaluation_and_keep_the_training_counter(monkeypatch):
    """Several processes: this one's sync manager has not set the point yet, another's has; all
    stop at the same batch, and the counter this process reports stays the training step."""
    from jax.experimental import multihost_utils

    from bbg_jax.evaluation import interrupt

    calls = []
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                        lambda step: calls.append(step) or False)
    other = iter([0, 1])  # the other process sees the sync point before the 2nd batch
    monkeypatch.setattr(multihost_utils, "process_allgather",
                        lambda x: np.asarray([int(x), next(other)]))
    assert not interrupt.preempted_during(3)
    assert interrupt.preempted_during(3)
    assert calls == [4, 3, 4, 3]  # asks about step + 1, then reports step 3 again


def test_several_processes_ask_the_sync_point_every_16th_batch(monkeypatch):
    """The allgather behind the sync point runs at every 16th batch, on every process alike."""
    from bbg_jax import loop
    from bbg_jax.evaluation import interrupt

    asked = []
    monkeypatch.setattr(interrupt, "preempted_during", lambda step: asked.append(step) or
                        len(asked) == 2)
    preemption = loop._Preemption()
    preemption._multi = True
    answers = [preemption.stop_evaluation(7) for _ in range(40)]
    assert asked == [7, 7]
    assert [i + 1 for i, stop in enumerate(answers) if stop] == [32]
    assert preemption.requested  # training stops after the interrupted evaluation
    preemption._multi = False
    preemption.restore()  # puts pytest's SIGTERM handler back
