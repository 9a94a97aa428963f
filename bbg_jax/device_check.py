"""The accelerator check: train-step speed of four configs and a short Fashion-MNIST run.

Run through ``scripts/device_check.sh`` (its header has the device tool's command). Two halves:

``prepare`` runs where ml_collections and TensorFlow are installed (this project's venv)::

    python -m bbg_jax.device_check prepare --out build/device_check

and writes, into one small folder (about 20 MB):

* ``configs/<name>.json``: the ``model``, ``data`` and ``train`` sections of each experiment
  config in ``CONFIGS`` (``ConfigDict.to_dict``), after ``config_checks.check``;
* ``fashion_mnist_images.npy`` (N, 32, 32, 1) uint8 and ``fashion_mnist_labels.npy`` (N,)
  int32: the first N examples of the training split after the 10k train_val hold-out (the
  split the Fashion-MNIST config trains on), from Debian's IDX files through
  ``bbg_jax.data.fashion_mnist.read_split``, padded 28 -> 32 px with black (0) as the
  pipeline's ``augmentation='pad'`` does;
* ``manifest.json``: what was written, and from where.

``run`` is the device half; it needs only jax, flax, optax, numpy and absl (no TensorFlow,
ml_collections or clu: ``tests/test_device_check.py`` runs it with those imports blocked)::

    python -m bbg_jax.device_check run --prepared build/device_check [--cpu]

Each item runs in its own ``worker`` subprocess, so each reports its own peak device memory
(the allocator's high-water mark lasts a process), an item that fails or runs out of memory
leaves the others alone, and an item still running when the time budget ends is stopped. One
JSON line per item goes to stdout (and to ``$OUT/device_check.jsonl`` when ``OUT`` is set):

* ``what="train_step"``: ``bbg_jax.benchmark.benchmark_step`` on synthetic data, bf16 and fp32;
* ``what="fashion_mnist_train"``: ``train.steps`` steps of the Fashion-MNIST config from the
  exported arrays, with s/step and the final losses;

then one ``what="device_check_done"`` line. ``docs/performance.md`` ("Device check") explains
every field.

Configs on the device side are read from JSON into ``Config``, a dict with attribute access
(the only ConfigDict behaviour the step reads: ``c.x``, ``c.get``, ``in``), whether
ml_collections is installed or not, so the CPU mode here runs exactly what the device runs.
Lists come back as tuples (JSON has no tuples; the configs hold tuples only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# name -> experiment file. The BigBiGAN-128 entry is the paper's base model (Table 1, "Base"):
# the file's default config, no argument.
CONFIGS = {
    "smoke": "experiments/smoke.py",
    "biggan_cifar": "experiments/biggan_cifar.py",
    "fashion_mnist": "experiments/fashion_mnist.py",
    "bigbigan_imagenet128": "experiments/bigbigan_imagenet128.py",
}
TRAIN_CONFIG = "fashion_mnist"
IMAGES, LABELS = "fashion_mnist_images.npy", "fashion_mnist_labels.npy"
RESULT_MARK = "DEVICE_CHECK_RESULT "
DTYPES = ("bfloat16", "float32")


# Batch per device and timed steps (0 = compile only: memory and FLOPs, no timing).
# Accelerator: the small configs at their recipes' batches (smoke's 8 is a test size, so 64),
# BigBiGAN-128 at 64, the per-chip batch of its TPU v5p-64 plan (53 GB compiled in float32).
# The Fashion-MNIST benchmark's float32 step is the training run's step: same batch, so the
# run loads it from the compilation cache instead of compiling it again.
ACCELERATOR = {
    "batch": {"smoke": 64, "biggan_cifar": 50, "fashion_mnist": 64, "bigbigan_imagenet128": 64},
    "steps": {"smoke": 20, "biggan_cifar": 20, "fashion_mnist": 20, "bigbigan_imagenet128": 10},
    "train_batch": 64, "train_steps": 200, "budget_s": 420.0,
}
# CPU mode: small batches, 2 timed steps, BigBiGAN-128 compiled only (one step would take
# minutes on a laptop-class CPU), a shorter Fashion-MNIST run at a smaller batch.
CPU = {
    "batch": {"smoke": 4, "biggan_cifar": 4, "fashion_mnist": 8, "bigbigan_imagenet128": 2},
    "steps": {"smoke": 2, "biggan_cifar": 2, "fashion_mnist": 2, "bigbigan_imagenet128": 0},
    "train_batch": 8, "train_steps": 200, "budget_s": 3600.0,
}


class Config(dict):
    """A config section read back from JSON: a dict whose keys are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def from_json(value: Any) -> Any:
    """JSON data -> ``Config`` for objects, tuples for lists (the configs hold tuples only)."""
    if isinstance(value, dict):
        return Config({k: from_json(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(from_json(v) for v in value)
    return value


def load_config(prepared: str | Path, name: str) -> Config:
    return from_json(json.loads((Path(prepared) / "configs" / f"{name}.json").read_text()))


# --- prepare (here: ml_collections, TensorFlow) ------------------------------------------------

def pad_images(images: np.ndarray, resolution: int) -> np.ndarray:
    """(N, h, w, c) uint8 centred on a black (0, i.e. -1 after scaling) square of ``resolution``:
    ``bbg_jax.data.augment.pad_to`` on uint8 (it pads [-1, 1] images with -1)."""
    _, h, w, _ = images.shape
    top, left = (resolution - h) // 2, (resolution - w) // 2
    return np.pad(images, [(0, 0), (top, resolution - h - top), (left, resolution - w - left),
                           (0, 0)], constant_values=0)


def prepare(out: str | Path, num_images: int, repo: str | Path) -> dict[str, Any]:
    from bbg_jax import config_checks
    from bbg_jax.configs import load_experiment
    from bbg_jax.data import fashion_mnist

    out, repo = Path(out), Path(repo)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    for name, path in CONFIGS.items():
        config = load_experiment(str(repo / path))
        config_checks.check(config, "train")
        sections = {k: config[k].to_dict() for k in ("model", "data", "train")}
        (out / "configs" / f"{name}.json").write_text(json.dumps(sections, indent=1) + "\n")
    data = load_experiment(str(repo / CONFIGS[TRAIN_CONFIG])).data
    held_out = data.train_val_size
    images, labels = fashion_mnist.read_split(data.local_fashion_mnist_dir, data.train_split,
                                              limit=held_out + num_images)
    images, labels = images[held_out:], labels[held_out:]
    if data.augmentation != "pad" or data.resolution_e != data.resolution_d:
        raise ValueError("The export pads to data.resolution_e; the Fashion-MNIST config must "
                         "use augmentation='pad' with equal E and D resolutions.")
    np.save(out / IMAGES, pad_images(images, data.resolution_e))
    np.save(out / LABELS, labels.astype(np.int32))
    manifest = {"configs": CONFIGS, "fashion_mnist": {
        "source": data.local_fashion_mnist_dir, "split": f"{data.train_split}"
        f"[{held_out}:{held_out + len(images)}]", "images": int(len(images)),
        "shape": list(images.shape[1:3]), "padded_to": data.resolution_e}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# --- the device half: workers --------------------------------------------------------------------

def _report(row: dict[str, Any]) -> None:
    print(RESULT_MARK + json.dumps(row), flush=True)


def bench_item(prepared: str, name: str, dtype: str, batch_per_device: int, steps: int
               ) -> dict[str, Any]:
    """``benchmark.benchmark_step`` for one config and dtype, plus the MFU and GiB fields."""
    import jax

    from bbg_jax import benchmark

    config = load_config(prepared, name)
    config.model.dtype = dtype
    config.data.dataset = "synthetic"  # as bbg_jax.benchmark does: no files
    config.data.batch_size = batch_per_device * jax.device_count()
    row = benchmark.benchmark_step(config, steps)
    gib = row["peak_memory_bytes"]
    return {"config": name, "compile_only": steps == 0, "timed_steps": steps,
            "batch_per_device": batch_per_device, **row, "mfu": row["fraction_of_peak"],
            "peak_memory_gib": None if gib is None else gib / 2**30}


def fashion_mnist_batches(images: np.ndarray, labels: np.ndarray, batch: int, n_d: int,
                          seed: int = 0):
    """Endless stacked step batches (n_d, batch, ...) from the exported uint8 arrays: one
    seeded permutation per epoch and a horizontal flip with probability 1/2 per example, as
    the pipeline's ``pad`` augmentation with ``random_flip`` (padding is symmetric, so flipping
    the padded image equals padding the flipped one); image_e = image_d in [-1, 1]."""
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(len(images)), 0
    while True:
        parts = []
        for _ in range(n_d):
            if pos + batch > len(order):
                order, pos = rng.permutation(len(images)), 0
            idx = order[pos:pos + batch]
            pos += batch
            x = images[idx].astype(np.float32) / 127.5 - 1.0
            flip = rng.random(batch) < 0.5
            x[flip] = x[flip, :, ::-1]
            parts.append({"image_d": x, "image_e": x, "label": labels[idx].astype(np.int32)})
        yield {k: np.stack([p[k] for p in parts]) for k in parts[0]}


def train_item(prepared: str, batch_per_device: int, steps: int, dtype: str = "float32"
               ) -> dict[str, Any]:
    """``steps`` train steps of the Fashion-MNIST config on the exported images: the loop's
    order (metrics fetched one step late, so the device never waits for the host), without
    its checkpoints, summaries and evaluation."""
    import jax

    from bbg_jax import benchmark, sharding
    from bbg_jax.train import jit_train_step
    from bbg_jax.train_state import create_train_state

    config = load_config(prepared, TRAIN_CONFIG)
    config.model.dtype = dtype
    batch = batch_per_device * jax.device_count()
    config.data.batch_size = batch
    images = np.load(Path(prepared) / IMAGES)
    labels = np.load(Path(prepared) / LABELS)
    mesh = sharding.make_mesh()
    state = jax.jit(lambda k: create_train_state(config, k), out_shardings=sharding.replicated(
        mesh))(jax.random.key(config.train.seed))
    step = jit_train_step(config, mesh)
    source = fashion_mnist_batches(images, labels, batch, config.train.n_d_steps,
                                   config.data.seed)

    def next_batch():
        return sharding.global_batch_from_local(next(source), mesh, batch_axis=1)

    began = time.perf_counter()
    state, metrics = step(state, next_batch())
    history = [jax.device_get(metrics)]  # the first step waits: compile (or cache load) + run
    first_s = time.perf_counter() - began
    began = time.perf_counter()
    pending = None
    for _ in range(steps - 1):
        state, metrics = step(state, next_batch())
        if pending is not None:
            history.append(jax.device_get(pending))
        pending = metrics
    if pending is not None:
        history.append(jax.device_get(pending))
    rest_s = time.perf_counter() - began
    losses = sorted(k for k in history[-1] if "loss" in k)
    window = history[-min(20, len(history)):]
    finite = all(np.isfinite(float(m[k])) for m in history for k in m)
    s_per_step = rest_s / (steps - 1) if steps > 1 else None
    gib = benchmark.peak_memory(jax.devices()[0])
    return {
        "what": "fashion_mnist_train", "config": TRAIN_CONFIG,
        "device": jax.devices()[0].device_kind,
        "devices": mesh.devices.size, "dtype": dtype, "batch": batch,
        "batch_per_device": batch_per_device, "steps": steps,
        "data": f"{len(images)} exported Fashion-MNIST training images",
        "first_step_s": first_s, "s_per_step": s_per_step,
        "images_per_s": None if not s_per_step else batch / s_per_step,
        "final_step": int(jax.device_get(state.step)),
        "final_losses": {k: float(history[-1][k]) for k in losses},
        "mean_losses_last_steps": {k: float(np.mean([m[k] for m in window])) for k in losses},
        "mean_window_steps": len(window), "all_finite": finite,
        "peak_memory_bytes": gib, "peak_memory_gib": None if gib is None else gib / 2**30,
    }


def worker(args: argparse.Namespace) -> None:
    if args.compilation_cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if args.item == "train_step":
        row = bench_item(args.prepared, args.config, args.dtype, args.batch, args.steps)
    else:
        row = train_item(args.prepared, args.batch, args.steps, args.dtype)
    _report(row)


# --- the device half: the run ---------------------------------------------------------------------

def _probe(env: dict[str, str]) -> dict[str, Any]:
    """Backend, device kind and count, in a subprocess: this process never takes the device
    (JAX would preallocate its memory, which the workers need)."""
    code = ("import json, jax; d = jax.devices(); print(json.dumps({'backend': "
            "jax.default_backend(), 'device': d[0].device_kind, 'devices': len(d), "
            "'jax': jax.__version__}))")
    env = {**env, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def plan(mode: dict[str, Any], only: list[str] | None = None) -> list[dict[str, Any]]:
    """The items in running order: the quick ones first, BigBiGAN-128 (the longest compiles)
    last, so a budget cut loses the least."""
    items = []

    def bench(name):
        for dtype in DTYPES:
            items.append({"item": "train_step", "config": name, "dtype": dtype,
                          "batch": mode["batch"][name], "steps": mode["steps"][name]})

    bench("smoke")
    bench(TRAIN_CONFIG)
    items.append({"item": "fashion_mnist_train", "config": TRAIN_CONFIG, "dtype": "float32",
                  "batch": mode["train_batch"], "steps": mode["train_steps"]})
    bench("biggan_cifar")
    bench("bigbigan_imagenet128")
    if only:
        items = [i for i in items if i["config"] in only or i["item"] in only]
    return items


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def non_finite_losses(row: dict[str, Any]) -> list[str]:
    """The losses of an item's row that are NaN or infinite (or the row's own ``all_finite``
    verdict on every metric of every step, when it is false)."""
    bad = [f"{group}.{name}" for group in ("final_losses", "mean_losses_last_steps")
           for name, value in sorted((row.get(group) or {}).items())
           if value is None or not np.isfinite(value)]
    if row.get("all_finite") is False and not bad:
        bad.append("all_finite=false")
    return bad


def verdict(rc: int | str, rows: list[dict[str, Any]], wall: float) -> str | None:
    """Why an item failed, or None when it passed: it must exit 0, report a row, and train
    with finite losses (a run whose losses went NaN measured nothing worth keeping)."""
    if rc == "timeout":
        return f"stopped at the time budget after {wall:.0f} s"
    if rc != 0:
        return f"exit status {rc}"
    if not rows:
        return "exit status 0 without a result row"
    bad = non_finite_losses(rows[-1])
    if bad:
        return f"non-finite losses: {', '.join(bad)}"
    return None


def run(args: argparse.Namespace) -> int:
    began = time.monotonic()
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if args.cpu:
        env["JAX_PLATFORMS"] = "cpu"
    info = _probe(env)
    cpu = info["backend"] == "cpu"
    mode = dict(CPU if cpu else ACCELERATOR)
    if args.budget_s is not None:
        mode["budget_s"] = args.budget_s
    for spec in args.batch or []:
        name, _, value = spec.partition("=")
        if name == "train":
            mode["train_batch"] = int(value)
        else:
            mode["batch"] = {**mode["batch"], name: int(value)}
    if args.train_steps is not None:
        mode["train_steps"] = args.train_steps
    out_dir = os.environ.get("OUT")
    sinks = [sys.stdout]
    log = None
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        sinks.append(open(Path(out_dir) / "device_check.jsonl", "a"))  # noqa: SIM115
        log = open(Path(out_dir) / "device_check_workers.log", "a")  # noqa: SIM115

    def emit(row: dict[str, Any]) -> None:
        line = json.dumps(row)
        for sink in sinks:
            print(line, file=sink, flush=True)

    emit({"what": "device_check_start", "mode": "cpu" if cpu else "accelerator", **info,
          "budget_s": mode["budget_s"], "prepared": str(args.prepared)})
    cache = tempfile.mkdtemp(prefix="bbg_device_check_cache_")
    failed, skipped, done = [], [], 0
    for item in plan(mode, args.only):
        label = f"{item['item']}:{item['config']}:{item['dtype']}"
        left = mode["budget_s"] - (time.monotonic() - began)
        head = {"what": item["item"], "config": item["config"], "dtype": item["dtype"]}
        if left < args.min_item_s:
            skipped.append(label)
            emit({**head, "skipped": f"time budget: {left:.0f} s left of {mode['budget_s']:.0f}"})
            continue
        cmd = [sys.executable, "-m", "bbg_jax.device_check", "worker", "--prepared",
               str(args.prepared), "--item", item["item"], "--config", item["config"],
               "--dtype", item["dtype"], "--batch", str(item["batch"]), "--steps",
               str(item["steps"])]
        if item["config"] == TRAIN_CONFIG and item["dtype"] == "float32":
            cmd += ["--compilation_cache", cache]  # the benchmark's step is the run's step
        started = time.monotonic()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=left)
            stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            rc = "timeout"
        wall = time.monotonic() - started
        if log:
            log.write(f"=== {label} rc={rc} wall={wall:.1f}s\n{stdout}{stderr}\n")
            log.flush()
        rows = [json.loads(line[len(RESULT_MARK):]) for line in stdout.splitlines()
                if line.startswith(RESULT_MARK)]
        why = verdict(rc, rows, wall)
        if why is None:
            done += 1
            emit({**rows[-1], "worker_wall_s": wall})
        else:
            failed.append(label)
            emit({**head, **(rows[-1] if rows else {}), "failed": why, "worker_wall_s": wall,
                  "stderr_tail": _tail(stderr)})
    shutil.rmtree(cache, ignore_errors=True)
    emit({"what": "device_check_done", "wall_s": time.monotonic() - began, "items_ok": done,
          "failed": failed, "skipped": skipped})
    for sink in sinks[1:]:
        sink.close()
    if log:
        log.close()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bbg_jax.device_check",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="export configs and Fashion-MNIST (needs ml_collections)")
    p.add_argument("--out", default="build/device_check")
    p.add_argument("--images", type=int, default=20_000,
                   help="Fashion-MNIST training images to export (20k: 20 MB as uint8)")
    p.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    r = sub.add_parser("run", help="the check (device side: jax, flax, optax, numpy)")
    r.add_argument("--prepared", default="build/device_check")
    r.add_argument("--cpu", action="store_true", help="CPU mode (JAX_PLATFORMS=cpu)")
    r.add_argument("--budget_s", type=float, default=None,
                   help="items start only while this much time since the start is not used up "
                        "(default 420 on an accelerator); a running item is stopped at it")
    r.add_argument("--min_item_s", type=float, default=20.0,
                   help="skip an item when less than this is left of the budget")
    r.add_argument("--batch", action="append", metavar="NAME=N",
                   help="batch per device of a config (or train=N for the Fashion-MNIST run)")
    r.add_argument("--train_steps", type=int, default=None)
    r.add_argument("--only", nargs="*", help="configs or items to run (default: all)")
    w = sub.add_parser("worker", help="one item (run starts these)")
    w.add_argument("--prepared", required=True)
    w.add_argument("--item", choices=("train_step", "fashion_mnist_train"), required=True)
    w.add_argument("--config", required=True)
    w.add_argument("--dtype", choices=DTYPES, required=True)
    w.add_argument("--batch", type=int, required=True)
    w.add_argument("--steps", type=int, required=True)
    w.add_argument("--compilation_cache", default="")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(json.dumps(prepare(args.out, args.images, args.repo)))
        return 0
    if args.command == "worker":
        worker(args)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
