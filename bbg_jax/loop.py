"""The training loop: restore or initialise, step, log, checkpoint, handle preemption and NaNs.

Sections, in the order they run: (1) set-up and config checks, (2) state: resume precedence
(``bbg_jax.checkpoint``), (3) data positioned at the restored step, (4) the loop.

The data position saved with each checkpoint is ``{"data_batch": step * n_d_steps,
"process_count": N}``: a TFDS stream is per process, so a resume with another process count
would read other examples at the same position; it is refused in one line naming both counts
unless ``train.allow_data_reshard`` (``check_data_processes``).

Evaluation runs after the checkpoint of its step. A SIGTERM in its middle stops it between two
batches (``bbg_jax.evaluation.interrupt``); the run exits 0, and the evaluation, recorded in
WORKDIR/eval/pending.json, runs first after the restart (from that step's checkpoint), so its
report and summaries are written once.

Host synchronisation: each step's metrics are fetched one step late (after the next step is
dispatched), so the device never waits for the host; the fetched metrics feed the non-finite
check and the logs. A checkpoint is written only after its step's metrics were checked finite.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from bbg_jax import checkpoint, config_checks, console, paths, progress, sharding, summaries
from bbg_jax.compilation_cache import use_compilation_cache
from bbg_jax.data.batches import local_batches as local_batches  # re-exported
from bbg_jax.data.batches import order_depends_on_process_count, step_batches
from bbg_jax.data.global_batch import per_process_batch_size
from bbg_jax.evaluation import evaluators as evaluators_lib
from bbg_jax.evaluation import interrupt, standalone
from bbg_jax.train import jit_train_step
from bbg_jax.train_state import TrainState, create_train_state, make_optimizers

log = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class Hooks:
    """Injection points for tests and tools; the defaults change nothing.

    batch(step, batch) -> batch: the batch the given step trains on (e.g. poisoned with NaN).
    after_step(step, stop_requested): runs after each step, its checkpoint and evaluation;
      ``stop_requested()`` tells whether a SIGTERM (or, with several processes, the preemption
      sync point) has asked the run to stop, so a hook can hold the run at a step until then.
    """

    batch: Callable[[int, dict[str, Any]], dict[str, Any]] = lambda step, batch: batch
    after_step: Callable[[int, Callable[[], bool]], None] = lambda step, stop_requested: None


class NonFiniteLossError(FloatingPointError):
    """A training metric became NaN or infinite."""


class DataReshardError(checkpoint.CheckpointMismatchError):
    """A resume with another process count than the checkpoint's data position refers to."""


def data_position(step: int, config: ml_collections.ConfigDict) -> dict[str, int]:
    """What a checkpoint records of the data: the data batch each process's stream is at, and
    how many processes' streams that position refers to."""
    return {"data_batch": step * config.train.n_d_steps, "process_count": jax.process_count()}


