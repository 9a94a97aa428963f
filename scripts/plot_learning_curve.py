"""Plot a run's learning curve (probe accuracy, FID and the coupling diagnostics against steps)
from its periodic evaluations (WORKDIR/eval/step_*/report.json), and optionally the test accuracy
of the report's baselines as horizontal lines; ``--table`` also prints the curve as Markdown.

    .venv/bin/pip install -e '.[docs]'   # matplotlib: this figure only, never the library
    .venv/bin/python scripts/plot_learning_curve.py --workdir=WORKDIR \
        --out=docs/learning_curve.png [--baselines=WORKDIR/report.json] [--table]

``--table`` without ``--out`` prints the table alone, without matplotlib.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from bbg_jax.evaluation import standalone

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir.")
_OUT = flags.DEFINE_string("out", None, "The figure's file (e.g. curve.png); none: --table only.")
_BASELINES = flags.DEFINE_string("baselines", None, "A report.json whose baseline rows to draw.")
_TABLE = flags.DEFINE_bool("table", False, "Also print the curve as a Markdown table.")

# (panel title, [(metric, label)]) of the coupling diagnostics (bbg_jax.evaluation.diagnostics).
DIAGNOSTIC_PANELS = (
    ("latent recovery: corr(z, E(G(z)))", [("latent_recovery_corr_raw", "raw G"),
                                           ("latent_recovery_corr_ema", "EMA G")]),
    ("reconstruction class agreement", [("recon_agreement_pixel_raw", "pixel judge, raw G"),
                                        ("recon_agreement_pixel_ema", "pixel judge, EMA G"),
                                        ("recon_agreement_probe_raw", "BigBiGAN probe, raw G")]),
    ("D's score gap, encoder - generator pairs", [("score_gap_xz", "s_xz"),
                                                  ("score_gap_x", "s_x"),
                                                  ("score_gap_z", "s_z")]),
)
# The --table columns: (metric, header, scale).
TABLE_COLUMNS = (("probe_top1_bn_crelu_test", "bn_crelu test top-1 %", 100),
                 ("latent_recovery_corr_raw", "latent corr, raw G", 1),
                 ("latent_recovery_corr_ema", "latent corr, EMA G", 1),
                 ("encoder_z_stdev_mean", "E's mean z_stdev", 1),
                 ("score_gap_xz", "s_xz gap", 1),
                 ("recon_agreement_pixel_raw", "recon agreement, pixel judge, raw G %", 100),
                 ("recon_agreement_pixel_ema", "recon agreement, pixel judge, EMA G %", 100))


def series(reports: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r["metrics"][key]) for r in reports if key in r["metrics"]]


def markdown_table(reports: list[dict], fid_keys: list[str]) -> str:
    columns = [c for c in TABLE_COLUMNS if series(reports, c[0])]
    columns += [(k, k.replace("_", "-"), 1) for k in fid_keys]
    lines = ["| step | " + " | ".join(c[1] for c in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for r in reports:
        cells = [f"{r['metrics'][k] * scale:.{1 if scale == 100 or k.startswith('fid_') else 3}f}"
                 if k in r["metrics"] else "" for k, _, scale in columns]
        lines.append(f"| {r['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    if not (_OUT.value or _TABLE.value):
        raise app.UsageError("name a figure (--out) or ask for the table (--table)")
    reports = standalone.periodic_reports(_WORKDIR.value)
    if not reports:
        raise SystemExit(f"no evaluations under {_WORKDIR.value}/eval/step_*/report.json")
    fid_keys = sorted({k for r in reports for k in r["metrics"] if k.startswith("fid_")})
    if _OUT.value:
        plot(reports, fid_keys)
        print(_OUT.value)
    if _TABLE.value:
        print(markdown_table(reports, fid_keys))


def plot(reports: list[dict], fid_keys: list[str]) -> None:
    # Imported here: matplotlib is the docs extra's, and the table needs none of it (the default
    # test suite runs --table in an environment without it).
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--out needs matplotlib: .venv/bin/pip install -e '.[docs]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in reports]
    # A run evaluated without the FID evaluator or the diagnostics gets fewer panels.
    panels = [p for p in DIAGNOSTIC_PANELS if any(series(reports, k) for k, _ in p[1])]
    n = 1 + bool(fid_keys) + len(panels)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    axes = list(axes.flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    acc_ax = axes[0]
    fid_ax = axes[1] if fid_keys else None
    for key, label in (("probe_top1_avepool_test", "BigBiGAN avepool_feat"),
                       ("probe_top1_bn_crelu_test", "BigBiGAN bn_crelu_feat")):
        pts = series(reports, key)
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
            pts = series(reports, key)
            fid_ax.plot(*zip(*pts, strict=True), marker="o", label=key)
        fid_ax.set_xlabel("G/E step")
        fid_ax.set_ylabel("FID")
        fid_ax.legend(fontsize=7)
        fid_ax.grid(alpha=0.3)
    for ax, (title, keys) in zip(axes[1 + bool(fid_keys):], panels, strict=False):
        for key, label in keys:
            pts = series(reports, key)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=label)
        if title.startswith("reconstruction"):
            ax.axhline(0.1, color="gray", linestyle=":", label="chance (10 classes)")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("G/E step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"BigBiGAN on Fashion-MNIST: {os.path.basename(_WORKDIR.value.rstrip('/'))}, "
                 f"steps {steps[0]}-{steps[-1]}")
    fig.tight_layout()
    fig.savefig(_OUT.value, dpi=110)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
