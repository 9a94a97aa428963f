"""BigGAN-PyTorch and bbg-jax side by side on BigGAN's CIFAR-10 recipe, on this machine.

    python scripts/vs_biggan_pytorch.py --peer=PATH/TO/BigGAN-PyTorch \
        --torch_python=PATH/TO/python-with-torch [--rounds=6] [--steps=5] [--threads=N]
        [--dry_run] [--parity]

The protocol, so that a ratio means something:
* Every measurement is a fresh process pinned to the same ``--threads`` cores (``taskset``), in
  a clean environment written out here (OMP/MKL/OpenBLAS threads = ``--threads``; torch's intra-
  and inter-op threads set by the peer script; ``XLA_FLAGS`` exactly the device count), printed
  before the first round.
* Rows (each a fresh process per round): the peer (``scripts/biggan_pytorch_iteration.py``:
  BigGAN-PyTorch's own ``train_fns.GAN_training_function`` with the CIFAR model of
  ``launch_cifar_ema.sh``); the peer with channels_last; bbg-jax as shipped
  (``train.conv_weight_grad=auto``: Winograd where it pays, a different algorithm, so a feature,
  not a like-for-like row); bbg-jax with ``conv_weight_grad=einsum`` (no Winograd); bbg-jax on
  one device; the recipe's 4 D steps per G step for the peer and for bbg-jax.
* ABBA order: odd rounds run the rows in reverse, so drift over time cancels in the pairs.
* bbg-jax's compiles go to a persistent compilation cache (``--compilation_cache``), so rounds
  after the first load them; no timed step ever includes a compile on either side.
* Before each measurement the host's busy fraction over 1 s (other load) and, during it, the
  steal time are read from /proc/stat; a round with a noisy measurement is rejected whole.
* Each bbg-jax row's speed is paired with the peer row of the same D steps in the same round;
  the ratio is reported as the median and min-max over the clean rounds.
* The host (CPU model, ISA flags, cores, affinity, cgroup quota), versions and both commits
  are printed, and FLOPs: XLA's executed count for bbg-jax and the analytic count of bbg-jax's
  model (``bbg_jax.flops``), with effective FLOP/s = analytic FLOP per iteration / seconds,
  labelled as such (the peer executes its own algorithm's FLOPs, which are not counted).
``--dry_run`` prints the protocol, the host, every command and the environment (the peer's
``--dry_run`` line: its settings, torch importable, the peer's modules) and times nothing.
``--parity`` prints both sides' parameter counts and analytic forward FLOPs per image (the
peer's counted by its ``--count`` mode, bbg-jax's by ``bbg_jax.flops``) and exits 1 where
they differ by more than 1 %: the rows compare the same model only if this passes.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]

_PEER = flags.DEFINE_string("peer", None, "A checkout of ajbrock/BigGAN-PyTorch.")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", sys.executable,
                                    "A Python with torch (and the peer's requirements).")
_ROUNDS = flags.DEFINE_integer("rounds", 6, "Rounds, in ABBA order (at least 6 for a spread).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed iterations per measurement, after warm-up.")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count() or 1,
                                "Cores every measurement is pinned to (and threads it uses).")
_DEVICES = flags.DEFINE_integer("devices", os.cpu_count() or 1,
                                "Simulated host devices for bbg-jax (the batch is split).")
_MAX_BUSY = flags.DEFINE_float("max_busy", 0.10, "Reject a round when the host was busier "
                               "than this fraction in the second before a measurement.")
_MAX_STEAL = flags.DEFINE_float("max_steal", 0.02, "Reject a round when steal time exceeds "
                                "this fraction of a measurement's CPU time.")
_CACHE = flags.DEFINE_string(
    "compilation_cache", os.path.join(tempfile.gettempdir(), "bbg_jax_vs_biggan_cache"),
    "JAX's persistent compilation cache for the bbg-jax rows (each round is still a fresh "
    "process; the timed steps never include a compile), so rounds after the first skip XLA's "
    "compile; '' for none.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the protocol and the environment only.")
_PARITY = flags.DEFINE_bool("parity", False, "Compare both sides' parameter counts and "
                            "analytic FLOPs (within 1 %) and time nothing.")

# (row name, side, D steps per G step, what differs): the pairs are (row, the peer row with the
# same D steps).
ROWS = (
    ("BigGAN-PyTorch", "peer", 1, {}),
    ("BigGAN-PyTorch channels_last", "peer", 1, {"channels_last": "1"}),
    ("bbg-jax as shipped (Winograd where it pays)", "jax", 1, {}),
    ("bbg-jax conv_weight_grad=einsum (no Winograd)", "jax", 1,
     {"flags": ["--config.train.conv_weight_grad=einsum"]}),
    ("bbg-jax on 1 device", "jax", 1, {"devices": 1}),
    ("BigGAN-PyTorch, 4 D steps", "peer", 4, {}),
    ("bbg-jax as shipped, 4 D steps", "jax", 4, {}),
)


def _last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def clean_env(devices: int) -> dict[str, str]:
    """The whole environment of a measurement: nothing inherited but PATH, HOME and the locale."""
    threads = str(_THREADS.value)
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    if _CACHE.value:
        env["JAX_COMPILATION_CACHE_DIR"] = _CACHE.value
    return env


def pinned(cmd: list[str]) -> list[str]:
    """``cmd`` bound to cores 0 .. threads-1 (taskset, where the host has it)."""
    if shutil.which("taskset") is None:
        return cmd
    return ["taskset", "-c", f"0-{_THREADS.value - 1}", *cmd]


# The commands are built in one place, so --dry_run prints exactly what a run executes.
def command(side: str, d_steps: int, extra: dict) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of one measurement."""
    if side == "peer":
        cmd = [_TORCH_PYTHON.value, str(ROOT / "scripts" / "biggan_pytorch_iteration.py"),
               _PEER.value, f"steps={_STEPS.value}", f"num_D_steps={d_steps}",
               f"threads={_THREADS.value}", "interop_threads=1",
               f"channels_last={extra.get('channels_last', '0')}"]
        return pinned(cmd), clean_env(1)
    cmd = [sys.executable, "-m", "bbg_jax.benchmark", "--config=experiments/biggan_cifar.py",
           "--config.data.dataset=synthetic", f"--config.train.n_d_steps={d_steps}",
           f"--steps={_STEPS.value}", "--dtype=float32", *extra.get("flags", [])]
    return pinned(cmd), clean_env(extra.get("devices", _DEVICES.value))


