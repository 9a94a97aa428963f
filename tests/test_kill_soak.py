"""The kill soak as the README runs it (``python scripts/kill_soak.py``), reduced to 2 runs: one
SIGKILLed at a random moment of its training, one in the middle of saving step 6 (every file
written, nothing committed). The script's own verdict is checked, and so is what it claims: each
resumed run's final train state and metrics.jsonl are compared here, bit for bit, with the
uninterrupted reference's (the runs' workdirs are kept for it: ``--keep``).

Seed 6: the random kill falls about halfway through the reference's training time, and the
in-save kill holds step 6's commit, so that run resumes from step 3.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = Path(__file__).resolve().parents[1]


def _state(workdir: Path):
    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "6" / "state")


def test_kill_soak_two_runs_resume_bit_exact(tmp_path, compilation_cache):
    began = time.time()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "kill_soak.py"), "--runs=2", "--parallel=1",
         "--in_save_every=2", "--seed=6", f"--workdir={tmp_path}", "--keep",
         f"--compilation_cache_dir={compilation_cache}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    reference_seconds = lines[0]["reference_training_seconds"]
    assert reference_seconds > 0
    runs = {r["run"]: r for r in lines[1:-1]}
    summary = lines[-1]
    assert summary == {**summary, "runs": 2, "bit_exact": 2}
    # The random kill may land in a save too (a loaded machine stretches the saves): 1 or 2.
    assert summary["killed_with_an_uncommitted_save"] in (1, 2)
    assert runs[1]["kill"] == "in the save of step 6" and runs[1]["killed"]
    assert runs[1]["checkpoints_at_kill"] == [3]
    assert runs[1]["uncommitted_at_kill"] == ["6.orbax-checkpoint-tmp"]
    assert runs[0]["kill"].endswith(" s into training")
    print(f"kill soak, 2 runs: {time.time() - began:.0f} s; {runs}")

    # What the script claims, checked here: the resumed runs equal the reference bit for bit.
    reference = tmp_path / "reference"
    want = jax.tree.leaves(_state(reference))
    want_metrics = (reference / "metrics.jsonl").read_text()
    assert [json.loads(r)["step"] for r in want_metrics.splitlines()] == [1, 2, 3, 4, 5, 6]
    for i in (0, 1):
        run = tmp_path / f"run_{i:03d}"
        got = jax.tree.leaves(_state(run))
        assert len(got) == len(want)
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True)), i
        assert (run / "metrics.jsonl").read_text() == want_metrics, i
    # The in-save run resumed from step 3 (its log says so), not from a fresh start.
    assert "train: resumed from step 3;" in (tmp_path / "run_001" / "log.txt").read_text()
