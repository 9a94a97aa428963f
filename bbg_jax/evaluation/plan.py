"""What each evaluator of a config costs a host, worked out before a run from shapes alone.

    python -m bbg_jax.evaluation.plan --config=experiments/final_revnet50x4.py --hosts=16

prints, for each evaluator of ``eval.evaluators`` on ``--target`` (default: the topology of the
config's row in docs/paper_configs.md): peak host RAM, device memory per chip, bytes read per
host, estimated seconds per evaluation (the first one, which also fits the cached judges and
reference statistics, apart), and the share of wall time at the config's schedule. Nothing is
compiled or run: feature widths come from ``jax.eval_shape``, FLOPs from the jaxpr
(``bbg_jax.flops``), the train step's time from the compile table (docs/compile_table/).

The RAM figures are what the evaluators hold in numpy (features, pixels, labels) at their peak;
the process's own baseline (JAX, the train state, tf.data buffers) comes on top. A run checks the
plan's largest figure against its host's RAM before it compiles (``check_host_ram``).

Assumptions (flags), not measurements: ``--read_gb_per_s`` (a host reading the bucket),
``--decode_per_s`` (examples a host decodes and resizes per second), ``--mfu`` (the fraction of
the chips' peak the evaluation's matmuls reach), ``--call_s`` (a jitted call whose result comes
back to the host: evaluation calls are ``eval.batch_size`` examples each, so their number, not
their FLOPs, dominates on a large slice).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import ml_collections

from bbg_jax import chips
from bbg_jax.configs import ConfigError
from bbg_jax.evaluation.config import pixels_max_train
from bbg_jax.evaluation.settings import eval_section

# Examples per TFDS split, and the mean stored size of one (ImageNet: 147 GB of JPEGs / 1.33M).
SPLIT_EXAMPLES = {
    "imagenet2012": {"train": 1_281_167, "validation": 50_000},
    "fashion_mnist": {"train": 60_000, "test": 10_000},
    "mnist": {"train": 60_000, "test": 10_000},
    "cifar10": {"train": 50_000, "test": 10_000},
}
STORED_BYTES = {"imagenet2012": 110_000, "fashion_mnist": 300, "mnist": 300, "cifar10": 3_100,
                "synthetic": 0}
NUM_CLASSES = {"imagenet2012": 1000}  # 10 for the others
# Inception-v3 at 299 px: 5.7 G multiply-adds per image (Szegedy et al., 2016).
INCEPTION_FLOPS = 2 * 5.7e9
# One step of the data-parallel probe gathers its minibatch (a sum-scatter over the devices);
# the gradient's sum is a second collective. Each of them, on a TPU slice's interconnect:
COLLECTIVE_S = 30e-6
F32 = 4


@dataclasses.dataclass
class Machine:
    chip: chips.Chip
    chips: int
    hosts: int
    read_gb_per_s: float = 1.0
    decode_per_s: float = 10_000.0
    mfu: float = 0.4
    call_s: float = 0.005  # a jitted call whose result comes back to the host
    device_memory_is_host_ram: bool = False  # CPU "devices": their arrays are host RAM

    def compute_s(self, flops: float, devices: int | None = None) -> float:
        return flops / ((devices or self.chips) * self.chip.bf16_flops * self.mfu)

    def read_s(self, examples: float, stored_bytes: float) -> float:
        """One host reading and decoding ``examples``: the slower of the two."""
        return max(examples * stored_bytes / (self.read_gb_per_s * 1e9),
                   examples / self.decode_per_s)


@dataclasses.dataclass
class Cost:
    name: str
    every_steps: int
    host_ram: float         # bytes per host at the evaluator's peak
    device: float           # bytes per chip
    read: float             # bytes read per host per evaluation
    seconds: float          # per evaluation
    first_extra_s: float = 0.0  # the first evaluation only (cached judges, reference stats)


class UnknownSizeError(ValueError):
    """A split whose size the plan does not know (percent slices, an unlisted split)."""


def split_examples(config: ml_collections.ConfigDict, which: str) -> int:
    """Examples of "train" (the training split), "trainval" or "eval" of ``config.data``."""
    d = config.data
    if d.dataset == "synthetic":
        return 4 * eval_section(config).batch_size  # evaluators.DatasetBatches' synthetic split
    if which == "trainval":
        return d.train_val_size
    split = d.train_split if which == "train" else d.eval_split
    m = re.fullmatch(r"([\w-]+)(?:\[(\d*):(\d*)\])?", split)
    if m is None or m[1] not in SPLIT_EXAMPLES.get(d.dataset, {}):
        field = "train_split" if which == "train" else "eval_split"
        raise UnknownSizeError(f"data.{field}={split!r}: the plan knows the splits "
                               f"{sorted(SPLIT_EXAMPLES.get(d.dataset, {}))} of "
                               f"{d.dataset!r}, sliced by example counts.")
    total = SPLIT_EXAMPLES[d.dataset][m[1]]
    n = min(int(m[3] or total), total) - int(m[2] or 0)
    return n - d.train_val_size if which == "train" else n


def _limit(n: int, bound: int | None) -> int:
    return n if bound is None else min(n, bound)


def probe_widths(config) -> dict[str, int]:
    """E's probe feature widths ({} without E), from shapes alone."""
    from bbg_jax.evaluation.probe import feature_fn
    from bbg_jax.models import build_models, init_variables

    models = build_models(config)
    if "E" not in models:
        return {}
    variables = jax.eval_shape(lambda: init_variables(config, jax.random.key(0), 1))["E"]
    r, c = config.data.resolution_e, config.data.channels
    out = jax.eval_shape(feature_fn(models["E"]), variables,
                         jax.ShapeDtypeStruct((1, r, r, c), jnp.float32))
    return {k: int(v.shape[-1]) for k, v in out.items()}


