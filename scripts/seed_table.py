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
        print(f"| {name}, first evaluation (step {fid[0]['first']['step']}) | | "
              f"{mean_std([f['first'][name] for f in fid])} | |")
        print(f"| {name}, last evaluation (step {fid[0]['last']['step']}) | | "
              f"{mean_std([f['last'][name] for f in fid])} | |")
    rc = [r["reconstruction_class_agreement"] for r in reports]
    print(f"| reconstruction class agreement (chance {reports[0]['chance']:.2f}) | | "
          f"{mean_std([x['agreement'] for x in rc])} | |")
    print(f"| reconstructions' accuracy | | "
          f"{mean_std([x['accuracy_reconstruction'] for x in rc])} | |")


if __name__ == "__main__":
    main(sys.argv[1:])
