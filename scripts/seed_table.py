"""Mean ± std over runs of each report.json row, as a Markdown table (for the README).

    .venv/bin/python scripts/seed_table.py RUN_SEED0[/report.json] RUN_SEED1 RUN_SEED2
"""

from __future__ import annotations

import sys

import numpy as np

from bbg_jax import paths


def load(path: str) -> dict:
    p = paths.path(path)  # a workdir or its report.json, local or gs://
    return paths.read_json(p / "report.json" if p.is_dir() else p)


def mean_std(values) -> str:
    v = np.asarray(values, np.float64)
    return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}"


def main(paths: list[str]) -> None:
    reports = [load(p) for p in paths]
    order = ["raw_pixels", "random_encoder_avepool", "random_encoder_bn_crelu",
             "bigbigan_avepool", "bigbigan_bn_crelu"]  # bbg_jax.evaluation.report.ROWS
    rows = [r for r in order if r in reports[0]["probe"]]
    print(f"{len(reports)} runs (seeds {', '.join(str(r['seed']) for r in reports)}), step "
          f"{', '.join(str(r['step']) for r in reports)}; mean ± sample std\n")
    print("| features | top-1 train_val | top-1 test | top-5 test |")
    print("|---|---|---|---|")
    for row in rows:
        cells = [mean_std([r["probe"][row][k] for r in reports])
                 for k in ("top1_trainval", "top1_test", "top5_test")]
        print(f"| {row.replace('_', ' ')} | " + " | ".join(cells) + " |")
    fid = [r["fid"] for r in reports if r["fid"]]
    if fid:
        name = next(k for k in fid[0]["first"] if k.startswith("fid_"))
        whens = ("last",) if fid[0]["first"]["step"] == fid[0]["last"]["step"] else (
            "first", "last")
        for when in whens:
            print(f"| {name}, {when} evaluation (step {fid[0][when]['step']}) | | "
                  f"{mean_std([f[when][name] for f in fid])} | |")
    margins = [r["margin_over_random_encoder"]["bn_crelu_test"] for r in reports]
    spread = max(np.std([r["probe"][row]["top1_test"] for r in reports], ddof=1)
                 if len(reports) > 1 else 0.0
                 for row in ("bigbigan_bn_crelu", "random_encoder_bn_crelu"))
    print(f"| margin of bigbigan bn crelu over the random encoder | | {mean_std(margins)} "
          f"({np.mean(margins) / spread if spread else float('inf'):.1f} × the larger seed std "
          f"of the two rows) | |")
    first, last = ([r["diagnostics"][w] for r in reports] for w in ("first", "last"))
    for name, label in DIAGNOSTICS:
        for when, diags in (("first", first), ("last", last)):
            values = [d[name] for d in diags if name in d]
            if values:
                print(f"| {label}, {when} evaluation (step {diags[0]['step']}) | | "
                      f"{mean_std(values)} | |")
    print(f"\nchance {reports[0]['chance']:.2f}")
    # Per seed, first -> last: does each run's latent recovery rise?
    for name, label in DIAGNOSTICS[:2]:
        changes = [f"seed {r['seed']}: {a[name]:.4f} -> {b[name]:.4f}"
                   for r, a, b in zip(reports, first, last, strict=True)
                   if name in a and name in b]
        rising = sum(b[name] > a[name] for a, b in zip(first, last, strict=True)
                     if name in a and name in b)
        if changes:
            print(f"{label}, first -> last: {'; '.join(changes)} (rising in {rising} of "
                  f"{len(changes)})")


# report.json "diagnostics" entries -> table labels (bbg_jax.evaluation.diagnostics).
DIAGNOSTICS = [
    ("latent_recovery_corr_raw", "latent recovery corr, raw G"),
    ("latent_recovery_corr_ema", "latent recovery corr, EMA G"),
    ("encoder_z_stdev_mean", "E's mean z_stdev"),
    ("score_gap_xz", "s_xz gap (encoder - generator pairs)"),
    ("recon_agreement_pixel_raw", "reconstruction agreement, pixel judge, raw G"),
    ("recon_agreement_pixel_ema", "reconstruction agreement, pixel judge, EMA G"),
    ("recon_agreement_probe_raw", "reconstruction agreement, probe judge, raw G"),
    ("recon_agreement_probe_ema", "reconstruction agreement, probe judge, EMA G"),
]

if __name__ == "__main__":
    main(sys.argv[1:])
