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
``<workdir>/checkpoints_damaged/`` (``restore_latest``). With several processes, process 0
chooses the step and all agree on it; transient object-store errors are retried, never taken
for damage.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
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
ADDED_KEYS = {"model.bn_groups": 1,
              "model.encoder.root": "imagenet", "model.encoder.reversible_backprop": False,
              "model.generator.cbn_map_init": "zeros",
              "model.generator.single_embed_init": "normal",
              "model.discriminator.joint_projection": "none",
              "model.generator.z_in_blocks": True, "model.discriminator.downsample": None,
              "model.discriminator.conv_shortcut": "channels"}


# How the step computes, not what: the same parameters and maths whatever their values, so a
# resumed or evaluated run may change them.
IMPLEMENTATION_KEYS = frozenset({"model.attention_impl", "model.remat"})


def config_differences(saved: dict, current: ml_collections.ConfigDict, section: str
                       ) -> list[str]:
    """Keys of ``section`` whose values differ between a saved config and the current one,
    other than ``IMPLEMENTATION_KEYS``."""
    a = _flatten(saved.get(section, {}), f"{section}.")
    b = _flatten(json.loads(current.to_json()).get(section, {}), f"{section}.")
    # A key added to the config after the checkpoint was written matches when the current
    # value is the one that reproduces the older code's behaviour.
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)
                  and k not in IMPLEMENTATION_KEYS
                  and not (k not in a and k in ADDED_KEYS and b[k] == ADDED_KEYS[k]))


class CheckpointDamagedError(RuntimeError):
    """No checkpoint in the workdir can be restored (and there is at least one)."""


class CheckpointUnavailableError(CheckpointDamagedError):
    """A checkpoint could not be read because the store kept failing transiently (HTTP 5xx or
    429, timeouts, dropped connections) through every retry. Nothing was moved: the files are
    most likely intact and a later start can read them. A ``CheckpointDamagedError`` so that
    ``bbg_jax.main`` stops with it in one line."""


def _reason(error: Exception) -> str:
    """The first line of an orbax/tensorstore error, short enough for one log line."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"{type(error).__name__}: {line[:200]}"


# --- transient errors ---------------------------------------------------------------------------

# Waits between the tries of a read that failed with a transient error. The clients under orbax
# already retry each request (gcsfs 6 tries over about 30 s, tensorstore and TensorFlow's GCS
# client longer), so what still escapes is an outage of tens of seconds: three more tries over
# about 20 s cost little next to a restart, and far less than calling the newest step damaged
# and losing up to train.checkpoint_every steps.
RETRY_DELAYS_S = (1.0, 4.0, 16.0)

# HTTP statuses that say "try again": request timeout, too many requests, server errors.
_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
# Exception classes (matched by name anywhere in the class's MRO, so that neither TensorFlow nor
# the HTTP clients need importing here) that the stack raises for the same conditions:
# aiohttp (gcsfs) and requests (google-auth) for dropped, refused and timed-out connections,
# gcsfs' ProxyError for HTTP 502, google-auth's TransportError, google-api-core's 5xx/429
# classes, and TensorFlow's GCS client's UNAVAILABLE, DEADLINE_EXCEEDED and ABORTED.
_TRANSIENT_CLASSES = frozenset({
    "ClientConnectionError", "ClientPayloadError", "ServerDisconnectedError",
    "ServerTimeoutError", "ConnectTimeout", "ReadTimeout", "Timeout", "ChunkedEncodingError",
    "ProxyError", "TransportError", "ServiceUnavailable", "GatewayTimeout", "BadGateway",
    "InternalServerError", "TooManyRequests", "UnavailableError", "DeadlineExceededError",
    "AbortedError"})
# tensorstore (orbax's array files) raises ValueError with the status in the message; once its
# own retries are spent: "ABORTED: All 32 retry attempts failed: Service Unavailable
# [http_response_code='503']".
_TRANSIENT_TEXT = re.compile(
    r"\b(UNAVAILABLE|DEADLINE_EXCEEDED)\b|retry attempts failed|connection (reset|refused|"
    r"aborted)|timed out|\b(HTTP|http_response_code)\b[^\n]{0,40}?\b(408|429|50[0234])\b",
    re.IGNORECASE)


def _chain(error: BaseException):
    """``error``, its causes and contexts, and the members of exception groups."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or an error it came from) is an object-store hiccup worth retrying
    rather than damage: HTTP 5xx/429/408, timeouts, connection resets and refusals."""
    for e in _chain(error):
        if isinstance(e, (TimeoutError, ConnectionError)):  # socket/asyncio; reset, refused
            return True
        if {c.__name__ for c in type(e).__mro__} & _TRANSIENT_CLASSES:
            return True
        codes = (getattr(e, "code", None), getattr(e, "status", None),
                 getattr(getattr(e, "response", None), "status_code", None))
        if any(isinstance(c, int) and c in _TRANSIENT_HTTP for c in codes):
            return True  # gcsfs' HttpError, aiohttp's ClientResponseError, requests' HTTPError
        if _TRANSIENT_TEXT.search(str(e)):
            return True
    return False


@dataclasses.dataclass
class _Read:
    """What reading one step gave on this process: the items, or the error (and whether it
    was still transient after every retry)."""
    items: Any = None
    error: Exception | None = None
    transient: bool = False


def _read(directory: epath.Path, step: int, items: dict[str, Any], what: str) -> _Read:
    """``items`` of ``step``, read by this process alone.

    A transient error is retried after each of ``RETRY_DELAYS_S``. Any other error is read once
    more after the first delay before it counts: a client can report a failed request as a
    missing file (an existence check that answers False), and damage fails the same way twice.

    ``CheckpointManager.restore`` ends in a barrier over all processes, so one process failing
    before it would leave the others waiting there: this checkpointer has this process as its
    only participant, and the processes agree through ``_from_process``/``_all_processes``.
    """
    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    failed_before = False  # a non-transient failure already seen
    for attempt, delay in enumerate((*RETRY_DELAYS_S, None), start=1):
        checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler(),
                                        multiprocessing_options=options)
        try:
            return _Read(items=checkpointer.restore(directory / str(step),
                                                    args=ocp.args.Composite(**items)))
        except Exception as e:  # noqa: BLE001 - orbax raises many types for unreadable data
            transient = is_transient(e)
            if delay is None or (failed_before and not transient):
                return _Read(error=e, transient=transient)
            failed_before = failed_before or not transient
            log.warning("Reading %s of checkpoint step %d in %s failed %s (%s); try %d of %d "
                        "in %g s.", what, step, directory,
                        "with a transient error" if transient else "once", _reason(e),
                        attempt + 1, len(RETRY_DELAYS_S) + 1, delay)
            time.sleep(delay)
        finally:
            checkpointer.close()
    raise AssertionError("unreachable")


# --- agreement between processes ----------------------------------------------------------------

def _from_process(value: Any, source: int) -> Any:
    """``value`` (anything JSON can hold) as process ``source`` has it, on every process."""
    if jax.process_count() == 1:
        return value
    is_source = jax.process_index() == source
    raw = np.frombuffer(json.dumps(value).encode(), np.uint8) if is_source else None
    size = int(multihost_utils.broadcast_one_to_all(
        np.int32(0 if raw is None else raw.size), is_source=is_source))
    data = raw if is_source else np.zeros(size, np.uint8)
    return json.loads(bytes(multihost_utils.broadcast_one_to_all(data, is_source=is_source)))


def _all_processes(value: int) -> list[int]:
    """Every process's ``value``, in process order."""
    if jax.process_count() == 1:
        return [value]
    return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.int32(value)))]


