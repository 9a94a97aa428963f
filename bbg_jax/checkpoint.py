"""Checkpoints: the whole train state, the config (JSON) and the data position, via orbax.

Resume precedence (as maxtext documents it):
  1. the latest complete checkpoint in ``<workdir>/checkpoints`` (a preempted or killed run
     continues bit-exactly from it);
  2. otherwise ``config.train.init_from``: the parameters (and EMA, model state) of another run's
     latest checkpoint start a fresh run at step 0 with fresh optimizer state;
  3. otherwise a fresh initialisation.
A workdir checkpoint written with a different model config is refused, naming the differing keys.
Orbax writes each step to a temporary directory and renames it when complete, so a process killed
mid-save leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from bbg_jax import paths
from bbg_jax.train_state import TrainState

_STATE, _CONFIG, _DATA = "state", "config", "data"


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
              "model.encoder.root": "imagenet", "model.encoder.reversible_backprop": False}


def config_differences(saved: dict, current: ml_collections.ConfigDict, section: str
                       ) -> list[str]:
    """Keys of ``section`` whose values differ between a saved config and the current one."""
    a = _flatten(saved.get(section, {}), f"{section}.")
    b = _flatten(json.loads(current.to_json()).get(section, {}), f"{section}.")
    # A key added to the config after the checkpoint was written matches when the current
    # value is the one that reproduces the older code's behaviour.
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)
                  and not (k not in a and k in ADDED_KEYS and b[k] == ADDED_KEYS[k]))


def restore_latest(manager: ocp.CheckpointManager, abstract_state: TrainState,
                   config: ml_collections.ConfigDict
                   ) -> tuple[TrainState, dict[str, int]] | None:
    """The latest checkpoint's state and data position, or None when there is none."""
    step = manager.latest_step()
    if step is None:
        return None
    saved_config = manager.restore(step, args=ocp.args.Composite(
        **{_CONFIG: ocp.args.JsonRestore()}))[_CONFIG]
    diff = config_differences(saved_config, config, "model")
    if diff:
        raise CheckpointMismatchError(
            f"The checkpoint at step {step} in {manager.directory} was written with a different "
            f"model config; differing keys: {', '.join(diff)}. Use the original config, or "
            "start a new workdir (config.train.init_from can load parameters into a fresh run)."
        )
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardRestore(abstract_state),
            _DATA: ocp.args.JsonRestore(),
        }))
    except Exception as e:  # orbax raises several types for unreadable or mismatched data
        raise CheckpointMismatchError(
            f"Could not restore the checkpoint at step {step} in {manager.directory}: {e}. If "
            "it is corrupt, delete that step's directory to fall back to the previous one."
        ) from e
    return restored[_STATE], dict(restored[_DATA])


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

    return jax.tree_util.tree_map(leaf, abstract)


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