def evaluator_costs(config: ml_collections.ConfigDict, machine: Machine,
                    with_time: bool = True, sizes: dict[str, int] | None = None) -> list[Cost]:
    """The cost of every evaluator of ``eval.evaluators`` on ``machine`` (``with_time`` False:
    memory and bytes only, no FLOPs traced; the seconds are then 0). ``sizes``: examples of
    "train", "trainval", "eval" where they are not the config's dataset's."""
    from bbg_jax.flops import network_forward_flops

    ev, d = eval_section(config), config.data
    widths = probe_widths(config) if {"probe", "diagnostics"} & set(ev.evaluators) else {}
    fwd = (network_forward_flops(config, 1) if with_time
           else collections.defaultdict(float))
    stored = STORED_BYTES.get(d.dataset, 0)
    classes = NUM_CLASSES.get(d.dataset, 10)
    n_l2, pr = len(ev.probe.l2_grid), ev.probe
    image_e = d.resolution_e ** 2 * d.channels
    standing_calls = ev.standing_batches if ev.bn_stats == "standing" else 0
    standing = standing_calls * ev.batch_size * fwd["G"]
    n = sizes or {w: split_examples(config, w) for w in ("train", "trainval", "eval")}
    costs = []
    for name in ev.evaluators:
        every = ev[name].every_steps
        if name == "probe" and widths:
            rows = _limit(n["train"], pr.max_train) + n["trainval"] + n["eval"]
            dmax = max(widths.values())
            features = rows / machine.hosts * (sum(widths.values()) + 1) * F32
            # One feature's rows of every split on the devices, the training rows twice (the
            # peak measured while the epochs run holds a second copy: tests/evaluation/
            # test_plan.py), and the classifiers with their gradient and Adam's two moments.
            train_rows = _limit(n["train"], pr.max_train)
            device = ((rows + train_rows) / machine.chips * (dmax + 2) * F32
                      + 4 * n_l2 * dmax * classes * F32)
            if machine.device_memory_is_host_ram:
                features += device * machine.chips / machine.hosts
            train_flops = (pr.epochs * train_rows * n_l2
                           * sum(6 * w * classes for w in widths.values()))
            probe_steps = pr.epochs * (train_rows // pr.batch_size)
            seconds = (machine.read_s(rows / machine.hosts, stored)
                       + machine.compute_s(rows * fwd["E"] + train_flops)
                       + rows / machine.hosts / ev.batch_size * machine.call_s
                       + probe_steps * len(widths) * 2 * COLLECTIVE_S)
            costs.append(Cost(name, every, features, device, rows / machine.hosts * stored,
                              seconds))
        elif name == "diagnostics" and widths:
            dg = ev.diagnostics
            judge_rows = _limit(n["train"], pixels_max_train(ev)) + n["trainval"]
            pixel_ram = judge_rows * (image_e + 1) * F32
            judge_flops = pr.epochs * (judge_rows - n["trainval"]) * n_l2 * 6 * image_e * classes
            per_eval = (dg.num_samples * (fwd["G"] + fwd["E"] + 2 * fwd["D"])
                        + dg.num_images * (2 * fwd["E"] + fwd["G"]) + 2 * standing)
            calls = 3 * (dg.num_samples + dg.num_images) / ev.batch_size + 2 * standing_calls
            costs.append(Cost(
                name, every, max(pixel_ram, dg.num_images * image_e * 3 * F32),
                4 * n_l2 * image_e * classes * F32, dg.num_images * stored,
                machine.read_s(dg.num_images, stored) + machine.compute_s(per_eval)
                + calls * machine.call_s,
                machine.read_s(judge_rows, stored) + machine.compute_s(judge_flops, 1)))
        elif name == "fid":
            fid = ev.fid
            feats = fid.num_samples * 2048 * F32 * (2 if fid.inception_logits_head else 1)
            per_eval = fid.num_samples * (fwd["G"] + INCEPTION_FLOPS) + standing
            first = len(fid.splits) * (machine.read_s(fid.num_samples, stored)
                                       + machine.compute_s(fid.num_samples * INCEPTION_FLOPS))
            calls = 2 * fid.num_samples / ev.batch_size + standing_calls
            costs.append(Cost(name, every, feats + 2 * 2048 ** 2 * 8, 0.0, 0.0,
                              machine.compute_s(per_eval) + calls * machine.call_s, first))
        elif name == "samples":
            sheet = ev.samples.sheet_size
            costs.append(Cost(name, every, 3 * sheet * d.resolution_d ** 2 * d.channels * F32,
                              0.0, sheet * stored, machine.compute_s(
                                  standing + sheet * (2 * fwd["G"] + fwd.get("E", 0.0)))
                              + (standing_calls + 4) * machine.call_s))
    return costs


def step_seconds(config, machine: Machine, config_spec: str | None, target: str | None,
                 compile_table_dir: str = "docs/compile_table") -> tuple[float, str]:
    """One train step's seconds at ``machine.mfu``: the compile table's figure when the config
    and target have a row, else the analytic FLOPs (``bbg_jax.flops``) over the chips' peak."""
    if config_spec and target:
        from bbg_jax.compile_check import row_filename

        path = os.path.join(compile_table_dir, row_filename(config_spec, target))
        if os.path.exists(path):
            with open(path) as f:
                row = json.load(f)
            return row["step_s_at_peak"] / machine.mfu, f"compile table ({path})"
    from bbg_jax.flops import train_step_flops

    return machine.compute_s(train_step_flops(config)), "analytic FLOPs"


def wall_share(costs: list[Cost], step_s: float) -> float:
    """The share of wall time evaluation takes at the schedule (steady state)."""
    per_step = sum(c.seconds / c.every_steps for c in costs if c.every_steps)
    return per_step / (step_s + per_step)


def host_ram_needed(costs: list[Cost]) -> float:
    """Evaluators run one after another and free their arrays: the largest one's peak."""
    return max((c.host_ram for c in costs), default=0.0)


class PlanError(ConfigError):
    """The evaluation plan does not fit this host (a config error: the run stops in one line)."""


def check_host_ram(config: ml_collections.ConfigDict, host_ram_bytes: float | None = None,
                   scheduled_only: bool = True) -> None:
    """Stops a run whose evaluators need more host RAM than this host has (one line), before
    anything compiles: the first evaluation would otherwise kill the run hours in.
    ``scheduled_only``: training runs only the evaluators with ``every_steps``; evaluation
    mode runs them all."""
    if host_ram_bytes is None:
        host_ram_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    device = jax.devices()[0]
    # Only RAM is checked here: any chip's peak will do where jax does not know this one.
    chip = chips.from_device_kind(device.device_kind) or chips.CHIPS[0]
    machine = Machine(chip, jax.device_count(), jax.process_count(),
                      device_memory_is_host_ram=device.platform == "cpu")
    try:
        costs = [c for c in evaluator_costs(config, machine, with_time=False)
                 if c.every_steps or not scheduled_only]
    except UnknownSizeError:
        return  # nothing to check against: the run goes on (the plan's CLI names the split)
    if not costs:
        return
    worst = max(costs, key=lambda c: c.host_ram)
    if worst.host_ram > host_ram_bytes:
        raise PlanError(
            f"eval.evaluators: {worst.name!r} needs {worst.host_ram / 1e9:.1f} GB of host RAM "
            f"on each of {machine.hosts} host(s) (python -m bbg_jax.evaluation.plan); this host "
            f"has {host_ram_bytes / 1e9:.1f} GB. Run on more hosts, or bound it "
            f"(eval.probe.max_train, eval.pixels_max_train).")


def format_plan(config_spec: str, target: str, machine: Machine, costs: list[Cost],
                step_s: float, step_source: str) -> str:
    lines = [
        f"{config_spec} on {target}: {machine.chips} x {machine.chip.name}, {machine.hosts} "
        f"hosts; train step {step_s:.3f} s at {machine.mfu:.0%} of peak ({step_source})",
        "| evaluator | every | host RAM | device / chip | read / host | s per eval (first +) "
        "| share of wall |",
        "|---|---|---|---|---|---|---|"]
    for c in costs:
        share = (c.seconds / c.every_steps) / (step_s + c.seconds / c.every_steps) \
            if c.every_steps else 0.0
        lines.append(
            f"| {c.name} | {c.every_steps or 'eval mode'} | {c.host_ram / 1e9:.1f} GB "
            f"| {c.device / 1e9:.2f} GB | {c.read / 1e9:.1f} GB "
            f"| {c.seconds:.0f} (+{c.first_extra_s:.0f}) | {share:.1%} |")
    lines.append(f"all evaluators: {wall_share(costs, step_s):.1%} of wall time; largest host "
                 f"RAM {host_ram_needed(costs) / 1e9:.1f} GB")
    return "\n".join(lines)


def machine_for(target: str, hosts: int | None, **assumptions) -> Machine:
    """``v5p:4x4x4`` -> 64 v5p chips (4 per host unless ``hosts``); ``h100:32`` -> 32 H100s
    (8 per host unless ``hosts``)."""
    name, _, shape = target.partition(":")
    if name not in chips.BY_NAME or not re.fullmatch(r"\d+(x\d+)*", shape):
        raise ValueError(f"--target={target!r}: a chip of {sorted(chips.BY_NAME)} and its "
                         f"count or topology, e.g. v5p:4x4x4 or h100:32.")
    chip = chips.BY_NAME[name]
    count = math.prod(int(s) for s in shape.split("x"))
    per_host = 4 if name.startswith("v") else 8
    return Machine(chip, count, hosts or max(1, count // per_host), **assumptions)


def default_target(config_spec: str) -> str | None:
    """The topology of the config's row in docs/paper_configs.md, if it has one."""
    from bbg_jax.compile_check import paper_rows

    wanted = os.path.normpath(config_spec)
    return next((t for spec, t in paper_rows() if os.path.normpath(spec) == wanted), None)


def report_fields(config, config_spec: str, topology: str, json_dir: str) -> dict[str, float]:
    """A compile-table report's evaluation fields: the largest host RAM and the wall share."""
    machine = machine_for(topology, None)
    costs = evaluator_costs(config, machine)
    step_s, _ = step_seconds(config, machine, config_spec, topology, json_dir)
    return {"eval_host_ram_bytes": host_ram_needed(costs),
            "eval_wall_share": wall_share(costs, step_s)}


def fill_compile_table(json_dir: str) -> list[str]:
    """Adds the evaluation plan's fields to every paper row's report in ``json_dir`` that lacks
    them (the ``evaluation`` column of docs/paper_configs.md); returns the rows updated."""
    from bbg_jax import compile_check
    from bbg_jax.configs import load_experiment

    done = []
    for spec, topology in compile_check.paper_rows():
        path = os.path.join(json_dir, compile_check.row_filename(spec, topology))
        if not os.path.exists(path):
            continue
        with open(path) as f:
            row = json.load(f)
        if row.get("eval_wall_share") is not None:
            continue  # planned already (delete the fields to plan again)
        row.update(report_fields(load_experiment(spec), spec, topology, json_dir))
        with open(path, "w") as f:
            json.dump(row, f, indent=1)  # as compile_check writes it
        done.append(spec)
    return done


def main(argv: list[str]) -> int:
    """``python -m bbg_jax.evaluation.plan ARGS``; a bad command line: one line, exit 1."""
    import sys

    from absl import flags
    from ml_collections import config_flags

    if len(argv) == 2 and argv[1].startswith("--compile_table="):
        for spec in fill_compile_table(argv[1].split("=", 1)[1]):
            print(f"planned {spec}")
        return 0
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "experiments/<file>.py[:variant]; "
                                    "--config.<field>=<value> overrides.", flag_values=fv,
                                    sys_argv=argv)
    flags.DEFINE_string("target", None, "Chip and topology or count: v5p:4x4x4, h100:32 "
                        "(default: the config's row in docs/paper_configs.md).", flag_values=fv)
    flags.DEFINE_integer("hosts", None, "Hosts (processes); default 4 chips per TPU host, 8 "
                         "GPUs per node.", lower_bound=1, flag_values=fv)
    flags.DEFINE_float("host_ram_gb", 448.0, "RAM of one host (a v5p host: 448 GB).",
                       flag_values=fv)
    flags.DEFINE_float("read_gb_per_s", 1.0, "Assumed: GB/s a host reads from the bucket.",
                       flag_values=fv)
    flags.DEFINE_float("decode_per_s", 10_000.0, "Assumed: examples a host decodes and "
                       "resizes per second.", flag_values=fv)
    flags.DEFINE_float("mfu", 0.4, "Fraction of the chips' peak reached.", flag_values=fv)
    flags.DEFINE_float("call_s", 0.005, "Assumed: seconds per jitted call that returns its "
                       "result to the host.", flag_values=fv)
    prog = "python -m bbg_jax.evaluation.plan"
    try:
        fv(argv)
        if fv["config"].value is None:
            raise ValueError("--config is required")
        spec = fv["config"].config_filename
        target = fv["target"].value or default_target(spec.split(":")[0])
        if target is None:
            raise ValueError(f"--target: {spec} has no row in docs/paper_configs.md; give one, "
                             f"e.g. --target=v5p:2x4x4")
        machine = machine_for(target, fv["hosts"].value, read_gb_per_s=fv["read_gb_per_s"].value,
                              decode_per_s=fv["decode_per_s"].value, mfu=fv["mfu"].value,
                              call_s=fv["call_s"].value)
        config = fv["config"].value
        costs = evaluator_costs(config, machine)
    except (flags.Error, ValueError, KeyError, AttributeError, OSError) as e:
        print(f"{prog}: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    step_s, source = step_seconds(config, machine, spec, target)
    print(format_plan(spec, target, machine, costs, step_s, source))
    ram = fv["host_ram_gb"].value * 1e9
    over = [c.name for c in costs if c.host_ram > ram]
    print(f"fits a {ram / 1e9:.0f} GB host: " + ("yes" if not over else f"no ({', '.join(over)})"))
    return 0 if not over else 2


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv))
