"""A schedule for an evaluator that eval.evaluators leaves out stops the run in one line (issue 31,
item 5): through the real command line, before anything is compiled or written."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from bbg_jax import config_checks, main
from bbg_jax.configs import ConfigError, load_experiment
from bbg_jax.evaluation.config import eval_config, set_every_steps

ROOT = Path(__file__).resolve().parents[2]
SMOKE = "experiments/smoke.py"  # evaluators ("samples",), train.checkpoint_every=3
MESSAGE = ("bbg_jax.main: eval.fid.every_steps=3: allowed 0, or 3 with 'fid' added to "
           "eval.evaluators=('samples',) (eval.evaluators leaves fid out, so this schedule "
           "would never run)")


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*")) if "__pycache__" not in p.parts}


def test_cli_refuses_a_schedule_for_an_evaluator_left_out(tmp_path):
    """``python -m bbg_jax.main`` (a real process): exit status 1, exactly one line on stderr
    naming the field, its value and what is allowed; a fresh workdir is not created and an
    existing one is left byte for byte."""
    for workdir in (tmp_path / "fresh", tmp_path / "earlier"):
        if workdir.name == "earlier":
            (workdir / "checkpoints").mkdir(parents=True)
            (workdir / "metrics.jsonl").write_text('{"step": 1}\n')
        before = _snapshot(tmp_path)
        out = subprocess.run(
            [sys.executable, "-m", "bbg_jax.main", f"--config={SMOKE}", f"--workdir={workdir}",
             "--config.eval.fid.every_steps=3"],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
            env={**os.environ, "JAX_PLATFORMS": "cpu"})
        assert out.returncode == 1, out.stderr
        assert out.stderr.strip().splitlines() == [MESSAGE], out.stderr
        assert out.stdout == ""
        assert _snapshot(tmp_path) == before


def test_nothing_is_compiled_and_a_listed_evaluator_reaches_training(tmp_path, monkeypatch):
    """In this process (main.run, fresh flags): the refusal compiles nothing and starts nothing;
    the same schedule with the evaluator listed reaches training."""
    monkeypatch.chdir(ROOT)
    compiles, started = [], []

    def on_event(event, duration, **kwargs):
        if event.startswith("/jax/core/compile/"):
            compiles.append(event)

    monkeypatch.setattr(main, "_train", lambda config, workdir: started.append(config))
    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main.run(["bbg_jax.main", f"--config={SMOKE}", f"--workdir={tmp_path / 'a'}",
                      "--config.eval.diagnostics.every_steps=6"])
        assert str(exit_info.value.code).startswith(
            "bbg_jax.main: eval.diagnostics.every_steps=6: allowed 0, or 6 with 'diagnostics' "
            "added to eval.evaluators=('samples',)")
        assert not (tmp_path / "a").exists()
        main.run(["bbg_jax.main", f"--config={SMOKE}", f"--workdir={tmp_path / 'b'}",
                  "--config.eval.evaluators=('samples','fid')",
                  "--config.eval.fid.every_steps=3"])
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert compiles == []
    assert len(started) == 1 and started[0].eval.fid.every_steps == 3


def test_the_config_files_own_schedule_and_eval_mode_pass():
    config = load_experiment(str(ROOT / SMOKE))
    config.eval.fid.every_steps = 3
    with pytest.raises(ConfigError, match=r"^eval\.fid\.every_steps=3: allowed 0"):
        config_checks.check(config, "train")
    config_checks.check(config, "eval")  # --mode=eval: schedules play no part
    # The experiment file's own schedule for an evaluator the command line drops from
    # eval.evaluators is its default, not a request: accepted when the caller passes the file's
    # config; a value the command line changed is not.
    own = load_experiment(str(ROOT / SMOKE))
    own.eval.evaluators = ("samples", "fid")
    own.eval.fid.every_steps = 3
    config_checks.check(config, "train", file_config=own)
    config.eval.fid.every_steps = 6
    with pytest.raises(ConfigError, match=r"^eval\.fid\.every_steps=6"):
        config_checks.check(config, "train", file_config=own)


def test_set_every_steps_schedules_only_the_listed_evaluators():
    ev = eval_config()
    ev.evaluators = ("samples", "fid")
    set_every_steps(ev, 10_000)
    assert [ev[n].every_steps for n in ("samples", "fid", "probe", "diagnostics")] == [
        10_000, 10_000, 0, 0]
    # biggan_cifar.py lists samples and fid and schedules them with set_every_steps.
    config_checks.check(load_experiment(str(ROOT / "experiments" / "biggan_cifar.py")), "train")