def _propose(directory: epath.Path, steps: list[int], config: ml_collections.ConfigDict
             ) -> dict[str, Any]:
    """Process 0's choice among ``steps`` (newest first): the first whose config reads and
    matches ``config``, with the reason each newer one was skipped."""
    skipped = []
    for step in steps:
        got = _read(directory, step, {_CONFIG: ocp.args.JsonRestore()}, "the config")
        if got.transient:
            return {"kind": "unavailable", "step": step, "reason": _reason(got.error),
                    "skipped": skipped}
        if got.error is not None:
            skipped.append([step, _reason(got.error)])
            continue
        diff = config_differences(got.items[_CONFIG], config, "model")
        if diff:
            return {"kind": "mismatch", "skipped": skipped, "reason": (
                f"The checkpoint at step {step} in {directory} was written with a different "
                f"model config; differing keys: {', '.join(diff)}. Use the original config, or "
                "start a new workdir (config.train.init_from can load parameters into a fresh "
                "run).")}
        return {"kind": "restore", "step": step, "skipped": skipped}
    return {"kind": "none", "skipped": skipped}


def _on_process_0(fn: Callable[[], Any], what: str) -> Any:
    """``fn()``, run by process 0, as every process's answer. An error there reaches every
    process (process 0 raises it, the others a RuntimeError naming it) instead of leaving them
    waiting for process 0. Also a barrier: the others go on once process 0 is done."""
    answer, error = None, None
    if jax.process_index() == 0:
        try:
            answer = {"value": fn()}
        except Exception as e:  # noqa: BLE001 - re-raised below, once the others know
            answer, error = {"error": _reason(e)}, e
    answer = _from_process(answer, 0)
    if error is not None:
        raise error
    if "error" in answer:
        raise RuntimeError(f"Process 0 failed while {what}: {answer['error']}")
    return answer["value"]