def check_data_processes(config: ml_collections.ConfigDict, position: dict, step: int,
                         where: str) -> str | None:
    """A restored data position fits this run's process count, or ``DataReshardError`` (one
    line naming both counts); ``train.allow_data_reshard`` continues anyway, each process from
    the same data batch of its new stream. Returns a note for the terminal when the count
    changed, else None."""
    saved, now = position.get("process_count"), jax.process_count()
    if saved is None:
        log.warning("The checkpoint at step %d in %s does not record its process count "
                    "(written before it was recorded); resuming with %d.", step, where, now)
        return None
    if saved == now:
        return None
    if not order_depends_on_process_count(config):
        return (f"checkpoint written by {saved} process{'es' * (saved != 1)}, resumed by {now}:"
                f" data.dataset={config.data.dataset!r} keeps its global order")
    if not config.train.get("allow_data_reshard", False):
        raise DataReshardError(
            f"The checkpoint at step {step} in {where} was written by {saved} "
            f"process{'es' * (saved != 1)} and this run has {now}: each process reads its own "
            f"part of data.dataset={config.data.dataset!r}, so data batch "
            f"{position.get('data_batch')} would be other examples with {now}. Resume with "
            f"{saved} process{'es' * (saved != 1)}, or set "
            "--config.train.allow_data_reshard=True to continue with the data order of "
            f"{now} process{'es' * (now != 1)} from that position.")
    return (f"data resharded from {saved} to {now} process{'es' * (now != 1)} at data batch "
            f"{position.get('data_batch')} (train.allow_data_reshard)")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Model, data, training and eval sections are valid and agree: ``config_checks.check``
    (``bbg_jax.main`` runs it, and the workdir and device checks, before calling the loop)."""
    config_checks.check(config, "train")


def _replicated_abstract(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    rep = sharding.replicated(mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), tree)


def initial_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                  manager) -> tuple[TrainState, str]:
    """Resume precedence: workdir checkpoint, then ``train.init_from``, then fresh."""
    rep = sharding.replicated(mesh)
    rng = jax.random.key(config.train.seed)
    abstract = _replicated_abstract(
        jax.eval_shape(lambda: create_train_state(config, rng)), mesh)
    restored = checkpoint.restore_latest(manager, abstract, config)
    if restored is not None:
        state, position = restored
        expected = int(state.step) * config.train.n_d_steps
        if position.get("data_batch") != expected:
            raise checkpoint.CheckpointMismatchError(
                f"Checkpoint data position {position} does not match step {int(state.step)}.")
        note = check_data_processes(config, position, int(state.step), str(manager.directory))
        if note:
            log.info("%s", note)
        return state, f"resumed from step {int(state.step)}" + (f" ({note})" if note else "")
    state = jax.jit(lambda k: create_train_state(config, k), out_shardings=rep)(rng)
    if config.train.init_from:
        loaded = checkpoint.load_parameters(config.train.init_from, abstract)
        txs = make_optimizers(config, sorted(loaded.params))
        opt_state = jax.jit(lambda p: {k: txs[k].init(p[k]) for k in p}, out_shardings=rep)(
            loaded.params)
        state = state.replace(params=loaded.params, model_state=loaded.model_state,
                              ema_params=loaded.ema_params, opt_state=opt_state)
        return state, f"initialised from {config.train.init_from}"
    return state, "fresh initialisation"


class _Preemption:
    """SIGTERM -> one step at which every process checkpoints and stops.

    One process: a Python SIGTERM handler sets a flag. Several: the preemption sync manager
    that ``jax.distributed.initialize`` installs catches SIGTERM on any process and tells the
    others through the coordination service; ``reached_preemption_sync_point(step)``, called at
    every step by every process, is True on all of them at the same step (one past the latest
    step any of them had reported), so all save that step and stop. A Python handler would
    replace the manager's, so none is installed then. During an evaluation the same flag is
    read before every batch, and the sync point asked before every ``EVAL_CHECK_EVERY``-th
    (``stop_evaluation``).
    """

    # Several processes: asking the sync point is an allgather. An ImageNet evaluation has
    # about 25k batches (1-5 ms each on a pod's interconnect, so 25-130 s per evaluation); every
    # 16th costs 1/16 of it and delays the stop by at most 15 batches, well within a
    # scheduler's warning. The count is the same on every process, so all ask together.
    EVAL_CHECK_EVERY = 16

    def __init__(self):
        self.requested = False
        self._eval_calls = 0
        self._multi = jax.process_count() > 1
        if not self._multi:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def reached(self, step: int) -> bool:
        """Call once per step, in step order, on every process."""
        if self._multi:
            self.requested = self.requested or multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def stop_evaluation(self, step: int) -> bool:
        """Whether the evaluation after ``step`` stops before its next batch: the same answer on
        every process (a collective there: call it as often on each)."""
        if not self._multi:
            return self.requested
        self._eval_calls += 1
        if self._eval_calls % self.EVAL_CHECK_EVERY:
            return False
        agreed = interrupt.preempted_during(step)
        self.requested = self.requested or agreed
        return agreed

    def restore(self):
        if not self._multi:
            signal.signal(signal.SIGTERM, self._previous)


def _check_finite(step: int, metrics: dict[str, Any], last_checkpoint: int | None) -> None:
    bad = {name: value for name, value in sorted(metrics.items())
           if not np.all(np.isfinite(value))}
    if bad:
        listed = ", ".join(f"{name}={value}" for name, value in bad.items())
        raise NonFiniteLossError(
            f"Non-finite {listed} at step {step}: training stopped. The last good checkpoint is "
            f"step {last_checkpoint}; lower the learning rates or check the data before resuming."
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       hooks: Hooks = Hooks()) -> TrainState:
    """Trains ``config`` in ``workdir`` until ``train.num_steps``; returns the final state."""
    # (1) Set-up.
    check_config(config)
    t = config.train
    workdir_path = paths.path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    use_compilation_cache(config, workdir)
    mesh = sharding.make_mesh()
    sharding.check_batch_divisible(config.data.batch_size, mesh)
    per_process_batch_size(config.data.batch_size)
    lead = jax.process_index() == 0  # the only process that writes files

    # (2) State. Nothing is written to the workdir before its checkpoints are known to fit.
    manager = checkpoint.make_manager(workdir_path, config)
    state, how = initial_state(config, mesh, manager)
    writer = summaries.create_writer(workdir, just_logging=not lead)
    if lead:
        paths.write_atomic(workdir_path / "config.json", config.to_json_best_effort(indent=2))
    start = int(jax.device_get(state.step))
    if lead:
        n = mesh.devices.size
        console.say(f"train: {how}; {n} device{'s' * (n > 1)}, global batch "
                    f"{config.data.batch_size}, {t.num_steps} steps")
    last_checkpoint = manager.latest_step()
    metrics_log = summaries.MetricsLog(workdir, start) if lead else None

    # (3) Data and evaluators: every process evaluates its devices' part; process 0 writes.
    batches = step_batches(config, mesh, start)
    evals = [e for e in evaluators_lib.build_evaluators(config, workdir)
             if evaluators_lib.every_steps(config, e.name)]

    # (4) Loop.
    train_step = jit_train_step(config, mesh)
    bar = progress.Progress(t.num_steps, start, writer) if lead else None
    preemption = _Preemption()
    pending: tuple[int, dict] | None = None

    def settle(pending):
        """Fetches, checks and logs a finished step's metrics."""
        step, metrics = pending
        metrics = jax.device_get(metrics)
        _check_finite(step, metrics, last_checkpoint)
        if step % t.log_every == 0 or step == t.num_steps:
            scalars = {k: float(v) for k, v in metrics.items()}
            writer.write_scalars(step, scalars)
            if metrics_log:
                metrics_log.append(step, scalars)
            if bar:
                bar.log(step, scalars)

    def flush_logs():
        writer.flush()
        if metrics_log:
            metrics_log.flush()

    def save(state):
        nonlocal last_checkpoint
        step = int(jax.device_get(state.step))
        checkpoint.save(manager, state, config, data_position(step, config))
        last_checkpoint = step
        flush_logs()  # the logs up to a checkpoint survive a kill

    def evaluate(state, step, due) -> bool:
        """Runs ``due`` at ``step``; False when a SIGTERM stopped it (it stays pending)."""
        manager.wait_until_finished()  # an async save must be complete: the best probe copies it
        standalone.mark_pending(str(workdir_path), step, [e.name for e in due])
        began = time.monotonic()
        try:
            with interrupt.stop_when(lambda: preemption.stop_evaluation(step)):
                metrics, images = standalone.run_and_write(config, str(workdir_path), step, due,
                                                           state)
        except interrupt.EvaluationInterrupted:
            log.warning("SIGTERM during the evaluation of step %d: stopped it; it runs first "
                        "after the restart.", step)
            return False
        if bar:
            bar.message(progress.evaluation_summary(step, metrics, time.monotonic() - began))
        writer.write_scalars(step, metrics)
        writer.write_images(step, {k: v[None] for k, v in images.items()})
        standalone.clear_pending(str(workdir_path))
        return True

    def evaluate_pending(state, step) -> bool:
        """The evaluation a SIGTERM (or a kill) interrupted, before training on; False when a
        SIGTERM stopped it again."""
        record = standalone.read_pending(str(workdir_path))
        if record is None or record["step"] > step:
            return True  # (an older checkpoint restored: it runs when training reaches it)
        due = [e for e in evals if e.name in record["evaluators"]]
        if record["step"] < step or not due:
            log.warning("Not running the pending evaluation of step %d (%s): the run resumed "
                        "from step %d with evaluators %s.", record["step"],
                        record["evaluators"], step, [e.name for e in evals])
            standalone.clear_pending(str(workdir_path))
            return True
        if lead:
            console.say(f"train: the evaluation of step {step} was interrupted; running it "
                        "first")
        return evaluate(state, step, due)

    run_began = time.monotonic()
    try:
        steps = range(start + 1, t.num_steps + 1)
        if not evaluate_pending(state, start):
            log.warning("SIGTERM: checkpointed step %d and stopped.", start)
            steps = range(0)
        for step in steps:
            batch = hooks.batch(step, next(batches))
            state, metrics = train_step(state, batch)
            if pending is not None:
                settle(pending)
            pending = (step, metrics)
            if bar:
                bar.update(step)
            preempted = preemption.reached(step)
            if step % t.checkpoint_every == 0 or step == t.num_steps or preempted:
                settle(pending)
                pending = None
                save(state)
                due = [] if preempted else evaluators_lib.due(evals, config, step, t.num_steps)
                if due and not evaluate(state, step, due):
                    preempted = True
            hooks.after_step(step, lambda: preemption.requested)
            if preemption.requested and not preempted:  # SIGTERM during the step's tail
                preempted = True
                if last_checkpoint != step:
                    settle(pending)
                    pending = None
                    save(state)
            if preempted:
                manager.wait_until_finished()
                log.warning("SIGTERM: checkpointed step %d and stopped.", step)
                break
        if pending is not None:
            settle(pending)
    finally:
        if bar:
            bar.close()
        preemption.restore()
        flush_logs()
        manager.close()  # waits for an async save to finish
    done = int(jax.device_get(state.step))
    if lead and done == t.num_steps and done > start:
        console.say(f"train: reached step {done} in {(time.monotonic() - run_began) / 60:.1f} "
                    "min")
    return state
