"""Ahead-of-time compile check: does a config's train step fit a target topology, and how fast?

Lowers and compiles the real train step (``bbg_jax.aot.compile_train_step``) for a mesh of
compile-only devices, allocating nothing, and prints per-chip memory against the chip's HBM,
XLA's FLOPs against the analytic count, and the predicted step time (the maxtext approach).

    # A TPU topology (needs ``pip install libtpu``, no TPU): the chips of a v5p-128 slice.
    python -m bbg_jax.compile_check --config experiments/bigbigan_imagenet128.py \
        --topology v5p:4x4x4
    # No topology description available (GPU clusters, CI): N simulated CPU devices, with the
    # memory judged against a named chip's HBM and the time against its peak.
    python -m bbg_jax.compile_check --config experiments/table1.py:revnet_x4 \
        --devices 8 --chip h100
    # Config fields are overridden as for training: --config.<field>=<value>.
    python -m bbg_jax.compile_check --config experiments/bigbigan_imagenet128.py \
        --topology v5p:4x4x4 --config.data.batch_size=1024 --config.model.dtype=bfloat16

Other flags: --utilisation (assumed model-FLOPs utilisation, default 0.4), --hbm-gib (override
the chip's HBM), --json FILE (also write the report as JSON).
Exit status 0 when the step fits, 2 when it does not (with the reason), 1 on other errors (a bad
command line included).
CPU compiles are only a proxy for GPU memory: XLA:CPU schedules and fuses differently.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from bbg_jax import chips
from bbg_jax.configs import model_config

GIB = chips.GIB
DEFAULT_UTILISATION = 0.4  # assumed model-FLOPs utilisation for the "expected" time


DEFAULT_ATTENTION_IMPL = model_config().attention_impl


@dataclasses.dataclass
class Report:
    config: str
    target: str
    chip: str
    num_devices: int
    per_device_batch: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    total_bytes: int
    hbm_bytes: int
    fits: bool
    compiled_flops_step: float  # whole step, all devices
    analytic_flops_step: float
    step_s_at_peak: float
    utilisation: float
    step_s_at_utilisation: float
    num_steps: int
    hours_at_utilisation: float
    compile_s: float
    # The evaluation plan at the target (``python -m bbg_jax.evaluation.plan --compile_table``,
    # default hosts): the largest host RAM an evaluator needs, the share of wall time all take.
    eval_host_ram_bytes: float | None = None
    eval_wall_share: float | None = None
    # model.attention_impl of the compiled step; reports written before this field existed
    # were compiled with "dot_product", then the default.
    attention_impl: str = "dot_product"

    def table_row(self) -> str:
        """One row of docs/paper_configs.md's configuration table (markdown); a row compiled
        with another attention implementation than today's default says which."""
        evaluation = ("not planned" if self.eval_wall_share is None else
                      f"{self.eval_host_ram_bytes / 1e9:.0f} GB / {self.eval_wall_share:.1%}")
        config = f"`{self.config}`"
        if self.attention_impl != DEFAULT_ATTENTION_IMPL:
            config += f" ({self.attention_impl} attention)"
        return (f"| {config} | {self.target} ({self.num_devices} x {self.chip}) "
                f"| {self.total_bytes / GIB:.1f} / {self.hbm_bytes / GIB:.0f} GiB "
                f"| {self.compiled_flops_step / 1e15:.3f} / {self.analytic_flops_step / 1e15:.3f}"
                f" | {self.step_s_at_peak:.3f} / {self.step_s_at_utilisation:.3f} "
                f"| {self.hours_at_utilisation:.0f} | {evaluation} |")


TABLE_HEADER = (
    "| config | target | memory per chip (used / HBM) | PFLOP per step (compiled / analytic) "
    f"| step s (100% / {DEFAULT_UTILISATION:.0%}) | hours for num_steps "
    "| evaluation: host RAM / share of wall |\n"
    "|---|---|---|---|---|---|---|"
)


# The paper configurations of docs/paper_configs.md's table and the topology each is checked on.
# The base row of Table 1 is experiments/bigbigan_imagenet128.py itself, so table1.py:base is not
# repeated.
PAPER_TOPOLOGY = "v5p:2x4x4"  # a v5p-64 slice: 32 chips, 64 images each at batch 2048