def _agreed_failure(got: _Read) -> dict[str, Any] | None:
    """None when every process read the agreed step; otherwise, on every process, the first
    process that failed (damage before transient errors), its reason and whether the store
    kept failing transiently."""
    status = 0 if got.error is None else (2 if got.transient else 1)
    statuses = _all_processes(status)
    if not any(statuses):
        return None
    worst = 1 if 1 in statuses else 2
    process = statuses.index(worst)
    reason = _from_process(None if got.error is None else _reason(got.error), process)
    return {"process": process, "reason": reason, "transient": worst == 2}


def _move_aside(manager: ocp.CheckpointManager, step: int) -> epath.Path:
    """Renames a damaged step's directory to ``checkpoints_damaged/<step>[.<n>]`` beside
    ``checkpoints``, out of orbax's sight, and keeps it for inspection (process 0 only)."""
    source = paths.path(manager.directory) / str(step)
    aside = paths.path(manager.directory).parent / "checkpoints_damaged"
    target, n = aside / str(step), 1
    while target.exists():
        target, n = aside / f"{step}.{n}", n + 1
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
    no checkpoint. Every process ends on the same step.

    Process 0 chooses the step (the newest whose config reads and matches) and broadcasts it
    with the reason each newer step was skipped; every process then reads that step's state.
    If any process cannot, all learn which and why (one log line) and go on to the next older
    step together. Transient object-store errors (``is_transient``) are retried with backoff
    (``RETRY_DELAYS_S``); one that outlasts the retries stops every process
    (``CheckpointUnavailableError``) and moves nothing. A step that cannot be read for any
    other reason (truncated array files, missing metadata) is damaged: once an older step
    restores, the damaged newer ones are moved to ``checkpoints_damaged/`` so that the run
    continues from the older one and later saves cannot collide with them. If no step
    restores, nothing is moved and the run stops: the fault is then more likely the code or
    the filesystem than the files, and a fresh start would silently discard the run.
    """
    directory = paths.path(manager.directory)
    damaged: list[tuple[int, str]] = []
    candidates = sorted(manager.all_steps(), reverse=True)
    while True:
        proposal = _on_process_0(functools.partial(_propose, directory, candidates, config),
                                 f"choosing the checkpoint to restore in {directory}")
        for step, reason in proposal["skipped"]:
            damaged.append((step, reason))
            log.warning("Checkpoint step %d in %s cannot be restored: %s", step, directory,
                        reason)
        if proposal["kind"] == "mismatch":
            raise CheckpointMismatchError(proposal["reason"])
        if proposal["kind"] == "unavailable":
            raise _unavailable(directory, proposal["step"], proposal["reason"])
        if proposal["kind"] == "none":
            break
        step = proposal["step"]
        got = _read(directory, step, {_STATE: ocp.args.StandardRestore(abstract_state),
                                      _DATA: ocp.args.JsonRestore()}, "the state")
        failure = _agreed_failure(got)
        if failure is None:
            _move_damaged_aside(manager, damaged, step)
            return got.items[_STATE], dict(got.items[_DATA])
        where = (f"process {failure['process']} of {jax.process_count()}: "
                 if jax.process_count() > 1 else "") + failure["reason"]
        if failure["transient"]:
            raise _unavailable(directory, step, where)
        damaged.append((step, where))
        log.warning("Checkpoint step %d in %s cannot be restored (%s); %s to an older step.",
                    step, directory, where,
                    "every process goes on" if jax.process_count() > 1 else "going on")
        candidates = [s for s in candidates if s < step]
    if damaged:
        listed = "; ".join(f"step {s}: {r}" for s, r in damaged)
        raise CheckpointDamagedError(
            f"No checkpoint in {manager.directory} can be restored ({listed}). Nothing was "
            "moved or deleted; fix the cause, or move the workdir aside to start afresh.")
    return None


def _unavailable(directory: epath.Path, step: int, reason: str) -> CheckpointUnavailableError:
    return CheckpointUnavailableError(
        f"Checkpoint step {step} in {directory} could not be read: the object store kept "
        f"failing after {len(RETRY_DELAYS_S) + 1} tries ({reason}). Nothing was moved; start "
        "the run again once the store answers.")


def _move_damaged_aside(manager: ocp.CheckpointManager, damaged: list[tuple[int, str]],
                        restored: int) -> None:
    """Process 0 moves the damaged steps (all newer than ``restored``) aside; then every
    process logs where they went and sees the same step list."""
    if not damaged:
        return
    targets = _on_process_0(lambda: [str(_move_aside(manager, s)) for s, _ in damaged],
                            f"moving damaged checkpoints aside in {manager.directory}")
    log.warning("Restoring checkpoint step %d in %s on %s; moved the damaged newer steps aside: "
                "%s.", restored, manager.directory, f"all {jax.process_count()} processes"
                if jax.process_count() > 1 else "this process", "; ".join(
                    f"step {s} to {t} ({r})" for (s, r), t in zip(damaged, targets, strict=True)))
    manager.reload()


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
