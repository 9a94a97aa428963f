"""Compare Fashion-MNIST settings at equal training wall time: one row per setting.

    .venv/bin/python scripts/wall_time_study.py run ROOT NAME --minutes=20 [--config.x=y ...]
    .venv/bin/python scripts/wall_time_study.py table ROOT/NAME ...

``run`` trains ``experiments/fashion_mnist.py`` with the overrides in ``ROOT/NAME``, in two
phases through the main job's own entry points (``bbg_jax.main``, then the report):

1. ``--steps_probe`` (150) steps with every evaluator off, to read the setting's own seconds
   per step (between the last two progress lines: after compilation and warm-up);
2. resumed to N = round(minutes · 60 / s_per_step) steps, with the probe and the diagnostics
   at N/2 and N (their first and last evaluation), sheets and FID at N, then
   ``bbg_jax.evaluation.report`` at step N.

Each setting thus trains for the same wall time on this machine (evaluations and compilation
excluded), however dear its step. ``ROOT/NAME/study_row.json`` holds the row; ``table`` prints
the rows as Markdown: s/step, steps, bn_crelu test top-1, its margin over the same encoder with
random weights, latent recovery (first -> last evaluation), reconstruction class agreement with
the raw G judged by the raw-pixel probe, FID-500 of the EMA G.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# Evaluated at N/2 and N (every N/2 steps); the sheets and FID only at N (every N steps).
EVERY_HALF, EVERY_END = ("probe", "diagnostics"), ("samples", "fid")
RATE = re.compile(r"step (\d+)/\d+ .*?([\d.]+) s/step")


def _env() -> dict:
    env = dict(os.environ)
    if "xla_force_host_platform_device_count" not in env.get("XLA_FLAGS", ""):
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            " --xla_force_host_platform_device_count=2").strip()
    return env


def _train(workdir: Path, steps: int, evaluate: bool, overrides: list[str]) -> str:
    every = {n: steps // 2 if evaluate else 0 for n in EVERY_HALF}
    every.update({n: steps if evaluate else 0 for n in EVERY_END})
    # Evaluations read saved checkpoints: save at every evaluation step.
    every["checkpoint"] = steps // 2 if evaluate else steps
    cmd = [PYTHON, "-m", "bbg_jax.main", "--config=experiments/fashion_mnist.py",
           f"--workdir={workdir}", f"--config.train.num_steps={steps}", *overrides,
           f"--config.train.checkpoint_every={every.pop('checkpoint')}",
           *[f"--config.eval.{name}.every_steps={n}" for name, n in every.items()]]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    (workdir / f"train_to_{steps}.out").write_text(out.stdout)
    if out.returncode:
        raise SystemExit(f"training {workdir} to step {steps} failed; see "
                         f"{workdir}/train_to_{steps}.out")
    return out.stdout


def seconds_per_step(output: str) -> float:
    """Seconds per step between the last two progress lines (each prints the average since the
    first step after compilation, so the difference leaves out the first steps' warm-up)."""
    rates = [(int(s), float(r)) for s, r in RATE.findall(output)]
    if len(rates) < 2:
        raise SystemExit("fewer than two 's/step' progress lines in the probe phase's output")
    (n1, r1), (n2, r2) = rates[-2], rates[-1]
    return (n2 * r2 - n1 * r1) / (n2 - n1)


def run(root: str, name: str, minutes: float, steps_probe: int, overrides: list[str]) -> dict:
    workdir = Path(root) / name
    workdir.mkdir(parents=True, exist_ok=True)
    probed = workdir / f"train_to_{steps_probe}.out"  # a rerun resumes after the probe phase
    rate = seconds_per_step(probed.read_text() if probed.exists() else
                            _train(workdir, steps_probe, False, overrides))
    steps = 2 * max(steps_probe, round(minutes * 60 / rate / 2))
    _train(workdir, steps, True, overrides)
    subprocess.run([PYTHON, "-m", "bbg_jax.evaluation.report", f"--workdir={workdir}"],
                   cwd=ROOT, env=_env(), check=True, stdout=subprocess.DEVNULL)
    report = json.loads((workdir / "report.json").read_text())
    evals = {s: json.loads((workdir / "eval" / f"step_{s}" / "report.json").read_text())
             ["metrics"] for s in (steps // 2, steps)}
    first, last = evals[steps // 2], evals[steps]
    row = {
        "name": name, "overrides": overrides, "minutes": minutes, "s_per_step": rate,
        "steps": steps, "bn_crelu_test": report["probe"]["bigbigan_bn_crelu"]["top1_test"],
        "random_bn_crelu_test": report["probe"]["random_encoder_bn_crelu"]["top1_test"],
        "margin_bn_crelu_test": report["margin_over_random_encoder"]["bn_crelu_test"],
        "latent_recovery_corr_raw": [first["latent_recovery_corr_raw"],
                                     last["latent_recovery_corr_raw"]],
        "score_gap_xz": [first["score_gap_xz"], last["score_gap_xz"]],
        "encoder_z_stdev_mean": last["encoder_z_stdev_mean"],
        "recon_agreement_pixel_raw": [first["recon_agreement_pixel_raw"],
                                      last["recon_agreement_pixel_raw"]],
        "fid_500": last.get("fid_500_ema_standing_eval"),
    }
    (workdir / "study_row.json").write_text(json.dumps(row, indent=1))
    return row


def table(workdirs: list[str]) -> None:
    rows = [json.loads((Path(w) / "study_row.json").read_text()) for w in workdirs]
    print(f"| setting | s/step | steps in {rows[0]['minutes']:g} min | bn_crelu test top-1 | "
          "margin over random E | latent recovery corr | s_xz gap | "
          "recon agreement (pixel judge, raw G) | FID-500 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        arrow = lambda pair, f: f"{pair[0]:{f}} → {pair[1]:{f}}"  # noqa: E731
        print(f"| {r['name']} | {r['s_per_step']:.2f} | {r['steps']} | "
              f"{100 * r['bn_crelu_test']:.1f} % | {100 * r['margin_bn_crelu_test']:+.1f} | "
              f"{arrow(r['latent_recovery_corr_raw'], '.3f')} | "
              f"{arrow(r['score_gap_xz'], '+.2f')} | "
              f"{arrow([100 * v for v in r['recon_agreement_pixel_raw']], '.1f')} % | "
              f"{r['fid_500']:.1f} |")


def main(argv: list[str]) -> None:
    if len(argv) >= 3 and argv[0] == "run":
        root, name, rest = argv[1], argv[2], argv[3:]
        minutes = float(next((a.split("=", 1)[1] for a in rest if a.startswith("--minutes=")),
                             20))
        probe = int(next((a.split("=", 1)[1] for a in rest if a.startswith("--steps_probe=")),
                         150))
        overrides = [a for a in rest if a.startswith("--config.")]
        print(json.dumps(run(root, name, minutes, probe, overrides)))
    elif len(argv) >= 2 and argv[0] == "table":
        table(argv[1:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