def paper_rows(experiments_dir: str = "experiments") -> list[tuple[str, str]]:
    """(config spec, topology) for every paper configuration, in docs/paper_configs.md's order."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("table1", os.path.join(experiments_dir,
                                                                         "table1.py"))
    table1 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table1)
    e = experiments_dir
    rows = [(f"{e}/bigbigan_imagenet128.py", PAPER_TOPOLOGY),
            (f"{e}/final_resnet50.py", PAPER_TOPOLOGY),
            # 256 px E and RevNet-50 x4: the slice the released model's batch fits on.
            (f"{e}/final_revnet50x4.py", "v5p:4x4x4"),
            (f"{e}/biggan_imagenet128.py", PAPER_TOPOLOGY),
            (f"{e}/biggan_uncond_imagenet128.py", PAPER_TOPOLOGY)]
    # 256 px G: 136 GiB of temporaries per chip at 64 images per chip (XLA refused it on
    # v5p:2x4x4), so twice the chips.
    larger = {"high_res_g": "v5p:4x4x4"}
    rows += [(f"{e}/table1.py:{v}", larger.get(v, PAPER_TOPOLOGY))
             for v in table1.VARIANTS if v != "base"]
    return rows


def row_filename(config_spec: str, topology: str) -> str:
    """The JSON file name of one row: experiments/table1.py:revnet, v5p:2x4x4 ->
    table1.revnet.v5p_2x4x4.json."""
    name = os.path.basename(config_spec).replace(".py", "").replace(":", ".")
    return f"{name}.{topology.replace(':', '_')}.json"


def render_table(json_dir: str, experiments_dir: str = "experiments") -> str:
    """docs/paper_configs.md's markdown table from the compile check's JSON reports in
    ``json_dir``; rows not compiled yet say so rather than being left out."""
    lines = [TABLE_HEADER]
    for config_spec, topology in paper_rows(experiments_dir):
        path = os.path.join(json_dir, row_filename(config_spec, topology))
        if os.path.exists(path):
            with open(path) as f:
                lines.append(Report(**json.load(f)).table_row())
        else:
            lines.append(f"| `{config_spec}` | {topology} | not compiled yet | | | | |")
    return "\n".join(lines)


def analytic_step_flops(config: Any) -> float:
    """The analytic count of one train step (``bbg_jax.flops``: shapes of every convolution and
    matmul, backward = 2 x forward, D's input-only backward in the G/E update = 1 x forward)."""
    from bbg_jax.flops import train_step_flops

    return train_step_flops(config)


@dataclasses.dataclass(frozen=True)
class Args:
    """The parsed command line."""

    config_spec: str  # experiments/<file>.py[:variant], as given (the report's "config")
    config: Any  # its ConfigDict, --config.<field>=<value> overrides applied
    topology: str | None
    devices: int | None
    chip: str
    utilisation: float
    hbm_gib: float | None
    json: str | None


def _define_flags(fv: flags.FlagValues, argv: Sequence[str]) -> None:
    config_flags.DEFINE_config_file(
        "config", None, "Experiment config file, experiments/<file>.py[:variant]; override "
        "its fields with --config.<field>=<value>.", flag_values=fv, sys_argv=list(argv))
    flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:4x4x4, v4:4x4x8, v5e:8x8.",
                        flag_values=fv)
    flags.DEFINE_integer("devices", None, "N simulated CPU devices (XLA_FLAGS).", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_enum("chip", None, sorted(chips.BY_NAME), "Chip for HBM and peak (default: "
                      "from --topology; required with --devices).", flag_values=fv)
    flags.DEFINE_float("utilisation", DEFAULT_UTILISATION,
                       "Model-FLOPs utilisation for the expected step time.", flag_values=fv)
    flags.DEFINE_float("hbm-gib", None, "Override the chip's HBM (GiB per chip).",
                       flag_values=fv)
    flags.DEFINE_string("json", None, "Also write the report to this JSON file.",
                        flag_values=fv)
    flags.mark_flags_as_required(["config"], flag_values=fv)
    flags.mark_flags_as_mutual_exclusive(["topology", "devices"], required=True,
                                         flag_values=fv)


def parse(argv: Sequence[str], fv: flags.FlagValues | None = None) -> Args:
    """``argv`` (program name first) -> Args; a bad command line raises ``app.UsageError``
    (absl's flag errors included). ``fv`` None = fresh flags. Loads the config file but imports
    no jax."""
    fv = flags.FlagValues() if fv is None else fv
    _define_flags(fv, argv)
    try:
        rest = fv(list(argv))
    except flags.Error as e:
        raise app.UsageError(" ".join(str(e).split())) from None
    except (AttributeError, KeyError, OSError, TypeError, ValueError) as e:
        # ml_collections' own errors for a config file or an override it cannot apply.
        raise app.UsageError(f"command line: {type(e).__name__}: "
                             f"{' '.join(str(e).split())}") from None
    if len(rest) > 1:
        raise app.UsageError(f"{rest[1]!r}: unexpected argument (flags only)")
    spec = fv["config"].config_filename
    if not os.path.isfile(spec.split(":", 1)[0]):
        raise app.UsageError(f"--config={spec}: no experiment config file at "
                             f"{spec.split(':', 1)[0]!r}")
    devices, topology, chip = fv["devices"].value, fv["topology"].value, fv["chip"].value
    if devices is not None and not chip:
        raise app.UsageError("--devices needs --chip (whose HBM and peak the CPU compile is "
                             "judged against)")
    chip = chip or topology.split(":")[0]
    if chip not in chips.BY_NAME:
        raise app.UsageError(f"unknown chip {chip!r} (from --topology={topology}); known: "
                             f"{sorted(chips.BY_NAME)}")
    config = fv["config"].value
    # The check models an accelerator: simulated CPU devices stand in for GPUs, so compile
    # XLA's convolution gradients (what "auto" picks there), not the CPU-only einsum path --
    # unless the command line says otherwise.
    if "train.conv_weight_grad" not in config_flags.get_override_values(fv["config"]):
        config.train.conv_weight_grad = "xla"
    return Args(config_spec=spec, config=config, topology=topology, devices=devices, chip=chip,
                utilisation=fv["utilisation"].value, hbm_gib=fv["hbm-gib"].value,
                json=fv["json"].value)


def _set_platform(args: Args) -> None:
    """Must run before jax is imported: the device count is fixed when the backend starts."""
    if args.devices is not None:
        os.environ["JAX_PLATFORMS"] = "cpu"
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={args.devices}").strip()
    else:
        # Compile-only TPU devices come from libtpu; no TPU backend needs to start.
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        # Any other JAX process on this machine (a training run, a test) has loaded libtpu
        # too and holds its lockfile; a compile-only client may share it.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def target_devices(args: Args) -> list[Any]:
    import jax

    if args.devices is not None:
        return jax.devices()[: args.devices]
    from jax.experimental import topologies

    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name=args.topology)
    except Exception as e:  # noqa: BLE001 -- the message is the useful part
        raise SystemExit(
            f"Could not describe TPU topology {args.topology!r}: {e}\n"
            "Install the TPU compiler (pip install 'libtpu==<version jax pins>', see "
            "pyproject's tpu extra) and check the name (e.g. v5p:4x4x4, v4:2x2x2). A "
            "libtpu lockfile error means another process loaded libtpu without "
            "ALLOW_MULTIPLE_LIBTPU_LOAD=1: stop it or set the variable.") from e
    return list(topo.devices)


