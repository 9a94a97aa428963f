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


@dataclasses.dataclass(eq=False)
class _Run:
    """What the loop's steps, checkpoints and evaluations share in one run.

    ``last_checkpoint`` moves with every save and is named by the non-finite error, so it lives
    here rather than in the loop's locals. ``writer`` writes on every process (logging only
    except on process 0); the metrics log and the progress bar exist only on process 0.
    """

    config: ml_collections.ConfigDict
    workdir_path: Any
    lead: bool
    manager: Any
    writer: Any
    metrics_log: summaries.MetricsLog | None
    bar: progress.Progress | None
    preemption: _Preemption
    evals: list
    last_checkpoint: int | None

    def settle(self, pending):
        """Fetches, checks and logs a finished step's metrics."""
        t = self.config.train
        step, metrics = pending
        metrics = jax.device_get(metrics)
        _check_finite(step, metrics, self.last_checkpoint)
        if step % t.log_every == 0 or step == t.num_steps:
            scalars = {k: float(v) for k, v in metrics.items()}
            self.writer.write_scalars(step, scalars)
            if self.metrics_log:
                self.metrics_log.append(step, scalars)
            if self.bar:
                self.bar.log(step, scalars)

    def flush_logs(self):
        self.writer.flush()
        if self.metrics_log:
            self.metrics_log.flush()

    def save(self, state):
        step = int(jax.device_get(state.step))
        checkpoint.save(self.manager, state, self.config, data_position(step, self.config))
        self.last_checkpoint = step
        self.flush_logs()  # the logs up to a checkpoint survive a kill

    def evaluate(self, state, step, due) -> bool:
        """Runs ``due`` at ``step``; False when a SIGTERM stopped it (it stays pending)."""
        # An async save must be complete: the best probe copies it.
        self.manager.wait_until_finished()
        workdir = str(self.workdir_path)
        standalone.mark_pending(workdir, step, [e.name for e in due])
        began = time.monotonic()
        try:
            with interrupt.stop_when(lambda: self.preemption.stop_evaluation(step)):
                metrics, images = standalone.run_and_write(self.config, workdir, step, due,
                                                           state)
        except interrupt.EvaluationInterrupted:
            log.warning("SIGTERM during the evaluation of step %d: stopped it; it runs first "
                        "after the restart.", step)
            return False
        if self.bar:
            self.bar.message(progress.evaluation_summary(step, metrics, time.monotonic() - began))
        self.writer.write_scalars(step, metrics)
        self.writer.write_images(step, {k: v[None] for k, v in images.items()})
        standalone.clear_pending(workdir)
        return True

    def evaluate_pending(self, state, step) -> bool:
        """The evaluation a SIGTERM (or a kill) interrupted, before training on; False when a
        SIGTERM stopped it again."""
        record = standalone.read_pending(str(self.workdir_path))
        if record is None or record["step"] > step:
            return True  # (an older checkpoint restored: it runs when training reaches it)
        due = [e for e in self.evals if e.name in record["evaluators"]]
        if record["step"] < step or not due:
            log.warning("Not running the pending evaluation of step %d (%s): the run resumed "
                        "from step %d with evaluators %s.", record["step"],
                        record["evaluators"], step, [e.name for e in self.evals])
            standalone.clear_pending(str(self.workdir_path))
            return True
        if self.lead:
            console.say(f"train: the evaluation of step {step} was interrupted; running it "
                        "first")
        return self.evaluate(state, step, due)

    def close(self):
        """Releases the run's resources, on success or error alike."""
        if self.bar:
            self.bar.close()
        self.preemption.restore()
        self.flush_logs()
        self.manager.close()  # waits for an async save to finish


def _train_steps(run: _Run, state: TrainState, start: int, batches, train_step,
                 hooks: Hooks) -> TrainState:
    """Steps ``start + 1`` to ``train.num_steps`` with their checkpoints and evaluations, or
    until a SIGTERM; returns the last state."""
    t = run.config.train
    preemption = run.preemption
    pending: tuple[int, dict] | None = None
    steps = range(start + 1, t.num_steps + 1)
    if not run.evaluate_pending(state, start):
        log.warning("SIGTERM: checkpointed step %d and stopped.", start)
        steps = range(0)
    for step in steps:
        batch = hooks.batch(step, next(batches))
        state, metrics = train_step(state, batch)
        # Settling the previous step only now keeps the device busy while the host fetches.
        if pending is not None:
            run.settle(pending)
        pending = (step, metrics)
        if run.bar:
            run.bar.update(step)
        preempted = preemption.reached(step)
        if step % t.checkpoint_every == 0 or step == t.num_steps or preempted:
            run.settle(pending)
            pending = None
            run.save(state)
            due = [] if preempted else evaluators_lib.due(run.evals, run.config, step,
                                                          t.num_steps)
            if due and not run.evaluate(state, step, due):
                preempted = True
        hooks.after_step(step, lambda: preemption.requested)
        if preemption.requested and not preempted:  # SIGTERM during the step's tail
            preempted = True
            if run.last_checkpoint != step:
                run.settle(pending)
                pending = None
                run.save(state)
        if preempted:
            run.manager.wait_until_finished()
            log.warning("SIGTERM: checkpointed step %d and stopped.", step)
            break
    if pending is not None:
        run.settle(pending)
    return state


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
    run = _Run(config, workdir_path, lead, manager, writer, metrics_log, bar, _Preemption(),
               evals, last_checkpoint)
    run_began = time.monotonic()
    try:
        state = _train_steps(run, state, start, batches, train_step, hooks)
    finally:
        run.close()
    done = int(jax.device_get(state.step))
    if lead and done == t.num_steps and done > start:
        console.say(f"train: reached step {done} in {(time.monotonic() - run_began) / 60:.1f} "
                    "min")
    return state
