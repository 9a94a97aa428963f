"""Entry point: ``python -m bbg_jax.main --config=experiments/<name>.py --workdir=DIR``.

``--mode=eval --workdir=DIR [--step=N]`` evaluates a checkpoint instead.

The terminal shows the run's stages, a progress bar with one-line summaries and warnings; the
INFO logs go to WORKDIR/log.txt, and ``-v`` (or ``BBG_VERBOSE=1``) shows them too
(``bbg_jax.console``).

Overrides: ``--config.train.num_steps=100`` and the like. Everything else lives in the library.

A bad command line, config or workdir stops the run before anything is created, written or
compiled, with one line on stderr, ``bbg_jax.main: <field>=<value>: allowed ...``, and exit
status 1 (``bbg_jax.config_checks``; docs/configuration_errors.md lists examples). Then every
process creates (if missing) and writes its workdir once, local or ``gs://``, and stops in one
line naming the path and the reason when it cannot (``paths.check_workdir_usable``), before
joining the other processes, reading data or compiling.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from collections.abc import Sequence
from typing import Any

from absl import app, flags
from ml_collections import ConfigDict, config_flags

from bbg_jax import config_checks, console, paths, sharding
from bbg_jax.config_checks import ConfigError
from bbg_jax.evaluation import plan as eval_plan

_OUR_FLAGS = ("--config", "--workdir", "--mode", "--step", "-v/--verbose")
_VERBOSE_ARGS = ("-v", "--verbose")


@dataclasses.dataclass(frozen=True)
class Args:
    """The parsed command line."""

    config: ConfigDict | None
    workdir: str
    mode: str
    step: int | None


def _define_flags(fv: flags.FlagValues, argv: Sequence[str]) -> None:
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", flag_values=fv,
                                    sys_argv=list(argv))
    flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.", flag_values=fv)
    flags.DEFINE_enum("mode", "train", ["train", "eval"],
                      "train: train (resuming from the workdir); eval: evaluate a checkpoint "
                      "and write WORKDIR/eval/step_N/report.json.", flag_values=fv)
    flags.DEFINE_integer("step", None, "--mode=eval: the checkpoint step (default: latest).",
                         flag_values=fv)


# --- the command line, checked before absl and ml_collections see it -------------------------

_CONFIG_ARG = re.compile(r"^--?config(?:=(.*))?$", re.S)
_OVERRIDE_ARG = re.compile(r"^--?(?:no)?config\.([^=]+)(?:=(.*))?$", re.S)


def _scan(argv: Sequence[str]) -> tuple[str | None, list[tuple[str, Any]]]:
    """The --config spec and the --config.PATH[=VALUE] overrides, as ml_collections finds them."""
    spec, overrides = None, []
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if m := _CONFIG_ARG.match(arg):
            spec = m.group(1) if m.group(1) is not None else (
                args[i + 1] if i + 1 < len(args) else "")
        elif m := _OVERRIDE_ARG.match(arg):
            overrides.append((m.group(1), config_checks.MISSING if m.group(2) is None
                              else m.group(2)))
    return spec, overrides


_ALLOWED_TYPES = {"int": "an integer", "float": "a number", "bool": "true or false",
                  "string": "a string", "str": "a string", "tuple": "a tuple, e.g. '(1, 2)'"}


def _flag_error(e: flags.Error, fv: flags.FlagValues) -> ConfigError:
    """absl's and ml_collections' parse errors as one line naming the flag and what it takes."""
    text = " ".join(str(e).split())
    if isinstance(e, flags.UnrecognizedFlagError):
        close = difflib.get_close_matches(f"--{e.flagname}", _OUR_FLAGS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return ConfigError(f"--{e.flagname}: unknown flag; allowed {', '.join(_OUR_FLAGS)} and "
                           f"--config.<field>=<value>{hint}")
    m = re.match(r"^flag --([^=]+)=(.*?): (.*)$", text)
    if isinstance(e, flags.IllegalFlagValueError) and m:
        name, value, why = m.groups()
        if value == "None" and "must have a value" in why:
            return ConfigError(f"--{name} is missing: allowed a directory for checkpoints and "
                               f"logs, e.g. --{name}=/tmp/run")
        parser = fv[name].parser if name in fv else None
        if isinstance(parser, flags.EnumParser):
            allowed = ", ".join(repr(v) for v in parser.enum_values)
        else:
            kind = parser.flag_type() if parser is not None else ""
            allowed = _ALLOWED_TYPES.get(kind, f"a value of type {kind}" if kind else "a value")
            if kind != "bool":  # absl's reason for a bool is a tuple's repr: noise
                allowed += f" ({why})"
        return ConfigError(f"--{name}={value!r}: allowed {allowed}")
    return ConfigError(text)


def parse(argv: Sequence[str], fv: flags.FlagValues | None = None) -> Args:
    """``argv`` (program name first) -> Args, or ConfigError; ``fv`` None = fresh flags."""
    fv = flags.FlagValues() if fv is None else fv
    if any(a in _VERBOSE_ARGS for a in argv[1:]):
        console.set_verbose(True)
        argv = [argv[0]] + [a for a in argv[1:] if a not in _VERBOSE_ARGS]
    spec, overrides = _scan(argv)
    preloaded = None
    if spec is not None:
        preloaded = config_checks.load_experiment(spec)
        for path, value in overrides:
            config_checks.check_override(preloaded, path, value)
    elif overrides:
        path, value = overrides[0]
        shown = "" if value is config_checks.MISSING else f"={value!r}"
        raise ConfigError(f"--config.{path}{shown}: allowed only after --config=FILE (an "
                          "override changes that file's config)")
    _define_flags(fv, argv)
    try:
        rest = fv(list(argv))
    except flags.Error as e:
        raise _flag_error(e, fv) from None
    except (AttributeError, KeyError, OSError, TypeError, ValueError) as e:
        # ml_collections' own errors for an override it cannot apply.
        raise ConfigError(f"command line: {type(e).__name__}: {' '.join(str(e).split())}"
                          ) from None
    if len(rest) > 1:
        raise ConfigError(f"{rest[1]!r}: unexpected argument; allowed flags only: "
                          f"{', '.join(_OUR_FLAGS)}, --config.<field>=<value>")
    if fv["workdir"].value is None:
        raise ConfigError("--workdir is missing: allowed a directory for checkpoints and logs, "
                          "e.g. --workdir=/tmp/run")
    step = fv["step"].value
    if step is not None and step < 0:
        raise config_checks.config_error("--step", step, "an integer >= 0")
    return Args(config=fv["config"].value, workdir=fv["workdir"].value, mode=fv["mode"].value,
                step=step)


# --- from the parsed command line to a run -----------------------------------------------------

def prepare(args: Args) -> ConfigDict:
    """Every check that needs no devices; returns the config to run.

    Reads only, except one check: the workdir is created if missing and a small file is
    written there and deleted (``paths.check_workdir_usable``), so that a workdir the
    run cannot create, reach or write stops every process in one line before anything else.
    An object-store workdir is checked first (the other workdir checks read it); a local one
    last, after the checks that name its contents."""
    remote = paths.is_remote(args.workdir)
    if args.mode == "train":
        if args.config is None:
            raise ConfigError("--config is missing: allowed an experiment file with "
                              "--mode=train, e.g. --config=experiments/smoke.py")
        config_checks.check(args.config, "train")
        if remote:
            paths.check_workdir_usable(args.workdir)
        config_checks.check_workdir(args.workdir, "train", args.step, args.config)
        if not remote:
            paths.check_workdir_usable(args.workdir)
        return args.config
    if remote:
        paths.check_workdir_usable(args.workdir)
    config_checks.check_workdir(args.workdir, "eval", args.step, args.config)
    # Without --config, the config the run saved in WORKDIR/config.json is used.
    config = args.config if args.config is not None else config_checks.saved_config(args.workdir)
    config_checks.check(config, "eval")
    if not remote:
        paths.check_workdir_usable(args.workdir)
    return config


def _train(config: ConfigDict, workdir: str) -> None:
    from bbg_jax import checkpoint, loop  # TensorFlow (clu) comes with the loop: after the checks

    try:
        loop.train_and_evaluate(config, workdir)
    except (loop.NonFiniteLossError, checkpoint.CheckpointMismatchError,
            checkpoint.CheckpointDamagedError) as e:
        _stop(e)  # the run's own verdict on its data, named in one line: no traceback


def _evaluate(config: ConfigDict, workdir: str, step: int | None) -> None:
    from bbg_jax.evaluation import standalone

    standalone.evaluate_checkpoint(config, workdir, step)


def _stop(error: Exception) -> None:
    sys.exit(f"bbg_jax.main: {' '.join(str(error).split())}")  # one line, no traceback


def execute(args: Args, own_process: bool = False) -> None:
    """Checks (exiting with one line on a bad config, workdir or launch environment), then
    trains or evaluates. ``own_process``: the command is this process (``python -m``), so
    native libraries' logs can be sent to the run's log file too (``console.RunLog``)."""
    if own_process:
        console.quiet_terminal()  # before anything imports TensorFlow
    try:
        config = prepare(args)
        sharding.maybe_initialize_distributed()
        if args.mode == "train":
            config_checks.check_devices(config)
        eval_plan.check_host_ram(config, scheduled_only=args.mode == "train")
    except (ConfigError, paths.WorkdirError, sharding.DistributedConfigError) as e:
        _stop(e)
    import jax

    run_log = console.RunLog(args.workdir, jax.process_index(), native_to_log=own_process)
    try:
        if jax.process_index() == 0:
            console.say(f"bbg_jax.main: {args.mode} in {args.workdir}; log: {run_log.path}")
        if args.mode == "train":
            _train(config, args.workdir)
        else:
            _evaluate(config, args.workdir, args.step)
    finally:
        run_log.close()


def run(argv: Sequence[str]) -> None:
    """``python -m bbg_jax.main ARGS`` in this process (fresh flags; for tests and tools)."""
    try:
        args = parse(argv)
    except ConfigError as e:
        _stop(e)
    execute(args)


def _parse_for_app(argv: list[str]) -> Args:
    """app.run's flags_parser: our flags on absl's FLAGS (so --helpfull and the logging flags
    work), every error one line."""
    try:
        return parse(argv, flags.FLAGS)
    except ConfigError as e:
        _stop(e)


if __name__ == "__main__":
    app.run(lambda args: execute(args, own_process=True), flags_parser=_parse_for_app)