def _cpu_ticks() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0
    total = sum(fields[:8])
    return total - idle - steal, steal, total


def busy_fraction(seconds: float = 1.0) -> float:
    """How busy the host is with other work, over ``seconds`` of this script doing nothing."""
    b0, _, t0 = _cpu_ticks()
    time.sleep(seconds)
    b1, _, t1 = _cpu_ticks()
    return (b1 - b0) / max(t1 - t0, 1)


def measure(name: str, side: str, d_steps: int, extra: dict) -> dict:
    busy = busy_fraction()
    cmd, env = command(side, d_steps, extra)
    _, s0, t0 = _cpu_ticks()
    load0 = os.getloadavg()[0]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:  # the row's own error, not a CalledProcessError with no output
        sys.exit(f"{name} exited {out.returncode}:\n{out.stderr[-3000:]}")
    _, s1, t1 = _cpu_ticks()
    steal = (s1 - s0) / max(t1 - t0, 1)
    row = _last_json(out.stdout)
    return {"row": name, "side": side, "d_steps": d_steps, "busy_before": round(busy, 4),
            "steal": round(steal, 4), "load1_before": load0, "load1_after": os.getloadavg()[0],
            "noisy": busy > _MAX_BUSY.value or steal > _MAX_STEAL.value, **row}


def host() -> dict:
    """What the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    flags_line = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                       if line.startswith("flags")), [])
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")
           if f in flags_line]
    quota = Path("/sys/fs/cgroup/cpu.max")
    return {"cpu": model, "isa": isa, "cores": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "cgroup_cpu_max": quota.read_text().strip() if quota.exists() else None,
            "python": platform.python_version(), "bbg_jax_commit": _commit(ROOT),
            "peer_commit": _commit(Path(_PEER.value))}


def _commit(path: Path) -> str:
    out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                         text=True)
    return out.stdout.strip() if out.returncode == 0 else "not a git checkout"


def analytic_flops(d_steps: int) -> float:
    """bbg-jax's model's FLOPs per training iteration, counted from its jaxprs."""
    from bbg_jax import flops
    from bbg_jax.configs import load_experiment

    config = load_experiment(str(ROOT / "experiments" / "biggan_cifar.py"))
    config.train.n_d_steps = d_steps
    return flops.train_step_flops(config)


def bbg_jax_counts() -> dict[str, float]:
    """bbg-jax's CIFAR model: parameters and analytic forward FLOPs per image of G and D."""
    import jax

    from bbg_jax import flops
    from bbg_jax.configs import load_experiment
    from bbg_jax.models import count_params, init_variables

    config = load_experiment(str(ROOT / "experiments" / "biggan_cifar.py"))
    shapes = jax.eval_shape(lambda: init_variables(config, jax.random.key(0), 2))
    forward = flops.network_forward_flops(config, 1)
    out: dict[str, float] = {}
    for net in ("G", "D"):
        out[f"{net}_params"] = count_params(shapes[net])
        out[f"{net}_flops"] = forward[net]
    return out


PARITY_TOLERANCE = 0.01


def parity_table(peer: dict, mine: dict) -> tuple[list[str], bool]:
    """Markdown rows of both sides' counts, and whether every one agrees within 1 %."""
    lines = ["| quantity | BigGAN-PyTorch | bbg-jax | difference |", "|---|---|---|---|"]
    ok = True
    for key in ("G_params", "D_params", "G_flops", "D_flops"):
        diff = mine[key] / peer[key] - 1
        ok &= abs(diff) <= PARITY_TOLERANCE
        lines.append(f"| {key} | {peer[key]:,.0f} | {mine[key]:,.0f} | {diff:+.3%} |")
    return lines, ok


