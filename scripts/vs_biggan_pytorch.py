"""BigGAN-PyTorch and bbg-jax side by side on BigGAN's CIFAR-10 recipe, on this machine.

    python scripts/vs_biggan_pytorch.py --peer=PATH/TO/BigGAN-PyTorch \
        --torch_python=PATH/TO/python-with-torch [--rounds=3] [--steps=5] [--num_d_steps=1]
        [--dry_run]

Each round times, one after the other in fresh processes so they never share the cores:
BigGAN-PyTorch's own training iteration (``scripts/biggan_pytorch_iteration.py``: its
``train_fns.GAN_training_function`` with the CIFAR model of ``launch_cifar_ema.sh``), then
``bbg_jax.benchmark`` on ``experiments/biggan_cifar.py`` (synthetic data) in fp32, then in bf16.
Both sides: batch 50, ``--num_d_steps`` D updates and one G update per iteration, the same
channel widths (G 256, D 256 per block), no attention, 10 classes. Prints a markdown table of
the medians over rounds, the fp32 ratio of images/s, and one JSON line per measurement.
``--dry_run`` prints the protocol (each round's commands) and the environment (the peer's
``--dry_run`` line: its settings, torch importable, the peer's modules) and times nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]

_PEER = flags.DEFINE_string("peer", None, "A checkout of ajbrock/BigGAN-PyTorch.")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", sys.executable,
                                    "A Python with torch (and the peer's requirements).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds (peer, fp32, bf16).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed iterations per measurement, after warm-up.")
_NUM_D_STEPS = flags.DEFINE_integer("num_d_steps", 1, "D updates per G update (recipe: 4).")
_DEVICES = flags.DEFINE_integer("devices", os.cpu_count() or 1,
                                "Simulated host devices for bbg-jax (the batch is split).")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count() or 1, "torch threads for the peer.")
_BF16 = flags.DEFINE_bool("bf16", True, "Also time bbg-jax in bfloat16.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the protocol and the environment only.")


def _last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


# The commands are built in one place, so --dry_run prints exactly what a run executes.
def peer_command() -> list[str]:
    return [_TORCH_PYTHON.value, str(ROOT / "scripts" / "biggan_pytorch_iteration.py"),
            _PEER.value, f"steps={_STEPS.value}", f"num_D_steps={_NUM_D_STEPS.value}",
            f"threads={_THREADS.value}"]


def bbg_jax_command(dtype: str) -> tuple[list[str], dict[str, str]]:
    """(argv, the environment variables it sets) of one bbg-jax measurement."""
    cmd = [sys.executable, "-m", "bbg_jax.benchmark", "--config=experiments/biggan_cifar.py",
           "--config.data.dataset=synthetic", f"--config.train.n_d_steps={_NUM_D_STEPS.value}",
           f"--steps={_STEPS.value}", f"--dtype={dtype}"]
    env = {"JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                        f"--xla_force_host_platform_device_count={_DEVICES.value}".strip()}
    return cmd, env


def peer_iteration() -> dict:
    out = subprocess.run(peer_command(), capture_output=True, text=True, check=True)
    return _last_json(out.stdout)


def bbg_jax_step(dtype: str) -> dict:
    cmd, env = bbg_jax_command(dtype)
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                         text=True, check=True)
    row = _last_json(out.stdout)
    return {"who": f"bbg-jax {dtype}", **row}


def dry_run() -> None:
    """The protocol and the environment, without torch: the peer script's own --dry_run line
    under --torch_python (its settings, whether torch imports there, the peer's modules)."""
    dtypes = ["float32", "bfloat16"] if _BF16.value else ["float32"]
    print(f"protocol: {_ROUNDS.value} rounds, each in fresh processes one after the other: "
          f"BigGAN-PyTorch, then bbg-jax {', then '.join(dtypes)}; {_STEPS.value} timed "
          f"iterations each after one warm-up; {_NUM_D_STEPS.value} D + 1 G update per "
          "iteration, batch 50")
    print("peer:    " + shlex.join(peer_command()))
    for dtype in dtypes:
        cmd, env = bbg_jax_command(dtype)
        print(f"bbg-jax: (cd {ROOT} && " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
              + " " + shlex.join(cmd) + ")")
    import jax

    print(json.dumps({"who": "bbg-jax", "python": sys.executable, "jax": jax.__version__,
                      "devices": _DEVICES.value, "cpu_count": os.cpu_count()}))
    out = subprocess.run([*peer_command(), "--dry_run"], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"the peer script's --dry_run under {_TORCH_PYTHON.value} failed:\n"
                 f"{out.stderr[-2000:]}")
    env = _last_json(out.stdout)
    print(json.dumps(env))
    problems = ([] if env["torch_importable"] else [f"torch is not importable by "
                                                     f"{_TORCH_PYTHON.value}"]) + [
        f"{_PEER.value} lacks {m}" for m in env["peer_missing"]]
    print("ready to run" if not problems else "not ready: " + "; ".join(problems))


def main(argv):
    del argv
    if _DRY_RUN.value:
        dry_run()
        return
    runs: dict[str, list[dict]] = {}
    for r in range(_ROUNDS.value):
        measures = [("BigGAN-PyTorch fp32", peer_iteration),
                    ("bbg-jax fp32", lambda: bbg_jax_step("float32"))]
        if _BF16.value:
            measures.append(("bbg-jax bf16", lambda: bbg_jax_step("bfloat16")))
        for name, measure in measures:
            row = measure()
            row["round"] = r
            print(json.dumps(row), flush=True)
            runs.setdefault(name, []).append(row)

    def median(name: str, key: str) -> float:
        return statistics.median(row[key] for row in runs[name])

    print(f"\nBigGAN CIFAR recipe, batch 50, {_NUM_D_STEPS.value} D + 1 G update per iteration, "
          f"{_ROUNDS.value} alternating rounds of {_STEPS.value} timed iterations "
          f"(medians; peer: {_THREADS.value} torch threads; bbg-jax: {_DEVICES.value} "
          f"simulated devices)\n")
    print("| | s per iteration | images/s | vs BigGAN-PyTorch |")
    print("|---|---|---|---|")
    base = median("BigGAN-PyTorch fp32", "images_per_s")
    for name in runs:
        ips = median(name, "images_per_s")
        print(f"| {name} | {median(name, 'median_s'):.2f} | {ips:.2f} | {ips / base:.2f}x |")
    ratio = median("bbg-jax fp32", "images_per_s") / base
    print(f"\nfp32 images/s, bbg-jax / BigGAN-PyTorch: {ratio:.2f}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["peer"])
    app.run(main)