def check(args: Args) -> Report:
    from bbg_jax.aot import compile_train_step
    from bbg_jax.sharding import make_mesh

    config = args.config
    devices = target_devices(args)
    n = len(devices)
    mesh = make_mesh(devices)  # the mesh training builds, over the target's devices
    t0 = time.time()
    compiled = compile_train_step(config, mesh)
    compile_s = time.time() - t0

    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    # The SPMD-partitioned module is one device's program: its FLOPs are per device.
    flops_device = float(cost.get("flops", 0.0))
    hbm, peak = chips.BY_NAME[args.chip].hbm_bytes, chips.BY_NAME[args.chip].bf16_flops
    hbm = int(args.hbm_gib * GIB) if args.hbm_gib else hbm
    # Donated arguments alias outputs, so only outputs beyond the aliases take new memory.
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
             + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
    at_peak = flops_device / peak
    at_util = at_peak / args.utilisation
    steps = int(config.train.num_steps)
    return Report(
        config=args.config_spec, target=args.topology or f"cpu x{n}", chip=args.chip,
        num_devices=n, per_device_batch=config.data.batch_size // n,
        argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
        alias_bytes=mem.alias_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
        code_bytes=mem.generated_code_size_in_bytes, total_bytes=total, hbm_bytes=hbm,
        fits=total <= hbm, compiled_flops_step=flops_device * n,
        analytic_flops_step=analytic_step_flops(config), step_s_at_peak=at_peak,
        utilisation=args.utilisation, step_s_at_utilisation=at_util, num_steps=steps,
        hours_at_utilisation=at_util * steps / 3600, compile_s=compile_s,
        attention_impl=config.model.get("attention_impl", "einsum"))


