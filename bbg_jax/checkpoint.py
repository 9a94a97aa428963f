"""Checkpoints: the whole train state, the config (JSON) and the data position, via orbax.

Resume precedence (as maxtext documents it):
  1. the latest complete checkpoint in ``<workdir>/checkpoints`` (a preempted or killed run
     continues bit-exactly from it);
  2. otherwise ``config.train.init_from``: the parameters (and EMA, model state) of another run's
     latest checkpoint start a fresh run at step 0 with fresh optimizer state;
  3. otherwise a fresh initialisation.
A workdir checkpoint written with a different model config is refused, naming the differing keys.
Orbax writes each step to a temporary directory and renames it when complete, so a process killed
mid-save leaves the previous checkpoint as the latest one. A step whose files are damaged
(truncated, metadata missing) is skipped for the newest one that restores, and moved aside to
``<workdir>/checkpoints_damaged/`` (``restore_latest``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from bbg_jax import paths
from bbg_jax.train_state import TrainState

_STATE, _CONFIG, _DATA = "state", "config", "data"

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the current configuration."""


def checkpoint_dir(workdir: paths.PathLike) -> epath.Path:
    return paths.path(workdir) / "checkpoints"


def make_manager(workdir: paths.PathLike, config: ml_collections.ConfigDict
                 ) -> ocp.CheckpointManager:
    """Keeps the last ``train.keep_last`` checkpoints plus every ``train.keep_every``-th step.

    ``train.async_checkpointing``: saves return once the state is copied off the devices and
    the files are written in the background; the loop waits for them before an evaluation
    reads the checkpoint, at preemption and at exit (``manager.wait_until_finished``).
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.train.keep_last,
        keep_period=config.train.keep_every or None,
        create=True,
        enable_async_checkpointing=bool(config.train.get("async_checkpointing", False)),
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                 item_names=(_STATE, _CONFIG, _DATA))


def save(manager: ocp.CheckpointManager, state: TrainState, config: ml_collections.ConfigDict,
         data_position: dict[str, int]) -> None:
    step = int(jax.device_get(state.step))
    manager.save(step, args=ocp.args.Composite(**{
        _STATE: ocp.args.StandardSave(state),
        _CONFIG: ocp.args.JsonSave(json.loads(config.to_json())),
        _DATA: ocp.args.JsonSave(data_position),
    }), force=True)
    if not config.train.get("async_checkpointing", False):
        manager.wait_until_finished()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


# Config keys added after checkpoints existed -> the value that means "as before".
ADDED_KEYS = {"model.attention_impl": "dot_product", "model.remat": [], "model.bn_groups": 1,
              "model.encoder.root": "imagenet", "model.encoder.reversible_backprop": False,
              "model.generator.cbn_map_init": "zeros",
              "model.generator.single_embed_init": "normal",
              "model.discriminator.joint_projection": "none"}


def config_differences(saved: dict, current: ml_collections.ConfigDict, section: str
                       ) -> list[str]:
    """Keys of ``section`` whose values differ between a saved config and the current one."""
    a = _flatten(saved.get(section, {}), f"{section}.")
    b = _flatten(json.loads(current.to_json()).get(section, {}), f"{section}.")
    # A key added to the config after the checkpoint was written matches when the current
    # value is the one that reproduces the older code's behaviour.
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)
                  and not (k not in a and k in ADDED_KEYS and b[k] == ADDED_KEYS[k]))


class CheckpointDamagedError(RuntimeError):
    """No checkpoint in the workdir can be restored (and there is at least one)."""


def _reason(error: Exception) -> str:
    """The first line of an orbax/tensorstore error, short enough for one log line."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"{type(error).__name__}: {line[:200]}"


def _move_aside(manager: ocp.CheckpointManager, step: int) -> epath.Path:
    """Renames a damaged step's directory to ``checkpoints_damaged/<step>[.<n>]`` beside
    ``checkpoints`` (process 0), out of orbax's sight, and keeps it for inspection."""
    source = paths.path(manager.directory) / str(step)
    aside = paths.path(manager.directory).parent / "checkpoints_damaged"
    target, n = aside / str(step), 1
    while target.exists():
        target, n = aside / f"{step}.{n}", n + 1
    if jax.process_index() == 0:
        aside.mkdir(parents=True, exist_ok=True)
        if paths.is_remote(source):  # an object store has no directory rename
            paths.copytree(source, target)
            paths.rmtree(source)
        else:
            source.rename(target)
    return target


