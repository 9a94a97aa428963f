"""Every script in examples/ runs to completion as a third party would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_examples_exist():
    names = {p.stem for p in EXAMPLES}
    assert {"sample_and_encode", "custom_loss_step", "encoder_features_from_checkpoint",
            "nnx_bridge"} <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(script: Path, tmp_path: Path):
    # A fresh interpreter from a neutral directory: the example sees only the installed package.
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip(), "an example should show what it did"