def format_report(r: Report) -> str:
    g = lambda b: f"{b / GIB:8.2f} GiB"  # noqa: E731
    lines = [
        f"config       {r.config}",
        f"target       {r.target}: {r.num_devices} devices ({r.chip}), "
        f"{r.per_device_batch} images per device, compiled in {r.compile_s:.0f} s",
        "memory per chip:",
        f"  arguments    {g(r.argument_bytes)}  (train state, replicated, + batch shard)",
        f"  outputs      {g(r.output_bytes - r.alias_bytes)}  (beyond the donated arguments)",
        f"  temporaries  {g(r.temp_bytes)}",
        f"  code         {g(r.code_bytes)}",
        f"  total        {g(r.total_bytes)}  of {g(r.hbm_bytes)} HBM "
        f"({r.total_bytes / r.hbm_bytes:.0%})",
        f"FLOPs per step: compiled {r.compiled_flops_step / 1e15:.3f} PFLOP "
        f"(XLA cost analysis x {r.num_devices} devices), analytic "
        f"{r.analytic_flops_step / 1e15:.3f} PFLOP (ratio "
        f"{r.compiled_flops_step / max(r.analytic_flops_step, 1):.2f})",
        f"step time:    {r.step_s_at_peak:.3f} s at 100% of "
        f"{chips.BY_NAME[r.chip].bf16_flops / 1e12:.0f} "
        f"TFLOP/s per chip, {r.step_s_at_utilisation:.3f} s at {r.utilisation:.0%}; "
        f"{r.num_steps} steps = {r.hours_at_utilisation:.1f} h at {r.utilisation:.0%}",
        "README row:",
        r.table_row(),
    ]
    return "\n".join(lines)


FIT_ADVICE = ("Use more chips (a larger topology, smaller per-device batch), "
              "model.dtype=bfloat16, or a smaller data.batch_size.")


def run(args: Args) -> int:
    """The check of a parsed command line: prints the report; 0 fits, 2 does not fit."""
    _set_platform(args)
    try:
        report = check(args)
    except RuntimeError as e:  # jax's JaxRuntimeError; only the out-of-memory refusal is ours
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        # XLA's TPU compiler refuses a program whose temporaries exceed HBM, so there is no
        # memory analysis to report: say so, with XLA's figure and the fix.
        print(f"DOES NOT FIT: {args.config_spec} on {args.topology or 'this mesh'}: XLA refused "
              f"to compile it ({str(e).splitlines()[0]}). {FIT_ADVICE}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dataclasses.asdict(report), f, indent=1)
    if not report.fits:
        print(f"DOES NOT FIT: the step needs {report.total_bytes / GIB:.1f} GiB per chip but a "
              f"{report.chip} has {report.hbm_bytes / GIB:.0f} GiB. {FIT_ADVICE}", file=sys.stderr)
        return 2
    return 0


_PROG = "bbg_jax.compile_check"


def main(argv: Sequence[str]) -> int:
    """``python -m bbg_jax.compile_check ARGS`` in this process with fresh flags (for tests and
    tools); ``argv`` without the program name. A bad command line: one line on stderr, 1."""
    try:
        args = parse([_PROG, *argv])
    except app.UsageError as e:
        print(f"{_PROG}: {e}", file=sys.stderr)
        return 1
    return run(args)


def _parse_for_app(argv: list[str]) -> Args:
    """app.run's flags_parser: our flags on absl's FLAGS (so --helpfull works), a bad command
    line one line on stderr and exit status 1 (2 means "does not fit")."""
    try:
        return parse(argv, flags.FLAGS)
    except app.UsageError as e:
        sys.exit(f"{_PROG}: {e}")


if __name__ == "__main__":
    app.run(run, flags_parser=_parse_for_app)