def restore_latest(manager: ocp.CheckpointManager, abstract_state: TrainState,
                   config: ml_collections.ConfigDict
                   ) -> tuple[TrainState, dict[str, int]] | None:
    """The newest checkpoint that restores: its state and data position; None when there is
    no checkpoint.

    A step that cannot be read (truncated array files, missing metadata) is logged with its
    reason and skipped; once an older step restores, the damaged newer ones are moved to
    ``checkpoints_damaged/`` so that the run continues from the older one and later saves
    cannot collide with them. If no step restores, nothing is moved and the run stops: the
    fault is then more likely the code or the filesystem than the files, and a fresh start
    would silently discard the run.
    """
    failures: list[tuple[int, str]] = []

    def damaged(step: int, error: Exception) -> None:
        failures.append((step, _reason(error)))
        log.warning("Checkpoint step %d in %s cannot be restored: %s", step, manager.directory,
                    failures[-1][1])

    for step in sorted(manager.all_steps(), reverse=True):
        try:
            saved_config = manager.restore(step, args=ocp.args.Composite(
                **{_CONFIG: ocp.args.JsonRestore()}))[_CONFIG]
        except Exception as e:  # noqa: BLE001 - any unreadable step counts as damaged
            damaged(step, e)
            continue
        diff = config_differences(saved_config, config, "model")
        if diff:
            raise CheckpointMismatchError(
                f"The checkpoint at step {step} in {manager.directory} was written with a "
                f"different model config; differing keys: {', '.join(diff)}. Use the original "
                "config, or start a new workdir (config.train.init_from can load parameters "
                "into a fresh run)."
            )
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**{
                _STATE: ocp.args.StandardRestore(abstract_state),
                _DATA: ocp.args.JsonRestore(),
            }))
        except Exception as e:  # noqa: BLE001 - orbax raises many types for unreadable data
            damaged(step, e)
            continue
        if failures:
            for bad, _ in failures:
                target = _move_aside(manager, bad)
                log.warning("Moved the damaged checkpoint step %d to %s; resuming from step "
                            "%d.", bad, target, step)
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("bbg_jax.checkpoint.move_aside")
            manager.reload()
        return restored[_STATE], dict(restored[_DATA])
    if failures:
        listed = "; ".join(f"step {s}: {r}" for s, r in failures)
        raise CheckpointDamagedError(
            f"No checkpoint in {manager.directory} can be restored ({listed}). Nothing was "
            "moved or deleted; fix the cause, or move the workdir aside to start afresh.")
    return None


def _with_sharding(abstract: Any) -> Any:
    """Leaves without a sharding restore onto this process's first device.

    Orbax otherwise takes the sharding saved in the checkpoint, which names the devices of the
    run that wrote it: a checkpoint from a 2-device run would not load in a 1-device evaluation.
    """
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(x):
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device)
        return x

    return jax.tree.map(leaf, abstract)


def restore_state(workdir: paths.PathLike, abstract_state: TrainState, step: int | None = None
                  ) -> TrainState:
    """The train state of ``step`` (the latest when None) in ``<workdir>/checkpoints``, on this
    process's devices whatever the device count of the run that wrote it."""
    abstract_state = _with_sharding(abstract_state)
    manager = ocp.CheckpointManager(checkpoint_dir(workdir), item_names=(_STATE, _CONFIG, _DATA))
    try:
        step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise FileNotFoundError(
                f"No checkpoint {'' if step is None else f'for step {step} '}in "
                f"{checkpoint_dir(workdir)}; available steps: {list(manager.all_steps())}.")
        return manager.restore(step, args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardRestore(abstract_state)}))[_STATE]
    finally:
        manager.close()


def load_parameters(init_from: str, abstract_state: TrainState) -> TrainState:
    """The latest checkpoint of another run (``train.init_from``), for its parameters."""
    directory = paths.path(str(init_from).rstrip("/"))
    if directory.name != "checkpoints":
        directory = directory / "checkpoints"
    manager = ocp.CheckpointManager(directory, item_names=(_STATE, _CONFIG, _DATA))
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(
            f"config.train.init_from={init_from!r} holds no checkpoint: point it at a workdir "
            "(or its checkpoints/ directory) of a finished or running training job."
        )
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardRestore(_with_sharding(abstract_state))}))
    except Exception as e:
        raise CheckpointMismatchError(
            f"config.train.init_from={init_from!r} (step {step}) does not match this model: {e}"
        ) from e
    return restored[_STATE]
