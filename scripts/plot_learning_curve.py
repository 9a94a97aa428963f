"""Plot a run's learning curve (probe accuracy and FID against steps) from its periodic
evaluations (WORKDIR/eval/step_*/report.json), and optionally the test accuracy of the report's
baselines as horizontal lines.

    .venv/bin/pip install -e '.[docs]'   # matplotlib: this figure only, never the library
    .venv/bin/python scripts/plot_learning_curve.py --workdir=WORKDIR \
        --out=docs/learning_curve.png [--baselines=WORKDIR/report.json]
"""

from __future__ import annotations

import json
import os

import matplotlib
from absl import app, flags

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bbg_jax.evaluation import standalone  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir.")
_OUT = flags.DEFINE_string("out", None, "The figure's file (e.g. curve.png).")
_BASELINES = flags.DEFINE_string("baselines", None, "A report.json whose baseline rows to draw.")


def main(argv) -> None:
    del argv
    reports = standalone.periodic_reports(_WORKDIR.value)
    if not reports:
        raise SystemExit(f"no evaluations under {_WORKDIR.value}/eval/step_*/report.json")
    steps = [r["step"] for r in reports]
    fid_keys = sorted({k for r in reports for k in r["metrics"] if k.startswith("fid_")})
    # A run evaluated without the FID evaluator gets the probe panel only.
    if fid_keys:
        fig, (acc_ax, fid_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    else:
        fig, acc_ax = plt.subplots(1, 1, figsize=(6, 3.8))
    for key, label in (("probe_top1_avepool_test", "BigBiGAN avepool_feat"),
                       ("probe_top1_bn_crelu_test", "BigBiGAN bn_crelu_feat")):
        pts = [(r["step"], r["metrics"][key]) for r in reports if key in r["metrics"]]
        if pts:
            acc_ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    if _BASELINES.value:
        with open(_BASELINES.value) as f:
            rows = json.load(f)["probe"]
        for row, style in (("raw_pixels", ":"), ("random_encoder_avepool", "--"),
                           ("random_encoder_bn_crelu", "-.")):
            if row in rows:
                acc_ax.axhline(rows[row]["top1_test"], color="gray", linestyle=style,
                               label=f"{row.replace('_', ' ')} (baseline)")
    acc_ax.set_xlabel("G/E step")
    acc_ax.set_ylabel("linear probe top-1, test split")
    acc_ax.legend(fontsize=7)
    acc_ax.grid(alpha=0.3)
    if fid_keys:
        for key in fid_keys:
            pts = [(r["step"], r["metrics"][key]) for r in reports if key in r["metrics"]]
            fid_ax.plot(*zip(*pts, strict=True), marker="o", label=key)
        fid_ax.set_xlabel("G/E step")
        fid_ax.set_ylabel("FID")
        fid_ax.legend(fontsize=7)
        fid_ax.grid(alpha=0.3)
    fig.suptitle(f"BigBiGAN on Fashion-MNIST: {os.path.basename(_WORKDIR.value.rstrip('/'))}, "
                 f"steps {steps[0]}-{steps[-1]}")
    fig.tight_layout()
    fig.savefig(_OUT.value, dpi=110)
    print(_OUT.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "out"])
    app.run(main)