def peer_line(mode: str) -> dict:
    """The peer script's JSON line in ``mode`` (--dry_run, --count), run as a measurement is."""
    peer_cmd, env = command("peer", 1, {})
    out = subprocess.run([*peer_cmd, mode], capture_output=True, text=True,
                         env={**env, "PATH": os.environ.get("PATH", "")})
    if out.returncode:
        sys.exit(f"the peer script's {mode} under {_TORCH_PYTHON.value} failed:\n"
                 f"{out.stderr[-2000:]}")
    return _last_json(out.stdout)


def parity() -> None:
    lines, ok = parity_table(peer_line("--count"), bbg_jax_counts())
    print("\n".join(lines))
    print("parity: every count within 1 %" if ok else "NOT THE SAME MODEL: a count differs "
          "by more than 1 %")
    if not ok:
        sys.exit(1)


def protocol_lines() -> list[str]:
    lines = [f"protocol: {_ROUNDS.value} rounds in ABBA order (odd rounds reversed), each row a "
             f"fresh process pinned to {_THREADS.value} cores; {_STEPS.value} timed "
             "iterations each after one warm-up; batch 50; a round is rejected when the host "
             f"was > {_MAX_BUSY.value:.0%} busy before a measurement or steal > "
             f"{_MAX_STEAL.value:.0%} during it"]
    for name, side, d_steps, extra in ROWS:
        cmd, env = command(side, d_steps, extra)
        shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k != "PATH")
        lines.append(f"{name}: (cd {ROOT} && env -i {shown} PATH=... {shlex.join(cmd)})")
    return lines


def dry_run() -> None:
    """The peer's side without torch: the peer script's own --dry_run line under
    --torch_python (its settings, whether torch imports there, the peer's modules)."""
    env = peer_line("--dry_run")
    print(json.dumps(env))
    problems = ([] if env["torch_importable"] else [f"torch is not importable by "
                                                     f"{_TORCH_PYTHON.value}"]) + [
        f"{_PEER.value} lacks {m}" for m in env["peer_missing"]]
    print("ready to run" if not problems else "not ready: " + "; ".join(problems))


def paired_ratios(rows: list[dict]) -> dict[str, list[float]]:
    """Per row, its images/s over the same round's peer row with the same D steps, clean rounds
    only."""
    rounds = sorted({r["round"] for r in rows})
    clean = [k for k in rounds if not any(r["noisy"] for r in rows if r["round"] == k)]
    ratios: dict[str, list[float]] = {}
    for k in clean:
        in_round = [r for r in rows if r["round"] == k]
        for r in in_round:
            base = next(p for p in in_round if p["row"].startswith("BigGAN-PyTorch")
                        and "channels_last" not in p["row"] and p["d_steps"] == r["d_steps"])
            ratios.setdefault(r["row"], []).append(r["images_per_s"] / base["images_per_s"])
    return ratios


def main(argv):
    del argv
    import jax

    print("\n".join(protocol_lines()))
    print(json.dumps({"host": host(), "jax": jax.__version__}), flush=True)
    if _DRY_RUN.value:
        dry_run()
        return
    if _PARITY.value:
        parity()
        return
    rows: list[dict] = []
    for k in range(_ROUNDS.value):
        for name, side, d_steps, extra in (ROWS if k % 2 == 0 else ROWS[::-1]):
            row = {"round": k, **measure(name, side, d_steps, extra)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    ratios = paired_ratios(rows)
    analytic = {d: analytic_flops(d) for d in sorted({r["d_steps"] for r in rows})}
    rejected = _ROUNDS.value - len(next(iter(ratios.values()), []))
    print(f"\nBigGAN CIFAR recipe, batch 50, fp32, {_ROUNDS.value} ABBA rounds "
          f"({rejected} rejected as noisy), {_STEPS.value} timed iterations each, pinned to "
          f"{_THREADS.value} cores\n")
    print("| row | s per iteration (median) | images/s vs the peer: median (min-max) over "
          "clean rounds | XLA FLOP executed | effective TFLOP/s (analytic FLOP / s) |")
    print("|---|---|---|---|---|")
    for name, _, d_steps, _ in ROWS:
        mine = [r for r in rows if r["row"] == name]
        s = statistics.median(r["median_s"] for r in mine)
        rs = ratios.get(name, [])
        spread = (f"{statistics.median(rs):.2f}x ({min(rs):.2f}-{max(rs):.2f})" if rs else "-")
        executed = mine[0].get("xla_flops")
        print(f"| {name} | {s:.2f} | {spread} | "
              f"{'-' if executed is None else f'{executed:.3g}'} | "
              f"{analytic[d_steps] / s / 1e12:.3f} |")


if __name__ == "__main__":
    flags.mark_flags_as_required(["peer"])
    app.run(main)
