"""Compare training runs side by side: their logged losses (WORKDIR/metrics.jsonl), averaged
over windows of steps, and their periodic evaluations (WORKDIR/eval/step_*/report.json).

    .venv/bin/python scripts/compare_runs.py WORKDIR_A WORKDIR_B [...] [--window 100]
        [--keys d_loss,g_loss] [--json]

Used for the bf16-against-fp32 evidence in the README: the same config and seed, one run with
model.dtype=bfloat16. A resumed run may log a step twice; the later line wins.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from bbg_jax import paths
from bbg_jax.evaluation import standalone

DEFAULT_KEYS = ("d_loss", "g_loss", "e_loss", "online_probe_top1_train")

_WINDOW = flags.DEFINE_integer("window", 100, "Steps per averaging window.", lower_bound=1)
_KEYS = flags.DEFINE_list("keys", list(DEFAULT_KEYS), "Logged metrics to compare.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of tables.")


def load_metrics(workdir: str) -> dict[int, dict[str, float]]:
    path = paths.path(workdir) / "metrics.jsonl"  # local or gs://
    if not path.exists():
        raise SystemExit(f"{path} does not exist: train with this version of bbg_jax.loop "
                         "(it writes one JSON line per logged step).")
    rows = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows[int(row.pop("step"))] = row
    return rows


def load_evals(workdir: str) -> dict[int, dict[str, float]]:
    return {r["step"]: {k: v for k, v in r["metrics"].items() if isinstance(v, (int, float))}
            for r in standalone.periodic_reports(workdir)}


def windows(rows: dict[int, dict[str, float]], key: str, window: int) -> dict[int, float]:
    """{window end step: mean of ``key`` over the logged steps in (end - window, end]}."""
    by_window: dict[int, list[float]] = {}
    for step, row in rows.items():
        if key in row:
            end = -(-step // window) * window
            by_window.setdefault(end, []).append(row[key])
    return {end: float(np.mean(v)) for end, v in sorted(by_window.items())}


def main(argv: list[str]) -> None:
    workdirs, window = argv[1:], _WINDOW.value
    if not workdirs:
        raise app.UsageError("name at least one WORKDIR")
    runs = {w: load_metrics(w) for w in workdirs}
    keys = [k for k in _KEYS.value if any(k in r for rows in runs.values()
                                          for r in rows.values())]
    table = {k: {w: windows(rows, k, window) for w, rows in runs.items()} for k in keys}
    evals = {w: load_evals(w) for w in workdirs}
    if _JSON.value:
        print(json.dumps({"window": window, "losses": table, "evals": evals}))
        return
    names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
    for key in keys:
        print(f"\n{key} (mean over {window}-step windows)")
        print("| steps | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        ends = sorted({e for w in workdirs for e in table[key][w]})
        for end in ends:
            cells = [f"{table[key][w][end]:.4f}" if end in table[key][w] else ""
                     for w in workdirs]
            print(f"| {max(end - window + 1, 1)}-{end} | " + " | ".join(cells) + " |")
    eval_keys = sorted({k for e in evals.values() for m in e.values() for k in m})
    if eval_keys:
        print("\nevaluations")
        print("| step | metric | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for step in sorted({s for e in evals.values() for s in e}):
            for k in eval_keys:
                cells = [f"{evals[w][step][k]:.4f}" if k in evals[w].get(step, {}) else ""
                         for w in workdirs]
                if any(cells):
                    print(f"| {step} | {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    app.run(main)
